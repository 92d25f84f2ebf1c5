//! Point-to-point queues (DESIGN §6.3), priority queues (§6.10) and the
//! partitioned mode that competing consumers use for per-key order (§6.11).
//!
//! A queue keeps its messages in a core (its state and rules, behind one
//! lock) that handles and consumers use directly; its [`Queue`] actor runs
//! what takes time or I/O: visibility timeouts, retries, expiry, dead
//! letters, durable writes. Producers [`send`](QueueHandle::send) through a
//! [`QueueHandle`]; consumers take [`Delivery`]s from a
//! [`Consumer`] and settle each one: [`ack`](Delivery::ack) (done, forget
//! it), [`nack`](Delivery::nack) (failed, try again by the retry policy),
//! [`retry_after`](Delivery::retry_after) (failed, try again after this
//! delay) or [`reject`](Delivery::reject) (never works: dead-letter it now).
//!
//! ## Life of a message
//!
//! ```text
//!  send ──► ready ──deliver──► in flight ──ack──► gone
//!            ▲  ▲                │ │ │
//!            │  └── immediate ◄──┘ │ └─ nack / visibility timeout / panic,
//!            │      retry          │    attempt = max_deliveries ──► DLQ `max_deliveries`
//!            └──── delayed ◄───────┘ backoff retry
//!  deadline passed anywhere but in a handler ──► DLQ `expired`
//! ```
//!
//! - **Sends.** A send is made when it is called, as actix's `Addr::send`
//!   is: with a place free (and nothing to write or check in first) the
//!   message is in the queue before its [`Sending`] future is polled. What
//!   has to wait waits in that future, and dropping it sends nothing.
//! - **Credit.** A consumer holds at most `prefetch` unsettled deliveries;
//!   settling one makes room for the next. A consumer takes deliveries when
//!   it asks (`recv` with nothing buffered): as many as its credit allows in
//!   one go, or its fair share of what waits when other consumers have
//!   credit too, and `recv` then returns them one by one. There is no hop
//!   through the queue's actor: sends, takes and settles work on the
//!   queue's state directly, under one lock. While a consumer has more
//!   deliveries buffered, its acks go to the queue together: once half its
//!   prefetch (at most 64) piled up, when it takes more or goes away, or at
//!   the queue's next tick, whichever is first (never after a visibility
//!   timeout that the tick then applies).
//! - **Visibility timeout.** A delivery not settled within
//!   [`QueueConfig::visibility_timeout`] counts as failed (`timeout`) and the
//!   message is delivered again with `attempt + 1`. A settle that arrives
//!   after that is stale and ignored (counted), so each message is acked or
//!   dead-lettered exactly once even when a handler is slow; handlers may
//!   still run more than once (at-least-once). The consumer keeps the
//!   credit of a timed-out delivery until it settles it, so a stuck consumer
//!   is not handed more work to time out in its buffer.
//! - **Retries.** The [`RetryPolicy`] gives the first `immediate` failures an
//!   immediate redelivery, then waits `initial × multiplier^n` (at most `max`,
//!   minus up to `jitter` of it at random). Redeliveries go to the front of
//!   the queue: FIFO holds apart from them. A failure with attempt
//!   `max_deliveries` dead-letters the message with reason `max_deliveries`
//!   and the history of every failure.
//! - **Expiry.** A message whose deadline passes is dead-lettered as
//!   `expired` wherever it waits (not only at the head), and a consumer never
//!   hands an expired delivery to its caller.
//! - **Capacity.** Ready, delayed, in-flight messages and those on their way
//!   to the DLQ count against `capacity`. When it is full the
//!   [`OverflowPolicy`] decides: `block` (the send waits), `reject`
//!   ([`QueueError::Full`]), `drop_newest` (the new message is dropped and
//!   counted), `drop_oldest` (the oldest ready message is dropped and
//!   counted), `dead_letter` (the new message goes to the DLQ with reason
//!   `overflow: dead_letter`). Dropping policies never touch
//!   messages in flight.
//!
//! ## Priority mode
//!
//! With [`QueueConfig::priority`], messages are delivered by
//! [`Priority`](crate::envelope::Priority) (9 first), FIFO within a level.
//! [`QueueConfig::aging`] lifts a waiting message one level per interval, so
//! a level-0 message is eventually delivered under a constant level-9 flood.
//! Redeliveries keep their priority. When full, `drop_oldest` and
//! `dead_letter` take the oldest message of the lowest level (or the new one
//! if its level is lower still): low priorities go first.
//!
//! ## Partitioned mode
//!
//! With [`QueueConfig::partition_header`], messages that carry that header are
//! delivered one at a time per header value, in order: the next message of a
//! key is delivered only once the previous one is acked or dead-lettered (a
//! failed one is retried first). Different keys are delivered in parallel, so
//! a consumer pool keeps per-key order across
//! its workers. Messages without the header are delivered as in a plain queue.
//!
//! ## Claim check
//!
//! With [`QueueConfig::claim_check`] (on the bus: `claim_check(threshold)`),
//! a payload whose encoded size is above the threshold is checked in to
//! the [`ClaimCheck`] store when it is sent, and the queue holds only the
//! ticket (about 100 bytes):
//!
//! - a [`Consumer`] claims the payload (verifying its SHA-256) before
//!   [`recv`](Consumer::recv) returns the delivery, so handlers see `T`;
//! - the ack releases the payload (the queue is its only holder);
//! - a claim that fails (ticket expired, payload missing, digest mismatch)
//!   dead-letters the message with reason `claim_check` and the consumer
//!   skips it ([`QueueStats::claim_failures`]);
//! - a message dead-lettered for any other reason keeps its ticket: the DLQ
//!   entry's payload is `{"$claim_check": <ticket>}`
//!   ([`TICKET_FIELD`](crate::claim_check::TICKET_FIELD)), never the bytes.
//!   Purging the entry deletes the payload (when the DLQ has the store
//!   [attached](crate::dlq::DlqHandle::attach_claim_check), as on a bus);
//!   redriving it puts the ticket back on a queue that has a claim check,
//!   without copying the payload;
//! - tickets not claimed by their expiry are deleted by the store's sweep.
//!
//! [`QueueStats::ticketed`] and [`QueueStats::ticketed_bytes`] say how many
//! messages the queue holds as tickets and how many payload bytes they keep
//! out of it.
//!
//! ## Durability
//!
//! A queue started with [`Queue::start_durable`] (on the bus:
//! `QueueBuilder::durable()`, which uses `queues.sqlite3` in the data
//! directory, one file for every durable queue of the bus) keeps its
//! messages in a [`QueueStore`]:
//!
//! - **Send.** [`send`](QueueHandle::send) resolves once the message is
//!   committed: on SQLite, in WAL mode with `synchronous = FULL`, it then
//!   survives a kill -9 or a power cut. Sends that arrive while a commit is
//!   running are written together in the next transaction (group commit: one
//!   fsync for all of them), on a blocking thread, never on the arbiter. A
//!   message is delivered only once committed.
//! - **Ack and dead letters.** An ack deletes the message's row; a dead
//!   letter deletes it once the DLQ has stored the entry, so a message is
//!   always in one of the two. Deletes are written lazily, with the next
//!   commit or at the next tick: one lost in a crash means one more
//!   delivery, which at-least-once allows. [`QueueHandle::flush`] waits until everything done
//!   so far is written (before a planned stop).
//! - **Attempts.** The delivery count is recorded when a delivery is handed
//!   to a consumer (its prefetch buffer included: a crash cannot tell whether
//!   a handler saw it), in a commit started at once, without delaying the
//!   delivery.
//!   At start, a message comes back with `attempt = deliveries + 1`, and one
//!   already delivered `max_deliveries` times (a poison message that crashed
//!   the process each time, say) is dead-lettered with reason
//!   `max_deliveries` instead of being delivered again. A crash may lose the
//!   count of deliveries made in the last few milliseconds.
//! - **Restart.** Starting the queue again under the same name loads its
//!   rows (a blocking read on the starting thread) in enqueue order; priority
//!   mode then orders them by level. Priority, deadline, headers (so the
//!   partition key), correlation and claim-check tickets round-trip; delayed
//!   retries are delivered at once. Rows found beyond the capacity are kept
//!   (the queue takes new sends once it is back under it).
//! - **Storage.** [`QueueStore`] is a small blocking trait (`load`, `commit`
//!   of a [`QueueBatch`] of inserts, delivery counts and deletes), with
//!   [`SqliteQueueStore`] and [`MemoryQueueStore`] (survives a queue restart,
//!   not the process); another backend implements the same three methods.
//! - **Encoding.** Stored and checked-in payloads are postcard when the
//!   type round-trips through it, JSON otherwise (`serde_json::Value`,
//!   `skip_serializing_if`, `flatten`, untagged enums); the queue's first
//!   message decides by trying, and a tag byte on every payload lets either
//!   be read back. A payload that does not decode (a type whose serde form
//!   depends on the value in a way the first message did not show, or that
//!   changed between releases) is dead-lettered with its bytes, not lost.
//!
//! ## Metrics
//!
//! Per queue (`name` label): depth and in-flight gauges; enqueued,
//! delivered, acked, nacked, redelivered, visibility timeouts, expired,
//! dead-lettered (by reason), dropped, rejected, stale-settle, claim-checked,
//! claim-failure and (durable) store-error counters;
//! time-in-queue and handler-latency histograms (sampled: at most a few
//! hundred samples per tick, so a queue at millions of messages a second
//! does not spend its time on them; every counter is exact).
//!
//! ```
//! use actorbus_actors::dlq::DlqSink;
//! use actorbus_actors::queue::{Queue, QueueConfig};
//!
//! actix_rt::System::new().block_on(async {
//!     let dlq = DlqSink::in_memory();
//!     let orders = Queue::<String>::start(QueueConfig::named("orders"), dlq.clone()).unwrap();
//!     let mut consumer = orders.consumer(10).await.unwrap();
//!     orders.send("order-1".to_owned()).await.unwrap();
//!     let delivery = consumer.recv().await.unwrap();
//!     assert_eq!((delivery.payload().as_str(), delivery.attempt()), ("order-1", 1));
//!     delivery.nack(); // try again
//!     let again = consumer.recv().await.unwrap();
//!     assert_eq!(again.attempt(), 2);
//!     again.ack();
//! });
//! ```

mod actor;
mod core;
mod handle;
mod ready;
mod store;

pub use actor::Queue;
pub use handle::{Consumer, Delivery, QueueHandle, QueueStats, Recv, Sending, Settler};
pub use store::{
    MemoryQueueStore, QueueBatch, QueueStore, SqliteQueueStore, StoredBody, StoredMessage, QUEUE_MIGRATIONS,
};

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backpressure::OverflowPolicy;
use crate::claim_check::{ClaimCheck, ClaimError};
use crate::store::StoreError;

/// What a queue can carry: cloned for each delivery (the queue keeps its copy
/// until the ack, to redeliver), serialized for the DLQ, deserialized on
/// redrive. Implemented for every type with those traits; give large
/// payloads a type that clones cheaply (shared bytes, say).
///
/// The queue drops its copy of a message (on the ack, on dead-lettering)
/// while it holds its own lock, so a message type's `Drop` must not send to,
/// or settle on, the queue that carried it: that would wait for the lock it
/// runs under.
pub trait QueueMessage: Clone + Serialize + DeserializeOwned + Send + Unpin + 'static {}

impl<T: Clone + Serialize + DeserializeOwned + Send + Unpin + 'static> QueueMessage for T {}

/// How a queue retries failed deliveries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Failures redelivered at once before backoff starts. Default 1.
    pub immediate: u32,
    /// The first backoff delay. Default 100 ms.
    pub initial: Duration,
    /// Growth per further failure. Default 2.
    pub multiplier: f64,
    /// The longest delay. Default 30 s.
    pub max: Duration,
    /// Up to this fraction of a delay is taken off at random, so that
    /// messages that failed together do not come back together. Default 0.2.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            immediate: 1,
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Every failure redelivered at once.
    pub const IMMEDIATE: RetryPolicy =
        RetryPolicy { immediate: u32::MAX, initial: Duration::ZERO, multiplier: 1.0, max: Duration::ZERO, jitter: 0.0 };

    /// Exponential backoff from `initial` to `max` after `immediate` immediate
    /// retries, doubling, with 20 % jitter.
    pub fn backoff(immediate: u32, initial: Duration, max: Duration) -> Self {
        RetryPolicy { immediate, initial, max, ..RetryPolicy::default() }
    }

    /// The delay before redelivering after failure number `failures` (from 1),
    /// with `random` in `[0, 1)` applying the jitter.
    pub fn delay(&self, failures: u32, random: f64) -> Duration {
        if failures <= self.immediate {
            return Duration::ZERO;
        }
        let n = failures - self.immediate - 1;
        let factor = self.multiplier.max(1.0).powi(i32::try_from(n.min(64)).unwrap_or(64));
        let base = self.initial.as_secs_f64() * factor;
        let capped = base.min(self.max.as_secs_f64());
        let jittered = capped * (1.0 - self.jitter.clamp(0.0, 1.0) * random.clamp(0.0, 1.0));
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max)
    }
}

/// How a queue behaves.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// The queue's name (metrics label, DLQ source `queue:<name>`).
    pub name: String,
    /// Messages held at most (ready, delayed, in flight). Default 100,000.
    pub capacity: usize,
    /// What a full queue does with one more. Default `block`.
    pub overflow: OverflowPolicy,
    /// Deliveries before a message is dead-lettered. Default 5.
    pub max_deliveries: u32,
    /// How long a delivery may stay unsettled. Default 30 s.
    pub visibility_timeout: Duration,
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// Deliver by priority. Default false.
    pub priority: bool,
    /// Priority mode: lift a waiting message one level per interval.
    pub aging: Option<Duration>,
    /// Deliver messages with the same value of this header one at a time,
    /// in order (not with `priority`).
    pub partition_header: Option<String>,
    /// Granularity of the queue's timers (visibility, delays, expiry).
    /// Default 10 ms.
    pub tick: Duration,
    /// Payloads above a size travel as claim-check tickets. Default none.
    pub claim_check: Option<QueueClaimCheck>,
}

/// A queue's claim check: payloads whose encoded size is above
/// `threshold_bytes` are checked in to `claims` on send; the queue holds the
/// ticket and consumers claim the payload before handing it out.
#[derive(Clone, Debug)]
pub struct QueueClaimCheck {
    /// Where payloads go.
    pub claims: ClaimCheck,
    /// Payloads larger than this (encoded) travel as tickets.
    pub threshold_bytes: usize,
    /// Tickets expire after this (default: the store's time to live). A
    /// message still queued at its ticket's expiry is dead-lettered with
    /// reason `claim_check` when it comes up.
    pub ttl: Option<Duration>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            name: "queue".into(),
            capacity: 100_000,
            overflow: OverflowPolicy::Block,
            max_deliveries: 5,
            visibility_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            priority: false,
            aging: None,
            partition_header: None,
            tick: Duration::from_millis(10),
            claim_check: None,
        }
    }
}

impl QueueConfig {
    /// The defaults with this name.
    pub fn named(name: impl Into<String>) -> Self {
        QueueConfig { name: name.into(), ..QueueConfig::default() }
    }

    /// Turns the claim check on: payloads whose encoded size is above
    /// `threshold_bytes` go to `claims` and the queue holds a ticket.
    pub fn with_claim_check(mut self, claims: ClaimCheck, threshold_bytes: usize) -> Self {
        self.claim_check = Some(QueueClaimCheck { claims, threshold_bytes, ttl: None });
        self
    }

    /// Tickets of this queue expire after `ttl` (with a claim check).
    pub fn with_claim_ttl(mut self, ttl: Duration) -> Self {
        if let Some(c) = self.claim_check.as_mut() {
            c.ttl = Some(ttl);
        }
        self
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), QueueError> {
        let bad = |m: String| Err(QueueError::Invalid(format!("queue `{}`: {m}", self.name)));
        if self.capacity == 0 {
            return bad("capacity must be at least 1".into());
        }
        if self.max_deliveries == 0 {
            return bad("max_deliveries must be at least 1".into());
        }
        if self.visibility_timeout.is_zero() || self.tick.is_zero() {
            return bad("visibility_timeout and tick must be positive".into());
        }
        if self.priority && self.partition_header.is_some() {
            return bad("a queue is either prioritised or partitioned, not both".into());
        }
        if self.aging.is_some_and(|a| a.is_zero()) {
            return bad("aging interval must be positive".into());
        }
        Ok(())
    }
}

/// Why a queue operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue is full and its policy is `reject`.
    #[error("queue `{0}` is full")]
    Full(String),
    /// The queue actor is gone.
    #[error("queue `{0}` is closed")]
    Closed(String),
    /// A setting is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The payload could not be encoded (claim check, durable queue).
    #[error("payload encoding: {0}")]
    Codec(String),
    /// The claim-check store refused the payload; nothing was enqueued.
    #[error(transparent)]
    ClaimCheck(#[from] ClaimError),
    /// A durable queue could not commit the message; nothing was enqueued.
    #[error("queue storage: {0}")]
    Storage(#[from] StoreError),
}
