//! Job kinds served by external workers over a queue (DESIGN §7,
//! `worker = "queue:<name>"`): over HTTP through the real binary, and in
//! process where the queue side (receive, nack) is needed.

#[path = "common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use actorbus::actors::dlq::{DlqFilter, RedriveOptions};
use actorbus::actors::jobs::{JobError, JobMessage, JobStatus, JobUpdate, JobView};
use actorbus::actors::queue::RetryPolicy;
use actorbus::{Bus, Jobs, MessageId};
use serde_json::{json, Value};
use server::Server;

const CONFIG: &str = r#"
[[jobs]]
kind = "resize"
worker = "queue:resize"

[[jobs]]
kind = "echo"
worker = "builtin:echo"
"#;

fn metric(server: &Server, sample: &str) -> f64 {
    let text = String::from_utf8(server.get("/metrics").body).unwrap();
    text.lines().find_map(|l| l.strip_prefix(sample)).map_or(0.0, |v| v.trim().parse().unwrap())
}

fn submit(server: &Server, input: &str) -> String {
    let r = server.post_json("/v1/jobs/resize", input);
    assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "pending");
    r.json()["id"].as_str().unwrap().to_owned()
}

#[test]
fn worker_reports_progress_then_completes() {
    let server = Server::start(CONFIG);
    let id = submit(&server, r#"{"url": "cat.png", "w": 64}"#);
    // The job's message is on the queue, waiting for a worker.
    let started = Instant::now();
    while metric(&server, "actorbus_queue_depth_messages{name=\"resize\"} ") != 1.0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the job's message never reached the queue");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&server, "actorbus_queue_enqueued_total{name=\"resize\"} "), 1.0);
    let location = format!("/v1/jobs/{id}");
    let pending = server.get(&location);
    assert_eq!((pending.status, pending.json()["status"].as_str()), (200, Some("pending")));

    let p = server.post_json(&format!("{location}/progress"), r#"{"progress": 40.7, "message": "decoding"}"#);
    assert_eq!(p.status, 200, "{:?}", String::from_utf8_lossy(&p.body));
    let body = p.json();
    assert_eq!((body["status"].as_str(), body["progress"].as_u64()), (Some("running"), Some(40)));
    assert_eq!(body["message"], "decoding");
    let running = server.get(&location);
    assert_eq!(running.json()["status"], "running");
    assert!(running.header("retry-after").is_some());
    let p = server.post_json(&format!("{location}/progress"), r#"{"progress": 90}"#);
    assert_eq!((p.json()["progress"].as_u64(), p.json()["message"].as_str()), (Some(90), Some("decoding")));

    let done = server.post_json(&format!("{location}/complete"), r#"{"result": {"url": "cat-64.png"}}"#);
    assert_eq!(done.status, 200);
    assert_eq!(done.json()["status"], "succeeded");
    let status = server.get(&location);
    assert_eq!(status.status, 303);
    assert_eq!(status.header("location"), Some(format!("{location}/result").as_str()));
    let result = server.get(&format!("{location}/result"));
    assert_eq!((result.status, result.json()), (200, json!({"url": "cat-64.png"})));
    assert_eq!(metric(&server, "actorbus_jobs_finished_total{kind=\"resize\",outcome=\"succeeded\"} "), 1.0);

    let late = server.post_json(&format!("{location}/progress"), r#"{"progress": 1}"#);
    assert_eq!((late.status, late.error_code().as_str()), (409, "already_ended"));
    let twice = server.post_json(&format!("{location}/complete"), r#"{"result": 2}"#);
    assert_eq!(twice.status, 409);
}

#[test]
fn fail_route_fails_and_a_cancelled_job_refuses_its_worker() {
    let server = Server::start(CONFIG);
    let id = submit(&server, "{}");
    // Complete without progress: straight from pending.
    let failed = server.post_json(&format!("/v1/jobs/{id}/fail"), r#"{"error": "unsupported format"}"#);
    assert_eq!(failed.status, 200);
    let status = server.get(&format!("/v1/jobs/{id}"));
    assert_eq!(status.status, 200);
    assert_eq!(
        (status.json()["status"].as_str(), status.json()["error"].as_str()),
        (Some("failed"), Some("failed: unsupported format"))
    );
    let no_result = server.get(&format!("/v1/jobs/{id}/result"));
    assert_eq!(no_result.status, 404);

    let cancelled = submit(&server, "{}");
    let c = server.request("DELETE", &format!("/v1/jobs/{cancelled}"), &[], None);
    assert_eq!((c.status, c.json()["status"].as_str()), (202, Some("cancelled")));
    for (route, body) in
        [("progress", r#"{"progress": 10}"#), ("complete", r#"{"result": 1}"#), ("fail", r#"{"error": "x"}"#)]
    {
        let r = server.post_json(&format!("/v1/jobs/{cancelled}/{route}"), body);
        assert_eq!((r.status, r.error_code().as_str()), (409, "already_ended"), "{route}");
    }
    assert_eq!(server.get(&format!("/v1/jobs/{cancelled}")).json()["status"], "cancelled", "never ran");

    // A running job cancelled: a later completion is refused too.
    let running = submit(&server, "{}");
    server.post_json(&format!("/v1/jobs/{running}/progress"), r#"{"progress": 5}"#);
    let c = server.request("DELETE", &format!("/v1/jobs/{running}"), &[], None);
    assert_eq!(c.status, 202);
    let late = server.post_json(&format!("/v1/jobs/{running}/complete"), r#"{"result": 1}"#);
    assert_eq!((late.status, late.error_code().as_str()), (409, "already_ended"));
}

#[test]
fn reports_are_validated() {
    let server = Server::start(CONFIG);
    let id = submit(&server, "{}");
    let route = |r: &str| format!("/v1/jobs/{id}/{r}");
    for (path, body) in [
        (route("progress"), "{}"),
        (route("progress"), r#"{"progress": 101}"#),
        (route("progress"), r#"{"progress": -1}"#),
        (route("progress"), r#"{"progress": "half"}"#),
        (route("progress"), r#"{"progress": 5, "message": 7}"#),
        (route("progress"), "[5]"),
        (route("progress"), "{oops"),
        (route("complete"), "{}"),
        (route("complete"), ""),
        (route("fail"), "{}"),
        (route("fail"), r#"{"error": ""}"#),
        (route("fail"), r#"{"error": 3}"#),
    ] {
        let r = server.post_json(&path, body);
        assert_eq!(r.status, 400, "{path} {body}: {:?}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(server.get(&format!("/v1/jobs/{id}")).json()["status"], "pending", "bad reports changed nothing");
    let ghost = server.post_json("/v1/jobs/01a2065c-3aed-7386-b51b-0ab22e573974/progress", r#"{"progress": 1}"#);
    assert_eq!((ghost.status, ghost.error_code().as_str()), (404, "unknown_job"));
    let not_uuid = server.post_json("/v1/jobs/nope/complete", r#"{"result": 1}"#);
    assert_eq!(not_uuid.status, 404);
    let echo = server.post_json("/v1/jobs/echo", r#"{"delay_ms": 2000}"#).json()["id"].as_str().unwrap().to_owned();
    let builtin = server.post_json(&format!("/v1/jobs/{echo}/complete"), r#"{"result": 1}"#);
    assert_eq!((builtin.status, builtin.error_code().as_str()), (409, "not_external"));
}

async fn wait(jobs: &Jobs, id: MessageId, pred: impl Fn(&JobView) -> bool) -> JobView {
    let started = Instant::now();
    loop {
        let view = jobs.get(id).await.unwrap();
        if pred(&view) {
            return view;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "job stuck: {view:?}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A job whose queue message is dead-lettered (here: nacked until
/// `max_deliveries`) fails with that reason instead of staying pending;
/// redriving the queue's entry resubmits the job, which a worker then
/// finishes. A cancelled job's message is refused by the tracker.
#[actix_rt::test]
async fn a_dead_lettered_message_fails_its_job_and_redrive_resubmits_it() {
    let bus = Bus::builder().build().unwrap();
    let queue = bus.queue::<Value>("thumbs").max_deliveries(2).retry(RetryPolicy::IMMEDIATE).start().unwrap();
    let mut worker = queue.consumer(1).await.unwrap();
    let jobs = bus.jobs();
    jobs.queue_kind("thumb", queue.clone()).start().await.unwrap();

    let id = jobs.submit("thumb", json!({"w": 8}), None).await.unwrap().job.id;
    for attempt in 1..=2 {
        let d = worker.recv().await.unwrap();
        let msg: JobMessage = serde_json::from_value(d.payload().clone()).unwrap();
        assert_eq!((msg.job_id, msg.kind.as_str(), d.attempt()), (id, "thumb", attempt));
        if attempt == 1 {
            let view = jobs.report(id, JobUpdate::Progress { percent: 30, message: None }).await.unwrap();
            assert_eq!(view.status, JobStatus::Running);
        }
        d.nack();
    }
    let failed = wait(&jobs, id, |v| v.status == JobStatus::Failed).await;
    let error = failed.error.unwrap();
    assert!(error.starts_with("max_deliveries") && error.contains("`thumbs`"), "{error}");
    let letters = bus.dlq().list(DlqFilter::default()).await.unwrap();
    assert_eq!(letters.len(), 1, "one entry, the queue's: {letters:?}");
    assert_eq!((letters[0].source.pattern.as_str(), letters[0].source.name.as_str()), ("queue", "thumbs"));
    assert_eq!(letters[0].envelope["payload"]["job_id"], json!(id));
    let late = jobs.report(id, JobUpdate::Complete(json!(1))).await;
    assert!(matches!(late, Err(JobError::AlreadyEnded { status: JobStatus::Failed, .. })), "{late:?}");

    let report = bus.dlq().redrive(letters[0].id, RedriveOptions::to_source()).await.unwrap();
    assert_eq!((report.redriven.len(), report.failed.len()), (1, 0), "{report:?}");
    let again = jobs.get(id).await.unwrap();
    assert_eq!((again.status, again.attempts, again.error), (JobStatus::Pending, 2, None));
    let d = worker.recv().await.unwrap();
    assert_eq!(d.payload()["job_id"], json!(id), "the job is back on its queue");
    assert_eq!(d.attempt(), 1);
    jobs.report(id, JobUpdate::Complete(json!({"ok": true}))).await.unwrap();
    d.ack();
    let done = jobs.get(id).await.unwrap();
    assert_eq!((done.status, done.result), (JobStatus::Succeeded, Some(json!({"ok": true}))));
    assert!(bus.dlq().is_empty().await.unwrap());

    // Cancelled while its message waits: the worker that takes it is refused.
    let cancelled = jobs.submit("thumb", json!({}), None).await.unwrap().job.id;
    jobs.cancel(cancelled).await.unwrap();
    let d = worker.recv().await.unwrap();
    assert_eq!(d.payload()["job_id"], json!(cancelled));
    let refused = jobs.report(cancelled, JobUpdate::Progress { percent: 1, message: None }).await;
    assert!(matches!(refused, Err(JobError::AlreadyEnded { status: JobStatus::Cancelled, .. })), "{refused:?}");
    d.ack();
    assert_eq!(jobs.get(cancelled).await.unwrap().status, JobStatus::Cancelled);
}

/// A running job of a queue-backed kind that never completes fails with
/// `timeout` after its kind's timeout, and is dead-lettered as `job:<kind>`.
#[actix_rt::test]
async fn a_silent_worker_times_the_job_out() {
    let bus = Bus::builder().build().unwrap();
    let queue = bus.queue::<Value>("slow").start().unwrap();
    let jobs = bus.jobs();
    jobs.queue_kind("slow", queue).timeout(Duration::from_millis(150)).start().await.unwrap();
    let id = jobs.submit("slow", json!({}), None).await.unwrap().job.id;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(jobs.get(id).await.unwrap().status, JobStatus::Pending, "the timeout counts from the first report");
    jobs.report(id, JobUpdate::Progress { percent: 10, message: Some("started".into()) }).await.unwrap();
    let failed = wait(&jobs, id, |v| v.status == JobStatus::Failed).await;
    assert!(failed.error.unwrap().contains("no completion within"));
    let started = Instant::now();
    let letters = loop {
        let l = bus.dlq().list(DlqFilter::default().source("job", "slow")).await.unwrap();
        if !l.is_empty() || started.elapsed() > Duration::from_secs(5) {
            break l;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason.code(), "timeout");
    assert_eq!(letters[0].message_id, Some(id));
}

/// A full job queue (overflow `reject`) refuses the submission (HTTP 503)
/// and keeps no trace of it: its idempotency key is free again.
#[actix_rt::test]
async fn a_full_job_queue_refuses_the_submission() {
    let bus = Bus::builder().build().unwrap();
    let queue = bus.queue::<Value>("tiny").capacity(1).overflow(actorbus::OverflowPolicy::Reject).start().unwrap();
    let jobs = bus.jobs();
    jobs.queue_kind("tiny", queue.clone()).start().await.unwrap();
    jobs.submit("tiny", json!(1), None).await.unwrap();
    let refused = jobs.submit("tiny", json!(2), Some("key-2".into())).await;
    assert_eq!(refused, Err(JobError::QueueFull("tiny".into())));
    let mut worker = queue.consumer(1).await.unwrap();
    let only = worker.recv().await.unwrap();
    assert_eq!(only.payload()["input"], json!(1), "the refused job never reached the queue");
    only.ack();
    let again = jobs.submit("tiny", json!(2), Some("key-2".into())).await.unwrap();
    assert!(!again.existing, "the refused submission left nothing behind");
}
