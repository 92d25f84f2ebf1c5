//! Queues on the bus: point-to-point, priority and partitioned queues, and
//! the consumer pools that drain them.

use std::time::Duration;

use actorbus_actors::backpressure::OverflowPolicy;
use actorbus_actors::pool::{ConsumerPool, PoolBuilder, PoolHandler};
use actorbus_actors::queue::{Queue, QueueConfig, QueueHandle, QueueMessage, RetryPolicy};
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
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T: QueueMessage> QueueBuilder<T> {
    pub(crate) fn new(bus: Bus, name: &str) -> Self {
        QueueBuilder { bus, config: QueueConfig::named(name), worker: None, _t: std::marker::PhantomData }
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
        let QueueBuilder { bus, config, worker, .. } = self;
        let name = config.name.clone();
        if bus.queues().contains(&name) {
            return Err(NameTaken { kind: "queue", name }.into());
        }
        let workers = bus.workers();
        let arbiter = match (worker, workers.len()) {
            (Some(i), n) if n > 0 => Some(&workers[i % n]),
            _ => None,
        };
        let handle =
            Queue::<T>::start_in(config, bus.dlq().clone(), arbiter).map_err(|e| BusError::Invalid(e.to_string()))?;
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
