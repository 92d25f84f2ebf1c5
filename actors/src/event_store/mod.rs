//! Event sourcing: an event store actor, catch-up subscriptions,
//! event-sourced aggregates and projections (DESIGN §6.5).
//!
//! In an event-sourced system the truth is a log of facts ("account opened",
//! "100 deposited"), not a table of current values. Current state is a fold
//! of the facts; any past state is a fold of a prefix of them; read models
//! (projections) are other folds, kept up to date by subscribing to the log.
//!
//! # Streams, versions, positions
//!
//! Events are appended to *streams*, one per entity (`account-42`). Within a
//! stream an event has a *version*: 0 for the first, then 1, 2, … with no
//! gaps. Across all streams, `$all` orders every event by commit with a
//! *global position*, also from 0 without gaps. Each event has an id (UUID
//! v7), a type name, a JSON payload, metadata (correlation id, causation id,
//! headers) and the time it was committed.
//!
//! # Appending: optimistic concurrency and idempotency
//!
//! [`EventStoreHandle::append`] takes an [`ExpectedVersion`]:
//! `Any`, `NoStream`, `StreamExists` or `Exact(v)` ("the last event I saw
//! has version v"). If the stream moved on, the append fails with
//! [`AppendError::WrongExpectedVersion`] and writes nothing: two writers that
//! read the same state cannot both act on it. Event ids make retries safe: an
//! append whose events are all already stored, in the same stream at the
//! same versions, succeeds again without writing (`written == false`).
//!
//! # Group commit
//!
//! Every acknowledged append is on disk (SQLite in WAL mode with
//! `synchronous = FULL`: the log is fsynced before the answer). An fsync
//! costs milliseconds, so the store does not do one per append. The
//! [`EventStore`] actor queues appends while the writer thread is busy; when
//! the writer finishes a commit, the actor hands it everything that queued up
//! meanwhile as one batch. The writer checks each append against the state
//! inside the transaction (so appends in one batch see each other), commits
//! once, and the actor answers each append. Under load the batch grows by
//! itself, so many concurrent writers share one fsync; alone, an append waits
//! for nothing.
//!
//! # Reading and subscribing
//!
//! Reads ([`EventStoreHandle::read_stream`], [`EventStoreHandle::read_all`])
//! run on reader threads. Catch-up subscriptions
//! ([`EventStoreHandle::subscribe_all`], [`EventStoreHandle::subscribe_stream`])
//! deliver history and then live events, each exactly once and in order, with
//! bounded buffers (see [`subscription`]). A stream's [`metadata`]
//! (`$maxCount`, `$maxAge`) hides its older events from stream readers.
//!
//! # Aggregates and projections
//!
//! An [`Aggregate`] decides which events a command produces and folds events
//! into state; an [`AggregateActor`] keeps one loaded, rebuilds it from the
//! latest snapshot and saves snapshots every N events; [`load_aggregate`]
//! rebuilds it at any version or time. A [`Projection`] folds `$all` into a
//! read model; a [`ProjectionActor`] keeps it, saves it with a checkpoint and
//! resumes from there after a restart.
//!
//! # Example
//!
//! ```
//! use actorbus_actors::event_store::{EventStore, EventStoreConfig, ExpectedVersion, NewEvent, AppendError};
//! use serde_json::json;
//!
//! actix_rt::System::new().block_on(async {
//!     let store = EventStore::in_memory(EventStoreConfig::default()).unwrap();
//!     let opened = NewEvent::new("Opened", json!({"owner": "ada"}));
//!     let r = store.append("account-1", ExpectedVersion::NoStream, vec![opened]).await.unwrap();
//!     assert_eq!(r.version, Some(0));
//!
//!     // A writer that did not see version 0 is refused.
//!     let late = store
//!         .append("account-1", ExpectedVersion::NoStream, vec![NewEvent::new("Opened", json!({}))])
//!         .await;
//!     assert!(matches!(late, Err(AppendError::WrongExpectedVersion { actual: Some(0), .. })));
//! });
//! ```

pub mod aggregate;
pub mod metadata;
pub mod projection;
mod store;
pub mod subscription;
mod workers;

pub use aggregate::{
    load_aggregate, Aggregate, AggregateActor, DomainEvent, EntityError, Execute, Executed, GetState, Rebuilt,
    SnapshotPolicy, Upto,
};
pub use metadata::StreamMetadata;
pub use projection::{GetProjection, Projection, ProjectionActor, ProjectionConfig, ProjectionStatus};
pub use store::{Append, EventStore, EventStoreConfig, EventStoreHandle};
pub use subscription::{Subscription, SubscriptionTarget};

pub use crate::store::{
    AppendError, AppendRequest, AppendResult, Checkpoint, Direction, EventMetadata, ExpectedVersion, NewEvent,
    RecordedEvent, Snapshot, StoreError, ALL_STREAM,
};
