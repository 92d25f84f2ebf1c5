//! Durable subscriptions: the seam where a topic hands messages to a queue.
//!
//! DESIGN §6.4: a durable subscription binds a topic to a named queue
//! (§6.3), so it inherits the queue's ack, retry and dead-lettering, and its
//! consumers get at-least-once delivery; a consumer that panics, or is not
//! running at all, loses nothing, because the messages wait in the queue.
//!
//! A topic only needs one thing from such a queue: take this message, and
//! say when it is safely stored. That is [`DurableSink`]. A topic forwards
//! every published message to each of its durable sinks *before* it fans out
//! to plain subscriptions, awaits their answers, and fails the publish
//! ([`PublishError::Durable`](super::PublishError::Durable)) when one
//! refuses, so a publisher that got `Ok` knows every durable subscriber will
//! see the message, and one that got an error may publish again (which is
//! what makes the delivery at-least-once rather than exactly-once: durable
//! sinks that accepted the first attempt get it twice). Sinks see every
//! message of the topic: filtering and wildcard routing are the plain
//! subscriptions' business.
//!
//! ## Binding a queue
//!
//! A [`QueueHandle`] is a durable sink: it enqueues the topic's envelope
//! (same id, headers, priority and deadline) and resolves once the queue
//! accepted it, so the queue's capacity and overflow policy apply to the
//! publisher: `reject` fails the publish ([`DurableError`] with the queue's
//! reason), `block` makes it wait for room, the dropping policies accept it
//! and count what they drop. Bind one with
//! [`TopicHandle::bind_queue`] (or `Bus::bind_queue(topic, queue)`, which
//! finds both by name):
//!
//! ```
//! use actorbus_actors::dlq::DlqSink;
//! use actorbus_actors::queue::{Queue, QueueConfig};
//! use actorbus_actors::topic::Topics;
//!
//! actix_rt::System::new().block_on(async {
//!     let orders = Queue::<String>::start(QueueConfig::named("orders"), DlqSink::in_memory()).unwrap();
//!     let topic = Topics::new().topic::<String>("orders.created").unwrap();
//!     topic.bind_queue(&orders);
//!     // Published before any consumer exists: it waits in the queue.
//!     assert_eq!(topic.publish("order-1".to_owned()).await.unwrap().durable, 1);
//!     let mut consumer = orders.consumer(1).await.unwrap();
//!     let delivery = consumer.recv().await.unwrap();
//!     assert_eq!(delivery.payload(), "order-1");
//!     delivery.ack();
//! });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::TopicHandle;
use crate::envelope::Envelope;
use crate::queue::{QueueHandle, QueueMessage};

/// A durable sink refused a message (its queue is full under `reject`, its
/// storage failed, it is shutting down, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("durable subscription `{sink}` refused the message: {reason}")]
pub struct DurableError {
    /// The sink's name (the bound queue).
    pub sink: String,
    /// Why.
    pub reason: String,
}

/// The future a sink returns: resolves once the message is safely stored.
pub type DurableFuture = Pin<Box<dyn Future<Output = Result<(), DurableError>> + Send>>;

/// Something that stores a topic's messages for a durable subscriber,
/// normally a named queue.
pub trait DurableSink<T>: Send + Sync + 'static {
    /// The sink's name, for errors and metrics (the queue's name).
    fn name(&self) -> &str;

    /// Stores one message; resolves once it is stored (for a persistent
    /// queue: committed), or with an error when it was not.
    fn forward(&self, envelope: Envelope<T>) -> DurableFuture;
}

impl<T: QueueMessage> DurableSink<T> for QueueHandle<T> {
    fn name(&self) -> &str {
        QueueHandle::name(self)
    }

    fn forward(&self, envelope: Envelope<T>) -> DurableFuture {
        let queue = self.clone();
        Box::pin(async move {
            queue
                .send_envelope(envelope)
                .await
                .map(|_| ())
                .map_err(|e| DurableError { sink: queue.name().to_owned(), reason: e.to_string() })
        })
    }
}

impl<T: QueueMessage + Sync> TopicHandle<T> {
    /// Binds `queue` as a durable subscription: from now on every message
    /// published here is enqueued there before the publish returns, and the
    /// queue's consumers get it with ack, retry and dead-lettering. False
    /// (and nothing changes) when a sink of that name is bound already.
    pub fn bind_queue(&self, queue: &QueueHandle<T>) -> bool {
        if self.routes().durable.iter().any(|d| d.name() == queue.name()) {
            return false;
        }
        self.bind_durable(Arc::new(queue.clone()));
        true
    }
}
