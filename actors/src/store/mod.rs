//! Storage: where actorbus keeps what must survive a restart.
//!
//! Everything persistent lives in one [`DataDir`] (`./actorbus-data/` by
//! default), one SQLite file per subsystem, each opened through
//! [`DataDir::open_sqlite`] with the durability settings (WAL journal,
//! `synchronous = FULL`) and its own schema [`migrate`](migrate::migrate)d by
//! `PRAGMA user_version`.
//!
//! The pieces, from the bottom up:
//!
//! - [`data_dir`]: the directory and durable connections in it.
//! - [`migrate`]: schema versions in code.
//! - [`kv`]: a namespaced key/value table for subsystems that only need to
//!   keep a few records.
//! - [`event_log`]: the event log model (streams, versions, global positions,
//!   expected versions, idempotent appends) and the three traits a backend
//!   implements: [`EventLog`], [`EventWriter`], [`EventReader`].
//! - [`sqlite`] and [`memory`]: the two event log backends.
//!
//! The traits are blocking on purpose: SQLite is a blocking library, and the
//! actors that use a store run these calls on `SyncArbiter` threads (see
//! [`event_store`](crate::event_store)). A network backend (for example NATS
//! JetStream) implements the same traits by blocking on its client on those
//! threads.
//!
//! ## Adding storage for another pattern
//!
//! A pattern that needs its own tables (the dead letter queue, the saga log,
//! the claim check) lists its [`Migration`]s and opens its own file with
//! `data_dir.open_sqlite("dlq", DLQ_MIGRATIONS)`; if a few records are all
//! it needs, it uses [`SqliteKv`]. Its traits and backends go in a module
//! beside [`event_log`].
//!
//! ```
//! use actorbus_actors::store::{
//!     AppendRequest, DataDir, EventLog, EventReader, EventWriter, ExpectedVersion, NewEvent, SqliteEventLog,
//!     Direction,
//! };
//! use serde_json::json;
//!
//! let dir = std::env::temp_dir().join(format!("actorbus-store-doc-{}", std::process::id()));
//! let log = SqliteEventLog::open(&DataDir::new(&dir))?;
//! let mut writer = log.writer()?;
//! // One commit (one fsync) for two appends to two streams.
//! let results = writer.append_batch(vec![
//!     AppendRequest::new("cart-1", ExpectedVersion::NoStream, vec![NewEvent::new("Created", json!({}))]),
//!     AppendRequest::new("cart-2", ExpectedVersion::NoStream, vec![NewEvent::new("Created", json!({}))]),
//! ])?;
//! assert!(results.iter().all(|r| r.is_ok()));
//! let all = log.reader()?.read_all(0, Direction::Forward, 10)?;
//! assert_eq!(all.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(), ["cart-1", "cart-2"]);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod data_dir;
mod error;
pub mod event_log;
mod group_commit;
pub mod kv;
pub mod memory;
pub mod migrate;
pub mod sqlite;

pub use data_dir::DataDir;
pub use error::StoreError;
pub use event_log::{
    AppendError, AppendOutcome, AppendRequest, AppendResult, Checkpoint, Direction, EventLog, EventMetadata,
    EventReader, EventWriter, ExpectedVersion, NewEvent, RecordedEvent, Snapshot, ALL_STREAM,
};
pub(crate) use group_commit::GroupCommit;
pub use kv::{KeyValueStore, MemoryKv, SqliteKv};
pub use memory::MemoryEventLog;
pub use migrate::Migration;
pub use sqlite::SqliteEventLog;
