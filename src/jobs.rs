//! Asynchronous request-reply in Rust: submit a job, poll it, cancel it.
//! The gateway's `/v1/jobs` routes are a thin layer over this.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actorbus_actors::backpressure::OverflowPolicy;
use actorbus_actors::jobs::{
    BuiltinWorker, Cancel, GetJob, JobError, JobId, JobService, JobTracker, JobWorker, KindSpec, RegisterKind, Submit,
    Submitted,
};
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
        }
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
        if self.workers == 0 {
            return Err(BusError::Invalid(format!("job kind `{}`: needs at least one worker", self.kind)));
        }
        let workers = (self.start_workers)(&self.jobs.bus, &self.kind, self.workers).await?;
        let spec = KindSpec { kind: self.kind.clone(), workers, validate: self.validate, timeout: self.timeout };
        match self.jobs.tracker.send(RegisterKind(spec)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Invalid(e.to_string())),
            Err(_) => Err(BusError::ShuttingDown),
        }
    }
}
