//! # actorbus-actors
//!
//! The actors that actorbus's messaging patterns are made of, and the shared
//! pieces below them. Applications normally use the `actorbus` crate, which
//! wraps these in a small typed API; this crate is for reading how each pattern
//! works and for building new ones.
//!
//! ## Layout
//!
//! Shared pieces, used by every pattern:
//!
//! - [`envelope`]: the [`Envelope`](envelope::Envelope) every message travels in.
//! - [`error`]: failure reasons and the error type user handlers return.
//! - [`backpressure`]: bounded buffers and overflow policies.
//! - [`clock`]: the monotonic instant deadlines use and the wall-clock
//!   stamps of envelopes, from one cheap counter read.
//! - [`deadline`]: cheap timeouts for many in-flight requests.
//! - [`metrics`]: every metric name in one place.
//! - [`dead_letter`]: the hook through which patterns hand over what they
//!   give up on (wired to the dead letter queue once it lands).
//! - [`store`]: the data directory, schema migrations and storage backends
//!   (SQLite, in-memory) that persistent patterns build on.
//!
//! One module per pattern:
//!
//! - [`request_reply`]: typed asks to named services.
//! - [`jobs`]: asynchronous request-reply (submit, poll, cancel).
//! - [`event_store`]: event sourcing: the event store actor with group
//!   commit, catch-up subscriptions, aggregates, snapshots and projections.
//! - [`saga`]: sagas with compensations, a durable log and recovery.
//! - [`queue`]: point-to-point queues with acks, retries, visibility
//!   timeouts, priorities and partition keys.
//! - [`pool`]: competing consumers: supervised worker pools on a queue,
//!   autoscaled, async or blocking.
//! - [`dlq`]: the dead letter queue: entries with history, filters, purge
//!   and redrive.
//! - [`topic`]: publish-subscribe with wildcards, bounded subscriptions and
//!   overflow policies.
//! - [`scatter_gather`]: fan-out/fan-in with completion by all, first N,
//!   quorum, predicate or timeout.
//! - [`claim_check`]: large payloads parked in a store, tickets in their place.
//!
//! More are added beside them as the patterns land.

pub mod backpressure;
pub mod claim_check;
pub mod clock;
pub mod dead_letter;
pub mod deadline;
pub mod dlq;
pub mod envelope;
pub mod error;
pub mod event_store;
pub mod jobs;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod registry;
pub mod request_reply;
pub mod saga;
pub mod scatter_gather;
mod signal;
pub mod store;
pub mod supervision;
pub mod topic;
