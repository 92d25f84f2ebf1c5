//! `actorbus serve`: the runtime behind the HTTP gateway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actorbus::actors::backpressure::OverflowPolicy;
use actorbus::actors::jobs::JobTrackerConfig;
use actorbus::actors::queue::QueueHandle;
use actorbus::actors::topic::TopicConfig;
use actorbus::config::{Config, WorkerSpec};
use actorbus::gateway::{self, GatewayConfig};
use actorbus::{Bus, BusError};
use serde_json::Value;

/// The queue a queue-backed job kind enqueues its jobs on: the queue of
/// that name if one is already running on the bus (declared in the config),
/// else a new one with the default queue settings and overflow `reject`, so
/// a full queue answers the submission 503 instead of holding it.
fn job_queue(bus: &Bus, name: &str) -> Result<QueueHandle<Value>, BusError> {
    if let Some(queue) = bus.queue_handle::<Value>(name) {
        return Ok(queue);
    }
    bus.queue::<Value>(name).overflow(OverflowPolicy::Reject).start()
}

pub fn run(
    config_path: Option<&Path>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = match config_path {
        Some(path) => Config::load(path)?,
        None => Config::parse("")?,
    };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", config.data_dir.display()))?;
    if !config.listen.ip().is_loopback() && config.admin_token.is_none() {
        tracing::warn!(listen = %config.listen, "listening beyond loopback without an admin token");
    }
    actix::System::new().block_on(async move {
        let jobs = JobTrackerConfig { retention: Duration::from_millis(config.job_retention_ms), ..Default::default() };
        let bus = Bus::builder().jobs(jobs).data_dir(&config.data_dir).build()?;
        start_queues_and_topics(&bus, &config)?;
        for job in &config.jobs {
            match job.worker_spec()? {
                WorkerSpec::Builtin(worker) => {
                    bus.jobs().builtin(&job.kind, worker).workers(job.workers).timeout(job.timeout()).start().await?;
                }
                WorkerSpec::Queue(name) => {
                    let queue = job_queue(&bus, &name)?;
                    bus.jobs().queue_kind(&job.kind, queue).timeout(job.timeout()).start().await?;
                }
            }
        }
        // No definitions: the coordinator serves `GET /v1/sagas/{id}` from the
        // durable log (sagas an embedding program ran on this data directory).
        let sagas = bus.sagas().start().await?;
        if !sagas.recovery().unknown.is_empty() {
            tracing::warn!(
                unfinished = sagas.recovery().unknown.len(),
                "unfinished sagas in the log wait for a program that defines them"
            );
        }
        let gateway = GatewayConfig {
            listen: config.listen,
            max_body_bytes: config.max_body_bytes,
            admin_token: config.admin_token.clone(),
            workers: config.http_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        };
        gateway::serve(bus.clone(), gateway).await?;
        let report = bus.shutdown(Duration::from_secs(5)).await;
        tracing::info!(services = report.services, took = ?report.took, "stopped");
        Ok(())
    })
}

/// Starts the configured queues, then the topics (whose durable
/// subscriptions name queues), all carrying JSON: what the gateway's
/// `/v1/queues` and `/v1/topics` routes serve.
fn start_queues_and_topics(bus: &Bus, config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    for q in &config.queues {
        let mut builder = bus
            .queue::<serde_json::Value>(&q.name)
            .capacity(q.capacity)
            .overflow(q.overflow)
            .max_deliveries(q.max_deliveries)
            .visibility_timeout(q.visibility_timeout());
        if q.priority {
            builder = builder.priority(None);
        }
        if q.durable {
            builder = builder.durable();
        }
        if let Some(threshold) = q.claim_check_threshold_bytes {
            builder = builder.claim_check(usize::try_from(threshold).unwrap_or(usize::MAX));
        }
        builder.start()?;
    }
    for t in &config.topics {
        bus.create_topic::<serde_json::Value>(&t.name, TopicConfig::new())?;
        for sub in &t.durable_subscriptions {
            bus.bind_queue::<serde_json::Value>(&t.name, &sub.queue)?;
        }
    }
    Ok(())
}
