//! The `JobTracker` actor.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::Value;

use super::{JobContext, JobId, JobShared, JobStatus, RunJob};
use crate::envelope::{Envelope, Timestamp};
use crate::metrics as m;
use crate::request_reply::{RequestError, ServiceRef};

/// Limits of a tracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobTrackerConfig {
    /// How long an ended job (and its result) stays queryable. Default 1 h.
    pub retention: Duration,
    /// Pending jobs per kind; one more is refused with
    /// [`JobError::QueueFull`]. Default 10,000.
    pub max_pending_per_kind: usize,
    /// Jobs kept in all; past it the oldest ended jobs are forgotten early.
    /// Default 100,000.
    pub max_retained: usize,
}

impl Default for JobTrackerConfig {
    fn default() -> Self {
        JobTrackerConfig { retention: Duration::from_secs(3600), max_pending_per_kind: 10_000, max_retained: 100_000 }
    }
}

/// Checks a job's input at submission.
pub type Validator = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// A kind of job and the worker services that run it.
pub struct KindSpec {
    /// The kind's name, as in `POST /v1/jobs/{kind}`.
    pub kind: String,
    /// One service per concurrent job.
    pub workers: Vec<Arc<ServiceRef<RunJob>>>,
    /// Refuses bad inputs before they are accepted.
    pub validate: Option<Validator>,
    /// A job still running after this fails with reason `timeout`.
    pub timeout: Duration,
}

/// Why a job operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// No kind of that name is registered.
    #[error("no job kind named `{0}`")]
    UnknownKind(String),
    /// The kind is already registered.
    #[error("job kind `{0}` is already registered")]
    DuplicateKind(String),
    /// No job with that id (never existed, or removed after its retention).
    #[error("no job {0}")]
    UnknownJob(JobId),
    /// The input was refused by the kind's validator.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The kind has as many pending jobs as it may hold.
    #[error("job kind `{0}` has too many pending jobs")]
    QueueFull(String),
    /// The job already ended, so it cannot be cancelled.
    #[error("job {id} already ended ({status})", status = status.as_str())]
    AlreadyEnded {
        /// The job.
        id: JobId,
        /// How it ended.
        status: JobStatus,
    },
    /// The tracker is not running.
    #[error("the job tracker is not running")]
    Unavailable,
}

/// A job as its owner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    /// Its id.
    pub id: JobId,
    /// Its kind.
    pub kind: String,
    /// Where it is.
    pub status: JobStatus,
    /// Progress in percent.
    pub progress: u8,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub updated_at: Timestamp,
    /// Why it failed.
    pub error: Option<String>,
    /// What it produced, once succeeded.
    pub result: Option<Value>,
    /// A fair time to wait before asking again (zero once ended): the
    /// kind's recent job duration times the jobs ahead of this one.
    pub retry_after: Duration,
}

/// Registers a job kind.
#[derive(Message)]
#[rtype(result = "Result<(), JobError>")]
pub struct RegisterKind(pub KindSpec);

/// Submits a job.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Submitted, JobError>")]
pub struct Submit {
    /// Its kind.
    pub kind: String,
    /// Its input.
    pub input: Value,
    /// A repeat submission with the same key (for the same kind) returns the
    /// existing job instead of starting another.
    pub idempotency_key: Option<String>,
}

/// The answer to [`Submit`].
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// The job.
    pub job: JobView,
    /// True when the idempotency key matched an existing job.
    pub existing: bool,
}

/// Looks a job up (with its result once it has one).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<JobView, JobError>")]
pub struct GetJob(pub JobId);

/// Cancels a pending or running job.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<JobView, JobError>")]
pub struct Cancel(pub JobId);

struct Job {
    kind: Arc<str>,
    status: JobStatus,
    created_at: Timestamp,
    updated_at: Timestamp,
    error: Option<String>,
    result: Option<Value>,
    input: Option<Value>,
    shared: Arc<JobShared>,
    idempotency_key: Option<String>,
    started: Option<Instant>,
}

struct Kind {
    name: Arc<str>,
    workers: Vec<Arc<ServiceRef<RunJob>>>,
    idle: Vec<usize>,
    pending: VecDeque<JobId>,
    validate: Option<Validator>,
    timeout: Duration,
    /// Recent job duration in seconds (moving average), for `Retry-After`.
    avg_secs: f64,
}

/// Owns the state of every job (see the [module docs](super)).
pub struct JobTracker {
    config: JobTrackerConfig,
    jobs: HashMap<JobId, Job>,
    keys: HashMap<(Arc<str>, String), JobId>,
    kinds: HashMap<Arc<str>, Kind>,
    /// Ended jobs, oldest first: the retention sweep's work list.
    ended: VecDeque<JobId>,
    gauges: HashMap<JobStatus, (i64, metrics::Gauge)>,
}

impl JobTracker {
    /// A tracker with no kinds yet.
    pub fn new(config: JobTrackerConfig) -> Self {
        let gauges =
            [JobStatus::Pending, JobStatus::Running, JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled]
                .into_iter()
                .map(|s| (s, (0, metrics::gauge!(m::JOBS_BY_STATE, "state" => s.as_str()))))
                .collect();
        JobTracker {
            config,
            jobs: HashMap::new(),
            keys: HashMap::new(),
            kinds: HashMap::new(),
            ended: VecDeque::new(),
            gauges,
        }
    }

    fn count(&mut self, from: Option<JobStatus>, to: Option<JobStatus>) {
        for (status, delta) in [(from, -1), (to, 1)] {
            if let Some((n, gauge)) = status.and_then(|s| self.gauges.get_mut(&s)) {
                *n += delta;
                gauge.set(*n as f64);
            }
        }
    }

    fn view(&self, id: JobId, job: &Job) -> JobView {
        let retry_after = match (job.status, self.kinds.get(&job.kind)) {
            (JobStatus::Pending, Some(kind)) => {
                let ahead = kind.pending.iter().position(|p| *p == id).unwrap_or(0);
                let rounds = ahead / kind.workers.len().max(1) + 1;
                Duration::from_secs_f64(kind.avg_secs * rounds as f64)
            }
            (JobStatus::Running, Some(kind)) => {
                let elapsed = job.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
                Duration::from_secs_f64((kind.avg_secs - elapsed).max(0.0))
            }
            _ => Duration::ZERO,
        };
        let retry_after = if job.status.is_final() {
            Duration::ZERO
        } else {
            Duration::from_secs(retry_after.as_secs_f64().ceil().clamp(1.0, 60.0) as u64)
        };
        JobView {
            id,
            kind: job.kind.to_string(),
            status: job.status,
            progress: if job.status == JobStatus::Succeeded { 100 } else { job.shared.progress() },
            created_at: job.created_at,
            updated_at: job.updated_at,
            error: job.error.clone(),
            result: job.result.clone(),
            retry_after,
        }
    }

    /// Hands pending jobs of `kind` to its idle workers.
    fn dispatch(&mut self, kind_name: &Arc<str>, ctx: &mut Context<Self>) {
        loop {
            let Some(kind) = self.kinds.get_mut(kind_name) else { return };
            // Take a job only when a worker is free to run it.
            let Some(&worker) = kind.idle.last() else { return };
            let Some(id) = kind.pending.pop_front() else { return };
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            kind.idle.pop();
            job.status = JobStatus::Running;
            job.updated_at = Timestamp::now();
            job.started = Some(Instant::now());
            let run =
                RunJob { input: job.input.take().unwrap_or(Value::Null), cx: JobContext::new(id, job.shared.clone()) };
            let (target, timeout) = (kind.workers[worker].clone(), kind.timeout);
            self.count(Some(JobStatus::Pending), Some(JobStatus::Running));
            let name = kind_name.clone();
            ctx.spawn(
                async move { target.ask(Envelope::new(run), timeout).await }
                    .into_actor(self)
                    .map(move |outcome, act, ctx| act.finished(id, &name, worker, outcome, ctx)),
            );
        }
    }

    fn finished(
        &mut self,
        id: JobId,
        kind_name: &Arc<str>,
        worker: usize,
        outcome: Result<Value, RequestError>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(job) = self.jobs.get_mut(&id) {
            if let (Some(kind), Some(started)) = (self.kinds.get_mut(kind_name), job.started) {
                kind.avg_secs = 0.8 * kind.avg_secs + 0.2 * started.elapsed().as_secs_f64();
            }
            // A job cancelled while running keeps its status; its late
            // result is dropped.
            if job.status == JobStatus::Running {
                let status = match outcome {
                    Ok(result) => {
                        job.result = Some(result);
                        JobStatus::Succeeded
                    }
                    Err(e) => {
                        job.error = Some(e.to_string());
                        JobStatus::Failed
                    }
                };
                job.status = status;
                job.updated_at = Timestamp::now();
                self.ended.push_back(id);
                self.count(Some(JobStatus::Running), Some(status));
                metrics::counter!(m::JOBS_FINISHED, "kind" => kind_name.to_string(), "outcome" => status.as_str())
                    .increment(1);
            }
        }
        if let Some(kind) = self.kinds.get_mut(kind_name) {
            kind.idle.push(worker);
        }
        self.dispatch(kind_name, ctx);
    }

    /// Forgets ended jobs past their retention, and the oldest ended ones
    /// while over the retained limit.
    fn sweep(&mut self) {
        let now = Timestamp::now();
        while let Some(&id) = self.ended.front() {
            let expired = self.jobs.get(&id).is_none_or(|job| job.updated_at.after(self.config.retention) <= now);
            if !expired && self.jobs.len() <= self.config.max_retained {
                break;
            }
            self.ended.pop_front();
            if let Some(job) = self.jobs.remove(&id) {
                if let Some(key) = job.idempotency_key {
                    self.keys.remove(&(job.kind.clone(), key));
                }
                self.count(Some(job.status), None);
            }
        }
    }
}

impl Actor for JobTracker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        let tick = self.config.retention.clamp(Duration::from_millis(10), Duration::from_secs(1));
        ctx.run_interval(tick, |act, _| act.sweep());
    }
}

impl Handler<RegisterKind> for JobTracker {
    type Result = Result<(), JobError>;

    fn handle(&mut self, RegisterKind(spec): RegisterKind, _: &mut Context<Self>) -> Self::Result {
        let name: Arc<str> = spec.kind.as_str().into();
        if self.kinds.contains_key(&name) {
            return Err(JobError::DuplicateKind(spec.kind));
        }
        let kind = Kind {
            name: name.clone(),
            idle: (0..spec.workers.len()).rev().collect(),
            workers: spec.workers,
            pending: VecDeque::new(),
            validate: spec.validate,
            timeout: spec.timeout,
            avg_secs: 1.0,
        };
        self.kinds.insert(name, kind);
        Ok(())
    }
}

impl Handler<Submit> for JobTracker {
    type Result = Result<Submitted, JobError>;

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        let kind = self.kinds.get(msg.kind.as_str()).ok_or_else(|| JobError::UnknownKind(msg.kind.clone()))?;
        let name = kind.name.clone();
        if let Some(key) = &msg.idempotency_key {
            if let Some(&id) = self.keys.get(&(name.clone(), key.clone())) {
                if let Some(job) = self.jobs.get(&id) {
                    return Ok(Submitted { job: self.view(id, job), existing: true });
                }
            }
        }
        if let Some(validate) = &kind.validate {
            validate(&msg.input).map_err(JobError::Invalid)?;
        }
        if kind.pending.len() >= self.config.max_pending_per_kind {
            return Err(JobError::QueueFull(msg.kind));
        }
        self.sweep();
        let id = JobId::new();
        let now = Timestamp::now();
        let job = Job {
            kind: name.clone(),
            status: JobStatus::Pending,
            created_at: now,
            updated_at: now,
            error: None,
            result: None,
            input: Some(msg.input),
            shared: Arc::default(),
            idempotency_key: msg.idempotency_key.clone(),
            started: None,
        };
        if let Some(key) = msg.idempotency_key {
            self.keys.insert((name.clone(), key), id);
        }
        self.jobs.insert(id, job);
        if let Some(kind) = self.kinds.get_mut(&name) {
            kind.pending.push_back(id);
        }
        self.count(None, Some(JobStatus::Pending));
        metrics::counter!(m::JOBS_SUBMITTED, "kind" => name.to_string()).increment(1);
        // The view is taken before dispatch: the submitter learns the job was
        // accepted, whatever happens to it in the next microsecond.
        let view = self.jobs.get(&id).map(|job| self.view(id, job)).ok_or(JobError::UnknownJob(id))?;
        self.dispatch(&name, ctx);
        Ok(Submitted { job: view, existing: false })
    }
}

impl Handler<GetJob> for JobTracker {
    type Result = Result<JobView, JobError>;

    fn handle(&mut self, GetJob(id): GetJob, _: &mut Context<Self>) -> Self::Result {
        self.jobs.get(&id).map(|job| self.view(id, job)).ok_or(JobError::UnknownJob(id))
    }
}

impl Handler<Cancel> for JobTracker {
    type Result = Result<JobView, JobError>;

    fn handle(&mut self, Cancel(id): Cancel, _: &mut Context<Self>) -> Self::Result {
        let job = self.jobs.get_mut(&id).ok_or(JobError::UnknownJob(id))?;
        let before = job.status;
        match before {
            status if status.is_final() => return Err(JobError::AlreadyEnded { id, status }),
            JobStatus::Pending => {
                if let Some(kind) = self.kinds.get_mut(&job.kind) {
                    kind.pending.retain(|p| *p != id);
                }
            }
            _ => job.shared.cancel(),
        }
        job.status = JobStatus::Cancelled;
        job.updated_at = Timestamp::now();
        self.ended.push_back(id);
        self.count(Some(before), Some(JobStatus::Cancelled));
        self.jobs.get(&id).map(|job| self.view(id, job)).ok_or(JobError::UnknownJob(id))
    }
}
