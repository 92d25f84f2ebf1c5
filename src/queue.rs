//! Queues on the bus: point-to-point, priority and partitioned queues, and
//! the consumer pools that drain them.

use std::time::Duration;

use actorbus_actors::backpressure::OverflowPolicy;
use actorbus_actors::pool::{ConsumerPool, PoolBuilder, PoolHandler};
use actorbus_actors::queue::{Queue, QueueClaimCheck, QueueConfig, QueueError, QueueHandle, QueueMessage, RetryPolicy};
use actorbus_actors::registry::NameTaken;

use crate::bus::{Bus, BusError};

/// Configures a queue before it starts; get it with [`Bus::queue`].
///
/// ```
/// use actorbus::Bus;
/// use std::time::Duration;
///
/// actix::System::new().block_on(async {
///     let bus = Bus::builder().build().unwrap();
///     let jobs = bus.queue::<String>("doc-jobs").capacity(1_000).max_deliveries(3)
///         .visibility_timeout(Duration::from_secs(5)).start().unwrap();
///     let mut consumer = jobs.consumer(8).await.unwrap();
///     jobs.send("resize photo-1".into()).await.unwrap();
///     let d = consumer.recv().await.unwrap();
///     assert_eq!(d.payload(), "resize photo-1");
///     d.ack();
/// });
/// ```
#[must_use = "a queue starts only when `start` is called"]
pub struct QueueBuilder<T> {
    bus: Bus,
    config: QueueConfig,
    worker: Option<usize>,
    durable: bool,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T: QueueMessage> QueueBuilder<T> {
    pub(crate) fn new(bus: Bus, name: &str) -> Self {
        QueueBuilder {
            bus,
            config: QueueConfig::named(name),
            worker: None,
            durable: false,
            _t: std::marker::PhantomData,
        }
    }

    /// Messages held at most (default 100,000) and what a full queue does
    /// (default `block`).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.config.capacity = capacity;
        self
    }

    /// What a full queue does with one more message (default `block`).
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.config.overflow = policy;
        self
    }

    /// Deliveries before a message is dead-lettered (default 5).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.config.max_deliveries = n;
        self
    }

    /// How long a delivery may stay unsettled (default 30 s).
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.config.visibility_timeout = d;
        self
    }

    /// Retries and backoff (default: one immediate retry, then 100 ms
    /// doubling to 30 s with 20 % jitter).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// Deliver by priority, 9 first; `aging` lifts a waiting message one
    /// level per interval.
    pub fn priority(mut self, aging: Option<Duration>) -> Self {
        self.config.priority = true;
        self.config.aging = aging;
        self
    }

    /// Deliver messages with the same value of `header` one at a time, in
    /// order.
    pub fn partition_by_header(mut self, header: impl Into<String>) -> Self {
        self.config.partition_header = Some(header.into());
        self
    }

    /// Timer granularity (default 10 ms).
    pub fn tick(mut self, tick: Duration) -> Self {
        self.config.tick = tick;
        self
    }

    /// Payloads whose encoded size is above `threshold_bytes` travel as
    /// claim-check tickets in the bus's [claim-check store](Bus::claim_check):
    /// checked in on send, claimed (verified) before a consumer hands the
    /// delivery out, freed on the ack. Handlers see the payload.
    ///
    /// ```
    /// use actorbus::Bus;
    ///
    /// actix::System::new().block_on(async {
    ///     let bus = Bus::builder().build().unwrap();
    ///     let scans = bus.queue::<Vec<u8>>("scans").claim_check(64 * 1024).start().unwrap();
    ///     let mut consumer = scans.consumer(1).await.unwrap();
    ///     scans.send(vec![7u8; 100_000]).await.unwrap();
    ///     assert_eq!(scans.stats().claim_checked, 1, "checked in: the queue holds a ticket");
    ///     let d = consumer.recv().await.unwrap();
    ///     assert_eq!(d.payload().len(), 100_000, "the consumer gets the bytes");
    ///     d.ack();
    /// });
    /// ```
    pub fn claim_check(mut self, threshold_bytes: usize) -> Self {
        let ttl = self.config.claim_check.as_ref().and_then(|c| c.ttl);
        self.config.claim_check =
            Some(QueueClaimCheck { claims: self.bus.claim_check().clone(), threshold_bytes, ttl });
        self
    }

    /// With [`claim_check`](Self::claim_check): the queue's tickets expire
    /// after `ttl` (default: the store's, 24 h). A message still queued when
    /// its ticket expired is dead-lettered with reason `claim_check`.
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        self.config = self.config.with_claim_ttl(ttl);
        self
    }

    /// Keep the queue's messages in `queues.sqlite3` in the bus's data
    /// directory: a send resolves once its message is committed (and so
    /// survives a kill -9), and messages left at a stop or crash are
    /// delivered again when the queue is started again under the same name
    /// (see [durability](actorbus_actors::queue#durability)). `start` fails
    /// with [`BusError::NoDataDir`] on a bus without a data directory: an
    /// in-memory fallback would acknowledge writes it cannot keep.
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// Replaces the whole configuration but the name.
    pub fn config(mut self, config: QueueConfig) -> Self {
        self.config = QueueConfig { name: self.config.name, ..config };
        self
    }

    /// Runs the queue actor on worker arbiter `index` (modulo the number of
    /// workers) instead of the current arbiter.
    pub fn on_worker(mut self, index: usize) -> Self {
        self.worker = Some(index);
        self
    }

    /// Starts the queue and registers its name (`bus.queue_handle(name)`
    /// finds it) and its DLQ redrive target.
    pub fn start(self) -> Result<QueueHandle<T>, BusError> {
        let QueueBuilder { bus, config, worker, durable, .. } = self;
        let name = config.name.clone();
        if bus.queues().contains(&name) {
            return Err(NameTaken { kind: "queue", name }.into());
        }
        let workers = bus.workers();
        let arbiter = match (worker, workers.len()) {
            (Some(i), n) if n > 0 => Some(&workers[i % n]),
            _ => None,
        };
        let failed = |e: QueueError| match e {
            QueueError::Storage(e) => BusError::Storage(e),
            e => BusError::Invalid(e.to_string()),
        };
        let handle = if durable {
            let store = bus.queue_store(&format!("durable queue `{name}`"))?;
            Queue::<T>::start_durable_in(config, bus.dlq().clone(), store, arbiter).map_err(failed)?
        } else {
            Queue::<T>::start_in(config, bus.dlq().clone(), arbiter).map_err(failed)?
        };
        bus.queues().insert(&name, handle.clone())?;
        Ok(handle)
    }
}

impl Bus {
    /// Prepares a queue named `name` carrying `T`.
    pub fn queue<T: QueueMessage>(&self, name: &str) -> QueueBuilder<T> {
        QueueBuilder::new(self.clone(), name)
    }

    /// The queue `name`, if it was started with messages of type `T`.
    pub fn queue_handle<T: QueueMessage>(&self, name: &str) -> Option<QueueHandle<T>> {
        self.queues().get::<QueueHandle<T>>(name).ok().map(|h| (*h).clone())
    }

    /// Prepares a pool of workers competing for `queue`'s messages, spread
    /// over the bus's worker arbiters (when it has some); `factory` builds
    /// each worker's handler, again after a panic.
    pub fn consumer_pool<T, H, F>(&self, queue: &QueueHandle<T>, factory: F) -> PoolBuilder<T, H>
    where
        T: QueueMessage,
        H: PoolHandler<T>,
        F: Fn() -> H + Send + Sync + 'static,
    {
        ConsumerPool::builder(queue.clone(), factory).arbiters(self.workers().to_vec())
    }
}
