//! What an event log backend stores and the traits it implements.
//!
//! An event log is a sequence of immutable events. Each event belongs to one
//! *stream* (an order, an account) where it has a *version* (0, 1, 2, … with
//! no gaps), and has a *global position* in the log of all streams, `$all`
//! (0, 1, 2, … with no gaps, in commit order).
//!
//! A backend implements three small traits:
//!
//! - [`EventLog`] opens handles on the log: one writer, any number of readers.
//! - [`EventWriter`] commits a *batch* of appends in one durable transaction
//!   (this is what makes group commit possible: the event store hands the
//!   writer every append that queued up while the previous commit was on
//!   disk), and stores snapshots and projection checkpoints.
//! - [`EventReader`] reads streams, `$all`, snapshots and checkpoints.
//!
//! Calls block; the event store runs them on `SyncArbiter` threads. The rules
//! every backend must follow (expected versions, idempotency on event ids)
//! are decided by [`plan_append`], so that all backends agree on them.
//! [`SqliteEventLog`](super::sqlite::SqliteEventLog) and
//! [`MemoryEventLog`](super::memory::MemoryEventLog) are the two backends.

use std::collections::HashSet;
use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::envelope::{Envelope, Headers, MessageId, Timestamp};

/// The name under which the log of all streams is read.
pub const ALL_STREAM: &str = "$all";

/// The longest stream name accepted, in bytes.
pub const MAX_STREAM_NAME: usize = 512;

/// What the writer of an append believes about the stream, checked atomically
/// with the write (optimistic concurrency).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist (have at least one event).
    StreamExists,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// True when a stream whose last version is `current` (`None`: no stream)
    /// satisfies this expectation.
    pub fn matches(self, current: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        }
    }

    /// The expectation that a stream is exactly at `current`: `Exact`, or
    /// `NoStream` for a stream that does not exist.
    pub fn at(current: Option<u64>) -> Self {
        current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::StreamExists => f.write_str("exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Text that is not an expected version.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid expected version `{0}` (expected any, no_stream, exists or a number)")]
pub struct InvalidExpectedVersion(pub String);

impl FromStr for ExpectedVersion {
    type Err = InvalidExpectedVersion;
    /// Parses the `Expected-Version` header form: `any`, `no_stream`,
    /// `exists` or a version number.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "any" => Ok(ExpectedVersion::Any),
            "no_stream" => Ok(ExpectedVersion::NoStream),
            "exists" => Ok(ExpectedVersion::StreamExists),
            n => n.parse().map(ExpectedVersion::Exact).map_err(|_| InvalidExpectedVersion(s.to_owned())),
        }
    }
}

/// Who caused an event and which conversation it belongs to, plus free
/// headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The conversation (DESIGN §2) the event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<MessageId>,
    /// The message or event whose handling produced this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<MessageId>,
    /// Application data.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

impl EventMetadata {
    /// Metadata for an event produced while handling `cause`: same
    /// conversation, caused by it.
    pub fn caused_by<T>(cause: &Envelope<T>) -> Self {
        EventMetadata {
            correlation_id: Some(cause.correlation_id),
            causation_id: Some(cause.id),
            headers: Headers::new(),
        }
    }
}

/// An event to append.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// The event id; generated (UUID v7) when absent. Giving ids makes a
    /// retried append idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<MessageId>,
    /// The event's type name, for example `Deposited`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload, stored as JSON.
    pub data: serde_json::Value,
    /// Correlation, causation and headers.
    #[serde(default)]
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// An event of type `event_type` with a JSON payload.
    pub fn new(event_type: impl Into<String>, data: serde_json::Value) -> Self {
        NewEvent { id: None, event_type: event_type.into(), data, metadata: EventMetadata::default() }
    }

    /// An event whose payload is `payload` serialized to JSON.
    pub fn json<T: Serialize>(event_type: impl Into<String>, payload: &T) -> Result<Self, StoreError> {
        Ok(NewEvent::new(event_type, serde_json::to_value(payload)?))
    }

    /// Sets the event id.
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: EventMetadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.headers.insert(key.into(), value.into());
        self
    }
}

/// An event as stored: its id, where it is, what it says and when it was
/// written. Serializes to the gateway's read shape (DESIGN §7):
/// `{"id", "stream", "version", "position", "type", "data", "metadata",
/// "timestamp"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Unique event id.
    pub id: MessageId,
    /// The stream it belongs to.
    pub stream: String,
    /// Its version in the stream, from 0.
    pub version: u64,
    /// Its position in `$all`, from 0.
    pub position: u64,
    /// The type name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The JSON payload.
    pub data: serde_json::Value,
    /// Correlation, causation and headers.
    pub metadata: EventMetadata,
    /// When it was committed. Never decreases along `$all`, so "the state
    /// at time T" is the fold of a prefix of each stream.
    pub timestamp: Timestamp,
}

impl RecordedEvent {
    /// Deserializes the payload.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        Ok(T::deserialize(&self.data)?)
    }
}

/// One append: events for one stream, with the writer's expectation.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendRequest {
    /// The stream.
    pub stream: String,
    /// The optimistic concurrency check.
    pub expected: ExpectedVersion,
    /// The events, in order; every id is set.
    pub events: Vec<NewEvent>,
}

impl AppendRequest {
    /// A request; events without an id get a fresh one now, so that the
    /// request can be retried idempotently.
    pub fn new(stream: impl Into<String>, expected: ExpectedVersion, mut events: Vec<NewEvent>) -> Self {
        for e in &mut events {
            e.id.get_or_insert_with(MessageId::new);
        }
        AppendRequest { stream: stream.into(), expected, events }
    }
}

/// What a successful append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// The version of the append's last event, which is the stream's version
    /// right after the append (`None`: an empty append to a stream that does
    /// not exist). Pass `ExpectedVersion::at(result.version)` to the next
    /// append to continue without conflict.
    pub version: Option<u64>,
    /// Global positions of the first and last event (`None` when empty).
    pub positions: Option<RangeInclusive<u64>>,
    /// False when nothing was written: the events were already stored
    /// (idempotent repeat) or the append was empty.
    pub written: bool,
}

/// Why an append was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The stream's version is not what the append expected.
    #[error("wrong expected version on stream `{stream}`: expected {expected}, actual {}", .actual.map_or("no stream".to_owned(), |v| v.to_string()))]
    WrongExpectedVersion {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's last version when the append was checked.
        actual: Option<u64>,
    },
    /// An event id is already stored somewhere that does not make this
    /// append an idempotent repeat (another stream, another position, or only
    /// some of the append's events).
    #[error("event id {id} is already stored in stream `{stream}` at version {version}")]
    DuplicateEventId {
        /// The id.
        id: MessageId,
        /// Where it is stored.
        stream: String,
        /// Its version there.
        version: u64,
    },
    /// The request is malformed (bad stream name, an id twice in one append).
    #[error("invalid append: {0}")]
    InvalidRequest(String),
    /// Storage failed; nothing of this append was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The order of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Oldest first, from the given version or position up.
    Forward,
    /// Newest first, from the given version or position down.
    Backward,
}

/// A saved aggregate state: the fold of a stream's events up to `version`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The stream.
    pub stream: String,
    /// The version of the last event folded into `state`.
    pub version: u64,
    /// The timestamp of that event.
    pub timestamp: Timestamp,
    /// The state, as JSON.
    pub state: serde_json::Value,
}

/// A projection's saved progress: its read model and the next global position
/// to process, stored together so they never disagree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The projection's name.
    pub name: String,
    /// Every event before this global position is folded into `state`.
    pub position: u64,
    /// The read model, as JSON.
    pub state: serde_json::Value,
}

/// The result of one append inside a committed batch: what the caller is told
/// and the events to publish to live subscribers (empty when nothing was
/// written).
#[derive(Clone, Debug, PartialEq)]
pub struct AppendOutcome {
    /// For the caller.
    pub result: AppendResult,
    /// The events written, in order.
    pub recorded: Vec<RecordedEvent>,
}

/// A storage backend for events: opens one writer and any number of readers
/// on the same log.
pub trait EventLog: Send + Sync + 'static {
    /// Opens the writer. The event store opens exactly one.
    fn writer(&self) -> Result<Box<dyn EventWriter>, StoreError>;
    /// Opens a reader.
    fn reader(&self) -> Result<Box<dyn EventReader>, StoreError>;
}

/// Reads from an event log. Blocking.
pub trait EventReader: Send {
    /// Up to `max` events of `stream`: forward from version `from` up, or
    /// backward from version `from` down (`u64::MAX`: from the end).
    fn read_stream(
        &mut self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;
    /// Up to `max` events of `$all`, forward or backward from position `from`.
    fn read_all(&mut self, from: u64, direction: Direction, max: usize) -> Result<Vec<RecordedEvent>, StoreError>;
    /// The version of the stream's last event, `None` if it does not exist.
    fn stream_version(&mut self, stream: &str) -> Result<Option<u64>, StoreError>;
    /// The position the next event will get (the number of events in `$all`).
    fn end_position(&mut self) -> Result<u64, StoreError>;
    /// The latest snapshot of `stream` whose version is at most `max_version`
    /// and whose timestamp is at most `max_timestamp` (each when given).
    fn load_snapshot(
        &mut self,
        stream: &str,
        max_version: Option<u64>,
        max_timestamp: Option<Timestamp>,
    ) -> Result<Option<Snapshot>, StoreError>;
    /// The checkpoint of projection `name`.
    fn load_checkpoint(&mut self, name: &str) -> Result<Option<Checkpoint>, StoreError>;
}

/// Writes to an event log. Blocking; one per log.
pub trait EventWriter: Send {
    /// Validates and writes every request of `batch` in one durable commit
    /// (one transaction, one fsync), each request seeing the ones before it.
    ///
    /// The outer `Err` means the commit failed and nothing was written; an
    /// inner `Err` refuses that one request (nothing of it was written) while
    /// the others commit. Results are in the order of `batch`. The batch is
    /// taken by value so that a backend can move its events into the
    /// recorded ones instead of copying them.
    #[allow(clippy::type_complexity)]
    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError>;
    /// Stores a snapshot (replacing one at the same stream and version).
    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError>;
    /// Stores a projection checkpoint (replacing the previous one).
    fn save_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError>;
}

/// Where an event id is already stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAt {
    /// Stream.
    pub stream: String,
    /// Version in the stream.
    pub version: u64,
    /// Global position.
    pub position: u64,
}

/// What a backend must do with one append request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendPlan {
    /// Write the events at versions `first_version..`.
    Write {
        /// Version of the first new event.
        first_version: u64,
    },
    /// Write nothing and answer this (empty append, or idempotent repeat).
    Skip(AppendResult),
}

/// Checks a stream name: not empty, at most [`MAX_STREAM_NAME`] bytes, no
/// control characters, and not starting with `$` (reserved for system
/// streams such as `$all`), except the metadata stream `$$<name>` of a valid
/// stream (see [`StreamMetadata`](crate::event_store::StreamMetadata)).
pub fn validate_stream_name(stream: &str) -> Result<(), AppendError> {
    if let Some(owner) = stream.strip_prefix("$$").filter(|owner| !owner.starts_with('$')) {
        return validate_stream_name(owner)
            .map_err(|e| AppendError::InvalidRequest(format!("metadata stream {stream:?}: {e}")));
    }
    let reason = if stream.is_empty() {
        "stream name is empty"
    } else if stream.len() > MAX_STREAM_NAME {
        "stream name is longer than 512 bytes"
    } else if stream.starts_with('$') {
        "stream names starting with `$` are reserved"
    } else if stream.chars().any(char::is_control) {
        "stream name contains control characters"
    } else {
        return Ok(());
    };
    Err(AppendError::InvalidRequest(format!("{reason}: {stream:?}")))
}

/// Decides an append, the same way for every backend.
///
/// `current` is the stream's version as seen inside the writer's transaction
/// (so it includes earlier requests of the same batch); `existing[i]` says
/// where the id of `req.events[i]` is already stored, if anywhere (past the
/// end of `existing`: nowhere).
///
/// The rules:
/// - no event id is stored yet: the expected version must match, then write;
/// - every id is stored, in this stream, at consecutive versions in the
///   request's order, and the expected version is the one the original
///   append had to match (`Exact(v)` with the first at `v + 1`, `NoStream`
///   with the first at 0, or `Any` / `StreamExists`): an idempotent repeat,
///   write nothing and report where they are;
/// - otherwise: a conflict or a duplicate id error.
pub fn plan_append(
    req: &AppendRequest,
    current: Option<u64>,
    existing: &[Option<StoredAt>],
) -> Result<AppendPlan, AppendError> {
    validate_stream_name(&req.stream)?;
    plan_valid_append(req, current, existing)
}

/// [`plan_append`] for a request whose stream name is known to be valid (a
/// stream the backend already wrote to), without checking it again.
pub(crate) fn plan_valid_append(
    req: &AppendRequest,
    current: Option<u64>,
    existing: &[Option<StoredAt>],
) -> Result<AppendPlan, AppendError> {
    // No set for one event (most appends), where no id can repeat.
    if req.events.len() > 1 {
        let mut seen = HashSet::with_capacity(req.events.len());
        for id in req.events.iter().filter_map(|e| e.id) {
            if !seen.insert(id) {
                return Err(AppendError::InvalidRequest(format!("event id {id} appears twice in one append")));
            }
        }
    }
    let conflict =
        || AppendError::WrongExpectedVersion { stream: req.stream.clone(), expected: req.expected, actual: current };
    let stored = existing.iter().flatten().count();
    if stored == 0 {
        if !req.expected.matches(current) {
            return Err(conflict());
        }
        if req.events.is_empty() {
            return Ok(AppendPlan::Skip(AppendResult { version: current, positions: None, written: false }));
        }
        let first_version = match current {
            None => 0,
            Some(v) => v.checked_add(1).ok_or_else(|| AppendError::InvalidRequest("stream version overflow".into()))?,
        };
        return Ok(AppendPlan::Write { first_version });
    }
    let first = existing.iter().flatten().next();
    let repeat = stored == req.events.len()
        && existing.iter().enumerate().all(|(i, at)| {
            at.as_ref().is_some_and(|at| {
                at.stream == req.stream && first.is_some_and(|f| Some(at.version) == f.version.checked_add(i as u64))
            })
        });
    if repeat {
        let (Some(first), Some(Some(last))) = (first, existing.last()) else {
            return Err(conflict());
        };
        let ok = match req.expected {
            ExpectedVersion::Any | ExpectedVersion::StreamExists => true,
            ExpectedVersion::NoStream => first.version == 0,
            ExpectedVersion::Exact(v) => v.checked_add(1) == Some(first.version),
        };
        if !ok {
            return Err(conflict());
        }
        return Ok(AppendPlan::Skip(AppendResult {
            version: Some(last.version),
            positions: Some(first.position..=last.position),
            written: false,
        }));
    }
    let (i, at) = existing.iter().enumerate().find_map(|(i, at)| at.as_ref().map(|at| (i, at))).ok_or_else(conflict)?;
    Err(AppendError::DuplicateEventId {
        id: req.events[i].id.unwrap_or_default(),
        stream: at.stream.clone(),
        version: at.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(expected: ExpectedVersion, n: usize) -> AppendRequest {
        AppendRequest::new("s", expected, (0..n).map(|i| NewEvent::new("e", serde_json::json!(i))).collect())
    }

    fn at(stream: &str, version: u64) -> Option<StoredAt> {
        Some(StoredAt { stream: stream.into(), version, position: version + 100 })
    }

    #[test]
    fn expected_versions_match_and_parse() {
        use ExpectedVersion::*;
        assert!(Any.matches(None) && Any.matches(Some(3)));
        assert!(NoStream.matches(None) && !NoStream.matches(Some(0)));
        assert!(!StreamExists.matches(None) && StreamExists.matches(Some(0)));
        assert!(Exact(3).matches(Some(3)) && !Exact(3).matches(Some(2)) && !Exact(0).matches(None));
        for e in [Any, NoStream, StreamExists, Exact(42)] {
            assert_eq!(e.to_string().parse::<ExpectedVersion>().unwrap(), e);
        }
        assert!("-1".parse::<ExpectedVersion>().is_err());
        assert_eq!(ExpectedVersion::at(None), NoStream);
        assert_eq!(ExpectedVersion::at(Some(2)), Exact(2));
    }

    #[test]
    fn fresh_events_need_a_matching_version() {
        let r = req(ExpectedVersion::Exact(1), 2);
        assert_eq!(plan_append(&r, Some(1), &[None, None]).unwrap(), AppendPlan::Write { first_version: 2 });
        assert!(matches!(
            plan_append(&r, Some(2), &[None, None]),
            Err(AppendError::WrongExpectedVersion { actual: Some(2), .. })
        ));
        let r = req(ExpectedVersion::NoStream, 1);
        assert_eq!(plan_append(&r, None, &[None]).unwrap(), AppendPlan::Write { first_version: 0 });
    }

    #[test]
    fn a_full_repeat_is_idempotent_and_a_partial_one_is_not() {
        let r = req(ExpectedVersion::Exact(1), 2);
        let plan = plan_append(&r, Some(5), &[at("s", 2), at("s", 3)]).unwrap();
        assert_eq!(
            plan,
            AppendPlan::Skip(AppendResult { version: Some(3), positions: Some(102..=103), written: false })
        );
        // Same ids, but the original append could not have expected 0.
        let r0 = AppendRequest { expected: ExpectedVersion::Exact(0), ..r.clone() };
        assert!(matches!(
            plan_append(&r0, Some(5), &[at("s", 2), at("s", 3)]),
            Err(AppendError::WrongExpectedVersion { .. })
        ));
        // Only some ids stored, or stored elsewhere, or out of order.
        for existing in [vec![at("s", 2), None], vec![at("t", 2), at("t", 3)], vec![at("s", 3), at("s", 2)]] {
            assert!(
                matches!(plan_append(&r, Some(5), &existing), Err(AppendError::DuplicateEventId { .. })),
                "{existing:?}"
            );
        }
    }

    #[test]
    fn bad_names_and_repeated_ids_are_invalid() {
        for name in ["", "$all", "a\nb", "$$", "$$$all", "$$$$x"] {
            let r = AppendRequest::new(name, ExpectedVersion::Any, vec![]);
            assert!(matches!(plan_append(&r, None, &[]), Err(AppendError::InvalidRequest(_))));
        }
        let id = MessageId::new();
        let e = NewEvent::new("e", serde_json::Value::Null).with_id(id);
        let r = AppendRequest::new("s", ExpectedVersion::Any, vec![e.clone(), e]);
        assert!(matches!(plan_append(&r, None, &[None, None]), Err(AppendError::InvalidRequest(_))));
        let empty = AppendRequest::new("s", ExpectedVersion::Exact(4), vec![]);
        assert_eq!(
            plan_append(&empty, Some(4), &[]).unwrap(),
            AppendPlan::Skip(AppendResult { version: Some(4), positions: None, written: false })
        );
    }
}
