//! The saga log: every transition is written here before it takes effect.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{SagaData, SagaId};
use crate::envelope::Timestamp;
use crate::event_store::{EventStore, EventStoreConfig, EventStoreHandle};
use crate::store::{DataDir, Direction, ExpectedVersion, NewEvent, SqliteEventLog, StoreError};

/// One transition of a saga.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SagaRecord {
    /// The saga began with this data.
    Started {
        /// The definition's name.
        saga: String,
        /// The definition's step names, in order, so that the log reads on
        /// its own (records name steps by index).
        #[serde(default)]
        steps: Arc<[Arc<str>]>,
        /// The initial data.
        data: SagaData,
    },
    /// An attempt of step `step` (its index) began.
    StepStarted {
        /// Step index.
        step: usize,
        /// Attempt, from 1.
        attempt: u32,
    },
    /// Step `step` succeeded; `data` is the data after it.
    StepCompleted {
        /// Step index.
        step: usize,
        /// The data after the step.
        data: SagaData,
    },
    /// An attempt of step `step` failed.
    StepFailed {
        /// Step index.
        step: usize,
        /// Attempt.
        attempt: u32,
        /// Why.
        error: String,
    },
    /// Compensation began, because of this failure.
    Compensating {
        /// The failure.
        reason: String,
    },
    /// An attempt of step `step`'s compensation began.
    CompensationStarted {
        /// Step index.
        step: usize,
        /// Attempt.
        attempt: u32,
    },
    /// Step `step`'s compensation succeeded.
    CompensationCompleted {
        /// Step index.
        step: usize,
        /// The data after it.
        data: SagaData,
    },
    /// An attempt of step `step`'s compensation failed.
    CompensationFailed {
        /// Step index.
        step: usize,
        /// Attempt.
        attempt: u32,
        /// Why.
        error: String,
    },
    /// Every step succeeded.
    Completed,
    /// Every completed compensable step was compensated.
    Compensated,
    /// The saga cannot finish by itself (a compensation or a step after the
    /// pivot kept failing); it was dead-lettered.
    NeedsAttention {
        /// Why.
        reason: String,
    },
}

impl SagaRecord {
    /// True for the records that end a saga.
    pub fn is_final(&self) -> bool {
        matches!(self, SagaRecord::Completed | SagaRecord::Compensated | SagaRecord::NeedsAttention { .. })
    }

    fn kind(&self) -> &'static str {
        match self {
            SagaRecord::Started { .. } => "started",
            SagaRecord::StepStarted { .. } => "step_started",
            SagaRecord::StepCompleted { .. } => "step_completed",
            SagaRecord::StepFailed { .. } => "step_failed",
            SagaRecord::Compensating { .. } => "compensating",
            SagaRecord::CompensationStarted { .. } => "compensation_started",
            SagaRecord::CompensationCompleted { .. } => "compensation_completed",
            SagaRecord::CompensationFailed { .. } => "compensation_failed",
            SagaRecord::Completed => "completed",
            SagaRecord::Compensated => "compensated",
            SagaRecord::NeedsAttention { .. } => "needs_attention",
        }
    }
}

/// A record and when it was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When.
    pub at: Timestamp,
    /// What.
    pub record: SagaRecord,
}

/// A boxed future, as the log's methods return.
pub type LogFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// Where saga transitions are kept. `append` resolves once the entry is as
/// durable as the log promises (in memory: at once; on disk: fsynced).
pub trait SagaLog: Send + Sync + 'static {
    /// Appends one entry to a saga's log.
    fn append(&self, saga: SagaId, entry: LogEntry) -> LogFuture<()>;
    /// A saga's entries, oldest first (empty when unknown).
    fn history(&self, saga: SagaId) -> LogFuture<Vec<LogEntry>>;
    /// Every saga whose last entry is not final, with its entries.
    fn unfinished(&self) -> LogFuture<Vec<(SagaId, Vec<LogEntry>)>>;
}

/// A saga log in memory: for tests, and for sagas that need not survive the
/// process. Finished sagas' histories are kept up to a limit (oldest
/// dropped first), so the log stays bounded.
pub struct MemorySagaLog {
    inner: Mutex<MemoryInner>,
    keep_finished: usize,
}

#[derive(Default)]
struct MemoryInner {
    sagas: HashMap<SagaId, Vec<LogEntry>>,
    finished: VecDeque<SagaId>,
}

impl MemorySagaLog {
    /// A log keeping the histories of the last `keep_finished` finished
    /// sagas (running ones are always kept).
    pub fn new(keep_finished: usize) -> Self {
        MemorySagaLog { inner: Mutex::default(), keep_finished }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MemorySagaLog {
    fn default() -> Self {
        MemorySagaLog::new(10_000)
    }
}

impl SagaLog for MemorySagaLog {
    fn append(&self, saga: SagaId, entry: LogEntry) -> LogFuture<()> {
        let mut inner = self.lock();
        let done = entry.record.is_final();
        inner.sagas.entry(saga).or_insert_with(|| Vec::with_capacity(8)).push(entry);
        if done {
            inner.finished.push_back(saga);
            while inner.finished.len() > self.keep_finished {
                if let Some(old) = inner.finished.pop_front() {
                    inner.sagas.remove(&old);
                }
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn history(&self, saga: SagaId) -> LogFuture<Vec<LogEntry>> {
        let entries = self.lock().sagas.get(&saga).cloned().unwrap_or_default();
        Box::pin(std::future::ready(Ok(entries)))
    }

    fn unfinished(&self) -> LogFuture<Vec<(SagaId, Vec<LogEntry>)>> {
        let inner = self.lock();
        let open = inner
            .sagas
            .iter()
            .filter(|(_, entries)| entries.last().is_none_or(|e| !e.record.is_final()))
            .map(|(id, entries)| (*id, entries.clone()))
            .collect();
        Box::pin(std::future::ready(Ok(open)))
    }
}

/// A durable saga log on an event store: one stream per saga
/// (`saga-<id>`), so concurrent sagas' transitions share the store's group
/// commit (one fsync for many) and its crash safety: an append that
/// returned is on disk, a torn one is not there at all.
///
/// Give it a store of its own ([`open`](Self::open) does): recovery reads
/// the whole `$all` log once per start, which should hold saga records only.
pub struct EventStoreSagaLog {
    store: EventStoreHandle,
}

impl EventStoreSagaLog {
    /// A log on `store`.
    pub fn new(store: EventStoreHandle) -> Self {
        EventStoreSagaLog { store }
    }

    /// A log on its own event store, `sagas.sqlite3` in `dir`. Call it inside
    /// a running actix system (it starts the store's actor).
    pub fn open(dir: &DataDir) -> Result<Self, StoreError> {
        dir.ensure()?;
        let log = SqliteEventLog::open_file(dir.database_path("sagas")?)?;
        let store = EventStore::start(log, EventStoreConfig { readers: 1, ..EventStoreConfig::named("sagas") })?;
        Ok(EventStoreSagaLog { store })
    }

    /// The event store underneath.
    pub fn store(&self) -> &EventStoreHandle {
        &self.store
    }
}

fn stream_of(saga: SagaId) -> String {
    format!("saga-{saga}")
}

fn decode(data: &Value) -> Result<LogEntry, StoreError> {
    serde_json::from_value(data.clone()).map_err(|e| StoreError::Corrupt(format!("saga log entry: {e}")))
}

impl SagaLog for EventStoreSagaLog {
    fn append(&self, saga: SagaId, entry: LogEntry) -> LogFuture<()> {
        let store = self.store.clone();
        Box::pin(async move {
            let kind = entry.record.kind();
            let data = serde_json::to_value(&entry).map_err(|e| StoreError::Codec(e.to_string()))?;
            store
                .append(stream_of(saga), ExpectedVersion::Any, vec![NewEvent::new(format!("saga.{kind}"), data)])
                .await
                .map(|_| ())
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
    }

    fn history(&self, saga: SagaId) -> LogFuture<Vec<LogEntry>> {
        let store = self.store.clone();
        Box::pin(async move {
            let mut out = Vec::new();
            loop {
                let batch = store.read_stream(stream_of(saga), out.len() as u64, Direction::Forward, 512).await?;
                let done = batch.len() < 512;
                for e in &batch {
                    out.push(decode(&e.data)?);
                }
                if done {
                    return Ok(out);
                }
            }
        })
    }

    fn unfinished(&self) -> LogFuture<Vec<(SagaId, Vec<LogEntry>)>> {
        let store = self.store.clone();
        Box::pin(async move {
            // One pass over the whole log, keeping each saga's entries until
            // its final one. (A checkpoint would shorten this; the log of
            // finished sagas is read once per start.)
            let mut open: HashMap<SagaId, Vec<LogEntry>> = HashMap::new();
            let mut from = 0;
            loop {
                let batch = store.read_all(from, Direction::Forward, 1024).await?;
                let Some(last) = batch.last() else { break };
                from = last.position + 1;
                for e in &batch {
                    let Some(id) = e.stream.strip_prefix("saga-").and_then(|s| s.parse().ok()) else { continue };
                    let entry = decode(&e.data)?;
                    if entry.record.is_final() {
                        open.remove(&id);
                    } else {
                        open.entry(id).or_default().push(entry);
                    }
                }
            }
            Ok(open.into_iter().collect())
        })
    }
}
