//! Event-sourced aggregates: state that is only ever changed by events.
//!
//! An [`Aggregate`] has two functions. [`handle`](Aggregate::handle) looks at
//! the current state and a command and decides which events happen (or
//! refuses); it changes nothing. [`apply`](Aggregate::apply) folds one event
//! into the state; it never refuses (the event already happened). Keeping
//! them apart is what makes replay possible: state at any point is
//! `events.fold(Default::default(), apply)`.
//!
//! [`AggregateActor`] keeps one aggregate instance (one stream) in memory.
//! The first message loads it from the latest snapshot plus the events after
//! it; each [`Execute`] runs `handle`, appends the events with the version it
//! was decided on as the expected version (so a concurrent writer makes it
//! fail instead of both acting on the same state), applies them, and saves a
//! snapshot every N events according to its [`SnapshotPolicy`].
//! [`load_aggregate`] rebuilds the state up to any version or point in time.
//!
//! ```
//! use actorbus_actors::event_store::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! enum CounterEvent { Added(u64) }
//! impl DomainEvent for CounterEvent {
//!     fn event_type(&self) -> &'static str { "Added" }
//! }
//!
//! #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
//! struct Counter { total: u64 }
//! impl Aggregate for Counter {
//!     type Event = CounterEvent;
//!     type Command = u64;
//!     type Error = String;
//!     fn apply(&mut self, CounterEvent::Added(n): &CounterEvent) { self.total += n; }
//!     fn handle(&self, n: u64) -> Result<Vec<CounterEvent>, String> {
//!         if n == 0 { return Err("nothing to add".into()) }
//!         Ok(vec![CounterEvent::Added(n)])
//!     }
//! }
//!
//! actix_rt::System::new().block_on(async {
//!     use actix::Actor;
//!     let store = EventStore::in_memory(EventStoreConfig::default()).unwrap();
//!     let counter = AggregateActor::<Counter>::new(store.clone(), "counter-1", SnapshotPolicy::every(2)).start();
//!     for n in [1, 2, 3] {
//!         counter.send(Execute::new(n)).await.unwrap().unwrap();
//!     }
//!     let (state, version) = counter.send(GetState::new()).await.unwrap().unwrap();
//!     assert_eq!((state.total, version), (6, Some(2)));
//!     let earlier = load_aggregate::<Counter>(&store, "counter-1", Upto::Version(1), true).await.unwrap();
//!     assert_eq!(earlier.state.total, 3);
//! });
//! ```

use std::fmt;
use std::marker::PhantomData;

use actix::prelude::*;
use metrics::Counter;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::store::EventStoreHandle;
use crate::envelope::Timestamp;
use crate::metrics as m;
use crate::store::{AppendError, Direction, EventMetadata, ExpectedVersion, NewEvent, Snapshot, StoreError};

/// An event type of an aggregate: serializable, with a type name.
pub trait DomainEvent: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// The type name stored with the event (`Deposited`, `Withdrawn`, …).
    fn event_type(&self) -> &'static str;
}

/// An event-sourced entity.
pub trait Aggregate: Default + Clone + Serialize + DeserializeOwned + Send + Unpin + 'static {
    /// The events it is made of.
    type Event: DomainEvent;
    /// What it can be asked to do.
    type Command: Send + 'static;
    /// Why it refuses a command.
    type Error: fmt::Display + fmt::Debug + Send + 'static;

    /// Folds one event into the state. Must not fail: the event happened.
    fn apply(&mut self, event: &Self::Event);

    /// Decides the events a command produces, without changing anything.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}

/// How far to rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upto {
    /// Every event.
    Latest,
    /// Events up to and including this version.
    Version(u64),
    /// Events committed at or before this time.
    Time(Timestamp),
}

/// A rebuilt aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct Rebuilt<A> {
    /// The state.
    pub state: A,
    /// The version of the last event folded in (`None`: no events).
    pub version: Option<u64>,
    /// The snapshot the rebuild started from, if any.
    pub snapshot_version: Option<u64>,
    /// Events read and applied after the snapshot.
    pub replayed: u64,
}

/// Rebuilds the aggregate of `stream` up to `upto`: from the latest snapshot
/// at or before that point when `use_snapshots` (and the snapshot decodes),
/// else from the first event.
pub async fn load_aggregate<A: Aggregate>(
    store: &EventStoreHandle,
    stream: &str,
    upto: Upto,
    use_snapshots: bool,
) -> Result<Rebuilt<A>, StoreError> {
    rebuild(store, stream, upto, use_snapshots, None).await
}

async fn rebuild<A: Aggregate>(
    store: &EventStoreHandle,
    stream: &str,
    upto: Upto,
    use_snapshots: bool,
    replayed_counter: Option<&Counter>,
) -> Result<Rebuilt<A>, StoreError> {
    let (max_version, max_time) = match upto {
        Upto::Latest => (None, None),
        Upto::Version(v) => (Some(v), None),
        Upto::Time(t) => (None, Some(t)),
    };
    let mut rebuilt = Rebuilt { state: A::default(), version: None, snapshot_version: None, replayed: 0 };
    if use_snapshots {
        if let Some(snap) = store.load_snapshot(stream, max_version, max_time).await? {
            match A::deserialize(&snap.state) {
                Ok(state) => {
                    rebuilt.state = state;
                    rebuilt.version = Some(snap.version);
                    rebuilt.snapshot_version = Some(snap.version);
                }
                Err(e) => tracing::warn!(
                    stream, version = snap.version, error = %e,
                    "snapshot does not decode; replaying from the first event"
                ),
            }
        }
    }
    let batch = store.config().read_batch.max(1);
    loop {
        let from = rebuilt.version.map_or(0, |v| v + 1);
        let events = store.read_stream(stream, from, Direction::Forward, batch).await?;
        let count = events.len();
        for e in events {
            let past = match upto {
                Upto::Latest => false,
                Upto::Version(v) => e.version > v,
                Upto::Time(t) => e.timestamp > t,
            };
            if past {
                return Ok(rebuilt);
            }
            let event: A::Event = e.decode()?;
            rebuilt.state.apply(&event);
            rebuilt.version = Some(e.version);
            rebuilt.replayed += 1;
            if let Some(c) = replayed_counter {
                c.increment(1);
            }
        }
        if count < batch {
            return Ok(rebuilt);
        }
    }
}

/// When an [`AggregateActor`] saves snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Save one each time the stream's event count passes a multiple of
    /// this; `None`: never.
    pub every: Option<u64>,
}

impl SnapshotPolicy {
    /// A snapshot every `n` events (`0`: never).
    pub fn every(n: u64) -> Self {
        SnapshotPolicy { every: (n > 0).then_some(n) }
    }

    /// No snapshots.
    pub fn never() -> Self {
        SnapshotPolicy { every: None }
    }

    fn due(self, before: Option<u64>, after: Option<u64>) -> bool {
        let count = |v: Option<u64>| v.map_or(0, |v| v + 1);
        self.every.is_some_and(|n| count(before) / n != count(after) / n)
    }
}

/// Why an [`Execute`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EntityError<E: fmt::Display + fmt::Debug> {
    /// The aggregate refused the command; nothing was written.
    #[error("command rejected: {0}")]
    Rejected(E),
    /// Another writer appended to the stream first; nothing was written and
    /// the actor will reload before the next command. Retry it.
    #[error("concurrent write, retry: {0}")]
    Conflict(AppendError),
    /// The append failed for another reason.
    #[error(transparent)]
    Append(AppendError),
    /// Loading the state failed.
    #[error(transparent)]
    Store(StoreError),
}

/// Runs a command on an [`AggregateActor`].
pub struct Execute<A: Aggregate> {
    /// The command.
    pub command: A::Command,
    /// Metadata for the events it produces (correlation, causation).
    pub metadata: EventMetadata,
}

impl<A: Aggregate> Execute<A> {
    /// A command with no metadata.
    pub fn new(command: A::Command) -> Self {
        Execute { command, metadata: EventMetadata::default() }
    }

    /// Sets the metadata of the events it produces.
    pub fn with_metadata(mut self, metadata: EventMetadata) -> Self {
        self.metadata = metadata;
        self
    }
}

impl<A: Aggregate> Message for Execute<A> {
    type Result = Result<Executed, EntityError<A::Error>>;
}

/// What an [`Execute`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Executed {
    /// The stream's version afterwards.
    pub version: Option<u64>,
    /// How many events the command produced.
    pub events: usize,
}

/// Asks an [`AggregateActor`] for its current state and version.
pub struct GetState<A>(PhantomData<fn() -> A>);

impl<A> GetState<A> {
    /// The request.
    pub fn new() -> Self {
        GetState(PhantomData)
    }
}

impl<A> Default for GetState<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregate> Message for GetState<A> {
    type Result = Result<(A, Option<u64>), StoreError>;
}

/// An actor that owns one aggregate instance (one stream).
pub struct AggregateActor<A: Aggregate> {
    store: EventStoreHandle,
    stream: String,
    policy: SnapshotPolicy,
    /// State and version, once loaded; `None` forces a reload.
    loaded: Option<(A, Option<u64>)>,
    replayed: Counter,
    snapshots: Counter,
}

impl<A: Aggregate> AggregateActor<A> {
    /// An actor for `stream`; it loads on its first message.
    pub fn new(store: EventStoreHandle, stream: impl Into<String>, policy: SnapshotPolicy) -> Self {
        let labels = [(m::LABEL_NAME, store.name().to_owned())];
        AggregateActor {
            replayed: metrics::counter!(m::EVENT_STORE_EVENTS_REPLAYED, &labels),
            snapshots: metrics::counter!(m::EVENT_STORE_SNAPSHOTS_SAVED, &labels),
            store,
            stream: stream.into(),
            policy,
            loaded: None,
        }
    }
}

impl<A: Aggregate> Actor for AggregateActor<A> {
    type Context = Context<Self>;
}

type Loaded<A> = Option<(A, Option<u64>)>;

impl<A: Aggregate> Handler<Execute<A>> for AggregateActor<A> {
    type Result = AtomicResponse<Self, Result<Executed, EntityError<A::Error>>>;

    fn handle(&mut self, msg: Execute<A>, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let stream = self.stream.clone();
        let loaded = self.loaded.clone();
        let policy = self.policy;
        let replayed = self.replayed.clone();
        let snapshots = self.snapshots.clone();
        let work = async move {
            let (mut state, version) = match loaded {
                Some(l) => l,
                None => match rebuild::<A>(&store, &stream, Upto::Latest, true, Some(&replayed)).await {
                    Ok(r) => (r.state, r.version),
                    Err(e) => return (None, Err(EntityError::Store(e))),
                },
            };
            let events = match state.handle(msg.command) {
                Ok(events) => events,
                Err(e) => return (Some((state, version)), Err(EntityError::Rejected(e))),
            };
            if events.is_empty() {
                return (Some((state, version)), Ok(Executed { version, events: 0 }));
            }
            let encoded: Result<Vec<NewEvent>, StoreError> = events
                .iter()
                .map(|e| NewEvent::json(e.event_type(), e).map(|n| n.with_metadata(msg.metadata.clone())))
                .collect();
            let encoded = match encoded {
                Ok(encoded) => encoded,
                Err(e) => return (Some((state, version)), Err(EntityError::Store(e))),
            };
            let result = match store.append(stream.clone(), ExpectedVersion::at(version), encoded).await {
                Ok(r) => r,
                Err(e @ AppendError::WrongExpectedVersion { .. }) => return (None, Err(EntityError::Conflict(e))),
                // Unknown whether it was written: reload next time.
                Err(e) => return (None, Err(EntityError::Append(e))),
            };
            for e in &events {
                state.apply(e);
            }
            if policy.due(version, result.version) {
                if let Some(v) = result.version {
                    match save_snapshot(&store, &stream, v, &state).await {
                        Ok(()) => snapshots.increment(1),
                        Err(e) => {
                            tracing::warn!(stream, version = v, error = %e, "snapshot not saved")
                        }
                    }
                }
            }
            let done = Executed { version: result.version, events: events.len() };
            (Some((state, result.version)), Ok(done))
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|(loaded, result): (Loaded<A>, _), act, _| {
            act.loaded = loaded;
            result
        })))
    }
}

async fn save_snapshot<A: Aggregate>(
    store: &EventStoreHandle,
    stream: &str,
    version: u64,
    state: &A,
) -> Result<(), StoreError> {
    // The snapshot carries its last event's timestamp, so that rebuilding
    // "as of time T" can start from it.
    let event = store
        .read_stream(stream, version, Direction::Forward, 1)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Corrupt(format!("{stream} has no version {version}")))?;
    store
        .save_snapshot(Snapshot {
            stream: stream.to_owned(),
            version,
            timestamp: event.timestamp,
            state: serde_json::to_value(state)?,
        })
        .await
}

impl<A: Aggregate> Handler<GetState<A>> for AggregateActor<A> {
    type Result = AtomicResponse<Self, Result<(A, Option<u64>), StoreError>>;

    fn handle(&mut self, _: GetState<A>, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let stream = self.stream.clone();
        let loaded = self.loaded.clone();
        let replayed = self.replayed.clone();
        let work = async move {
            match loaded {
                Some(l) => Ok(l),
                None => rebuild::<A>(&store, &stream, Upto::Latest, true, Some(&replayed))
                    .await
                    .map(|r| (r.state, r.version)),
            }
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|result, act, _| {
            if let Ok(l) = &result {
                act.loaded = Some(l.clone());
            }
            result
        })))
    }
}
