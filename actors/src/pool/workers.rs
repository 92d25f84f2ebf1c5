//! The async `ConsumerPool` actor and its workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::PoolHandler;
use crate::error::FailureReason;
use crate::metrics as m;
use crate::queue::{QueueError, QueueHandle, QueueMessage};
use crate::supervision::panic;

/// What a pool's workers and handle tell the pool actor.
enum PoolEvent {
    /// A worker ended; `Some(message)` when its handler panicked.
    Exited { id: u64, panic: Option<String> },
    /// Stop every worker, then answer.
    Stop(oneshot::Sender<()>),
}

/// Counters shared by a pool and its handle.
#[derive(Default)]
struct PoolShared {
    workers: AtomicUsize,
    restarts: AtomicU64,
}

struct Settings {
    name: String,
    min: usize,
    max: usize,
    prefetch: usize,
    handler_timeout: Option<Duration>,
    scale_interval: Duration,
    scale_up_depth: u64,
    idle_before_scale_down: Duration,
}

#[derive(Clone)]
struct WorkerMetrics {
    ok: metrics::Counter,
    error: metrics::Counter,
    panic: metrics::Counter,
    timeout: metrics::Counter,
}

impl WorkerMetrics {
    fn new(name: &str) -> Self {
        let c = |o: &'static str| metrics::counter!(m::POOL_HANDLED, m::LABEL_NAME => name.to_owned(), m::LABEL_OUTCOME => o);
        WorkerMetrics { ok: c("ok"), error: c("error"), panic: c("panic"), timeout: c("timeout") }
    }
}

/// Configures a [`ConsumerPool`]; get one with [`ConsumerPool::builder`].
#[must_use = "a pool starts only when `start` is awaited"]
pub struct PoolBuilder<T, H> {
    queue: QueueHandle<T>,
    factory: Arc<dyn Fn() -> H + Send + Sync>,
    arbiters: Vec<ArbiterHandle>,
    settings: Settings,
}

impl<T: QueueMessage, H: PoolHandler<T>> PoolBuilder<T, H> {
    /// The pool's name in metrics (default: the queue's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = name.into();
        self
    }

    /// A fixed number of workers (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.settings.min = n;
        self.settings.max = n;
        self
    }

    /// Scale between `min` and `max` workers by queue depth.
    pub fn scale(mut self, min: usize, max: usize) -> Self {
        self.settings.min = min;
        self.settings.max = max;
        self
    }

    /// Unsettled deliveries each worker may hold (default 1: a worker takes
    /// the next message only when it finished the last).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.settings.prefetch = n.max(1);
        self
    }

    /// Abandon a handler after this and nack with reason `timeout` (default:
    /// no limit; the queue's visibility timeout redelivers).
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.settings.handler_timeout = Some(d);
        self
    }

    /// Arbiters to spread workers over, round-robin (default: the current
    /// one).
    pub fn arbiters(mut self, arbiters: Vec<ArbiterHandle>) -> Self {
        self.arbiters = arbiters;
        self
    }

    /// How often the pool looks at the queue to scale (default 100 ms).
    pub fn scale_interval(mut self, d: Duration) -> Self {
        self.settings.scale_interval = d;
        self
    }

    /// Add a worker while more than this many messages wait per worker
    /// (default 10).
    pub fn scale_up_depth(mut self, n: u64) -> Self {
        self.settings.scale_up_depth = n.max(1);
        self
    }

    /// Remove a worker after the queue has been empty and idle this long
    /// (default 1 s).
    pub fn idle_before_scale_down(mut self, d: Duration) -> Self {
        self.settings.idle_before_scale_down = d;
        self
    }

    /// Starts the pool actor (on the current arbiter) and its `min`
    /// workers.
    pub async fn start(self) -> Result<PoolHandle, QueueError> {
        let PoolBuilder { queue, factory, arbiters, settings } = self;
        if settings.max == 0 || settings.min > settings.max || settings.scale_interval.is_zero() {
            return Err(QueueError::Invalid(format!(
                "pool `{}`: need 0 <= min <= max, max >= 1 and a positive scale interval",
                settings.name
            )));
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let shared = Arc::new(PoolShared::default());
        let pool = ConsumerPool {
            workers_gauge: metrics::gauge!(m::POOL_WORKERS, m::LABEL_NAME => settings.name.clone()),
            restarts: metrics::counter!(m::SUPERVISION_RESTARTS, m::LABEL_KIND => "pool", m::LABEL_NAME => settings.name.clone()),
            panics: metrics::counter!(m::SUPERVISION_PANICS, m::LABEL_KIND => "pool", m::LABEL_NAME => settings.name.clone()),
            worker_metrics: WorkerMetrics::new(&settings.name),
            settings,
            queue,
            factory,
            arbiters,
            next_arbiter: 0,
            next_id: 0,
            workers: HashMap::new(),
            events: tx.clone(),
            shared: Arc::clone(&shared),
            last_busy: Instant::now(),
            stopping: None,
        };
        ConsumerPool::create(move |ctx| {
            ctx.add_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
            pool
        });
        // The workers start from the actor; wait until `min` are counted.
        let handle = PoolHandle { events: tx, shared };
        Ok(handle)
    }
}

/// A handle on a running pool.
#[derive(Clone)]
pub struct PoolHandle {
    events: mpsc::UnboundedSender<PoolEvent>,
    shared: Arc<PoolShared>,
}

impl std::fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHandle").field("workers", &self.workers()).finish_non_exhaustive()
    }
}

impl PoolHandle {
    /// Workers running now.
    pub fn workers(&self) -> usize {
        self.shared.workers.load(Ordering::Relaxed)
    }

    /// Workers replaced after a panic so far.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// Stops every worker: each finishes what it holds (prefetched
    /// deliveries not started go back to the queue), then the pool stops.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.events.send(PoolEvent::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Runs async workers competing for one queue (see the [module docs](super)).
pub struct ConsumerPool<T, H> {
    settings: Settings,
    queue: QueueHandle<T>,
    factory: Arc<dyn Fn() -> H + Send + Sync>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    next_id: u64,
    /// Running workers and how to ask each to stop.
    workers: HashMap<u64, Option<oneshot::Sender<()>>>,
    events: mpsc::UnboundedSender<PoolEvent>,
    shared: Arc<PoolShared>,
    last_busy: Instant,
    stopping: Option<oneshot::Sender<()>>,
    workers_gauge: metrics::Gauge,
    restarts: metrics::Counter,
    panics: metrics::Counter,
    worker_metrics: WorkerMetrics,
}

impl<T: QueueMessage, H: PoolHandler<T>> ConsumerPool<T, H> {
    /// Prepares a pool on `queue`; `factory` builds each worker's handler
    /// (again for a worker that replaces one that panicked).
    pub fn builder<F>(queue: QueueHandle<T>, factory: F) -> PoolBuilder<T, H>
    where
        F: Fn() -> H + Send + Sync + 'static,
    {
        let name = queue.name().to_owned();
        PoolBuilder {
            queue,
            factory: Arc::new(factory),
            arbiters: Vec::new(),
            settings: Settings {
                name,
                min: 1,
                max: 1,
                prefetch: 1,
                handler_timeout: None,
                scale_interval: Duration::from_millis(100),
                scale_up_depth: 10,
                idle_before_scale_down: Duration::from_secs(1),
            },
        }
    }

    fn count(&self) {
        self.shared.workers.store(self.workers.len(), Ordering::Relaxed);
        self.workers_gauge.set(self.workers.len() as f64);
    }

    fn spawn_worker(&mut self) {
        self.next_id += 1;
        let id = self.next_id;
        let (stop_tx, stop_rx) = oneshot::channel();
        self.workers.insert(id, Some(stop_tx));
        self.count();
        let queue = self.queue.clone();
        let factory = Arc::clone(&self.factory);
        let events = self.events.clone();
        let prefetch = self.settings.prefetch;
        let timeout = self.settings.handler_timeout;
        let metrics = self.worker_metrics.clone();
        let job = move || {
            actix_rt::spawn(async move {
                // Reports the exit even if the task dies some other way.
                let mut guard = ExitGuard { id, events, panic: Some("worker task ended abruptly".into()) };
                guard.panic = run_worker(queue, factory, prefetch, timeout, stop_rx, metrics).await;
            });
        };
        if self.arbiters.is_empty() {
            job();
        } else {
            let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
            self.next_arbiter += 1;
            if !arbiter.spawn_fn(job) {
                tracing::error!(pool = %self.settings.name, "worker arbiter is gone; worker not started");
                self.workers.remove(&id);
                self.count();
            }
        }
    }

    fn stop_one(&mut self) {
        if let Some(stop) = self.workers.values_mut().find_map(Option::take) {
            let _ = stop.send(());
        }
    }

    fn scale(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let (depth, in_flight) = (self.queue.depth(), self.queue.in_flight());
        if depth > 0 || in_flight > 0 {
            self.last_busy = Instant::now();
        }
        // Workers asked to stop still hold a slot until they exit.
        let active = self.workers.values().filter(|s| s.is_some()).count();
        let s = &self.settings;
        if active < s.min || (active < s.max && depth > s.scale_up_depth.saturating_mul(active.max(1) as u64)) {
            self.spawn_worker();
        } else if active > s.min && self.last_busy.elapsed() >= s.idle_before_scale_down {
            self.stop_one();
            self.last_busy = Instant::now();
        }
    }
}

struct ExitGuard {
    id: u64,
    events: mpsc::UnboundedSender<PoolEvent>,
    panic: Option<String>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let _ = self.events.send(PoolEvent::Exited { id: self.id, panic: self.panic.take() });
    }
}

/// One worker: takes deliveries until asked to stop, or until its handler
/// panics (returns the panic message; the pool replaces it).
async fn run_worker<T: QueueMessage, H: PoolHandler<T>>(
    queue: QueueHandle<T>,
    factory: Arc<dyn Fn() -> H + Send + Sync>,
    prefetch: usize,
    timeout: Option<Duration>,
    mut stop: oneshot::Receiver<()>,
    metrics: WorkerMetrics,
) -> Option<String> {
    let mut handler = match panic::catch(|| factory()) {
        Ok(h) => h,
        Err(msg) => return Some(format!("factory: {msg}")),
    };
    let Ok(mut consumer) = queue.consumer(prefetch).await else { return None };
    let mut stopping = false;
    loop {
        let delivery = if stopping {
            consumer.recv().await
        } else {
            tokio::select! {
                d = consumer.recv() => d,
                _ = &mut stop => {
                    stopping = true;
                    consumer.close();
                    continue;
                }
            }
        };
        let delivery = delivery?;
        let (envelope, settler) = delivery.into_parts();
        // The call itself inside the boundary: a closure handler may panic
        // before it returns its future.
        let work = panic::catch_async(async { handler.handle(envelope).await });
        let outcome = match timeout {
            Some(t) => tokio::time::timeout(t, work).await.ok(),
            None => Some(work.await),
        };
        match outcome {
            Some(Ok(Ok(()))) => {
                metrics.ok.increment(1);
                settler.ack();
            }
            Some(Ok(Err(e))) => {
                metrics.error.increment(1);
                settler.nack_with(FailureReason::Failed(e.message().to_owned()));
            }
            Some(Err(msg)) => {
                metrics.panic.increment(1);
                settler.nack_with(FailureReason::Panic(msg.clone()));
                // The handler's state may be corrupt: this worker ends and the
                // pool starts a fresh one. Prefetched deliveries go back.
                return Some(msg);
            }
            None => {
                metrics.timeout.increment(1);
                settler.nack_with(FailureReason::Timeout);
            }
        }
    }
}

impl<T: QueueMessage, H: PoolHandler<T>> Actor for ConsumerPool<T, H> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for _ in 0..self.settings.min {
            self.spawn_worker();
        }
        let interval = self.settings.scale_interval;
        ctx.run_interval(interval, |act, _| act.scale());
    }
}

impl<T: QueueMessage, H: PoolHandler<T>> StreamHandler<PoolEvent> for ConsumerPool<T, H> {
    fn handle(&mut self, event: PoolEvent, ctx: &mut Context<Self>) {
        match event {
            PoolEvent::Exited { id, panic } => {
                self.workers.remove(&id);
                if let Some(msg) = panic {
                    tracing::warn!(pool = %self.settings.name, worker = id, panic = %msg, "pool worker panicked; replacing it");
                    self.panics.increment(1);
                    if self.stopping.is_none() {
                        self.restarts.increment(1);
                        self.shared.restarts.fetch_add(1, Ordering::Relaxed);
                        self.spawn_worker();
                    }
                }
                self.count();
                if self.workers.is_empty() {
                    if let Some(done) = self.stopping.take() {
                        let _ = done.send(());
                        ctx.stop();
                    }
                }
            }
            PoolEvent::Stop(done) => {
                for stop in self.workers.values_mut().filter_map(Option::take) {
                    let _ = stop.send(());
                }
                if self.workers.is_empty() {
                    let _ = done.send(());
                    ctx.stop();
                } else {
                    self.stopping = Some(done);
                }
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}
