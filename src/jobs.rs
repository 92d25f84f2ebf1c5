//! Asynchronous request-reply in Rust: submit a job, poll it, cancel it.
//! The gateway's `/v1/jobs` routes are a thin layer over this.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actorbus_actors::backpressure::OverflowPolicy;
use actorbus_actors::error::HandlerError;
use actorbus_actors::jobs::{
    BuiltinWorker, Cancel, GetJob, JobError, JobId, JobService, JobTracker, JobUpdate, JobWorker, KindSpec,
    RegisterKind, Report, Submit, Submitted,
};
use actorbus_actors::queue::QueueHandle;
use serde_json::Value;

use crate::bus::{Bus, BusError};

/// The bus's job tracker. Get it with [`Bus::jobs`].
///
/// ```
/// use actorbus::Bus;
/// use actorbus::actors::jobs::{BuiltinWorker, JobStatus};
/// use serde_json::json;
///
/// actix::System::new().block_on(async {
///     let bus = Bus::builder().build().unwrap();
///     let jobs = bus.jobs();
///     jobs.builtin("echo", BuiltinWorker::Echo).start().await.unwrap();
///     let job = jobs.submit("echo", json!({"hello": "world"}), None).await.unwrap().job;
///     let mut view = jobs.get(job.id).await.unwrap();
///     while !view.status.is_final() {
///         actix_rt::time::sleep(std::time::Duration::from_millis(1)).await;
///         view = jobs.get(job.id).await.unwrap();
///     }
///     assert_eq!(view.status, JobStatus::Succeeded);
///     assert_eq!(view.result, Some(json!({"hello": "world"})));
/// });
/// ```
#[derive(Clone)]
pub struct Jobs {
    bus: Bus,
    tracker: Addr<JobTracker>,
}

impl Jobs {
    pub(crate) fn new(bus: Bus, tracker: Addr<JobTracker>) -> Self {
        Jobs { bus, tracker }
    }

    /// Prepares a job kind served by workers that `factory` builds.
    pub fn kind<W, F>(&self, kind: &str, factory: F) -> JobKindBuilder
    where
        W: JobWorker,
        F: Fn() -> W + Send + Sync + 'static,
    {
        let factory = Arc::new(factory);
        let start_workers: StartWorkers = Box::new(move |bus: &Bus, kind: &str, n: usize| {
            let factory = factory.clone();
            let bus = bus.clone();
            let kind = kind.to_owned();
            Box::pin(async move {
                let mut workers = Vec::with_capacity(n);
                for i in 0..n {
                    let f = factory.clone();
                    let handle = bus
                        .service(&format!("job:{kind}:{i}"), move || JobService(f()))
                        // One job at a time per worker; the tracker only
                        // dispatches to idle workers.
                        .mailbox(1, OverflowPolicy::Block)
                        .start()
                        .await?;
                    workers.push(handle.service_ref());
                }
                Ok(workers)
            })
        });
        JobKindBuilder {
            jobs: self.clone(),
            kind: kind.to_owned(),
            workers: 1,
            timeout: Duration::from_secs(3600),
            validate: None,
            start_workers,
            queue: None,
        }
    }

    /// Prepares a job kind served by external workers through `queue`: each
    /// job is enqueued there as a
    /// [`JobMessage`](actorbus_actors::jobs::JobMessage) (`{"job_id", "kind",
    /// "input"}`), and workers report with [`Jobs::report`] (over HTTP:
    /// `POST /v1/jobs/{id}/progress`, `/complete`, `/fail`). `workers` does
    /// not apply; `timeout` bounds a job from its first progress report.
    ///
    /// ```
    /// use actorbus::Bus;
    /// use actorbus::actors::jobs::{JobMessage, JobStatus, JobUpdate};
    /// use serde_json::{json, Value};
    ///
    /// actix::System::new().block_on(async {
    ///     let bus = Bus::builder().build().unwrap();
    ///     let queue = bus.queue::<Value>("resize").start().unwrap();
    ///     let mut worker = queue.consumer(1).await.unwrap();
    ///     bus.jobs().queue_kind("resize", queue).start().await.unwrap();
    ///     let id = bus.jobs().submit("resize", json!({"w": 64}), None).await.unwrap().job.id;
    ///     let delivery = worker.recv().await.unwrap();
    ///     let job: JobMessage = serde_json::from_value(delivery.payload().clone()).unwrap();
    ///     assert_eq!((job.job_id, job.input), (id, json!({"w": 64})));
    ///     bus.jobs().report(id, JobUpdate::Complete(json!({"w": 32}))).await.unwrap();
    ///     delivery.ack();
    ///     assert_eq!(bus.jobs().get(id).await.unwrap().status, JobStatus::Succeeded);
    /// });
    /// ```
    pub fn queue_kind(&self, kind: &str, queue: QueueHandle<Value>) -> JobKindBuilder {
        let mut builder = self.kind(kind, || NoWorker);
        builder.queue = Some(queue);
        builder
    }

    /// Prepares a job kind served by a built-in demo worker (`echo`, `fail`,
    /// `sleep`), with its input validation.
    pub fn builtin(&self, kind: &str, worker: BuiltinWorker) -> JobKindBuilder {
        self.kind(kind, move || worker).validate(move |input| worker.validate(input))
    }

    /// Submits a job. With an idempotency key, a repeat returns the first job.
    pub async fn submit(
        &self,
        kind: &str,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<Submitted, JobError> {
        let msg = Submit { kind: kind.to_owned(), input, idempotency_key };
        self.tracker.send(msg).await.map_err(|_| JobError::Unavailable)?
    }

    /// The job's status, progress and (once succeeded) result.
    pub async fn get(&self, id: JobId) -> Result<actorbus_actors::jobs::JobView, JobError> {
        self.tracker.send(GetJob(id)).await.map_err(|_| JobError::Unavailable)?
    }

    /// Cancels a pending or running job.
    pub async fn cancel(&self, id: JobId) -> Result<actorbus_actors::jobs::JobView, JobError> {
        self.tracker.send(Cancel(id)).await.map_err(|_| JobError::Unavailable)?
    }

    /// An external worker's report on a job of a queue-backed kind (see
    /// [`Jobs::queue_kind`]); [`JobError::AlreadyEnded`] once the job ended or
    /// was cancelled.
    pub async fn report(&self, id: JobId, update: JobUpdate) -> Result<actorbus_actors::jobs::JobView, JobError> {
        self.tracker.send(Report { id, update }).await.map_err(|_| JobError::Unavailable)?
    }
}

/// The worker type of a queue-backed kind, never started.
struct NoWorker;

impl JobWorker for NoWorker {
    async fn run(&mut self, _: Value, _: actorbus_actors::jobs::JobContext) -> Result<Value, HandlerError> {
        Err(HandlerError::new("a queue-backed job kind has no in-process worker"))
    }
}

type StartWorkers = Box<
    dyn FnOnce(
            &Bus,
            &str,
            usize,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Arc<ServiceRef>>, BusError>>>>
        + Send,
>;

type ServiceRef = actorbus_actors::request_reply::ServiceRef<actorbus_actors::jobs::RunJob>;

/// Configures a job kind; see [`Jobs::kind`].
#[must_use = "a job kind is registered only when `start` is awaited"]
pub struct JobKindBuilder {
    jobs: Jobs,
    kind: String,
    workers: usize,
    timeout: Duration,
    validate: Option<actorbus_actors::jobs::Validator>,
    start_workers: StartWorkers,
    queue: Option<QueueHandle<Value>>,
}

impl JobKindBuilder {
    /// Concurrent jobs of this kind: one worker service each (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// A job running longer fails with reason `timeout` (default 1 h).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Refuses inputs at submission (`JobError::Invalid`, HTTP 400).
    pub fn validate(mut self, f: impl Fn(&Value) -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.validate = Some(Arc::new(f));
        self
    }

    /// Starts the workers and registers the kind with the tracker.
    pub async fn start(self) -> Result<(), BusError> {
        let workers = if self.queue.is_some() {
            Vec::new()
        } else {
            if self.workers == 0 {
                return Err(BusError::Invalid(format!("job kind `{}`: needs at least one worker", self.kind)));
            }
            (self.start_workers)(&self.jobs.bus, &self.kind, self.workers).await?
        };
        let spec = KindSpec {
            kind: self.kind.clone(),
            workers,
            queue: self.queue,
            validate: self.validate,
            timeout: self.timeout,
        };
        match self.jobs.tracker.send(RegisterKind(spec)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Invalid(e.to_string())),
            Err(_) => Err(BusError::ShuttingDown),
        }
    }
}
