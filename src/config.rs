//! The `actorbus serve` configuration file (DESIGN §7).
//!
//! ```toml
//! listen = "127.0.0.1:8080"        # loopback unless configured
//! data_dir = "./actorbus-data"
//! admin_token = "change-me"        # or the ACTORBUS_ADMIN_TOKEN variable
//! max_body_bytes = 1048576
//!
//! [[queues]]                       # served at /v1/queues/{name}/…
//! name = "orders"
//! capacity = 100000                # default 100,000
//! overflow = "reject"              # block (default) | reject | drop_oldest | drop_newest | dead_letter
//! max_deliveries = 3               # default 5
//! visibility_timeout_ms = 30000    # default 30 s
//! priority = false                 # true: deliver by priority 9..0
//! claim_check_threshold_bytes = 65536  # larger payloads travel as claim-check tickets
//! durable = true                   # default: queues.sqlite3; false: in memory
//!
//! [[topics]]                       # served at /v1/topics/{name}
//! name = "orders.created"
//! durable_subscriptions = [{ queue = "orders" }]   # queues declared above
//!
//! [[jobs]]
//! kind = "echo"
//! worker = "builtin:echo"          # built-in demo workers: echo, fail, sleep
//! workers = 2                      # concurrent jobs (default 1)
//! timeout_ms = 60000               # default 1 h
//!
//! [[jobs]]
//! kind = "resize"
//! worker = "queue:resize"          # external workers take jobs from this queue
//! timeout_ms = 600000              # from the first progress report
//! ```
//!
//! Unknown keys are errors, so a typo is reported rather than ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actorbus_actors::backpressure::OverflowPolicy;
use actorbus_actors::jobs::BuiltinWorker;
use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gateway listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the embedded store keeps its files.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The token that mutating admin routes require (`Authorization: Bearer`).
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Largest request body accepted; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// HTTP worker threads (default: the number of cores).
    #[serde(default)]
    pub http_workers: Option<usize>,
    /// How long an ended job stays queryable, in milliseconds (default 1 h).
    #[serde(default = "default_retention_ms")]
    pub job_retention_ms: u64,
    /// Point-to-point queues.
    #[serde(default)]
    pub queues: Vec<QueueConfig>,
    /// Publish-subscribe topics.
    #[serde(default)]
    pub topics: Vec<TopicConfig>,
    /// Job kinds for asynchronous request-reply.
    #[serde(default)]
    pub jobs: Vec<JobConfig>,
}

/// A queue (DESIGN §6.3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Its name.
    pub name: String,
    /// Messages it holds.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// What a full queue does.
    #[serde(default)]
    pub overflow: OverflowPolicy,
    /// Deliveries before a message is dead-lettered.
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u32,
    /// Unacknowledged deliveries are redelivered after this.
    #[serde(default = "default_visibility_ms")]
    pub visibility_timeout_ms: u64,
    /// Deliver by priority.
    #[serde(default)]
    pub priority: bool,
    /// Payloads larger than this (encoded) travel as claim-check tickets:
    /// the payload is stored once in `claims.sqlite3`, the queue holds the
    /// ticket, consumers get the payload.
    #[serde(default)]
    pub claim_check_threshold_bytes: Option<u64>,
    /// Keep the queue in `queues.sqlite3`: a 202 on enqueue (or on a publish
    /// to a topic bound to it) survives a crash of the process. Default
    /// true; `false` keeps it in memory (faster, lost on restart).
    #[serde(default = "default_true")]
    pub durable: bool,
}

fn default_true() -> bool {
    true
}

/// A topic (DESIGN §6.4).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Its name.
    pub name: String,
    /// Queues bound to it: each receives every message published to the
    /// topic (at-least-once, with the queue's ack, retry and DLQ).
    #[serde(default)]
    pub durable_subscriptions: Vec<DurableSubscription>,
}

/// A topic-to-queue binding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurableSubscription {
    /// The queue that receives the topic's messages.
    pub queue: String,
}

/// A job kind (DESIGN §6.2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Its name, as in `POST /v1/jobs/{kind}`.
    pub kind: String,
    /// `builtin:echo`, `builtin:fail`, `builtin:sleep`, or `queue:<name>`
    /// (external workers receive `{"job_id", "kind", "input"}` messages from
    /// the queue `<name>` and report over HTTP).
    pub worker: String,
    /// Concurrent jobs (built-in workers only).
    #[serde(default = "default_job_workers")]
    pub workers: usize,
    /// A job running longer fails with reason `timeout` (queue-backed kinds:
    /// counted from the first progress report).
    #[serde(default = "default_job_timeout_ms")]
    pub timeout_ms: u64,
}

/// Who runs a job kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerSpec {
    /// A built-in demo worker.
    Builtin(BuiltinWorker),
    /// External workers taking jobs from the named queue.
    Queue(String),
}

impl JobConfig {
    /// The parsed `worker` field.
    pub fn worker_spec(&self) -> Result<WorkerSpec, ConfigError> {
        match self.worker.split_once(':') {
            Some(("builtin", name)) => BuiltinWorker::from_name(name).map(WorkerSpec::Builtin).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "job kind `{}`: no built-in worker `{name}` (echo, fail, sleep)",
                    self.kind
                ))
            }),
            Some(("queue", name)) if valid_name(name) => Ok(WorkerSpec::Queue(name.to_owned())),
            Some(("queue", name)) => Err(ConfigError::Invalid(format!(
                "job kind `{}`: queue name `{name}`: use letters, digits, `-`, `_` and `.`",
                self.kind
            ))),
            _ => Err(ConfigError::Invalid(format!(
                "job kind `{}`: worker must be `builtin:<name>` or `queue:<name>`, not `{}`",
                self.kind, self.worker
            ))),
        }
    }

    /// The timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Names of job kinds and queues: letters, digits, `-`, `_` and `.`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./actorbus-data")
}
fn default_max_body() -> usize {
    1 << 20
}
fn default_retention_ms() -> u64 {
    3_600_000
}
fn default_capacity() -> usize {
    100_000
}
fn default_max_deliveries() -> u32 {
    5
}
fn default_visibility_ms() -> u64 {
    30_000
}
fn default_job_workers() -> usize {
    1
}
fn default_job_timeout_ms() -> u64 {
    3_600_000
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            data_dir: default_data_dir(),
            admin_token: None,
            max_body_bytes: default_max_body(),
            http_workers: None,
            job_retention_ms: default_retention_ms(),
            queues: Vec::new(),
            topics: Vec::new(),
            jobs: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and checks a file; `ACTORBUS_ADMIN_TOKEN` overrides the token.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text)
    }

    /// Parses and checks TOML text; `ACTORBUS_ADMIN_TOKEN` overrides the token.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text)?;
        if let Ok(token) = std::env::var("ACTORBUS_ADMIN_TOKEN") {
            config.admin_token = Some(token);
        }
        config.check()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.max_body_bytes == 0 {
            return invalid("max_body_bytes must be at least 1".into());
        }
        if self.admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return invalid("admin_token must not be empty".into());
        }
        let mut kinds = std::collections::HashSet::new();
        for job in &self.jobs {
            if !valid_name(&job.kind) {
                return invalid(format!("job kind `{}`: use letters, digits, `-`, `_` and `.`", job.kind));
            }
            if !kinds.insert(job.kind.as_str()) {
                return invalid(format!("job kind `{}` is defined twice", job.kind));
            }
            if job.workers == 0 {
                return invalid(format!("job kind `{}`: workers must be at least 1", job.kind));
            }
            job.worker_spec()?;
        }
        self.check_queues()?;
        self.check_topics()
    }

    fn check_queues(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::HashSet::new();
        for q in &self.queues {
            if !is_name(&q.name) {
                return invalid(format!("queue `{}`: use 1 to 128 letters, digits, `-`, `_` and `.`", q.name));
            }
            if !names.insert(q.name.as_str()) {
                return invalid(format!("queue `{}` is defined twice", q.name));
            }
            if q.capacity == 0 || q.max_deliveries == 0 || q.visibility_timeout_ms == 0 {
                return invalid(format!(
                    "queue `{}`: capacity, max_deliveries and visibility_timeout_ms must be at least 1",
                    q.name
                ));
            }
            if q.claim_check_threshold_bytes == Some(0) {
                return invalid(format!("queue `{}`: claim_check_threshold_bytes must be at least 1", q.name));
            }
        }
        Ok(())
    }

    fn check_topics(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::HashSet::new();
        for t in &self.topics {
            if let Err(e) = actorbus_actors::topic::validate_subject(&t.name) {
                return invalid(format!("topic `{}`: {e}", t.name));
            }
            if !names.insert(t.name.as_str()) {
                return invalid(format!("topic `{}` is defined twice", t.name));
            }
            let mut bound = std::collections::HashSet::new();
            for sub in &t.durable_subscriptions {
                if !self.queues.iter().any(|q| q.name == sub.queue) {
                    return invalid(format!(
                        "topic `{}`: durable subscription to queue `{}`, which is not declared in [[queues]]",
                        t.name, sub.queue
                    ));
                }
                if !bound.insert(sub.queue.as_str()) {
                    return invalid(format!("topic `{}`: queue `{}` is bound twice", t.name, sub.queue));
                }
            }
        }
        Ok(())
    }
}

/// Queue names appear in URL paths: keep them to characters that need no
/// escaping.
fn is_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl QueueConfig {
    /// The visibility timeout as a duration.
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_millis(self.visibility_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example_jobs_and_defaults() {
        let c = Config::parse(
            r#"
            listen = "127.0.0.1:9090"
            max_body_bytes = 2048
            [[jobs]]
            kind = "echo"
            worker = "builtin:echo"
            workers = 3
            "#,
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.max_body_bytes, 2048);
        assert_eq!(c.jobs[0].worker_spec().unwrap(), WorkerSpec::Builtin(BuiltinWorker::Echo));
        let q = Config::parse("[[jobs]]\nkind = \"resize\"\nworker = \"queue:resize-jobs\"").unwrap();
        assert_eq!(q.jobs[0].worker_spec().unwrap(), WorkerSpec::Queue("resize-jobs".into()));
        assert_eq!(c.jobs[0].workers, 3);
        assert_eq!(Config::parse("").unwrap().listen, default_listen(), "loopback by default");
    }

    #[test]
    fn refuses_typos_and_nonsense() {
        for (text, needle) in [
            ("lisen = \"127.0.0.1:1\"", "unknown field"),
            ("listen = \"nowhere\"", "invalid socket address"),
            ("[[jobs]]\nkind = \"x\"\nworker = \"builtin:teleport\"", "no built-in worker"),
            ("[[jobs]]\nkind = \"x\"\nworker = \"echo\"", "must be `builtin:<name>`"),
            ("[[jobs]]\nkind = \"x\"\nworker = \"queue:\"", "queue name"),
            ("[[jobs]]\nkind = \"x\"\nworker = \"queue:a b\"", "queue name"),
            ("[[jobs]]\nkind = \"a b\"\nworker = \"builtin:echo\"", "use letters"),
            (
                "[[jobs]]\nkind = \"x\"\nworker = \"builtin:echo\"\n[[jobs]]\nkind = \"x\"\nworker = \"builtin:fail\"",
                "twice",
            ),
            ("max_body_bytes = 0", "at least 1"),
            ("[[queues]]\nname = \"q\"\noverflow = \"explode\"", "unknown variant"),
            ("[[queues]]\nname = \"a/b\"", "use 1 to 128 letters"),
            ("[[queues]]\nname = \"q\"\n[[queues]]\nname = \"q\"", "defined twice"),
            ("[[queues]]\nname = \"q\"\ncapacity = 0", "at least 1"),
            ("[[queues]]\nname = \"q\"\nvisibility_timeout_ms = 0", "at least 1"),
            ("[[queues]]\nname = \"q\"\ncolour = \"red\"", "unknown field"),
            ("[[topics]]\nname = \"orders.*\"", "topic `orders.*`"),
            ("[[topics]]\nname = \"t\"\ndurable_subscriptions = [{ queue = \"ghost\" }]", "not declared"),
            (
                "[[queues]]\nname = \"q\"\n[[topics]]\nname = \"t\"\ndurable_subscriptions = [{ queue = \"q\" }, { queue = \"q\" }]",
                "bound twice",
            ),
            ("[[topics]]\nname = \"t\"\n[[topics]]\nname = \"t\"", "defined twice"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn parses_the_design_example_queues_and_topics() {
        let c = Config::parse(
            r#"
            [[queues]]
            name = "orders"
            capacity = 100000
            overflow = "reject"
            max_deliveries = 3
            visibility_timeout_ms = 30000
            priority = false
            claim_check_threshold_bytes = 65536

            [[queues]]
            name = "audit"

            [[topics]]
            name = "orders.created"
            durable_subscriptions = [{ queue = "orders" }, { queue = "audit" }]
            "#,
        )
        .unwrap();
        let orders = &c.queues[0];
        assert_eq!((orders.capacity, orders.overflow, orders.max_deliveries), (100_000, OverflowPolicy::Reject, 3));
        assert_eq!(orders.visibility_timeout(), Duration::from_secs(30));
        assert_eq!(orders.claim_check_threshold_bytes, Some(65_536));
        let audit = &c.queues[1];
        assert_eq!((audit.capacity, audit.overflow, audit.max_deliveries), (100_000, OverflowPolicy::Block, 5));
        assert!(!audit.priority);
        let bound: Vec<&str> = c.topics[0].durable_subscriptions.iter().map(|d| d.queue.as_str()).collect();
        assert_eq!(bound, ["orders", "audit"]);
    }
}
