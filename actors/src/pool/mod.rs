//! Competing consumers (DESIGN §6.11): a pool of workers taking messages
//! from one queue.
//!
//! A [`ConsumerPool`] actor runs N workers, each with its own
//! [`Consumer`](crate::queue::Consumer) on the queue, so the queue's credit
//! spreads messages over whoever has room. A worker runs a [`PoolHandler`]
//! (built by a factory) on each delivery and settles it: `Ok` acks, `Err`
//! nacks (the queue's retry policy and `max_deliveries` apply), a panic nacks
//! with reason `panic: …`.
//!
//! ## Supervision
//!
//! The pool supervises its workers one-for-one: a worker whose handler
//! panicked is replaced by a new worker with a fresh handler from the
//! factory (its state may be corrupt), and the delivery it held is
//! redelivered by the queue. Deliveries it had prefetched but not started go
//! back to the queue without counting an attempt. Replacements are counted
//! in `actorbus_supervision_restarts_total{kind="pool"}`. With a
//! [`handler_timeout`](PoolBuilder::handler_timeout), a handler that runs
//! longer is abandoned (its future dropped) and the delivery nacked with
//! reason `timeout`; without one, the queue's visibility timeout redelivers
//! it and the slow handler's late settle is ignored.
//!
//! ## Where workers run
//!
//! Async workers are tasks spread round-robin over the
//! [`arbiters`](PoolBuilder::arbiters) given (the bus's worker arbiters), so
//! CPU-bound handlers use several cores. Blocking handlers
//! ([`BlockingHandler`], [`BlockingPool`]) run on a `SyncArbiter`
//! of N threads fed by one consumer with N credits; a panic there rebuilds
//! that thread's handler.
//!
//! ## Scaling
//!
//! Async pools scale between [`min and max`](PoolBuilder::scale) workers:
//! every [`scale_interval`](PoolBuilder::scale_interval) the pool adds a
//! worker while the queue holds more than
//! [`scale_up_depth`](PoolBuilder::scale_up_depth) waiting messages per
//! worker, and removes one once the queue has been empty and idle for
//! [`idle_before_scale_down`](PoolBuilder::idle_before_scale_down). A removed
//! worker finishes what it holds first.
//!
//! ## Order
//!
//! Workers run in parallel, so a plain queue's order is not kept across
//! them. For per-key order, partition the queue
//! ([`QueueConfig::partition_header`](crate::queue::QueueConfig)): the queue
//! then hands out one message per key at a time, so messages with the same
//! key are handled one after the other, in order, while different keys run
//! in parallel.
//!
//! ```
//! use actorbus_actors::dlq::DlqSink;
//! use actorbus_actors::pool::{handler_fn, ConsumerPool};
//! use actorbus_actors::queue::{Queue, QueueConfig};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//!
//! actix_rt::System::new().block_on(async {
//!     let queue = Queue::<u64>::start(QueueConfig::named("sums"), DlqSink::in_memory()).unwrap();
//!     let total = Arc::new(AtomicU64::new(0));
//!     let sum = total.clone();
//!     let pool = ConsumerPool::builder(queue.clone(), move || {
//!         let sum = sum.clone();
//!         handler_fn(move |env: actorbus_actors::envelope::Envelope<u64>| {
//!             sum.fetch_add(env.payload, Ordering::Relaxed);
//!             async { Ok(()) }
//!         })
//!     })
//!     .workers(4)
//!     .start()
//!     .await
//!     .unwrap();
//!     for i in 1..=100 {
//!         queue.send(i).await.unwrap();
//!     }
//!     while queue.stats().acked < 100 {
//!         actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
//!     }
//!     assert_eq!(total.load(Ordering::Relaxed), 5050);
//!     assert_eq!(pool.workers(), 4);
//! });
//! ```

mod blocking;
mod workers;

pub use blocking::{BlockingHandler, BlockingPool};
pub use workers::{ConsumerPool, PoolBuilder, PoolHandle};

use std::future::Future;

use crate::envelope::Envelope;
use crate::error::HandlerError;

/// Handles one delivery of a pool's queue. State lives in `self` and is
/// rebuilt from the pool's factory after a panic.
pub trait PoolHandler<T>: 'static {
    /// Handles one message; `Ok` acks it, `Err` nacks it.
    fn handle(&mut self, envelope: Envelope<T>) -> impl Future<Output = Result<(), HandlerError>>;
}

/// A [`PoolHandler`] from a closure; see [`handler_fn`].
pub struct HandlerFn<F>(F);

/// Makes a stateless pool handler from a closure returning a future.
pub fn handler_fn<T, F, Fut>(f: F) -> HandlerFn<F>
where
    F: FnMut(Envelope<T>) -> Fut + 'static,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    HandlerFn(f)
}

impl<T, F, Fut> PoolHandler<T> for HandlerFn<F>
where
    F: FnMut(Envelope<T>) -> Fut + 'static,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    fn handle(&mut self, envelope: Envelope<T>) -> impl Future<Output = Result<(), HandlerError>> {
        (self.0)(envelope)
    }
}
