//! Fan-out/fan-in on the bus: one request to many recipients, replies
//! folded into one result.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actorbus_actors::dead_letter::SharedHook;
use actorbus_actors::error::FailureReason;
use actorbus_actors::request_reply::Request;
use actorbus_actors::scatter_gather::{
    topic_targets, Aggregator, Gather, GatherResult, ScatterError, Target, TopicRequest,
};
use actorbus_actors::topic::TopicHandle;
use serde::Serialize;

use crate::bus::Bus;

impl Bus {
    /// Prepares a scatter-gather named `name` (its metrics label) of
    /// `request`; add recipients, completion conditions, then run it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use actorbus::{service_fn, Bus, Request};
    /// use actorbus::actors::scatter_gather::{Aggregator, CompletedBy};
    ///
    /// #[derive(Clone)]
    /// struct Quote;
    /// impl Request for Quote { type Response = u32; }
    ///
    /// actix::System::new().block_on(async {
    ///     let bus = Bus::builder().build().unwrap();
    ///     for (name, price) in [("a", 30), ("b", 20), ("c", 25)] {
    ///         bus.service(name, move || service_fn(move |_: Quote, _| async move { Ok(price) })).start().await.unwrap();
    ///     }
    ///     let best = bus.scatter("quotes", Quote)
    ///         .services(["a", "b", "c"])
    ///         .timeout(Duration::from_secs(1))
    ///         .run(Aggregator::fold(u32::MAX, |best, _, price| best.min(price)))
    ///         .await
    ///         .unwrap();
    ///     assert_eq!((best.aggregate, best.completed_by), (20, CompletedBy::All));
    /// });
    /// ```
    pub fn scatter<Q, A>(&self, name: &str, request: Q) -> Scatter<Q, A>
    where
        Q: Clone + Send + 'static,
        A: Send + 'static,
    {
        Scatter {
            bus: self.clone(),
            name: name.to_owned(),
            gather: Gather::new(name, request).timeout(self.default_timeout()),
        }
    }
}

/// A scatter-gather being prepared; see [`Bus::scatter`].
#[must_use = "a scatter-gather does nothing until it is run"]
pub struct Scatter<Q, A> {
    bus: Bus,
    name: String,
    gather: Gather<Q, A>,
}

impl<Q, A> fmt::Debug for Scatter<Q, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scatter").field("gather", &self.gather).finish()
    }
}

impl<Q: Clone + Send + 'static, A: Send + 'static> Scatter<Q, A> {
    /// Adds a recipient of any kind.
    pub fn target(mut self, target: Target<Q, A>) -> Self {
        self.gather = self.gather.target(target);
        self
    }

    /// Adds every subscription of `topic` open now as a recipient.
    pub fn topic(mut self, topic: &TopicHandle<TopicRequest<Q, A>>) -> Self
    where
        Q: Sync,
        A: Sync,
    {
        self.gather = self.gather.targets(topic_targets(topic, &self.name));
        self
    }

    /// Completes once `n` recipients replied successfully.
    pub fn first(mut self, n: usize) -> Self {
        self.gather = self.gather.first(n);
        self
    }

    /// Completes once a majority of the recipients replied successfully.
    pub fn quorum(mut self) -> Self {
        self.gather = self.gather.quorum();
        self
    }

    /// Completes once `k` recipients replied successfully.
    pub fn quorum_of(mut self, k: usize) -> Self {
        self.gather = self.gather.quorum_of(k);
        self
    }

    /// The total timeout (default: the bus's default request timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.gather = self.gather.timeout(timeout);
        self
    }

    /// Runs it on the bus's scatter-gather actor.
    pub async fn run<Acc: Send + 'static>(
        self,
        aggregator: Aggregator<A, Acc>,
    ) -> Result<GatherResult<Acc>, ScatterError> {
        self.bus.scatter_runner().run(self.gather, aggregator).await
    }

    /// Runs it, keeping every reply with its recipient's name.
    pub async fn collect(self) -> Result<GatherResult<Vec<(String, A)>>, ScatterError> {
        self.run(Aggregator::collect()).await
    }
}

impl<Q: Request<Response = A> + Clone, A: Send + 'static> Scatter<Q, A> {
    /// Adds the request-reply services named `names` as recipients. A name
    /// with no service (or one answering another request type) is a
    /// recipient that fails at once.
    pub fn services<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        for name in names {
            let name = name.as_ref();
            let target = match self.bus.service_ref::<Q>(name) {
                Ok(service) => Target::service(service),
                Err(e) => Target::new(name, move |_, _| async move { Err(FailureReason::Failed(e.to_string())) }),
            };
            self.gather = self.gather.target(target);
        }
        self
    }
}

impl<Q: Clone + Serialize + Send + 'static, A: Send + 'static> Scatter<Q, A> {
    /// On completion by timeout, dead-letters the request with the missing
    /// and failed recipients to the bus's DLQ (source
    /// `scatter_gather/<name>`, reason `timeout`).
    pub fn dead_letter_on_timeout(mut self) -> Self {
        let dlq: SharedHook = Arc::new(self.bus.dlq().clone());
        self.gather = self.gather.dead_letter_on_timeout(dlq);
        self
    }
}
