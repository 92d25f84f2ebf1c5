//! Asynchronous request-reply in Rust (DESIGN §6.2): job states, progress,
//! cancellation, idempotency, retention, bounds and failing workers.

use std::time::Duration;

use actorbus::actors::error::HandlerError;
use actorbus::actors::jobs::{BuiltinWorker, JobContext, JobError, JobStatus, JobTrackerConfig, JobView, JobWorker};
use actorbus::{Bus, Jobs};
use serde_json::{json, Value};

async fn settle(jobs: &Jobs, id: actorbus::MessageId) -> JobView {
    for _ in 0..2_000 {
        let view = jobs.get(id).await.unwrap();
        if view.status.is_final() {
            return view;
        }
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("job {id} did not end within 4 s");
}

async fn builtins(bus: &Bus) -> Jobs {
    let jobs = bus.jobs();
    jobs.builtin("echo", BuiltinWorker::Echo).workers(2).start().await.unwrap();
    jobs.builtin("fail", BuiltinWorker::Fail).start().await.unwrap();
    jobs.builtin("sleep", BuiltinWorker::Sleep).start().await.unwrap();
    jobs
}

#[actix_rt::test]
async fn a_job_goes_from_pending_to_succeeded_with_its_result() {
    let bus = Bus::builder().build().unwrap();
    let jobs = builtins(&bus).await;
    let submitted = jobs.submit("echo", json!({"delay_ms": 30, "n": 7}), None).await.unwrap();
    assert!(!submitted.existing);
    assert_eq!(submitted.job.status, JobStatus::Pending);
    assert_eq!(submitted.job.retry_after, Duration::from_secs(1));
    let running = jobs.get(submitted.job.id).await.unwrap();
    assert_eq!(running.status, JobStatus::Running);
    assert_eq!(running.result, None);
    let done = settle(&jobs, submitted.job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result, Some(json!({"delay_ms": 30, "n": 7})));
    assert_eq!(done.progress, 100);
    assert!(done.updated_at >= done.created_at);
    assert_eq!(done.retry_after, Duration::ZERO);
}

#[actix_rt::test]
async fn progress_is_visible_and_cancel_stops_a_running_job() {
    let bus = Bus::builder().build().unwrap();
    let jobs = builtins(&bus).await;
    let id = jobs.submit("sleep", json!({"ms": 2_000}), None).await.unwrap().job.id;
    // A second job waits behind it (one worker).
    let queued = jobs.submit("sleep", json!({"ms": 10}), None).await.unwrap().job.id;
    let mut progress = 0;
    for _ in 0..200 {
        progress = jobs.get(id).await.unwrap().progress;
        if progress >= 10 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert!((10..100).contains(&progress), "progress {progress}");
    assert_eq!(jobs.get(queued).await.unwrap().status, JobStatus::Pending);

    // Cancel the pending one, then the running one.
    assert_eq!(jobs.cancel(queued).await.unwrap().status, JobStatus::Cancelled);
    assert_eq!(jobs.cancel(id).await.unwrap().status, JobStatus::Cancelled);
    assert_eq!(jobs.cancel(id).await, Err(JobError::AlreadyEnded { id, status: JobStatus::Cancelled }));
    // The worker sees the flag, stops early, and serves the next job.
    let next = jobs.submit("sleep", json!({"ms": 5}), None).await.unwrap().job.id;
    let done = settle(&jobs, next).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(jobs.get(id).await.unwrap().status, JobStatus::Cancelled, "the late result does not revive it");
    assert_eq!(jobs.get(queued).await.unwrap().result, None, "a cancelled pending job never ran");
}

#[actix_rt::test]
async fn failures_validation_and_unknowns_are_typed() {
    let bus = Bus::builder().build().unwrap();
    let jobs = builtins(&bus).await;
    let id = jobs.submit("fail", json!({"message": "disk on fire"}), None).await.unwrap().job.id;
    let failed = settle(&jobs, id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("failed: disk on fire"));
    assert_eq!(jobs.cancel(id).await, Err(JobError::AlreadyEnded { id, status: JobStatus::Failed }));

    assert_eq!(jobs.submit("nope", json!({}), None).await, Err(JobError::UnknownKind("nope".into())));
    assert!(matches!(jobs.submit("sleep", json!({"ms": "soon"}), None).await, Err(JobError::Invalid(_))));
    assert!(matches!(jobs.submit("fail", json!([1, 2]), None).await, Err(JobError::Invalid(_))));
    let ghost = actorbus::MessageId::new();
    assert_eq!(jobs.get(ghost).await, Err(JobError::UnknownJob(ghost)));
    assert_eq!(jobs.cancel(ghost).await, Err(JobError::UnknownJob(ghost)));
}

#[actix_rt::test]
async fn an_idempotency_key_returns_the_existing_job() {
    let bus = Bus::builder().build().unwrap();
    let jobs = builtins(&bus).await;
    let first = jobs.submit("echo", json!({"v": 1}), Some("order-17".into())).await.unwrap();
    let again = jobs.submit("echo", json!({"v": 2}), Some("order-17".into())).await.unwrap();
    assert!(again.existing);
    assert_eq!(again.job.id, first.job.id);
    let other_kind = jobs.submit("sleep", json!({"ms": 1}), Some("order-17".into())).await.unwrap();
    assert_ne!(other_kind.job.id, first.job.id, "keys are scoped by kind");
    assert_eq!(settle(&jobs, first.job.id).await.result, Some(json!({"v": 1})), "the repeat ran nothing");
}

#[actix_rt::test]
async fn ended_jobs_are_forgotten_after_retention_and_pending_is_bounded() {
    let config =
        JobTrackerConfig { retention: Duration::from_millis(50), max_pending_per_kind: 3, ..Default::default() };
    let bus = Bus::builder().jobs(config).build().unwrap();
    let jobs = builtins(&bus).await;
    let id = jobs.submit("echo", json!({}), Some("k".into())).await.unwrap().job.id;
    assert_eq!(settle(&jobs, id).await.status, JobStatus::Succeeded);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(jobs.get(id).await, Err(JobError::UnknownJob(id)));
    let fresh = jobs.submit("echo", json!({}), Some("k".into())).await.unwrap();
    assert!(!fresh.existing, "the key went with the job");

    // One running plus three pending fill the `sleep` kind.
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        match jobs.submit("sleep", json!({"ms": 300}), None).await {
            Ok(s) => accepted.push(s.job.id),
            Err(JobError::QueueFull(kind)) => {
                assert_eq!(kind, "sleep");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((accepted.len(), refused), (4, 2));
    for id in accepted {
        jobs.cancel(id).await.unwrap();
    }
}

struct Fragile;
impl JobWorker for Fragile {
    async fn run(&mut self, input: Value, cx: JobContext) -> Result<Value, HandlerError> {
        cx.progress(10);
        if input["explode"] == json!(true) {
            panic!("worker exploded");
        }
        Ok(json!("fine"))
    }
}

#[actix_rt::test]
async fn a_panicking_worker_fails_its_job_and_serves_the_next() {
    let bus = Bus::builder().build().unwrap();
    let jobs = bus.jobs();
    jobs.kind("fragile", || Fragile).start().await.unwrap();
    let boom = jobs.submit("fragile", json!({"explode": true}), None).await.unwrap().job.id;
    let ok = jobs.submit("fragile", json!({}), None).await.unwrap().job.id;
    let failed = settle(&jobs, boom).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("panic: worker exploded"));
    assert_eq!(settle(&jobs, ok).await.result, Some(json!("fine")));
}

#[actix_rt::test]
async fn shutdown_fails_pending_jobs_instead_of_leaving_them_pending() {
    let bus = Bus::builder().build().unwrap();
    let jobs = builtins(&bus).await;
    let running = jobs.submit("sleep", json!({"ms": 50}), None).await.unwrap().job.id;
    let pending = jobs.submit("sleep", json!({"ms": 50}), None).await.unwrap().job.id;
    bus.shutdown(Duration::from_secs(2)).await;
    assert_eq!(settle(&jobs, running).await.status, JobStatus::Succeeded, "drained");
    let view = settle(&jobs, pending).await;
    assert_eq!(view.status, JobStatus::Failed);
    assert!(view.error.unwrap().contains("shutting down"));
}
