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
//! **Pending:** the queue actor is being built on another branch. Once it
//! lands, the queue's handle implements `DurableSink` (enqueue, answering
//! once stored), and `Bus::topic(..).bind_queue(name)` resolves a queue by
//! name and calls [`TopicHandle::bind_durable`](super::TopicHandle::bind_durable).
//! Until then any type implementing the trait can be bound, which is how the
//! tests check the topic's side of the contract.

use std::future::Future;
use std::pin::Pin;

use crate::envelope::Envelope;

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
