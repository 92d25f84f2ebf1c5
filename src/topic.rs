//! Publish-subscribe on the bus: topics by name, subscriptions by pattern.

use std::fmt;
use std::sync::Arc;

use actix::Recipient;
use actorbus_actors::backpressure::OverflowPolicy;
use actorbus_actors::dead_letter::SharedHook;
use actorbus_actors::envelope::Envelope;
use actorbus_actors::queue::QueueMessage;
use actorbus_actors::topic::{
    Published, Subscription, SubscriptionConfig, SubscriptionId, TopicConfig, TopicError, TopicHandle,
};

use serde::Serialize;

use crate::bus::{Bus, BusError};

impl Bus {
    /// The topic `name` (a subject such as `orders.eu.created`), created
    /// with the default configuration if missing (see
    /// [`create_topic`](Self::create_topic)).
    ///
    /// ```
    /// use actorbus::{Bus, OverflowPolicy};
    ///
    /// actix::System::new().block_on(async {
    ///     let bus = Bus::builder().build().unwrap();
    ///     let mut eu = bus.subscribe::<String>("orders.eu.*").overflow(OverflowPolicy::DropOldest).start().unwrap();
    ///     let created = bus.topic::<String>("orders.eu.created").unwrap();
    ///     created.publish("order-1".to_owned()).await.unwrap();
    ///     assert_eq!(eu.next().await.unwrap().payload, "order-1");
    /// });
    /// ```
    pub fn topic<T: Clone + Serialize + Send + Sync + 'static>(
        &self,
        name: &str,
    ) -> Result<TopicHandle<T>, TopicError> {
        match self.topics().get(name) {
            Err(TopicError::Unknown(_)) => match self.create_topic(name, TopicConfig::new()) {
                Err(TopicError::Exists(_)) => self.topics().get(name),
                made => made,
            },
            found => found,
        }
    }

    /// Creates the topic `name` with `config` (claim check, dead letter
    /// hook); an error when it exists. Messages the topic gives up on go to
    /// the bus's DLQ (source `topic/<name>`) unless `config` names another
    /// hook.
    pub fn create_topic<T: Clone + Serialize + Send + Sync + 'static>(
        &self,
        name: &str,
        config: TopicConfig<T>,
    ) -> Result<TopicHandle<T>, TopicError> {
        let dlq: SharedHook = Arc::new(self.dlq().clone());
        self.topics().create(name, config.dead_letter_or(dlq))
    }

    /// Binds the queue `queue` (started with [`Bus::queue`], payload type
    /// `T`) to the topic `topic` (created if missing) as a durable
    /// subscription: every message published to the topic is enqueued
    /// before the publish returns, and waits there for the queue's
    /// consumers, with ack, retry and dead-lettering (DESIGN §6.4). Binding
    /// the same queue twice changes nothing.
    ///
    /// ```
    /// use actorbus::Bus;
    ///
    /// actix::System::new().block_on(async {
    ///     let bus = Bus::builder().build().unwrap();
    ///     let audit = bus.queue::<String>("audit").start().unwrap();
    ///     let topic = bus.bind_queue::<String>("orders.created", "audit").unwrap();
    ///     // Published before any consumer runs: it waits in the queue.
    ///     topic.publish("order-1".to_owned()).await.unwrap();
    ///     let mut consumer = audit.consumer(1).await.unwrap();
    ///     let delivery = consumer.recv().await.unwrap();
    ///     assert_eq!(delivery.payload(), "order-1");
    ///     delivery.ack();
    /// });
    /// ```
    pub fn bind_queue<T: QueueMessage + Sync>(&self, topic: &str, queue: &str) -> Result<TopicHandle<T>, BusError> {
        let handle = self
            .queue_handle::<T>(queue)
            .ok_or_else(|| BusError::Invalid(format!("no queue `{queue}` carrying this payload type")))?;
        let topic = self.topic::<T>(topic).map_err(|e| BusError::Invalid(e.to_string()))?;
        topic.bind_queue(&handle);
        Ok(topic)
    }

    /// Prepares a subscription to every topic of payload type `T` whose name
    /// matches `pattern` (`*` one token, `>` the rest), now and later.
    pub fn subscribe<T: Clone + Send + Sync + 'static>(&self, pattern: &str) -> SubscribeBuilder<T> {
        SubscribeBuilder { bus: self.clone(), pattern: pattern.to_owned(), config: SubscriptionConfig::default() }
    }
}

/// A subscription being prepared; see [`Bus::subscribe`].
#[must_use = "a subscription starts only with `start` or `recipient`"]
pub struct SubscribeBuilder<T> {
    bus: Bus,
    pattern: String,
    config: SubscriptionConfig<T>,
}

impl<T> fmt::Debug for SubscribeBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeBuilder").field("pattern", &self.pattern).field("config", &self.config).finish()
    }
}

impl<T: Clone + Send + Sync + 'static> SubscribeBuilder<T> {
    /// Messages buffered for this subscriber, at most (default 1024).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.config = self.config.capacity(capacity);
        self
    }

    /// What a full buffer does (default `block`: publishers wait).
    pub fn overflow(mut self, overflow: OverflowPolicy) -> Self {
        self.config = self.config.overflow(overflow);
        self
    }

    /// Only messages `filter` accepts are buffered.
    pub fn filter(mut self, filter: impl Fn(&Envelope<T>) -> bool + Send + Sync + 'static) -> Self {
        self.config = self.config.filter(filter);
        self
    }

    /// Starts the subscription; read it with `next().await`, drop it to
    /// unsubscribe.
    pub fn start(self) -> Result<Subscription<T>, TopicError> {
        self.bus.topics().subscribe(&self.pattern, self.config)
    }

    /// Delivers to an actor, one [`Published`] message at a time; the
    /// subscription ends when the actor stops.
    pub fn recipient(self, recipient: Recipient<Published<T>>) -> Result<SubscriptionId, TopicError> {
        self.bus.topics().subscribe_recipient(&self.pattern, recipient, self.config)
    }
}
