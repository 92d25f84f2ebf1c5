//! An event log in memory, for tests and for examples that need no disk.
//!
//! It follows exactly the same rules as the SQLite log (they share
//! [`plan_append`]); it just forgets everything when the last handle is
//! dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use super::event_log::{
    plan_append, AppendError, AppendOutcome, AppendPlan, AppendRequest, AppendResult, Checkpoint, Direction, EventLog,
    EventReader, EventWriter, RecordedEvent, Snapshot, StoredAt,
};
use super::StoreError;
use crate::envelope::{MessageId, Timestamp};

#[derive(Debug)]
struct State {
    /// `$all`: the event at position `p` is `events[p]`.
    events: Vec<RecordedEvent>,
    /// Positions of each stream's events, by version.
    streams: HashMap<String, Vec<u64>>,
    ids: HashMap<MessageId, u64>,
    snapshots: HashMap<String, BTreeMap<u64, Snapshot>>,
    checkpoints: HashMap<String, Checkpoint>,
    last_timestamp: Timestamp,
}

/// An in-memory event log; clones share the same events.
///
/// ```
/// use actorbus_actors::store::{AppendRequest, EventLog, ExpectedVersion, MemoryEventLog, NewEvent};
///
/// let log = MemoryEventLog::new();
/// let req = AppendRequest::new("a", ExpectedVersion::NoStream, vec![NewEvent::new("Opened", serde_json::json!({}))]);
/// let results = log.writer().unwrap().append_batch(vec![req]).unwrap();
/// assert_eq!(results[0].as_ref().unwrap().result.version, Some(0));
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryEventLog {
    state: Arc<RwLock<State>>,
}

impl MemoryEventLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }
}

impl EventLog for MemoryEventLog {
    fn writer(&self) -> Result<Box<dyn EventWriter>, StoreError> {
        Ok(Box::new(self.clone()))
    }

    fn reader(&self) -> Result<Box<dyn EventReader>, StoreError> {
        Ok(Box::new(self.clone()))
    }
}

impl Default for State {
    fn default() -> Self {
        State {
            events: Vec::new(),
            streams: HashMap::new(),
            ids: HashMap::new(),
            snapshots: HashMap::new(),
            checkpoints: HashMap::new(),
            last_timestamp: Timestamp(0),
        }
    }
}

impl State {
    fn stream_version(&self, stream: &str) -> Option<u64> {
        self.streams.get(stream).map(|v| v.len() as u64 - 1)
    }

    fn append_one(&mut self, req: &AppendRequest, timestamp: Timestamp) -> Result<AppendOutcome, AppendError> {
        let current = self.stream_version(&req.stream);
        let existing: Vec<Option<StoredAt>> = req
            .events
            .iter()
            .map(|e| {
                let p = e.id.and_then(|id| self.ids.get(&id))?;
                let ev = self.events.get(usize::try_from(*p).ok()?)?;
                Some(StoredAt { stream: ev.stream.clone(), version: ev.version, position: ev.position })
            })
            .collect();
        let first_version = match plan_append(req, current, &existing)? {
            AppendPlan::Skip(result) => return Ok(AppendOutcome { result, recorded: Vec::new() }),
            AppendPlan::Write { first_version } => first_version,
        };
        let first_position = self.events.len() as u64;
        let mut recorded = Vec::with_capacity(req.events.len());
        for (i, e) in req.events.iter().enumerate() {
            let id = e.id.unwrap_or_default();
            let ev = RecordedEvent {
                id,
                stream: req.stream.clone(),
                version: first_version + i as u64,
                position: first_position + i as u64,
                event_type: e.event_type.clone(),
                data: e.data.clone(),
                metadata: e.metadata.clone(),
                timestamp,
            };
            self.ids.insert(id, ev.position);
            self.streams.entry(req.stream.clone()).or_default().push(ev.position);
            self.events.push(ev.clone());
            recorded.push(ev);
        }
        Ok(AppendOutcome {
            result: AppendResult {
                version: recorded.last().map(|e| e.version),
                positions: Some(first_position..=self.events.len() as u64 - 1),
                written: true,
            },
            recorded,
        })
    }
}

impl MemoryEventLog {
    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.write().unwrap_or_else(PoisonError::into_inner))
    }
}

impl EventWriter for MemoryEventLog {
    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        Ok(self.write(|s| {
            let timestamp = Timestamp::now().max(s.last_timestamp);
            s.last_timestamp = timestamp;
            batch.iter().map(|req| s.append_one(req, timestamp)).collect()
        }))
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.write(|s| {
            s.snapshots.entry(snapshot.stream.clone()).or_default().insert(snapshot.version, snapshot.clone())
        });
        Ok(())
    }

    fn save_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.write(|s| s.checkpoints.insert(checkpoint.name.clone(), checkpoint.clone()));
        Ok(())
    }
}

impl EventReader for MemoryEventLog {
    fn read_stream(
        &mut self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.read(|s| {
            let Some(positions) = s.streams.get(stream) else {
                return Vec::new();
            };
            let pick = |p: &u64| s.events.get(usize::try_from(*p).unwrap_or(usize::MAX)).cloned();
            let from = usize::try_from(from).unwrap_or(usize::MAX);
            match direction {
                Direction::Forward => positions.iter().skip(from).take(max).filter_map(pick).collect(),
                Direction::Backward => {
                    let end = from.saturating_add(1).min(positions.len());
                    positions[..end].iter().rev().take(max).filter_map(pick).collect()
                }
            }
        }))
    }

    fn read_all(&mut self, from: u64, direction: Direction, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.read(|s| {
            let from = usize::try_from(from).unwrap_or(usize::MAX);
            match direction {
                Direction::Forward => s.events.iter().skip(from).take(max).cloned().collect(),
                Direction::Backward => {
                    let end = from.saturating_add(1).min(s.events.len());
                    s.events[..end].iter().rev().take(max).cloned().collect()
                }
            }
        }))
    }

    fn stream_version(&mut self, stream: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.read(|s| s.stream_version(stream)))
    }

    fn end_position(&mut self) -> Result<u64, StoreError> {
        Ok(self.read(|s| s.events.len() as u64))
    }

    fn load_snapshot(
        &mut self,
        stream: &str,
        max_version: Option<u64>,
        max_timestamp: Option<Timestamp>,
    ) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.read(|s| {
            s.snapshots.get(stream).and_then(|by_version| {
                by_version
                    .range(..=max_version.unwrap_or(u64::MAX))
                    .rev()
                    .map(|(_, snap)| snap)
                    .find(|snap| max_timestamp.is_none_or(|t| snap.timestamp <= t))
                    .cloned()
            })
        }))
    }

    fn load_checkpoint(&mut self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.read(|s| s.checkpoints.get(name).cloned()))
    }
}
