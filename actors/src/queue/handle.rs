//! The sending side of a queue, its consumers and their deliveries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use super::QueueError;
use crate::backpressure::OverflowPolicy;
use crate::envelope::{Envelope, MessageId};
use crate::error::FailureReason;
use crate::request_reply::inherit_context;

/// What a handle sends to the queue actor.
pub(crate) enum Cmd<T> {
    /// A message that holds a capacity permit.
    Enqueue(Envelope<T>),
    /// A message that found the queue full (policy `drop_oldest` or
    /// `dead_letter`): the actor applies the policy.
    Overflow(Envelope<T>),
    /// A new consumer.
    Subscribe { id: u64, tx: mpsc::Sender<Delivery<T>>, prefetch: usize },
}

/// How a delivery (or a consumer) ends, sent to the queue actor.
#[derive(Debug)]
pub(crate) enum Settle {
    Ack(u64),
    Nack {
        receipt: u64,
        reason: FailureReason,
        delay: Option<Duration>,
    },
    Reject {
        receipt: u64,
        reason: FailureReason,
    },
    Expired(u64),
    /// Never handled (still buffered in a consumer that went away): back to
    /// the front, not counted as an attempt.
    Release(u64),
    /// The consumer takes nothing more (what it holds is still delivered).
    Close(u64),
}

/// Counters and sizes of one queue, readable without asking the actor.
#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub(crate) enqueued: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) nacked: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) depth: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) pending_dead_letters: AtomicU64,
}

/// A snapshot of a queue's counters (the same figures as its metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages accepted into the queue.
    pub enqueued: u64,
    /// Deliveries made (first deliveries and redeliveries).
    pub delivered: u64,
    /// Messages acked.
    pub acked: u64,
    /// Deliveries nacked by consumers (panics in a pool included).
    pub nacked: u64,
    /// Failures that led to another delivery.
    pub redelivered: u64,
    /// Deliveries that passed their visibility timeout.
    pub timeouts: u64,
    /// Messages whose deadline passed before a handler got them.
    pub expired: u64,
    /// Messages stored in the DLQ (any reason).
    pub dead_lettered: u64,
    /// Messages dropped by `drop_oldest` or `drop_newest`.
    pub dropped: u64,
    /// Sends refused by `reject`.
    pub rejected: u64,
    /// Settles that came after their delivery timed out (ignored).
    pub stale_settles: u64,
    /// Messages waiting (ready or delayed for a retry).
    pub depth: u64,
    /// Deliveries not settled yet.
    pub in_flight: u64,
    /// Messages on their way to the DLQ.
    pub pending_dead_letters: u64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> QueueStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueStats {
            enqueued: g(&self.enqueued),
            delivered: g(&self.delivered),
            acked: g(&self.acked),
            nacked: g(&self.nacked),
            redelivered: g(&self.redelivered),
            timeouts: g(&self.timeouts),
            expired: g(&self.expired),
            dead_lettered: g(&self.dead_lettered),
            dropped: g(&self.dropped),
            rejected: g(&self.rejected),
            stale_settles: g(&self.stale),
            depth: g(&self.depth),
            in_flight: g(&self.in_flight),
            pending_dead_letters: g(&self.pending_dead_letters),
        }
    }
}

/// What every handle of one queue shares.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) policy: OverflowPolicy,
    /// One permit per free place: taken by a send, given back when the
    /// message is acked, dropped or stored in the DLQ.
    pub(crate) permits: Semaphore,
    pub(crate) settle: mpsc::UnboundedSender<Settle>,
    pub(crate) next_consumer: AtomicU64,
    pub(crate) visibility_timeout: Duration,
    pub(crate) stats: Stats,
    pub(crate) rejected: metrics::Counter,
    pub(crate) dropped_newest: metrics::Counter,
}

/// The sending side of a queue: cheap to clone, usable from any arbiter.
pub struct QueueHandle<T> {
    pub(crate) tx: mpsc::Sender<Cmd<T>>,
    pub(crate) shared: Arc<Shared>,
}

impl<T> Clone for QueueHandle<T> {
    fn clone(&self) -> Self {
        QueueHandle { tx: self.tx.clone(), shared: Arc::clone(&self.shared) }
    }
}

impl<T> std::fmt::Debug for QueueHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandle").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

impl<T: Send + 'static> QueueHandle<T> {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Enqueues `payload` in a new envelope (joining the conversation of the
    /// handler that sends it, if any) and returns the message id.
    pub async fn send(&self, payload: T) -> Result<MessageId, QueueError> {
        let mut env = Envelope::new(payload);
        inherit_context(&mut env);
        self.send_envelope(env).await
    }

    /// Enqueues a prepared envelope (priority, deadline, headers).
    ///
    /// A full queue applies its overflow policy: `block` waits for room,
    /// `reject` returns [`QueueError::Full`], the others accept the send
    /// and drop or dead-letter a message (the new one or, for `drop_oldest`,
    /// the oldest), counting it.
    ///
    /// Cancel-safe: dropping the future before it resolves (a timeout
    /// around it) leaves the message unsent and the queue's capacity as it
    /// was, so a `block` send can be bounded with `tokio::time::timeout`.
    pub async fn send_envelope(&self, envelope: Envelope<T>) -> Result<MessageId, QueueError> {
        let id = envelope.id;
        let shared = &self.shared;
        // The permit is held, not forgotten, until the command is in the
        // channel: a caller that gives up waiting (a timeout around this
        // future, an HTTP client that went away) gives the place back instead
        // of leaking it. The actor gives it back once the message leaves.
        let (cmd, permit) = if shared.policy == OverflowPolicy::Block {
            match shared.permits.acquire().await {
                Ok(p) => (Cmd::Enqueue(envelope), Some(p)),
                Err(_) => return Err(self.closed()),
            }
        } else {
            match shared.permits.try_acquire() {
                Ok(p) => (Cmd::Enqueue(envelope), Some(p)),
                Err(tokio::sync::TryAcquireError::Closed) => return Err(self.closed()),
                Err(tokio::sync::TryAcquireError::NoPermits) => match shared.policy {
                    OverflowPolicy::Reject | OverflowPolicy::Block => {
                        shared.rejected.increment(1);
                        shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        return Err(QueueError::Full(shared.name.to_string()));
                    }
                    OverflowPolicy::DropNewest => {
                        shared.dropped_newest.increment(1);
                        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(queue = %shared.name, %id, "queue full: message dropped (drop_newest)");
                        return Ok(id);
                    }
                    OverflowPolicy::DropOldest | OverflowPolicy::DeadLetter => (Cmd::Overflow(envelope), None),
                },
            }
        };
        if self.tx.send(cmd).await.is_err() {
            return Err(self.closed());
        }
        if let Some(permit) = permit {
            permit.forget();
        }
        Ok(id)
    }

    fn closed(&self) -> QueueError {
        QueueError::Closed(self.shared.name.to_string())
    }

    /// A new consumer that holds at most `prefetch` unsettled deliveries
    /// (at least 1).
    pub async fn consumer(&self, prefetch: usize) -> Result<Consumer<T>, QueueError> {
        let prefetch = prefetch.max(1);
        let id = self.shared.next_consumer.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(prefetch);
        self.tx.send(Cmd::Subscribe { id, tx, prefetch }).await.map_err(|_| self.closed())?;
        Ok(Consumer { id, rx, settle: self.shared.settle.clone(), closed: false })
    }

    /// The queue's counters and sizes.
    pub fn stats(&self) -> QueueStats {
        self.shared.stats.snapshot()
    }

    /// How long a delivery may stay unsettled before the queue delivers it
    /// again ([`QueueConfig::visibility_timeout`](super::QueueConfig::visibility_timeout)).
    pub fn visibility_timeout(&self) -> Duration {
        self.shared.visibility_timeout
    }

    /// What the queue does when it is full.
    pub fn overflow(&self) -> OverflowPolicy {
        self.shared.policy
    }

    /// Messages waiting (ready or delayed).
    pub fn depth(&self) -> u64 {
        self.shared.stats.depth.load(Ordering::Relaxed)
    }

    /// Deliveries not settled yet.
    pub fn in_flight(&self) -> u64 {
        self.shared.stats.in_flight.load(Ordering::Relaxed)
    }
}

/// Receives deliveries from one queue, at most `prefetch` unsettled at a
/// time. Dropping it: the queue sends it nothing more, and deliveries it had
/// buffered but not returned go back to the queue without counting an
/// attempt (deliveries already returned settle through their own drop).
pub struct Consumer<T> {
    id: u64,
    rx: mpsc::Receiver<Delivery<T>>,
    settle: mpsc::UnboundedSender<Settle>,
    closed: bool,
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<T> Consumer<T> {
    /// The next delivery; `None` once the consumer is closed and drained
    /// (or the queue is gone). Expired deliveries are dead-lettered here,
    /// never returned.
    pub async fn recv(&mut self) -> Option<Delivery<T>> {
        loop {
            let d = self.rx.recv().await?;
            if let Some(d) = Self::fresh(d) {
                return Some(d);
            }
        }
    }

    /// A delivery if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery<T>> {
        loop {
            let d = self.rx.try_recv().ok()?;
            if let Some(d) = Self::fresh(d) {
                return Some(d);
            }
        }
    }

    fn fresh(mut d: Delivery<T>) -> Option<Delivery<T>> {
        if d.envelope.deadline.is_some() && d.envelope.is_expired() {
            d.settler.send(Settle::Expired);
            return None;
        }
        Some(d)
    }

    /// Stops taking new deliveries; those already sent to this consumer are
    /// still returned by [`recv`](Self::recv), which then answers `None`.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let _ = self.settle.send(Settle::Close(self.id));
        }
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        // The queue stops sending to this consumer; deliveries still
        // buffered were never seen by a handler and go back as they were.
        self.close();
        while let Ok(mut d) = self.rx.try_recv() {
            d.settler.send(Settle::Release);
        }
    }
}

/// Settles one delivery: what a [`Delivery`] does, kept apart from the
/// payload once [`Delivery::into_parts`] split them.
///
/// Dropped without being used, it gives the delivery back as a failed attempt
/// (reason `failed: delivery dropped without ack`), so a consumer that loses
/// a delivery cannot make a message vanish.
#[derive(Debug)]
pub struct Settler {
    receipt: u64,
    tx: mpsc::UnboundedSender<Settle>,
    done: bool,
}

impl Settler {
    fn send(&mut self, f: impl FnOnce(u64) -> Settle) {
        if !self.done {
            self.done = true;
            // A queue that is gone needs no answer.
            let _ = self.tx.send(f(self.receipt));
        }
    }

    /// Disarms it (a delivery that never reached a consumer).
    pub(crate) fn disarm(&mut self) {
        self.done = true;
    }

    /// The delivery's receipt: unique per delivery of a queue.
    pub fn receipt(&self) -> u64 {
        self.receipt
    }

    /// Done: the message leaves the queue.
    pub fn ack(mut self) {
        self.send(Settle::Ack);
    }

    /// Failed: retried by the queue's retry policy, dead-lettered after
    /// `max_deliveries`.
    pub fn nack(self) {
        self.nack_with(FailureReason::Failed("nacked".into()));
    }

    /// Failed for `reason` (recorded in the message's history).
    pub fn nack_with(mut self, reason: FailureReason) {
        self.send(|receipt| Settle::Nack { receipt, reason, delay: None });
    }

    /// Failed: redeliver after `delay` (instead of the retry policy's).
    pub fn retry_after(mut self, delay: Duration) {
        self.send(|receipt| Settle::Nack {
            receipt,
            reason: FailureReason::Failed("nacked".into()),
            delay: Some(delay),
        });
    }

    /// Will never work: dead-letter it now with reason `failed: <reason>`.
    pub fn reject(mut self, reason: impl Into<String>) {
        let reason = FailureReason::Failed(reason.into());
        self.send(|receipt| Settle::Reject { receipt, reason });
    }
}

impl Drop for Settler {
    fn drop(&mut self) {
        self.send(|receipt| Settle::Nack {
            receipt,
            reason: FailureReason::Failed("delivery dropped without ack".into()),
            delay: None,
        });
    }
}

/// A message delivered to a consumer, to be settled once: [`ack`](Self::ack),
/// [`nack`](Self::nack), [`retry_after`](Self::retry_after) or
/// [`reject`](Self::reject). Dropping it unsettled counts as a failed
/// attempt.
#[derive(Debug)]
pub struct Delivery<T> {
    envelope: Envelope<T>,
    settler: Settler,
}

impl<T> Delivery<T> {
    pub(crate) fn new(envelope: Envelope<T>, receipt: u64, tx: mpsc::UnboundedSender<Settle>) -> Self {
        Delivery { envelope, settler: Settler { receipt, tx, done: false } }
    }

    pub(crate) fn disarm(mut self) -> Envelope<T> {
        self.settler.disarm();
        self.envelope
    }

    /// The envelope (its `attempt` is this delivery's attempt).
    pub fn envelope(&self) -> &Envelope<T> {
        &self.envelope
    }

    /// The message.
    pub fn payload(&self) -> &T {
        &self.envelope.payload
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.envelope.id
    }

    /// Delivery attempt, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt
    }

    /// The delivery's receipt.
    pub fn receipt(&self) -> u64 {
        self.settler.receipt
    }

    /// The envelope and the settler, apart (to move the payload into a
    /// handler and settle after).
    pub fn into_parts(self) -> (Envelope<T>, Settler) {
        (self.envelope, self.settler)
    }

    /// Done: the message leaves the queue.
    pub fn ack(self) {
        self.settler.ack();
    }

    /// Failed: retried by the queue's retry policy.
    pub fn nack(self) {
        self.settler.nack();
    }

    /// Failed for `reason`.
    pub fn nack_with(self, reason: FailureReason) {
        self.settler.nack_with(reason);
    }

    /// Failed: redeliver after `delay`.
    pub fn retry_after(self, delay: Duration) {
        self.settler.retry_after(delay);
    }

    /// Will never work: dead-letter it now.
    pub fn reject(self, reason: impl Into<String>) {
        self.settler.reject(reason);
    }
}
