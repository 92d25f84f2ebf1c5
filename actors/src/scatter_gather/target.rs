//! Recipients of a scatter-gather: request-reply services, and the
//! subscriptions of a topic.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::envelope::Envelope;
use crate::error::{FailureReason, HandlerError};
use crate::metrics as m;
use crate::request_reply::{Request, RequestError, ServiceRef};
use crate::topic::{Item, Offer, TopicHandle};

/// A recipient's answer, or why there is none.
pub type ReplyFuture<A> = Pin<Box<dyn Future<Output = Result<A, FailureReason>> + Send>>;

type Ask<Q, A> = Box<dyn FnOnce(Envelope<Q>, Duration) -> ReplyFuture<A> + Send>;

/// One recipient of a scatter-gather: a name (reported in the result's
/// replied, missing and failed lists) and how to ask it.
pub struct Target<Q, A> {
    pub(crate) name: String,
    pub(crate) ask: Ask<Q, A>,
}

impl<Q, A> fmt::Debug for Target<Q, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target").field("name", &self.name).finish()
    }
}

impl<Q: Send + 'static, A: Send + 'static> Target<Q, A> {
    /// A recipient asked by `ask`, which gets the request's envelope and
    /// the time left, and answers the reply or a failure reason.
    pub fn new<F, Fut>(name: impl Into<String>, ask: F) -> Self
    where
        F: FnOnce(Envelope<Q>, Duration) -> Fut + Send + 'static,
        Fut: Future<Output = Result<A, FailureReason>> + Send + 'static,
    {
        Target { name: name.into(), ask: Box::new(move |env, left| Box::pin(ask(env, left))) }
    }

    /// The recipient's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Maps a request-reply error to a failure reason: a handler's own error or
/// panic keeps its reason; a timeout is `timeout`; anything else (unknown
/// service, full mailbox, service stopped) is `failed: <error>`.
pub fn request_failure(e: RequestError) -> FailureReason {
    match e {
        RequestError::Failed(reason) => reason,
        RequestError::Timeout(_) | RequestError::Expired => FailureReason::Timeout,
        other => FailureReason::Failed(other.to_string()),
    }
}

impl<Q> Target<Q, Q::Response>
where
    Q: Request,
{
    /// A request-reply service (DESIGN §6.1), named by its service name.
    pub fn service(service: Arc<ServiceRef<Q>>) -> Self {
        let name = service.name().to_owned();
        Target::new(name, move |env, left| async move { service.ask(env, left).await.map_err(request_failure) })
    }
}

/// The payload of a scatter-gather over a topic: the request, and where
/// this subscriber's reply goes.
///
/// Each subscription receives its own `TopicRequest`; the subscriber
/// answers with [`reply`](Self::reply). A subscriber that drops it without
/// replying (it panicked, it stopped) is reported as failed with reason
/// `failed: dropped without a reply`; one that replies after the gather
/// completed is counted as a late reply.
pub struct TopicRequest<Q, A> {
    /// The request.
    pub request: Q,
    reply: Arc<ReplySlot<A>>,
}

impl<Q: Clone, A> Clone for TopicRequest<Q, A> {
    fn clone(&self) -> Self {
        TopicRequest { request: self.request.clone(), reply: self.reply.clone() }
    }
}

/// A topic request serializes as its request: the reply slot is a channel,
/// not data. That is what a dead letter of a dropped request keeps.
impl<Q: serde::Serialize, A> serde::Serialize for TopicRequest<Q, A> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.request.serialize(serializer)
    }
}

impl<Q: fmt::Debug, A> fmt::Debug for TopicRequest<Q, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicRequest").field("request", &self.request).finish()
    }
}

struct ReplySlot<A> {
    tx: Mutex<Option<oneshot::Sender<Result<A, HandlerError>>>>,
    late: metrics::Counter,
}

impl<Q, A> TopicRequest<Q, A> {
    /// Answers the request; false when it was answered already or the
    /// gather is over (the reply is dropped and counted as late).
    pub fn reply(&self, answer: Result<A, HandlerError>) -> bool {
        let tx = self.reply.tx.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(tx) = tx else {
            return false;
        };
        if tx.send(answer).is_ok() {
            return true;
        }
        self.reply.late.increment(1);
        false
    }
}

/// One recipient per subscription of `topic` open now (and whose filter
/// accepts the request): each gets its own [`TopicRequest`] in its buffer,
/// under its overflow policy (a subscription that cannot take it is a
/// failed recipient, reason `overflow: <policy>`). Recipients are named
/// by subscription id (`sub-<n>`).
pub fn topic_targets<Q, A>(topic: &TopicHandle<TopicRequest<Q, A>>, gather: &str) -> Vec<Target<Q, A>>
where
    Q: Clone + Send + Sync + 'static,
    A: Send + Sync + 'static,
{
    let late = metrics::counter!(m::SCATTER_LATE_REPLIES, m::LABEL_NAME => gather.to_owned());
    let mut stale = false;
    let targets = topic
        .routes()
        .subs
        .iter()
        .filter(|sub| {
            let live = sub.is_live();
            stale |= !live;
            live
        })
        .map(|sub| {
            let sub = sub.clone();
            let late = late.clone();
            Target::new(sub.id.to_string(), move |env: Envelope<Q>, _left| async move {
                let (tx, rx) = oneshot::channel();
                let slot = Arc::new(ReplySlot { tx: Mutex::new(Some(tx)), late });
                let env = env.map(|request| TopicRequest { request, reply: slot });
                if !sub.accepts(&env) {
                    return Err(FailureReason::Failed("the subscription's filter refused the request".into()));
                }
                let refused = |reason: &str| Err(FailureReason::Overflow(reason.to_owned()));
                match sub.offer_waiting(Item::Inline(Arc::new(env))).await {
                    Offer::Accepted => {}
                    Offer::Evicted(_) => {}
                    Offer::Closed(_) => return Err(FailureReason::Failed("the subscription closed".into())),
                    Offer::Dropped(_) | Offer::DeadLetter(_) | Offer::Rejected(_) | Offer::Full(_) => {
                        return refused(sub.policy().as_str())
                    }
                }
                match rx.await {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(e)) => Err(FailureReason::Failed(e.to_string())),
                    Err(_) => Err(FailureReason::Failed("dropped without a reply".into())),
                }
            })
        })
        .collect();
    if stale {
        topic.request_sweep();
    }
    targets
}
