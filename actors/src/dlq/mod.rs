//! The dead letter queue (DESIGN §6.7): where messages go when the runtime
//! gives up on them, so that nothing is lost silently.
//!
//! Every pattern that owns messages sends the ones it cannot deliver here,
//! with a reason: a queue delivery that failed `max_deliveries` times, a
//! message whose deadline passed, an overflow under the `dead_letter` policy,
//! a saga compensation that keeps failing, and so on. Each entry is a
//! [`DeadLetter`]: the original envelope (serialized to JSON, so one sink
//! takes every payload type), where it came from ([`DlqSource`]: pattern and
//! name), why ([`FailureReason`]), how many attempts were made, the history
//! of failures ([`FailureRecord`]) and when the first and last failures
//! happened.
//!
//! ## Pieces
//!
//! - [`DlqStore`]: the blocking storage trait, with [`MemoryDlqStore`] (tests,
//!   buses without a data directory) and [`SqliteDlqStore`] (`dlq.sqlite3` in
//!   the [`DataDir`](crate::store::DataDir), durable).
//! - [`DlqSink`]: the actor in front of the store. Dead letters that arrive
//!   while a write is in progress are written together in the next
//!   transaction (group commit, as in the event store), so a burst of
//!   overflow dead letters costs one fsync per batch, not per message.
//! - [`DlqHandle`]: the cloneable handle every pattern and operator uses:
//!   [`dead_letter`](DlqHandle::dead_letter), [`list`](DlqHandle::list),
//!   [`get`](DlqHandle::get), [`purge`](DlqHandle::purge),
//!   [`redrive`](DlqHandle::redrive), [`len`](DlqHandle::len).
//! - [`RedriveTarget`]: how a dead letter goes back. A pattern registers one
//!   per source (`("queue", "orders")`) with
//!   [`DlqHandle::register_redrive`]; redrive then sends each entry to its own
//!   source, or to another registered source ([`RedriveTo::Target`]). A
//!   redriven entry is removed from the DLQ only once its target accepted it.
//!
//! ## Semantics chosen where the design is silent
//!
//! - An entry's [`id`](DeadLetter::id) is its own (a fresh, time-ordered id),
//!   so the same message dead-lettered twice (after a redrive, say) gives two
//!   entries; [`message_id`](DeadLetter::message_id) is the original message
//!   id when the serialized envelope has one. Lists are ordered by entry id,
//!   that is by the time the entry was made.
//! - [`dead_letter`](DlqHandle::dead_letter) answers once the entry is stored
//!   (on SQLite: committed and fsynced). Callers that own a capacity (a queue)
//!   release it only then, so a slow DLQ slows its sources instead of growing.
//! - Redrive is at-least-once: an entry is deleted after its target accepted
//!   it; a crash in between redrives it again. A rate limit spaces redrives
//!   evenly (`per_second`), like SQS's redrive velocity.
//! - A dead letter whose payload is in the claim-check store keeps only the
//!   ticket (see [`TICKET_FIELD`](crate::claim_check::TICKET_FIELD)). With the
//!   store [attached](DlqHandle::attach_claim_check) (a bus does it),
//!   [`purge`](DlqHandle::purge) deletes those payloads too; a redrive hands
//!   the ticket back to the queue, so the payload is never copied.
//! - [`MemoryDlqStore`] holds at most a configured number of entries (default
//!   1,000,000); past it the oldest entry is discarded and counted
//!   (`actorbus_dlq_evicted_total`). The SQLite store keeps everything until
//!   purged.
//!
//! ```
//! use actorbus_actors::dlq::{DeadLetter, DlqFilter, DlqSink, DlqSource, FailureRecord};
//! use actorbus_actors::envelope::{Envelope, Timestamp};
//! use actorbus_actors::error::FailureReason;
//!
//! actix_rt::System::new().block_on(async {
//!     let dlq = DlqSink::in_memory();
//!     let order = Envelope::new("order-42");
//!     let history = vec![FailureRecord { at: Timestamp::now(), attempt: 1, reason: "panic: boom".into() }];
//!     let letter = DeadLetter::new(DlqSource::queue("orders"), FailureReason::MaxDeliveries, &order, history);
//!     assert_eq!(letter.message_id, Some(order.id));
//!     dlq.dead_letter(letter).await.unwrap();
//!
//!     let found = dlq.list(DlqFilter::default().source("queue", "orders").reason("max_deliveries")).await.unwrap();
//!     assert_eq!(found.len(), 1);
//!     assert_eq!(found[0].envelope["payload"], "order-42");
//!     assert_eq!(dlq.purge(DlqFilter::default()).await.unwrap(), 1);
//!     assert_eq!(dlq.len().await.unwrap(), 0);
//! });
//! ```

mod sink;
mod storage;

pub use sink::{DlqHandle, DlqSink, DlqSinkConfig, DlqWatcher};
pub use storage::{DlqStore, MemoryDlqStore, SqliteDlqStore, DLQ_MIGRATIONS};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::{MessageId, Timestamp};
use crate::error::FailureReason;
use crate::store::StoreError;

/// Where a dead letter came from: the pattern (`queue`, `topic`, `saga`,
/// `job`, …) and the name of the queue, topic, saga or job kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DlqSource {
    /// The pattern: `queue`, `topic`, `saga`, `job`, `scatter`, …
    pub pattern: String,
    /// The queue, topic, saga or job kind.
    pub name: String,
}

impl DlqSource {
    /// A source.
    pub fn new(pattern: impl Into<String>, name: impl Into<String>) -> Self {
        DlqSource { pattern: pattern.into(), name: name.into() }
    }

    /// The queue `name`.
    pub fn queue(name: impl Into<String>) -> Self {
        Self::new("queue", name)
    }
}

impl fmt::Display for DlqSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.pattern, self.name)
    }
}

/// One failed attempt in a dead letter's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// When it failed.
    pub at: Timestamp,
    /// The delivery attempt (from 1).
    pub attempt: u32,
    /// Why, in the `Display` form of a [`FailureReason`] (`panic: boom`,
    /// `timeout`, …).
    pub reason: String,
}

impl FailureRecord {
    /// A failure of `attempt` now.
    pub fn now(attempt: u32, reason: &FailureReason) -> Self {
        FailureRecord { at: Timestamp::now(), attempt, reason: reason.to_string() }
    }
}

/// An entry of the dead letter queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The entry's own id (time-ordered).
    pub id: MessageId,
    /// The original message's id, when the envelope has one.
    pub message_id: Option<MessageId>,
    /// Where it came from.
    pub source: DlqSource,
    /// Why it was dead-lettered.
    pub reason: FailureReason,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Every recorded failure, oldest first.
    pub errors: Vec<FailureRecord>,
    /// The first failure (the entry's creation when there was none).
    pub first_failed_at: Timestamp,
    /// The last failure (the entry's creation when there was none).
    pub last_failed_at: Timestamp,
    /// The original envelope, serialized.
    pub envelope: Value,
}

impl DeadLetter {
    /// A dead letter for `envelope` (usually an
    /// [`Envelope`](crate::envelope::Envelope), but anything serializable
    /// works: a saga's state, a job's input).
    ///
    /// `attempts` is the highest attempt in `errors` (0 without errors; set
    /// it with [`with_attempts`](Self::with_attempts)); the first and last
    /// failure times come from `errors`, or are now. An envelope that cannot
    /// be serialized is kept as `{"unserializable": "<error>"}` rather than
    /// lost.
    pub fn new<E: Serialize + ?Sized>(
        source: DlqSource,
        reason: FailureReason,
        envelope: &E,
        errors: Vec<FailureRecord>,
    ) -> Self {
        let envelope =
            serde_json::to_value(envelope).unwrap_or_else(|e| serde_json::json!({ "unserializable": e.to_string() }));
        let message_id = envelope.get("id").and_then(|v| serde_json::from_value::<MessageId>(v.clone()).ok());
        let now = Timestamp::now();
        let attempts = errors.iter().map(|e| e.attempt).max().unwrap_or(0);
        DeadLetter {
            id: MessageId::at(now),
            message_id,
            source,
            reason,
            attempts,
            first_failed_at: errors.first().map_or(now, |e| e.at),
            last_failed_at: errors.last().map_or(now, |e| e.at),
            errors,
            envelope,
        }
    }

    /// Sets the attempt count.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }
}

/// Which dead letters a list, purge or redrive applies to. Every set field
/// must match; the default matches everything.
///
/// ```
/// use actorbus_actors::dlq::DlqFilter;
/// use std::time::Duration;
/// let recent_panics = DlqFilter::default().source("queue", "orders").reason("panic").within(Duration::from_secs(3600));
/// # let _ = recent_panics;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqFilter {
    /// Source pattern (`queue`, …).
    pub pattern: Option<String>,
    /// Source name.
    pub name: Option<String>,
    /// Reason code ([`FailureReason::code`]: `panic`, `expired`, …).
    pub reason: Option<String>,
    /// Last failure at or after this time.
    pub from: Option<Timestamp>,
    /// Last failure before this time.
    pub to: Option<Timestamp>,
    /// Only entries with an id greater than this (to page through a list).
    pub after: Option<MessageId>,
    /// At most this many entries (lists only; purge and redrive take all
    /// matches).
    pub limit: Option<usize>,
}

impl DlqFilter {
    /// Only entries from this source.
    pub fn source(mut self, pattern: impl Into<String>, name: impl Into<String>) -> Self {
        self.pattern = Some(pattern.into());
        self.name = Some(name.into());
        self
    }

    /// Only entries from this pattern.
    pub fn pattern(mut self, pattern: impl Into<String>) -> Self {
        self.pattern = Some(pattern.into());
        self
    }

    /// Only entries with this reason code.
    pub fn reason(mut self, code: impl Into<String>) -> Self {
        self.reason = Some(code.into());
        self
    }

    /// Only entries whose last failure is in `[from, to)`.
    pub fn between(mut self, from: Timestamp, to: Timestamp) -> Self {
        self.from = Some(from);
        self.to = Some(to);
        self
    }

    /// Only entries whose last failure is at most `d` ago.
    pub fn within(mut self, d: Duration) -> Self {
        let now = Timestamp::now();
        self.from = Some(Timestamp(now.0.saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))));
        self
    }

    /// Entries after this id (paging).
    pub fn after(mut self, id: MessageId) -> Self {
        self.after = Some(id);
        self
    }

    /// At most `n` entries.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// True when `letter` matches (ignoring `limit`).
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.pattern.as_ref().is_none_or(|p| *p == letter.source.pattern)
            && self.name.as_ref().is_none_or(|n| *n == letter.source.name)
            && self.reason.as_ref().is_none_or(|r| r == letter.reason.code())
            && self.from.is_none_or(|f| letter.last_failed_at >= f)
            && self.to.is_none_or(|t| letter.last_failed_at < t)
            && self.after.is_none_or(|a| letter.id > a)
    }
}

/// What a purge or redrive applies to: one entry or every entry a filter
/// matches (`DlqFilter::default()`: all of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DlqSelector {
    /// The entry with this id.
    One(MessageId),
    /// Every entry the filter matches.
    Matching(DlqFilter),
}

impl DlqSelector {
    /// Every entry.
    pub fn all() -> Self {
        DlqSelector::Matching(DlqFilter::default())
    }
}

impl From<MessageId> for DlqSelector {
    fn from(id: MessageId) -> Self {
        DlqSelector::One(id)
    }
}

impl From<DlqFilter> for DlqSelector {
    fn from(filter: DlqFilter) -> Self {
        DlqSelector::Matching(filter)
    }
}

/// Where a redrive sends dead letters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RedriveTo {
    /// Each entry back to its own source.
    #[default]
    Source,
    /// Every entry to this registered target (another queue, say).
    Target(DlqSource),
}

/// How to redrive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedriveOptions {
    /// Where to.
    pub to: RedriveTo,
    /// At most this many entries per second (`None`: as fast as the targets
    /// take them).
    pub per_second: Option<u32>,
}

impl RedriveOptions {
    /// Back to each entry's source, unthrottled.
    pub fn to_source() -> Self {
        RedriveOptions::default()
    }

    /// To the registered target `target`, unthrottled.
    pub fn to_target(target: DlqSource) -> Self {
        RedriveOptions { to: RedriveTo::Target(target), per_second: None }
    }

    /// At most `n` entries per second.
    pub fn per_second(mut self, n: u32) -> Self {
        self.per_second = Some(n);
        self
    }
}

/// What a redrive did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Entries sent back and removed from the DLQ.
    pub redriven: Vec<MessageId>,
    /// Entries left in the DLQ, with why (no target, the target refused).
    pub failed: Vec<(MessageId, String)>,
}

/// A boxed future, as [`RedriveTarget::redrive`] returns.
pub type RedriveFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Somewhere dead letters can be sent back to: a queue registers one for
/// its own source. The target decodes the envelope and re-enqueues it;
/// `Err` (with why) leaves the entry in the DLQ.
///
/// Any `Fn(DeadLetter) -> RedriveFuture` closure is a target.
pub trait RedriveTarget: Send + Sync + 'static {
    /// Takes `letter` back.
    fn redrive(&self, letter: DeadLetter) -> RedriveFuture;
}

impl<F> RedriveTarget for F
where
    F: Fn(DeadLetter) -> RedriveFuture + Send + Sync + 'static,
{
    fn redrive(&self, letter: DeadLetter) -> RedriveFuture {
        self(letter)
    }
}

/// Why a DLQ operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DlqError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No entry has that id.
    #[error("no dead letter {0}")]
    NotFound(MessageId),
}
