//! Asynchronous Request-Reply (DESIGN §6.2): long-running jobs with status
//! polling.
//!
//! A client submits a job and gets an id at once; the work happens later. A
//! [`JobTracker`] actor owns every job's state (`pending → running →
//! succeeded | failed | cancelled`), its progress and its result, and hands
//! pending jobs to the workers of their kind as they become free. Workers are
//! request-reply services ([`RunJob`] in, a JSON result out), so a worker that
//! panics fails its job with reason `panic: …` and is rebuilt by its
//! supervisor like any other service.
//!
//! Progress and cancellation travel through a small shared cell per job
//! ([`JobContext`]), not messages: reporting progress costs an atomic store,
//! and a cancelled job's worker sees the flag on its next check. A worker that
//! never checks runs to the end; its result is then discarded.
//!
//! Ended jobs are kept for a configurable retention time, then forgotten (a
//! lookup then finds nothing). Everything is bounded: pending jobs per kind,
//! and retained jobs overall (the oldest ended ones go first).
//!
//! Jobs live in memory: a process restart forgets them. At shutdown, running
//! jobs get the bus's drain time to finish, and jobs still pending then fail
//! with reason `the bus is shutting down`, so nobody polls forever.
//!
//! The HTTP contract (202 + `Location` + `Retry-After`, 303 to the result,
//! `DELETE` to cancel) is the gateway's; this module is the same thing in Rust.
//!
//! ## Queue-backed kinds (external workers)
//!
//! A kind registered with a queue ([`KindSpec::queue`]) has no worker actor:
//! each submitted job is enqueued there as a [`JobMessage`] (`{"job_id",
//! "kind", "input"}`) and stays `pending` until a worker, in any language,
//! takes the message and reports through [`Report`]: progress (the job turns
//! `running`), complete (`succeeded`) or fail (`failed`). Reports on a job
//! that ended or was cancelled are refused ([`JobError::AlreadyEnded`]): the
//! worker acks the message and moves on, so a cancelled job's message never
//! makes it run. If the queue dead-letters the message (`max_deliveries`,
//! `expired`) the job fails with that reason instead of waiting forever, and
//! a job running longer than its kind's timeout fails with `timeout`.
//!
//! ## Failed jobs and the DLQ
//!
//! With a DLQ ([`JobTracker::with_dlq`]) a failed job is dead-lettered with
//! source `job:<kind>` (pattern [`JOB_PATTERN`]), its envelope's id being the
//! job's id and its payload the [`JobMessage`]; a queue-backed job whose
//! message was dead-lettered has that entry (source `queue:<name>`) instead.
//! **Redriving** either entry resubmits the job under the same id: a failed
//! job goes back to `pending` (error cleared, [`JobView::attempts`] + 1) and
//! runs again, so a client polling its URL sees it come back; a job the
//! tracker already forgot is recreated. Entries of jobs that are pending,
//! running, succeeded or cancelled are not redriven (they stay in the DLQ,
//! with why).

mod builtin;
mod tracker;

pub use builtin::{echo_worker, fail_worker, sleep_worker, BuiltinWorker};
pub use tracker::{
    Cancel, GetJob, JobError, JobTracker, JobTrackerConfig, JobUpdate, JobView, KindSpec, RegisterKind, Report,
    Resubmit, Submit, Submitted, Validator, JOB_PATTERN,
};

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::MessageId;
use crate::error::HandlerError;
use crate::request_reply::{Request, RequestContext, Service};

/// A job's id.
pub type JobId = MessageId;

/// A job as a queue-backed kind's queue carries it (and as a job's dead
/// letter holds it as its payload).
///
/// ```
/// use actorbus_actors::jobs::{JobId, JobMessage};
/// let m = JobMessage { job_id: JobId::new(), kind: "resize".into(), input: serde_json::json!({"w": 64}) };
/// let json = serde_json::to_value(&m).unwrap();
/// assert_eq!(json["kind"], "resize");
/// assert_eq!(serde_json::from_value::<JobMessage>(json).unwrap(), m);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    /// The job's id: what the worker reports on.
    pub job_id: JobId,
    /// Its kind.
    pub kind: String,
    /// Its input.
    pub input: Value,
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, waiting for a free worker.
    Pending,
    /// A worker is on it.
    Running,
    /// Done; the result is available.
    Succeeded,
    /// Done; the error says why.
    Failed,
    /// Cancelled before it ended.
    Cancelled,
}

impl JobStatus {
    /// True once the job can no longer change.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }

    /// The status as written in JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// What a worker gets beside its input: where to report progress, and
/// whether the job was cancelled.
#[derive(Clone, Debug)]
pub struct JobContext {
    id: JobId,
    shared: Arc<JobShared>,
}

#[derive(Debug, Default)]
pub(crate) struct JobShared {
    progress: AtomicU8,
    cancelled: AtomicBool,
}

impl JobContext {
    pub(crate) fn new(id: JobId, shared: Arc<JobShared>) -> Self {
        JobContext { id, shared }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Reports progress, in percent (values above 100 count as 100).
    pub fn progress(&self, percent: u8) {
        self.shared.progress.store(percent.min(100), Ordering::Relaxed);
    }

    /// True once the job was cancelled: stop early, the result is discarded.
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancelled.load(Ordering::Relaxed)
    }
}

impl JobShared {
    pub(crate) fn progress(&self) -> u8 {
        self.progress.load(Ordering::Relaxed)
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// Runs jobs of one kind. Its state is rebuilt from its factory after a panic.
///
/// ```
/// use actorbus_actors::jobs::{JobContext, JobWorker};
/// use actorbus_actors::error::HandlerError;
/// use serde_json::{json, Value};
///
/// struct Resize;
/// impl JobWorker for Resize {
///     async fn run(&mut self, input: Value, cx: JobContext) -> Result<Value, HandlerError> {
///         let width = input["width"].as_u64().ok_or_else(|| HandlerError::new("width missing"))?;
///         cx.progress(50);
///         Ok(json!({ "width": width / 2 }))
///     }
/// }
/// ```
pub trait JobWorker: 'static {
    /// Does the job.
    fn run(&mut self, input: Value, cx: JobContext) -> impl Future<Output = Result<Value, HandlerError>>;
}

/// A job handed to a worker service.
pub struct RunJob {
    /// The job's input.
    pub input: Value,
    /// Progress and cancellation.
    pub cx: JobContext,
}

impl Request for RunJob {
    type Response = Value;
}

/// Hosts a [`JobWorker`] as a request-reply service.
pub struct JobService<W>(pub W);

impl<W: JobWorker> Service for JobService<W> {
    type Request = RunJob;

    fn call(&mut self, job: RunJob, _: RequestContext) -> impl Future<Output = Result<Value, HandlerError>> {
        self.0.run(job.input, job.cx)
    }
}
