//! `actorbus dlq …`: the dead letter queue of a running server, over its
//! HTTP gateway (`/v1/dlq`).
//!
//! Exit codes: 0 done; 1 the server refused or failed (its error is printed),
//! could not be reached, or some entries of a redrive were not redriven; 2 a
//! usage error.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::http_client::{self, encode, Server};

/// `println!` that does not panic when stdout is closed early (piped into
/// `head`, say): the rest of the output is dropped.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Options every `dlq` subcommand takes.
#[derive(Args, Debug)]
pub struct DlqArgs {
    /// The server's gateway (plain http).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The admin token for redrive and purge; without it, the
    /// ACTORBUS_ADMIN_TOKEN environment variable.
    #[arg(long, global = true)]
    token: Option<String>,
    /// Print the server's JSON answer as it is, instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the answer (a rate-limited redrive takes a while).
    #[arg(long, global = true, default_value_t = 300)]
    timeout_secs: u64,
    #[command(subcommand)]
    action: DlqAction,
}

/// Which entries: every flag given must match.
#[derive(Args, Debug, Default)]
struct FilterArgs {
    /// Source as `pattern/name` (`queue/orders`, `job/resize`) or a pattern
    /// alone (`queue`).
    #[arg(long)]
    source: Option<String>,
    /// Reason code: max_deliveries, expired, failed, panic, timeout,
    /// overflow, shutdown, claim_check.
    #[arg(long)]
    reason: Option<String>,
    /// Last failure at or after this time: RFC 3339 UTC
    /// (2026-11-23T09:00:00Z) or milliseconds since the epoch.
    #[arg(long)]
    since: Option<String>,
    /// Last failure before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
}

impl FilterArgs {
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        [("source", &self.source), ("reason", &self.reason), ("since", &self.since), ("until", &self.until)]
            .into_iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
            .collect()
    }

    fn query(&self) -> String {
        self.pairs().iter().map(|(k, v)| format!("{k}={}", encode(v))).collect::<Vec<_>>().join("&")
    }
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// List dead letters, oldest first (no token needed).
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many entries (the server caps it at 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only entries after this entry id (the next page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one dead letter with its envelope and failure history.
    Get {
        /// The entry id.
        id: String,
    },
    /// Send dead letters back to their source (or to --to-queue): one by id,
    /// the entries a filter matches, or --all. A job's entry resubmits the
    /// job under its id. Needs the admin token.
    Redrive {
        /// The entry id (or give a filter, or --all).
        id: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Every entry.
        #[arg(long)]
        all: bool,
        /// Send to this queue instead of each entry's source.
        #[arg(long)]
        to_queue: Option<String>,
        /// At most this many entries per second.
        #[arg(long)]
        per_second: Option<u32>,
    },
    /// Delete dead letters: one by id, the entries a filter matches, or
    /// --all. Needs the admin token.
    Purge {
        /// The entry id (or give a filter, or --all).
        id: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Every entry.
        #[arg(long)]
        all: bool,
    },
}

/// What went wrong, and the exit code it maps to.
enum Failure {
    Usage(String),
    Server(String),
}

/// Runs a `dlq` subcommand.
pub fn run(args: DlqArgs) -> ExitCode {
    match execute(&args) {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Server(m)) => {
            eprintln!("error: {m}");
            ExitCode::FAILURE
        }
    }
}

fn execute(args: &DlqArgs) -> Result<ExitCode, Failure> {
    let server = Server::parse(&args.server).map_err(Failure::Usage)?;
    let token = args.token.clone().or_else(|| std::env::var("ACTORBUS_ADMIN_TOKEN").ok()).filter(|t| !t.is_empty());
    let call = |method: &str, path: &str, body: Option<Value>| {
        call(&server, method, path, token.as_deref(), body, Duration::from_secs(args.timeout_secs.max(1)))
    };
    match &args.action {
        DlqAction::List { filter, limit, after } => {
            let mut query = filter.query();
            for (k, v) in [("limit", Some(limit.to_string())), ("after", after.clone())] {
                if let Some(v) = v {
                    if !query.is_empty() {
                        query.push('&');
                    }
                    query.push_str(&format!("{k}={}", encode(&v)));
                }
            }
            let answer = call("GET", &format!("/v1/dlq?{query}"), None)?;
            if args.json {
                outln!("{answer}");
            } else {
                print_table(&answer);
            }
        }
        DlqAction::Get { id } => {
            let answer = call("GET", &format!("/v1/dlq/{}", encode(id)), None)?;
            if args.json {
                outln!("{answer}");
            } else {
                print_entry(&answer);
            }
        }
        DlqAction::Redrive { id, filter, all, to_queue, per_second } => {
            let answer = match selection(id.as_deref(), filter, *all)? {
                Some(id) => {
                    if per_second.is_some() {
                        return Err(Failure::Usage("--per-second applies to a filter or --all, not one id".into()));
                    }
                    let body = to_queue.as_ref().map(|q| json!({"to_queue": q}));
                    call("POST", &format!("/v1/dlq/{}/redrive", encode(id)), body.or(Some(json!({}))))?
                }
                None => {
                    let mut body: serde_json::Map<String, Value> =
                        filter.pairs().into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
                    if let Some(q) = to_queue {
                        body.insert("to_queue".into(), json!(q));
                    }
                    if let Some(n) = per_second {
                        body.insert("per_second".into(), json!(n));
                    }
                    call("POST", "/v1/dlq/redrive", Some(Value::Object(body)))?
                }
            };
            if args.json {
                outln!("{answer}");
            } else {
                outln!("redriven {}, failed {}", answer["redriven"], answer["failed"]);
                for f in answer["failures"].as_array().into_iter().flatten() {
                    outln!("  {}  {}", text(&f["id"]), text(&f["error"]));
                }
            }
            if answer["failed"].as_u64().unwrap_or(0) > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        DlqAction::Purge { id, filter, all } => {
            let answer = match selection(id.as_deref(), filter, *all)? {
                Some(id) => call("DELETE", &format!("/v1/dlq/{}", encode(id)), None)?,
                None => {
                    let mut query = filter.query();
                    if *all && query.is_empty() {
                        query = "all=true".into();
                    }
                    call("DELETE", &format!("/v1/dlq?{query}"), None)?
                }
            };
            if args.json {
                outln!("{answer}");
            } else {
                outln!("purged {}", answer["purged"]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One id, or a filter / `--all` (`None`); anything else is a usage error.
fn selection<'a>(id: Option<&'a str>, filter: &FilterArgs, all: bool) -> Result<Option<&'a str>, Failure> {
    let filtered = !filter.pairs().is_empty();
    match (id, filtered, all) {
        (Some(id), false, false) => Ok(Some(id)),
        (Some(_), _, _) => Err(Failure::Usage("give an entry id, or a filter / --all, not both".into())),
        (None, false, false) => {
            Err(Failure::Usage("say which entries: an entry id, a filter (--source, --reason, …) or --all".into()))
        }
        (None, _, _) => Ok(None),
    }
}

/// Sends a request; a 2xx JSON answer, or the server's error as a failure.
fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    timeout: Duration,
) -> Result<Value, Failure> {
    let body = body.map(|b| b.to_string());
    let response = http_client::request(server, method, path, token, body.as_deref().map(str::as_bytes), timeout)
        .map_err(|e| Failure::Server(format!("cannot reach the server: {e}")))?;
    let value: Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&response.body).into_owned()));
    if (200..300).contains(&response.status) {
        return Ok(value);
    }
    let (code, message) = match &value["error"] {
        Value::Object(e) => (text(&e["code"]), text(&e["message"])),
        _ => (String::new(), text(&value)),
    };
    Err(Failure::Server(format!("{} {code}: {message}", response.status)))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// At most `n` characters, with an ellipsis when cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

fn print_table(answer: &Value) {
    let entries = answer["entries"].as_array().map(Vec::as_slice).unwrap_or_default();
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            [
                text(&e["id"]),
                text(&e["source"]),
                text(&e["reason"]),
                text(&e["attempts"]),
                text(&e["last_failed_at"]),
                clip(&text(&e["error"]), 60),
            ]
        })
        .collect();
    let header = ["ID", "SOURCE", "REASON", "ATTEMPTS", "LAST FAILED", "ERROR"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        outln!("{}", cells.join("  ").trim_end());
    }
    outln!("{} entr{}", rows.len(), if rows.len() == 1 { "y" } else { "ies" });
    if let Some(next) = answer["next_after"].as_str() {
        outln!("more: --after {next}");
    }
}

fn print_entry(e: &Value) {
    for key in ["id", "message_id", "source", "reason", "error", "attempts", "first_failed_at", "last_failed_at"] {
        outln!("{key:<16} {}", text(&e[key]));
    }
    outln!("history:");
    for h in e["errors"].as_array().into_iter().flatten() {
        outln!("  {}  attempt {}  {}", text(&h["at"]), text(&h["attempt"]), text(&h["reason"]));
    }
    let envelope = serde_json::to_string_pretty(&e["envelope"]).unwrap_or_default();
    outln!("envelope:\n{envelope}");
}
