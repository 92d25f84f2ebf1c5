//! The [`Bus`]: starts the actor system's pieces and hands out typed handles.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter, ArbiterHandle};
use actorbus_actors::backpressure::OverflowPolicy;
use actorbus_actors::claim_check::ClaimCheck;
use actorbus_actors::dlq::{DlqHandle, DlqSink};
use actorbus_actors::event_store::{EventStore, EventStoreConfig, EventStoreHandle};
use actorbus_actors::jobs::{JobTracker, JobTrackerConfig};
use actorbus_actors::queue::{QueueStore, SqliteQueueStore};
use actorbus_actors::registry::{Lookup, NameTaken, Registry};
use actorbus_actors::request_reply::{Control, Request, RequestError, Service, ServiceActor, ServiceRef, ServiceSpec};
use actorbus_actors::saga::{SagaCoordinator, SagaCoordinatorHandle};
use actorbus_actors::scatter_gather::{ScatterGather, ScatterGatherHandle};
use actorbus_actors::store::{DataDir, StoreError};
use actorbus_actors::supervision::{
    AddChild, Backoff, ChildLink, DuplicateChild, Intensity, Restart, Strategy, SupervisionEvent, Supervisor,
    SupervisorSpec,
};
use actorbus_actors::topic::Topics;
use tokio::sync::broadcast;

use crate::jobs::Jobs;
use crate::request::RequestBuilder;
use crate::saga::SagasBuilder;

/// Why the bus could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The bus must be built inside a running actix `System`.
    #[error("no actix System is running on this thread (start one with #[actix::main] or System::new())")]
    NoSystem,
    /// The name is already used.
    #[error(transparent)]
    NameTaken(#[from] NameTaken),
    /// The supervisor already has a child of that name.
    #[error(transparent)]
    DuplicateChild(#[from] DuplicateChild),
    /// The supervisor to start under is gone.
    #[error("supervisor `{0}` is not running")]
    SupervisorGone(String),
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The bus is shutting down.
    #[error("the bus is shutting down")]
    ShuttingDown,
    /// Storage could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    /// Something durable was asked of a bus built without a data directory
    /// (see [`BusBuilder::data_dir`]); what it was.
    #[error("{0} needs a bus with a data directory (BusBuilder::data_dir)")]
    NoDataDir(String),
}

/// Configures and builds a [`Bus`].
#[derive(Debug, Clone)]
pub struct BusBuilder {
    workers: usize,
    default_timeout: Duration,
    root: SupervisorSpec,
    metrics: bool,
    jobs: JobTrackerConfig,
    data_dir: Option<PathBuf>,
    claim_sweep: Duration,
}

impl Default for BusBuilder {
    fn default() -> Self {
        BusBuilder {
            workers: 0,
            default_timeout: Duration::from_secs(5),
            root: SupervisorSpec::default(),
            metrics: true,
            jobs: JobTrackerConfig::default(),
            data_dir: None,
            claim_sweep: Duration::from_secs(60),
        }
    }
}

impl BusBuilder {
    /// Extra arbiters (threads) to run services on; see
    /// [`ServiceBuilder::on_worker`]. Default 0: everything runs on the
    /// arbiter that built the bus.
    pub fn worker_arbiters(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Timeout of a request that does not set one. Default 5 s.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// How the root supervisor treats its children. Default one-for-one,
    /// 5 restarts in 5 s, backoff 10 ms to 1 s.
    pub fn root_supervisor(mut self, spec: SupervisorSpec) -> Self {
        self.root = spec;
        self
    }

    /// Install the Prometheus recorder (default true). Turn it off to use a
    /// recorder of your own; actorbus records into whichever is installed.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Limits of the job tracker (retention of ended jobs, pending jobs per
    /// kind, jobs retained in all).
    pub fn jobs(mut self, config: JobTrackerConfig) -> Self {
        self.jobs = config;
        self
    }

    /// Keep persistent state (the event store, …) in SQLite files under
    /// `dir` (created if missing). Without it everything lives in memory and
    /// is gone when the process ends: fine for tests, not for data.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// How often the claim-check store deletes payloads whose tickets
    /// expired (default every 60 s), so that a payload nobody claims or
    /// releases goes at its expiry.
    pub fn claim_check_sweep(mut self, every: Duration) -> Self {
        self.claim_sweep = every.max(Duration::from_millis(1));
        self
    }

    /// Starts the bus on the current actix `System`, opening its storage.
    pub fn build(self) -> Result<Bus, BusError> {
        actix_rt::System::try_current().ok_or(BusError::NoSystem)?;
        let metrics = if self.metrics { crate::telemetry::install() } else { None };
        let event_store = match &self.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| BusError::Storage(StoreError::Io { path: dir.clone(), message: e.to_string() }))?;
                EventStore::open(&DataDir::new(dir), EventStoreConfig::default())?
            }
            None => EventStore::in_memory(EventStoreConfig::default())?,
        };
        let dlq = match &self.data_dir {
            Some(dir) => DlqSink::open(&DataDir::new(dir))?,
            None => DlqSink::in_memory(),
        };
        let claims = match &self.data_dir {
            Some(dir) => ClaimCheck::open(&DataDir::new(dir))?,
            None => ClaimCheck::in_memory(),
        };
        // Purging a dead letter that kept a claim-check ticket frees its payload.
        dlq.attach_claim_check(claims.clone());
        // Runs until the System stops.
        drop(claims.start_sweeper(self.claim_sweep));
        let (events, _) = broadcast::channel(1024);
        let root = Supervisor::start("root", self.root, None, events.clone());
        let workers = (0..self.workers).map(|_| Arbiter::new()).collect::<Vec<_>>();
        let worker_handles = workers.iter().map(Arbiter::handle).collect();
        Ok(Bus {
            inner: Arc::new(Inner {
                root,
                services: Registry::new("service"),
                queues: Registry::new("queue"),
                hosted: Mutex::new(Vec::new()),
                events,
                workers: worker_handles,
                closing: Arc::new(AtomicBool::new(false)),
                default_timeout: self.default_timeout,
                metrics,
                jobs: JobTracker::new(self.jobs).with_dlq(dlq.clone()).start(),
                event_store,
                dlq,
                data_dir: self.data_dir,
                sagas_claimed: AtomicBool::new(false),
                sagas: OnceLock::new(),
                topics: Topics::new(),
                scatter: ScatterGather::start_with(10_000),
                claims,
                queue_store: Mutex::new(None),
            }),
        })
    }
}

/// A started service, for shutdown.
struct Hosted {
    name: String,
    queued: Box<dyn Fn() -> usize + Send + Sync>,
    close: Box<dyn Fn() + Send + Sync>,
    shutdown: Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>,
}

struct Inner {
    root: Addr<Supervisor>,
    services: Registry,
    queues: Registry,
    hosted: Mutex<Vec<Hosted>>,
    events: broadcast::Sender<SupervisionEvent>,
    workers: Vec<ArbiterHandle>,
    closing: Arc<AtomicBool>,
    default_timeout: Duration,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    jobs: Addr<JobTracker>,
    event_store: EventStoreHandle,
    dlq: DlqHandle,
    data_dir: Option<PathBuf>,
    sagas_claimed: AtomicBool,
    sagas: OnceLock<SagaCoordinatorHandle>,
    topics: Topics,
    scatter: ScatterGatherHandle,
    claims: ClaimCheck,
    /// `queues.sqlite3`, opened by the first durable queue.
    queue_store: Mutex<Option<Arc<dyn QueueStore>>>,
}

/// The runtime: owns the supervision tree, the registries and the worker
/// arbiters, and hands out typed handles. Cheap to clone; every clone is the
/// same bus.
///
/// ```no_run
/// use actorbus::{service_fn, Bus, Request};
///
/// struct Greet(String);
/// impl Request for Greet { type Response = String; }
///
/// #[actix::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let bus = Bus::builder().build()?;
///     bus.service("greeter", || service_fn(|Greet(name), _cx| async move { Ok(format!("hello {name}")) }))
///         .start()
///         .await?;
///     let answer = bus.request("greeter", Greet("ada".into())).await?;
///     assert_eq!(answer, "hello ada");
///     bus.shutdown(std::time::Duration::from_secs(1)).await;
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl Bus {
    /// A builder with the defaults.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    /// Prepares a service named `name` whose state `factory` builds (again
    /// after every restart). Start it with [`ServiceBuilder::start`].
    pub fn service<S, F>(&self, name: &str, factory: F) -> ServiceBuilder<S>
    where
        S: Service,
        F: Fn() -> S + Send + Sync + 'static,
    {
        ServiceBuilder {
            bus: self.clone(),
            parent: self.inner.root.clone(),
            name: name.to_owned(),
            factory: Arc::new(factory),
            restart: Restart::Permanent,
            capacity: 1024,
            overflow: OverflowPolicy::Reject,
            worker: None,
        }
    }

    /// Prepares a supervisor named `name` under the root supervisor.
    pub fn supervisor(&self, name: &str) -> SupervisorBuilder {
        SupervisorBuilder::new(self.clone(), self.inner.root.clone(), "root".into(), name)
    }

    /// A request to the service `service`; `.await` it for the response.
    pub fn request<R: Request>(&self, service: &str, req: R) -> RequestBuilder<R> {
        let target = self.inner.services.get::<ServiceRef<R>>(service).map_err(|e| match e {
            Lookup::Unknown => RequestError::UnknownService(service.to_owned()),
            Lookup::WrongType => RequestError::WrongRequestType(service.to_owned()),
        });
        RequestBuilder::new(target, req, self.inner.default_timeout)
    }

    /// A typed handle to the service `name`, resolved once.
    pub fn service_handle<R: Request>(&self, name: &str) -> Result<ServiceHandle<R>, RequestError> {
        match self.inner.services.get::<ServiceRef<R>>(name) {
            Ok(target) => Ok(ServiceHandle { target, timeout: self.inner.default_timeout }),
            Err(Lookup::Unknown) => Err(RequestError::UnknownService(name.to_owned())),
            Err(Lookup::WrongType) => Err(RequestError::WrongRequestType(name.to_owned())),
        }
    }

    /// The job tracker: asynchronous request-reply.
    pub fn jobs(&self) -> Jobs {
        Jobs::new(self.clone(), self.inner.jobs.clone())
    }

    /// The event store: SQLite under the data directory, or in memory.
    pub fn event_store(&self) -> &EventStoreHandle {
        &self.inner.event_store
    }

    /// The dead letter queue: durable (`dlq.sqlite3` in the data directory)
    /// when the bus has a data directory, in memory otherwise. Every pattern
    /// on this bus dead-letters here.
    pub fn dlq(&self) -> &DlqHandle {
        &self.inner.dlq
    }

    /// Registers saga definitions and starts the bus's saga coordinator
    /// (once per bus).
    pub fn sagas(&self) -> SagasBuilder {
        SagasBuilder::new(self.clone(), SagaCoordinator::builder())
    }

    /// The saga coordinator, once [`sagas`](Self::sagas) started it.
    pub fn saga_coordinator(&self) -> Option<&SagaCoordinatorHandle> {
        self.inner.sagas.get()
    }

    pub(crate) fn queues(&self) -> &Registry {
        &self.inner.queues
    }

    /// The store of the bus's durable queues (`queues.sqlite3` in the data
    /// directory, opened on first use); `what` names the caller in the
    /// error of a bus without a data directory.
    pub(crate) fn queue_store(&self, what: &str) -> Result<Arc<dyn QueueStore>, BusError> {
        let Some(dir) = self.data_dir() else {
            return Err(BusError::NoDataDir(what.to_owned()));
        };
        let mut slot = self.inner.queue_store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(store) = slot.as_ref() {
            return Ok(Arc::clone(store));
        }
        let store: Arc<dyn QueueStore> = Arc::new(SqliteQueueStore::open(&DataDir::new(dir))?);
        *slot = Some(Arc::clone(&store));
        Ok(store)
    }

    pub(crate) fn claim_sagas(&self) -> bool {
        !self.inner.sagas_claimed.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    pub(crate) fn set_sagas(&self, handle: SagaCoordinatorHandle) {
        let _ = self.inner.sagas.set(handle);
    }

    /// Every topic and subscription of the bus; see [`Bus::topic`].
    pub fn topics(&self) -> &Topics {
        &self.inner.topics
    }

    /// The bus's claim-check store: `claims.sqlite3` in the data directory,
    /// or in memory.
    pub fn claim_check(&self) -> &ClaimCheck {
        &self.inner.claims
    }

    pub(crate) fn scatter_runner(&self) -> &ScatterGatherHandle {
        &self.inner.scatter
    }

    pub(crate) fn service_ref<R: Request>(&self, name: &str) -> Result<Arc<ServiceRef<R>>, RequestError> {
        self.inner.services.get::<ServiceRef<R>>(name).map_err(|e| match e {
            Lookup::Unknown => RequestError::UnknownService(name.to_owned()),
            Lookup::WrongType => RequestError::WrongRequestType(name.to_owned()),
        })
    }

    pub(crate) fn default_timeout(&self) -> Duration {
        self.inner.default_timeout
    }

    /// Where persistent state lives (`None`: in memory).
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.inner.data_dir.as_deref()
    }

    /// What the supervision tree does from now on (restarts, stops,
    /// escalations). The channel keeps the last 1024 events for a slow reader.
    pub fn supervision_events(&self) -> broadcast::Receiver<SupervisionEvent> {
        self.inner.events.subscribe()
    }

    /// The metrics in Prometheus text format, when actorbus installed the
    /// recorder.
    pub fn render_metrics(&self) -> Option<String> {
        self.inner.metrics.as_ref().map(|h| h.render())
    }

    /// The worker arbiters configured with [`BusBuilder::worker_arbiters`].
    pub fn workers(&self) -> &[ArbiterHandle] {
        &self.inner.workers
    }

    /// Stops taking requests, lets every service finish what is queued and
    /// every running saga end (up to `drain`), then stops the services and worker arbiters. Requests still
    /// queued at the end are answered with `Unavailable`; the report counts
    /// them. Requests sent after this starts get `ShuttingDown`.
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        let started = Instant::now();
        let hosted: Vec<Hosted> = match self.inner.hosted.lock() {
            Ok(mut hosted) => hosted.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        self.inner.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in &hosted {
            (h.close)();
        }
        let sagas_running = || self.inner.sagas.get().map_or(0, |s| s.running());
        while (hosted.iter().any(|h| (h.queued)() > 0) || sagas_running() > 0) && started.elapsed() < drain {
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
        let sagas_left = sagas_running();
        if sagas_left > 0 {
            tracing::warn!(
                sagas = sagas_left,
                "shutdown: sagas still running (a durable log resumes them at the next start)"
            );
        }
        let mut abandoned = Vec::new();
        for h in &hosted {
            let left = (h.queued)();
            if left > 0 {
                tracing::warn!(service = %h.name, left, "shutdown: requests left undrained");
                abandoned.push((h.name.clone(), left));
            }
            (h.shutdown)().await;
        }
        for worker in &self.inner.workers {
            worker.stop();
        }
        ShutdownReport { services: hosted.len(), abandoned, sagas_running: sagas_left, took: started.elapsed() }
    }
}

/// What [`Bus::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Services stopped.
    pub services: usize,
    /// Services that still had queued requests when the drain time ran out,
    /// and how many (each answered `Unavailable`).
    pub abandoned: Vec<(String, usize)>,
    /// Sagas still running when the drain time ran out. With a durable log
    /// they resume at the next start; with an in-memory one they are lost.
    pub sagas_running: usize,
    /// How long it took.
    pub took: Duration,
}

/// A typed handle to one service: like [`Bus::request`] without the name
/// lookup. Valid across restarts.
pub struct ServiceHandle<R: Request> {
    target: Arc<ServiceRef<R>>,
    timeout: Duration,
}

impl<R: Request> Clone for ServiceHandle<R> {
    fn clone(&self) -> Self {
        ServiceHandle { target: self.target.clone(), timeout: self.timeout }
    }
}

impl<R: Request> ServiceHandle<R> {
    /// A request to this service; `.await` it.
    pub fn request(&self, req: R) -> RequestBuilder<R> {
        RequestBuilder::new(Ok(self.target.clone()), req, self.timeout)
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        self.target.name()
    }

    /// Requests waiting in its inbox.
    pub fn queued(&self) -> usize {
        self.target.queued()
    }

    pub(crate) fn service_ref(&self) -> Arc<ServiceRef<R>> {
        self.target.clone()
    }
}

/// Configures a service before it starts; see [`Bus::service`].
#[must_use = "a service starts only when `start` is awaited"]
pub struct ServiceBuilder<S: Service> {
    bus: Bus,
    parent: Addr<Supervisor>,
    name: String,
    factory: Arc<dyn Fn() -> S + Send + Sync>,
    restart: Restart,
    capacity: usize,
    overflow: OverflowPolicy,
    worker: Option<usize>,
}

impl<S: Service> ServiceBuilder<S> {
    /// Inbox capacity (default 1024) and what a full inbox does: `Reject`
    /// (default: the request fails with `MailboxFull`) or `Block` (the
    /// request waits for room, within its timeout).
    pub fn mailbox(mut self, capacity: usize, overflow: OverflowPolicy) -> Self {
        self.capacity = capacity;
        self.overflow = overflow;
        self
    }

    /// When the supervisor restarts it (default permanent).
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Runs it on worker arbiter `index` (modulo the number of workers)
    /// instead of the current arbiter.
    pub fn on_worker(mut self, index: usize) -> Self {
        self.worker = Some(index);
        self
    }

    /// Starts the service under its supervisor and registers its name.
    pub async fn start(self) -> Result<ServiceHandle<S::Request>, BusError> {
        let inner = &self.bus.inner;
        if inner.closing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(BusError::ShuttingDown);
        }
        if self.capacity == 0 {
            return Err(BusError::Invalid(format!("service `{}`: mailbox capacity must be at least 1", self.name)));
        }
        if !matches!(self.overflow, OverflowPolicy::Block | OverflowPolicy::Reject) {
            return Err(BusError::Invalid(format!(
                "service `{}`: a request mailbox supports block or reject, not {}",
                self.name, self.overflow
            )));
        }
        if inner.services.contains(&self.name) {
            return Err(NameTaken { kind: "service", name: self.name }.into());
        }
        let arbiter = match (self.worker, inner.workers.len()) {
            (Some(i), n) if n > 0 => Some(&inner.workers[i % n]),
            _ => None,
        };
        let name: Arc<str> = self.name.as_str().into();
        let spec =
            ServiceSpec { name: name.clone(), factory: self.factory, capacity: self.capacity, overflow: self.overflow };
        let link = ChildLink::new(self.parent.clone(), name.clone());
        let (addr, sref) = ServiceActor::start(spec, link, arbiter);
        let child = AddChild { name, restart: self.restart, child: Box::new(addr.clone()) };
        self.parent.send(child).await.map_err(|_| BusError::SupervisorGone(self.name.clone()))??;
        // Build the state only once the supervisor knows the child, so that a
        // factory that panics at once is already supervised.
        let _ = addr.send(Control::Start).await;
        let target = match inner.services.insert(&self.name, sref) {
            Ok(target) => target,
            Err(taken) => {
                // Lost a race with another start of the same name.
                let _ = addr.send(Control::Shutdown).await;
                return Err(taken.into());
            }
        };
        let (queued, closer) = (target.clone(), target.clone());
        let hosted = Hosted {
            name: self.name,
            queued: Box::new(move || queued.queued()),
            close: Box::new(move || closer.close()),
            shutdown: Box::new(move || {
                let addr = addr.clone();
                Box::pin(async move {
                    let _ = addr.send(Control::Shutdown).await;
                })
            }),
        };
        match inner.hosted.lock() {
            Ok(mut list) => list.push(hosted),
            Err(poisoned) => poisoned.into_inner().push(hosted),
        }
        Ok(ServiceHandle { target, timeout: inner.default_timeout })
    }
}

/// Configures a supervisor before it starts; see [`Bus::supervisor`].
#[must_use = "a supervisor starts only when `start` is awaited"]
pub struct SupervisorBuilder {
    bus: Bus,
    parent: Addr<Supervisor>,
    path: String,
    spec: SupervisorSpec,
    restart: Restart,
}

impl SupervisorBuilder {
    fn new(bus: Bus, parent: Addr<Supervisor>, parent_path: String, name: &str) -> Self {
        SupervisorBuilder {
            bus,
            parent,
            path: format!("{parent_path}/{name}"),
            spec: SupervisorSpec::default(),
            restart: Restart::Permanent,
        }
    }

    /// Which children restart together (default one-for-one).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.spec.strategy = strategy;
        self
    }

    /// At most `max_restarts` within `within` (default 5 in 5 s).
    pub fn intensity(mut self, max_restarts: u32, within: Duration) -> Self {
        self.spec.intensity = Intensity { max_restarts, within };
        self
    }

    /// Delay between restarts (default 10 ms doubling up to 1 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.spec.backoff = backoff;
        self
    }

    /// What its parent does when it escalates (default permanent: the parent
    /// restarts the subtree, within the parent's own intensity).
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Starts it under its parent.
    pub async fn start(self) -> Result<SupervisorHandle, BusError> {
        let name = self.path.rsplit('/').next().unwrap_or_default().to_owned();
        let link = ChildLink::new(self.parent.clone(), name.as_str());
        let addr = Supervisor::start(self.path.as_str(), self.spec, Some(link), self.bus.inner.events.clone());
        let child = AddChild { name: name.into(), restart: self.restart, child: Box::new(addr.clone()) };
        self.parent.send(child).await.map_err(|_| BusError::SupervisorGone(self.path.clone()))??;
        Ok(SupervisorHandle { bus: self.bus, addr, path: self.path })
    }
}

/// A started supervisor: add services and supervisors under it.
#[derive(Clone)]
pub struct SupervisorHandle {
    bus: Bus,
    addr: Addr<Supervisor>,
    path: String,
}

impl SupervisorHandle {
    /// Its path, `root/…`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Prepares a service supervised by this supervisor.
    pub fn service<S, F>(&self, name: &str, factory: F) -> ServiceBuilder<S>
    where
        S: Service,
        F: Fn() -> S + Send + Sync + 'static,
    {
        ServiceBuilder { parent: self.addr.clone(), ..self.bus.service(name, factory) }
    }

    /// Prepares a supervisor under this one.
    pub fn supervisor(&self, name: &str) -> SupervisorBuilder {
        SupervisorBuilder::new(self.bus.clone(), self.addr.clone(), self.path.clone(), name)
    }
}
