//! Asynchronous request-reply: submit long-running jobs, poll their status
//! and progress, cancel one, read the results. The same operations as the
//! gateway's `/v1/jobs` routes, in Rust.
//!
//! `cargo run --example async_request_reply`

use std::time::Duration;

use actorbus::actors::error::HandlerError;
use actorbus::actors::jobs::{JobContext, JobStatus, JobWorker};
use actorbus::Bus;
use serde_json::{json, Value};

/// Renders a "report" in ten steps, reporting progress and honouring
/// cancellation.
struct Report;
impl JobWorker for Report {
    async fn run(&mut self, input: Value, cx: JobContext) -> Result<Value, HandlerError> {
        let pages = input["pages"].as_u64().ok_or_else(|| HandlerError::new("`pages` is required"))?;
        for step in 1..=10u8 {
            if cx.is_cancelled() {
                return Err(HandlerError::new("cancelled"));
            }
            actix_rt::time::sleep(Duration::from_millis(pages * 2)).await;
            cx.progress(step * 10);
        }
        Ok(json!({ "pages": pages, "url": format!("/reports/{}.pdf", cx.id()) }))
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().build()?;
    let jobs = bus.jobs();
    jobs.kind("report", || Report)
        .workers(2)
        .validate(|input| match input["pages"].as_u64() {
            Some(1..=500) => Ok(()),
            _ => Err("`pages` must be 1 to 500".into()),
        })
        .start()
        .await?;

    let small = jobs.submit("report", json!({"pages": 10}), None).await?.job;
    let large = jobs.submit("report", json!({"pages": 40}), Some("quarterly".into())).await?.job;
    let doomed = jobs.submit("report", json!({"pages": 200}), None).await?.job;
    println!("submitted 3 jobs; the third waits for a worker (retry after {:?})", doomed.retry_after);
    let again = jobs.submit("report", json!({"pages": 40}), Some("quarterly".into())).await?;
    println!("resubmitted with the same idempotency key: same job? {}", again.existing && again.job.id == large.id);
    let refused = jobs.submit("report", json!({"pages": 0}), None).await.unwrap_err();
    println!("refused at submission: {refused}");

    println!("cancel the third: {:?}", jobs.cancel(doomed.id).await?.status);
    loop {
        let (a, b) = (jobs.get(small.id).await?, jobs.get(large.id).await?);
        println!(
            "  small {:>9} {:>3}%   large {:>9} {:>3}%",
            a.status.as_str(),
            a.progress,
            b.status.as_str(),
            b.progress
        );
        if a.status.is_final() && b.status.is_final() {
            println!("results: {} and {}", a.result.unwrap_or_default(), b.result.unwrap_or_default());
            assert_eq!(b.status, JobStatus::Succeeded);
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(60)).await;
    }
    bus.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
