//! The `JobTracker` actor.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::Value;

use super::{JobContext, JobId, JobMessage, JobShared, JobStatus, RunJob};
use crate::dlq::{DeadLetter, DlqHandle, DlqSource, FailureRecord, RedriveFuture};
use crate::envelope::{Envelope, Timestamp};
use crate::error::FailureReason;
use crate::metrics as m;
use crate::queue::{QueueError, QueueHandle};
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
    /// One service per concurrent job (empty for a queue-backed kind).
    pub workers: Vec<Arc<ServiceRef<RunJob>>>,
    /// Set for a kind served by external workers: each job is enqueued here
    /// as a [`JobMessage`] and its workers report with [`Report`]; `workers`
    /// is then unused.
    pub queue: Option<QueueHandle<Value>>,
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
    /// The job already ended (or was cancelled), so it cannot be cancelled
    /// or reported on.
    #[error("job {id} already ended ({status})", status = status.as_str())]
    AlreadyEnded {
        /// The job.
        id: JobId,
        /// How it ended.
        status: JobStatus,
    },
    /// A progress or completion report for a job that an in-process worker
    /// runs: only jobs of queue-backed kinds take reports.
    #[error("job {0} is run by an in-process worker; only jobs of queue-backed kinds take reports")]
    NotExternal(JobId),
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
    /// The last progress message an external worker reported.
    pub message: Option<String>,
    /// Times the job was submitted: 1, plus one per redrive from the DLQ.
    pub attempts: u32,
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

/// What an external worker reports about a job of a queue-backed kind.
#[derive(Debug, Clone, PartialEq)]
pub enum JobUpdate {
    /// Still working: progress in percent (above 100 counts as 100) and an
    /// optional message. A pending job becomes running.
    Progress {
        /// Percent done.
        percent: u8,
        /// What the worker is doing.
        message: Option<String>,
    },
    /// Done: the job succeeded with this result.
    Complete(Value),
    /// Done: the job failed with this error (and is dead-lettered).
    Fail(String),
}

/// A report from an external worker on job `id`. Refused with
/// [`JobError::AlreadyEnded`] once the job ended or was cancelled (the worker
/// should then ack its message and move on), [`JobError::NotExternal`] for
/// jobs of in-process kinds.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<JobView, JobError>")]
pub struct Report {
    /// The job.
    pub id: JobId,
    /// What happened.
    pub update: JobUpdate,
}

/// Runs a failed job again under the same id, as a DLQ redrive does (see
/// the [module docs](super)). Refused while the job is pending or running,
/// and once it succeeded or was cancelled; a job the tracker forgot (after
/// its retention, or a restart) is recreated.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), String>")]
pub struct Resubmit {
    /// The job.
    pub message: JobMessage,
    /// Its failures so far (the dead letter's history): a later dead letter
    /// of the job carries them before its own.
    pub history: Vec<FailureRecord>,
}

/// Failures a job's dead letter keeps at most (the latest).
const MAX_HISTORY: usize = 100;

/// The job's queue message was dead-lettered by its queue.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
struct QueueDeadLettered {
    id: JobId,
    queue: String,
    reason: FailureReason,
}

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
    message: Option<String>,
    attempts: u32,
    /// Failures of earlier submissions, oldest first.
    history: Vec<FailureRecord>,
}

impl Job {
    /// A new job of `kind`, pending since `now`, first attempt.
    fn pending(kind: Arc<str>, input: Value, now: Timestamp) -> Self {
        Job {
            kind,
            status: JobStatus::Pending,
            created_at: now,
            updated_at: now,
            error: None,
            result: None,
            input: Some(input),
            shared: Arc::default(),
            idempotency_key: None,
            started: None,
            message: None,
            attempts: 1,
            history: Vec::new(),
        }
    }
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
    /// Queue-backed kinds: where jobs go.
    queue: Option<QueueHandle<Value>>,
    /// Queue-backed kinds: jobs pending (on the queue, no report yet).
    queued: usize,
}

impl Kind {
    fn pending_count(&self) -> usize {
        if self.queue.is_some() {
            self.queued
        } else {
            self.pending.len()
        }
    }
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
    /// Where failed jobs go, and where queue-backed kinds learn that a job's
    /// message was dead-lettered.
    dlq: Option<DlqHandle>,
    /// Running jobs of queue-backed kinds by deadline (entries of jobs that
    /// ended since are skipped when they come up).
    deadlines: BinaryHeap<Reverse<(Instant, JobId)>>,
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
            dlq: None,
            deadlines: BinaryHeap::new(),
        }
    }

    /// Dead-letters failed jobs into `dlq` (source `job:<kind>`, the envelope
    /// a [`JobMessage`]) and registers each kind there as a redrive target
    /// that resubmits the job. Queue-backed kinds also watch their queue's
    /// dead letters, so a job whose message is dead-lettered fails.
    pub fn with_dlq(mut self, dlq: DlqHandle) -> Self {
        self.dlq = Some(dlq);
        self
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
            message: job.message.clone(),
            attempts: job.attempts,
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
            // The input stays with the job until it ends: a failed job is
            // dead-lettered with it.
            let input = job.input.clone().unwrap_or(Value::Null);
            let run = RunJob { input, cx: JobContext::new(id, job.shared.clone()) };
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
        // A job cancelled while running keeps its status; its late result is
        // dropped.
        if self.jobs.get(&id).is_some_and(|job| job.status == JobStatus::Running) {
            let outcome = outcome.map_err(|e| {
                let error = e.to_string();
                let reason = match e {
                    RequestError::Failed(reason) => reason,
                    RequestError::Timeout(_) => FailureReason::Timeout,
                    RequestError::Expired => FailureReason::Expired,
                    RequestError::ShuttingDown => FailureReason::Shutdown,
                    other => FailureReason::Failed(other.to_string()),
                };
                (error, reason)
            });
            self.conclude(id, outcome, true, ctx);
        }
        if let Some(kind) = self.kinds.get_mut(kind_name) {
            kind.idle.push(worker);
        }
        self.dispatch(kind_name, ctx);
    }

    /// Ends a pending or running job: succeeded with a result, or failed with
    /// an error text and a reason (dead-lettered when `dead_letter`).
    fn conclude(
        &mut self,
        id: JobId,
        outcome: Result<Value, (String, FailureReason)>,
        dead_letter: bool,
        ctx: &mut Context<Self>,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        let before = job.status;
        if before.is_final() {
            return;
        }
        let kind = self.kinds.get_mut(&job.kind);
        if let Some(kind) = kind {
            if let Some(started) = job.started {
                kind.avg_secs = 0.8 * kind.avg_secs + 0.2 * started.elapsed().as_secs_f64();
            }
            if before == JobStatus::Pending && kind.queue.is_some() {
                kind.queued = kind.queued.saturating_sub(1);
            }
        }
        let input = job.input.take();
        let status = match outcome {
            Ok(result) => {
                job.result = Some(result);
                JobStatus::Succeeded
            }
            Err((error, reason)) => {
                job.error = Some(error);
                if dead_letter {
                    let message =
                        JobMessage { job_id: id, kind: job.kind.to_string(), input: input.unwrap_or_default() };
                    let mut history = std::mem::take(&mut job.history);
                    history.push(FailureRecord::now(job.attempts, &reason));
                    let attempts = job.attempts;
                    self.dead_letter(message, reason, attempts, history, ctx);
                }
                JobStatus::Failed
            }
        };
        let Some(job) = self.jobs.get_mut(&id) else { return };
        job.status = status;
        job.updated_at = Timestamp::now();
        let kind_label = job.kind.to_string();
        self.ended.push_back(id);
        self.count(Some(before), Some(status));
        metrics::counter!(m::JOBS_FINISHED, "kind" => kind_label, "outcome" => status.as_str()).increment(1);
    }

    /// Stores a failed job in the DLQ (source `job:<kind>`); the envelope's id
    /// is the job's id and its attempt the job's submissions.
    fn dead_letter(
        &mut self,
        message: JobMessage,
        reason: FailureReason,
        attempts: u32,
        mut history: Vec<FailureRecord>,
        ctx: &mut Context<Self>,
    ) {
        if history.len() > MAX_HISTORY {
            history.drain(..history.len() - MAX_HISTORY);
        }
        let Some(dlq) = self.dlq.clone() else { return };
        let source = DlqSource::new(JOB_PATTERN, message.kind.clone());
        let id = message.job_id;
        let mut envelope = Envelope::new(message);
        envelope.id = id;
        envelope.correlation_id = id;
        envelope.attempt = attempts;
        let letter = DeadLetter::new(source, reason, &envelope, history).with_attempts(attempts);
        ctx.spawn(async move { dlq.dead_letter(letter).await }.into_actor(self).map(move |res, _, _| {
            if let Err(e) = res {
                tracing::error!(job = %id, error = %e, "could not dead-letter a failed job");
            }
        }));
    }

    /// Puts a job (new, or resubmitted) on its way: onto its kind's queue
    /// for a queue-backed kind, else to its kind's next idle worker.
    fn launch(&mut self, id: JobId, kind_name: &Arc<str>, ctx: &mut Context<Self>) -> Launch {
        let Some(kind) = self.kinds.get_mut(kind_name) else { return Launch::Done };
        match &kind.queue {
            Some(queue) => {
                kind.queued += 1;
                let input = self.jobs.get(&id).and_then(|j| j.input.clone()).unwrap_or_default();
                let message = JobMessage { job_id: id, kind: kind_name.to_string(), input };
                match serde_json::to_value(&message) {
                    Ok(value) => Launch::Enqueue(queue.clone(), value),
                    // A JobMessage is plain JSON; this cannot fail.
                    Err(e) => Launch::Failed(JobError::Invalid(e.to_string())),
                }
            }
            None => {
                kind.pending.push_back(id);
                self.dispatch(kind_name, ctx);
                Launch::Done
            }
        }
    }

    /// A job whose queue message could not be enqueued: a new submission is
    /// forgotten (`forget`; the submitter gets the error), a resubmission
    /// fails again (its dead letter stays in the DLQ, with why).
    fn unlaunched(&mut self, id: JobId, forget: bool, why: &str, ctx: &mut Context<Self>) {
        if !forget {
            let error = format!("could not enqueue the job again: {why}");
            self.conclude(id, Err((error.clone(), FailureReason::Failed(error))), false, ctx);
            return;
        }
        let Some(job) = self.jobs.remove(&id) else { return };
        if let Some(kind) = self.kinds.get_mut(&job.kind) {
            if job.status == JobStatus::Pending && kind.queue.is_some() {
                kind.queued = kind.queued.saturating_sub(1);
            }
        }
        if let Some(key) = job.idempotency_key {
            self.keys.remove(&(job.kind.clone(), key));
        }
        self.count(Some(job.status), None);
    }

    /// Fails running jobs of queue-backed kinds past their kind's timeout.
    fn expire_running(&mut self, ctx: &mut Context<Self>) {
        // Entries of jobs that ended early wait for their deadline; keep
        // them from piling up when many short jobs run under a long timeout.
        let running = self.gauges.get(&JobStatus::Running).map_or(0, |(n, _)| usize::try_from(*n).unwrap_or(0));
        if self.deadlines.len() > 2 * running + 1024 {
            let jobs = &self.jobs;
            self.deadlines.retain(|Reverse((_, id))| jobs.get(id).is_some_and(|j| j.status == JobStatus::Running));
        }
        let now = Instant::now();
        while let Some(&Reverse((due, id))) = self.deadlines.peek() {
            if due > now {
                break;
            }
            self.deadlines.pop();
            let Some(job) = self.jobs.get(&id) else { continue };
            let Some(timeout) = self.kinds.get(&job.kind).map(|k| k.timeout) else { continue };
            let overdue = job.started.is_some_and(|s| s.elapsed() >= timeout);
            if job.status == JobStatus::Running && overdue {
                let error = format!("no completion within {timeout:?}");
                self.conclude(id, Err((error, FailureReason::Timeout)), true, ctx);
            }
        }
    }

    /// Forgets ended jobs past their retention, and the oldest ended ones
    /// while over the retained limit.
    fn sweep(&mut self) {
        let now = Timestamp::now();
        while let Some(&id) = self.ended.front() {
            if self.jobs.get(&id).is_some_and(|job| !job.status.is_final()) {
                // Resubmitted since it ended: its next end lists it again.
                self.ended.pop_front();
                continue;
            }
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
        ctx.run_interval(Duration::from_millis(100), |act, ctx| act.expire_running(ctx));
    }
}

/// The DLQ source pattern of failed jobs: `job:<kind>`.
pub const JOB_PATTERN: &str = "job";

/// What [`JobTracker::launch`] leaves to do.
enum Launch {
    Done,
    Enqueue(QueueHandle<Value>, Value),
    Failed(JobError),
}

fn queue_error(kind: &str, e: QueueError) -> JobError {
    match e {
        QueueError::Full(_) => JobError::QueueFull(kind.to_owned()),
        QueueError::Closed(_)
        | QueueError::Invalid(_)
        | QueueError::Codec(_)
        | QueueError::ClaimCheck(_)
        | QueueError::Storage(_) => JobError::Unavailable,
    }
}

/// The job a dead letter carries: the envelope's payload, for failed jobs
/// and for messages of a job queue alike.
fn job_message(letter: &DeadLetter) -> Option<JobMessage> {
    serde_json::from_value(letter.envelope.get("payload")?.clone()).ok()
}

/// Puts a dead letter of a job queue that is not a job back on the queue,
/// as the queue's own redrive would.
async fn requeue(queue: QueueHandle<Value>, letter: DeadLetter) -> Result<(), String> {
    let mut env: Envelope<Value> = serde_json::from_value(letter.envelope)
        .map_err(|e| format!("the envelope does not decode for queue `{}`: {e}", queue.name()))?;
    env.attempt = 1;
    if env.is_expired() {
        env.deadline = None;
    }
    queue.send_envelope(env).await.map(|_| ()).map_err(|e| e.to_string())
}

impl JobTracker {
    /// Registers `kind`'s redrive targets and dead-letter watch on the DLQ.
    fn register_dlq(&self, kind: &str, queue: Option<&QueueHandle<Value>>, ctx: &mut Context<Self>) {
        let Some(dlq) = &self.dlq else { return };
        let addr = ctx.address();
        let resubmit = move |resubmit: Resubmit| {
            let addr = addr.clone();
            async move {
                match addr.send(resubmit).await {
                    Ok(r) => r,
                    Err(_) => Err("the job tracker is not running".to_owned()),
                }
            }
        };
        let job_target = resubmit.clone();
        dlq.register_redrive(DlqSource::new(JOB_PATTERN, kind), move |letter: DeadLetter| -> RedriveFuture {
            let resubmit = job_target.clone();
            Box::pin(async move {
                let message = job_message(&letter).ok_or("the dead letter holds no job (job_id, kind, input)")?;
                resubmit(Resubmit { message, history: letter.errors }).await
            })
        });
        let Some(queue) = queue else { return };
        let source = DlqSource::queue(queue.name());
        // Redriving a job's message of this queue to its source resubmits
        // the job (which enqueues it again). Anything else sent here (other
        // messages of the queue, entries redriven from elsewhere with
        // `to_queue`) goes onto the queue as it is.
        let target_queue = queue.clone();
        let own = source.clone();
        dlq.register_redrive(source.clone(), move |letter: DeadLetter| -> RedriveFuture {
            let (resubmit, queue) = (resubmit.clone(), target_queue.clone());
            let job = if letter.source == own { job_message(&letter) } else { None };
            Box::pin(async move {
                match job {
                    Some(message) => resubmit(Resubmit { message, history: letter.errors }).await,
                    None => requeue(queue, letter).await,
                }
            })
        });
        let addr = ctx.address();
        let queue_name = queue.name().to_owned();
        dlq.watch(source, move |letter: &DeadLetter| {
            let Some(message) = job_message(letter) else { return };
            let msg =
                QueueDeadLettered { id: message.job_id, queue: queue_name.clone(), reason: letter.reason.clone() };
            let addr = addr.clone();
            // `send` waits for room in the tracker's bounded mailbox.
            actix_rt::spawn(async move {
                let _ = addr.send(msg).await;
            });
        });
    }

    /// Enqueues a launched job's message and answers `ok` once it is on the
    /// queue; if the queue refuses it, the job is forgotten (`forget`, a new
    /// submission) or failed back (a resubmission) and the error answered.
    fn enqueue<T: 'static>(
        &mut self,
        id: JobId,
        kind: Arc<str>,
        launch: Launch,
        ok: T,
        forget: bool,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<T, JobError>> {
        match launch {
            Launch::Done => Box::pin(fut::ready(Ok(ok))),
            Launch::Failed(e) => {
                self.unlaunched(id, forget, &e.to_string(), ctx);
                Box::pin(fut::ready(Err(e)))
            }
            Launch::Enqueue(queue, value) => Box::pin(async move { queue.send(value).await }.into_actor(self).map(
                move |sent, act, ctx| match sent {
                    Ok(_) => Ok(ok),
                    Err(e) => {
                        act.unlaunched(id, forget, &e.to_string(), ctx);
                        Err(queue_error(&kind, e))
                    }
                },
            )),
        }
    }
}

impl Handler<RegisterKind> for JobTracker {
    type Result = Result<(), JobError>;

    fn handle(&mut self, RegisterKind(spec): RegisterKind, ctx: &mut Context<Self>) -> Self::Result {
        let name: Arc<str> = spec.kind.as_str().into();
        if self.kinds.contains_key(&name) {
            return Err(JobError::DuplicateKind(spec.kind));
        }
        self.register_dlq(&name, spec.queue.as_ref(), ctx);
        let kind = Kind {
            name: name.clone(),
            idle: if spec.queue.is_some() { Vec::new() } else { (0..spec.workers.len()).rev().collect() },
            workers: spec.workers,
            pending: VecDeque::new(),
            validate: spec.validate,
            timeout: spec.timeout,
            avg_secs: 1.0,
            queue: spec.queue,
            queued: 0,
        };
        self.kinds.insert(name, kind);
        Ok(())
    }
}

impl Handler<Submit> for JobTracker {
    type Result = ResponseActFuture<Self, Result<Submitted, JobError>>;

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        match self.accept(msg, ctx) {
            Ok((submitted, None)) => Box::pin(fut::ready(Ok(submitted))),
            Ok((submitted, Some(launch))) => {
                let (id, kind) = (submitted.job.id, submitted.job.kind.as_str().into());
                self.enqueue(id, kind, launch, submitted, true, ctx)
            }
            Err(e) => Box::pin(fut::ready(Err(e))),
        }
    }
}

impl JobTracker {
    /// Takes a submission: the answer, and what is left to launch (nothing
    /// for a repeat of an idempotency key).
    fn accept(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Result<(Submitted, Option<Launch>), JobError> {
        let kind = self.kinds.get(msg.kind.as_str()).ok_or_else(|| JobError::UnknownKind(msg.kind.clone()))?;
        let name = kind.name.clone();
        if let Some(key) = &msg.idempotency_key {
            if let Some(&id) = self.keys.get(&(name.clone(), key.clone())) {
                if let Some(job) = self.jobs.get(&id) {
                    return Ok((Submitted { job: self.view(id, job), existing: true }, None));
                }
            }
        }
        if let Some(validate) = &kind.validate {
            validate(&msg.input).map_err(JobError::Invalid)?;
        }
        if kind.pending_count() >= self.config.max_pending_per_kind {
            return Err(JobError::QueueFull(msg.kind));
        }
        self.sweep();
        let id = JobId::new();
        let now = Timestamp::now();
        let job = Job { idempotency_key: msg.idempotency_key.clone(), ..Job::pending(name.clone(), msg.input, now) };
        if let Some(key) = msg.idempotency_key {
            self.keys.insert((name.clone(), key), id);
        }
        self.jobs.insert(id, job);
        self.count(None, Some(JobStatus::Pending));
        metrics::counter!(m::JOBS_SUBMITTED, "kind" => name.to_string()).increment(1);
        // The view is taken before dispatch: the submitter learns the job was
        // accepted, whatever happens to it in the next microsecond.
        let view = self.jobs.get(&id).map(|job| self.view(id, job)).ok_or(JobError::UnknownJob(id))?;
        let launch = self.launch(id, &name, ctx);
        Ok((Submitted { job: view, existing: false }, Some(launch)))
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
                    if kind.queue.is_some() {
                        // Its message stays on the queue; the worker that
                        // takes it is refused (409) and acks it.
                        kind.queued = kind.queued.saturating_sub(1);
                    }
                }
            }
            _ => job.shared.cancel(),
        }
        job.status = JobStatus::Cancelled;
        job.updated_at = Timestamp::now();
        job.input = None;
        self.ended.push_back(id);
        self.count(Some(before), Some(JobStatus::Cancelled));
        self.jobs.get(&id).map(|job| self.view(id, job)).ok_or(JobError::UnknownJob(id))
    }
}

impl Handler<Report> for JobTracker {
    type Result = Result<JobView, JobError>;

    fn handle(&mut self, Report { id, update }: Report, ctx: &mut Context<Self>) -> Self::Result {
        let job = self.jobs.get_mut(&id).ok_or(JobError::UnknownJob(id))?;
        if job.status.is_final() {
            return Err(JobError::AlreadyEnded { id, status: job.status });
        }
        let kind = self.kinds.get_mut(&job.kind).ok_or(JobError::NotExternal(id))?;
        if kind.queue.is_none() {
            return Err(JobError::NotExternal(id));
        }
        match update {
            JobUpdate::Progress { percent, message } => {
                if job.status == JobStatus::Pending {
                    kind.queued = kind.queued.saturating_sub(1);
                    let now = Instant::now();
                    job.status = JobStatus::Running;
                    job.started = Some(now);
                    self.deadlines.push(Reverse((now + kind.timeout, id)));
                    self.count(Some(JobStatus::Pending), Some(JobStatus::Running));
                }
                let Some(job) = self.jobs.get_mut(&id) else { return Err(JobError::UnknownJob(id)) };
                job.shared.progress.store(percent.min(100), Ordering::Relaxed);
                if message.is_some() {
                    job.message = message;
                }
                job.updated_at = Timestamp::now();
            }
            JobUpdate::Complete(result) => self.conclude(id, Ok(result), true, ctx),
            JobUpdate::Fail(error) => {
                let reason = FailureReason::Failed(error);
                self.conclude(id, Err((reason.to_string(), reason)), true, ctx);
            }
        }
        self.jobs.get(&id).map(|job| self.view(id, job)).ok_or(JobError::UnknownJob(id))
    }
}

impl Handler<QueueDeadLettered> for JobTracker {
    type Result = ();

    fn handle(&mut self, msg: QueueDeadLettered, ctx: &mut Context<Self>) {
        // The queue's dead letter is the job's: no second entry.
        let error = format!("{} (the job's message was dead-lettered by queue `{}`)", msg.reason, msg.queue);
        self.conclude(msg.id, Err((error, msg.reason)), false, ctx);
    }
}

impl Handler<Resubmit> for JobTracker {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, Resubmit { message, history }: Resubmit, ctx: &mut Context<Self>) -> Self::Result {
        let id = message.job_id;
        let Some(kind) = self.kinds.get(message.kind.as_str()) else {
            return Box::pin(fut::ready(Err(format!("no job kind named `{}`", message.kind))));
        };
        let name = kind.name.clone();
        let now = Timestamp::now();
        match self.jobs.get_mut(&id) {
            Some(job) if job.status != JobStatus::Failed => {
                let why = format!("job {id} is {}; only failed jobs are resubmitted", job.status.as_str());
                return Box::pin(fut::ready(Err(why)));
            }
            Some(job) => {
                job.status = JobStatus::Pending;
                job.updated_at = now;
                job.error = None;
                job.result = None;
                job.message = None;
                job.started = None;
                job.input = Some(message.input);
                job.shared = Arc::default();
                job.attempts += 1;
                job.history = history;
                self.count(Some(JobStatus::Failed), Some(JobStatus::Pending));
            }
            None => {
                // Forgotten after its retention (or a restart: jobs live in
                // memory, the DLQ on disk): the job comes back under its id.
                let attempts = history.iter().map(|h| h.attempt).max().unwrap_or(1) + 1;
                let job = Job { attempts, history, ..Job::pending(name.clone(), message.input, now) };
                self.jobs.insert(id, job);
                self.count(None, Some(JobStatus::Pending));
            }
        }
        let launch = self.launch(id, &name, ctx);
        Box::pin(self.enqueue(id, name, launch, (), false, ctx).map(|r, _, _| r.map_err(|e| e.to_string())))
    }
}
