//! The dead letter queue over HTTP (DESIGN §6.7, §7), through the real
//! `actorbus serve` binary: the admin token on mutations, list / get /
//! filters, purge, and redrive (of failed jobs: the job is resubmitted under
//! its id).

#[path = "common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use serde_json::Value;
use server::{Response, Server};

const TOKEN: &str = "s3cret-token";

fn config(token: Option<&str>) -> String {
    let token = token.map(|t| format!("admin_token = \"{t}\"\n")).unwrap_or_default();
    format!(
        r#"{token}
[[jobs]]
kind = "fail"
worker = "builtin:fail"

[[jobs]]
kind = "resize"
worker = "queue:resize"
"#
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn admin(server: &Server, method: &str, path: &str, body: Option<&str>) -> Response {
    let auth = bearer(TOKEN);
    server.request(method, path, &[("Authorization", auth.as_str())], body.map(str::as_bytes))
}

fn entries(server: &Server, query: &str) -> Vec<Value> {
    let r = server.get(&format!("/v1/dlq{query}"));
    assert_eq!(r.status, 200, "GET /v1/dlq{query}: {:?}", String::from_utf8_lossy(&r.body));
    r.json()["entries"].as_array().unwrap().clone()
}

/// Waits until the DLQ list for `query` has `n` entries.
fn wait_entries(server: &Server, query: &str, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let found = entries(server, query);
        if found.len() == n {
            return found;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "expected {n} entries for {query:?}, have {found:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Submits a `fail` job; its id.
fn failing_job(server: &Server, message: &str) -> String {
    let r = server.post_json("/v1/jobs/fail", &format!(r#"{{"message": "{message}"}}"#));
    assert_eq!(r.status, 202);
    r.json()["id"].as_str().unwrap().to_owned()
}

/// Submits a `resize` job (queue-backed) and fails it through the worker
/// route; its id.
fn failed_queue_job(server: &Server) -> String {
    let r = server.post_json("/v1/jobs/resize", r#"{"w": 640}"#);
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let failed = server.post_json(&format!("/v1/jobs/{id}/fail"), r#"{"error": "corrupt image"}"#);
    assert_eq!(failed.status, 200);
    assert_eq!(failed.json()["status"], "failed");
    id
}

fn job(server: &Server, id: &str) -> Value {
    server.get(&format!("/v1/jobs/{id}")).json()
}

fn wait_job(server: &Server, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let j = job(server, id);
        if pred(&j) {
            return j;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "job {id} stuck at {j}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(server: &Server, sample: &str) -> f64 {
    let text = String::from_utf8(server.get("/metrics").body).unwrap();
    text.lines().find_map(|l| l.strip_prefix(sample)).map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Waits (at most 5 s) until the sample reads `value`: the queue actor
/// counts an enqueue when it takes the message, just after the send returns.
fn wait_metric(server: &Server, sample: &str, value: f64) {
    let started = Instant::now();
    while metric(server, sample) != value {
        assert!(started.elapsed() < Duration::from_secs(5), "{sample}: {} != {value}", metric(server, sample));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn mutations_need_the_right_admin_token() {
    let server = Server::start(&config(Some(TOKEN)));
    failing_job(&server, "no disk");
    let id = wait_entries(&server, "", 1)[0]["id"].as_str().unwrap().to_owned();
    let one = format!("/v1/dlq/{id}");
    let redrive = format!("/v1/dlq/{id}/redrive");
    let mutations: [(&str, &str); 4] =
        [("DELETE", &one), ("POST", &redrive), ("POST", "/v1/dlq/redrive"), ("DELETE", "/v1/dlq?all=true")];
    for (method, path) in mutations {
        let none = server.request(method, path, &[], Some(b"{}"));
        assert_eq!((none.status, none.error_code().as_str()), (401, "missing_token"), "{method} {path}");
        assert_eq!(none.header("www-authenticate"), Some("Bearer"), "{method} {path}");
        for malformed in ["Basic czNjcmV0", "Bearer", "s3cret-token", "Bearer  "] {
            let r = server.request(method, path, &[("Authorization", malformed)], Some(b"{}"));
            assert_eq!((r.status, r.error_code().as_str()), (401, "malformed_token"), "{method} {path} {malformed:?}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        for wrong in ["s3cret-tokeN", "s3cret-token-and-more", "s3cret", "x"] {
            let auth = bearer(wrong);
            let r = server.request(method, path, &[("Authorization", auth.as_str())], Some(b"{}"));
            assert_eq!((r.status, r.error_code().as_str()), (403, "wrong_token"), "{method} {path} {wrong:?}");
        }
    }
    assert_eq!(entries(&server, "").len(), 1, "nothing refused changed the DLQ");
    assert_eq!(server.get(&one).status, 200, "reads need no token");

    let purged = admin(&server, "DELETE", &one, None);
    assert_eq!(purged.status, 200, "{:?}", String::from_utf8_lossy(&purged.body));
    assert_eq!(purged.json()["purged"], 1);
    let gone = server.get(&one);
    assert_eq!((gone.status, gone.error_code().as_str()), (404, "unknown_entry"));
    assert!(entries(&server, "").is_empty());
    let again = admin(&server, "DELETE", &one, None);
    assert_eq!((again.status, again.error_code().as_str()), (404, "unknown_entry"));
    let lowercase = server.request("DELETE", "/v1/dlq?all=true", &[("Authorization", "bearer s3cret-token")], None);
    assert_eq!(lowercase.status, 200, "the scheme is case-insensitive");
}

#[test]
fn without_a_configured_token_mutations_are_disabled() {
    let server = Server::start(&config(None));
    failing_job(&server, "no disk");
    let id = wait_entries(&server, "", 1)[0]["id"].as_str().unwrap().to_owned();
    for (method, path) in [("DELETE", format!("/v1/dlq/{id}")), ("POST", format!("/v1/dlq/{id}/redrive"))] {
        for headers in [vec![], vec![("Authorization", "Bearer anything")]] {
            let r = server.request(method, &path, &headers, Some(b"{}"));
            assert_eq!((r.status, r.error_code().as_str()), (403, "admin_disabled"), "{method} {path}");
            let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
            assert!(message.contains("admin_token") && message.contains("ACTORBUS_ADMIN_TOKEN"), "{message}");
        }
    }
    assert_eq!(entries(&server, "").len(), 1, "reads work, nothing was removed");
}

#[test]
fn list_get_and_filters() {
    let server = Server::start(&config(Some(TOKEN)));
    let before_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() - 1;
    let first = failing_job(&server, "no disk");
    wait_entries(&server, "", 1);
    failing_job(&server, "no memory");
    let resize = failed_queue_job(&server);
    let all = wait_entries(&server, "", 3);

    // Oldest first, in the documented shape.
    let e = &all[0];
    for field in ["id", "source", "reason", "attempts", "first_failed_at", "last_failed_at", "envelope", "errors"] {
        assert!(e.get(field).is_some(), "entry has `{field}`: {e}");
    }
    assert_eq!(e["source"], "job/fail");
    assert_eq!((e["pattern"].as_str(), e["name"].as_str()), (Some("job"), Some("fail")));
    assert_eq!((e["reason"].as_str(), e["error"].as_str()), (Some("failed"), Some("failed: no disk")));
    assert_eq!(e["attempts"], 1);
    assert_eq!(e["message_id"].as_str(), Some(first.as_str()), "a job's entry carries the job id");
    assert_eq!(e["envelope"]["payload"]["job_id"].as_str(), Some(first.as_str()));
    assert_eq!(e["envelope"]["payload"]["input"]["message"], "no disk");
    assert!(e["last_failed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(all[2]["source"], "job/resize");
    assert_eq!(all[2]["error"], "failed: corrupt image");
    assert_eq!(all[2]["envelope"]["payload"]["job_id"].as_str(), Some(resize.as_str()));

    let got = server.get(&format!("/v1/dlq/{}", e["id"].as_str().unwrap()));
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), *e);

    let count = |q: &str| entries(&server, q).len();
    assert_eq!(count("?source=job/fail"), 2);
    assert_eq!(count("?source=job%3Afail"), 2, "pattern:name works too");
    assert_eq!(count("?source=job"), 3);
    assert_eq!(count("?pattern=job&name=resize"), 1);
    assert_eq!(count("?source=queue/resize"), 0);
    assert_eq!(count("?reason=failed"), 3);
    assert_eq!(count("?reason=max_deliveries"), 0);
    assert_eq!(count(&format!("?since={before_ms}")), 3);
    assert_eq!(count(&format!("?until={before_ms}")), 0);
    assert_eq!(count("?since=2999-01-01T00:00:00Z"), 0);
    assert_eq!(count("?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z&source=job/fail"), 2);

    let page = server.get("/v1/dlq?limit=2").json();
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let next = page["next_after"].as_str().expect("a full page says where the next starts").to_owned();
    let rest = entries(&server, &format!("?after={next}"));
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["id"], all[2]["id"]);
    assert!(server.get("/v1/dlq?limit=5").json()["next_after"].is_null());
    assert_eq!(count("?limit=100000"), 3, "the limit is capped, not refused");

    for bad in [
        "?reason=bogus",
        "?since=yesterday",
        "?until=-5",
        "?limit=0",
        "?limit=many",
        "?sauce=job",
        "?after=nope",
        "?source=/x",
    ] {
        let r = server.get(&format!("/v1/dlq{bad}"));
        assert_eq!(r.status, 400, "{bad}: {:?}", String::from_utf8_lossy(&r.body));
        assert!(!r.error_code().is_empty());
    }
    let malformed = server.get("/v1/dlq/not-a-uuid");
    assert_eq!((malformed.status, malformed.error_code().as_str()), (400, "invalid_id"));
    let unknown = server.get("/v1/dlq/01a2065c-3aed-7386-b51b-0ab22e573974");
    assert_eq!((unknown.status, unknown.error_code().as_str()), (404, "unknown_entry"));
}

#[test]
fn purge_by_filter_removes_only_what_matches() {
    let server = Server::start(&config(Some(TOKEN)));
    failing_job(&server, "a");
    failing_job(&server, "b");
    failed_queue_job(&server);
    wait_entries(&server, "", 3);
    let bare = admin(&server, "DELETE", "/v1/dlq", None);
    assert_eq!((bare.status, bare.error_code().as_str()), (400, "filter_required"));
    let purged = admin(&server, "DELETE", "/v1/dlq?source=job/fail", None);
    assert_eq!(purged.status, 200);
    assert_eq!(purged.json()["purged"], 2);
    let left = entries(&server, "");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["source"], "job/resize");
    assert!(metric(&server, "actorbus_dlq_purged_total ") >= 2.0);
    let everything = admin(&server, "DELETE", "/v1/dlq?all=true", None);
    assert_eq!(everything.json()["purged"], 1);
    assert!(entries(&server, "").is_empty());
}

/// Redriving a failed job's dead letter resubmits the job under its id: the
/// built-in `fail` job runs (and fails) again, with a second entry that
/// counts 2 attempts.
#[test]
fn redrive_of_a_failed_job_runs_it_again() {
    let server = Server::start(&config(Some(TOKEN)));
    let id = failing_job(&server, "no disk");
    let entry = wait_entries(&server, "", 1)[0].clone();
    let entry_id = entry["id"].as_str().unwrap().to_owned();
    assert_eq!(job(&server, &id)["attempts"], 1);

    let r = admin(&server, "POST", &format!("/v1/dlq/{entry_id}/redrive"), None);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let report = r.json();
    assert_eq!((report["redriven"].as_u64(), report["failed"].as_u64()), (Some(1), Some(0)));
    assert_eq!(report["redriven_ids"][0].as_str(), Some(entry_id.as_str()));
    assert_eq!(server.get(&format!("/v1/dlq/{entry_id}")).status, 404, "a redriven entry leaves the DLQ");

    let again = wait_entries(&server, "", 1);
    assert_ne!(again[0]["id"].as_str(), Some(entry_id.as_str()), "a new entry for the second failure");
    assert_eq!(again[0]["message_id"].as_str(), Some(id.as_str()), "the same job");
    assert_eq!(again[0]["attempts"], 2);
    let history: Vec<(u64, &str)> = again[0]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["attempt"].as_u64().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(history, [(1, "failed: no disk"), (2, "failed: no disk")], "the history carries over");
    let j = wait_job(&server, &id, |j| j["status"] == "failed" && j["attempts"] == 2);
    assert_eq!(j["error"], "failed: no disk");
    assert_eq!(metric(&server, "actorbus_jobs_finished_total{kind=\"fail\",outcome=\"failed\"} "), 2.0);

    let unknown = admin(&server, "POST", "/v1/dlq/01a2065c-3aed-7386-b51b-0ab22e573974/redrive", None);
    assert_eq!((unknown.status, unknown.error_code().as_str()), (404, "unknown_entry"));
    let nowhere = admin(
        &server,
        "POST",
        &format!("/v1/dlq/{}/redrive", again[0]["id"].as_str().unwrap()),
        Some(r#"{"to_queue": "nowhere"}"#),
    );
    assert_eq!((nowhere.status, nowhere.error_code().as_str()), (404, "unknown_queue"));
    let typo = admin(
        &server,
        "POST",
        &format!("/v1/dlq/{}/redrive", again[0]["id"].as_str().unwrap()),
        Some(r#"{"to": "x"}"#),
    );
    assert_eq!((typo.status, typo.error_code().as_str()), (400, "invalid_body"));
}

/// A queue-backed job failed by its worker: bulk redrive to the source puts
/// the job back on its queue (pending, attempt 2), and a worker can then
/// finish it.
#[test]
fn bulk_redrive_puts_a_queue_job_back_on_its_queue() {
    let server = Server::start(&config(Some(TOKEN)));
    let id = failed_queue_job(&server);
    failing_job(&server, "stays");
    wait_entries(&server, "", 2);
    wait_metric(&server, "actorbus_queue_enqueued_total{name=\"resize\"} ", 1.0);

    let bad_rate = admin(&server, "POST", "/v1/dlq/redrive", Some(r#"{"source": "job/resize", "per_second": 0}"#));
    assert_eq!(bad_rate.status, 400);
    let r = admin(&server, "POST", "/v1/dlq/redrive", Some(r#"{"source": "job/resize", "per_second": 50}"#));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!((r.json()["redriven"].as_u64(), r.json()["failed"].as_u64()), (Some(1), Some(0)));

    let j = job(&server, &id);
    assert_eq!((j["status"].as_str(), j["attempts"].as_u64()), (Some("pending"), Some(2)));
    assert!(j["error"].is_null());
    wait_metric(&server, "actorbus_queue_enqueued_total{name=\"resize\"} ", 2.0);
    let left = entries(&server, "");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["source"], "job/fail", "the filter left the other entry alone");

    let done = server.post_json(&format!("/v1/jobs/{id}/complete"), r#"{"result": {"w": 320}}"#);
    assert_eq!(done.status, 200);
    let status = server.get(&format!("/v1/jobs/{id}"));
    assert_eq!(status.status, 303);
    assert_eq!(server.get(status.header("location").unwrap()).json(), serde_json::json!({"w": 320}));

    // `to_queue` copies an entry's message onto that queue as it is: the
    // `fail` job is not resubmitted.
    let other = left[0]["id"].as_str().unwrap().to_owned();
    let fail_job = left[0]["message_id"].as_str().unwrap().to_owned();
    let copied = admin(&server, "POST", &format!("/v1/dlq/{other}/redrive"), Some(r#"{"to_queue": "resize"}"#));
    assert_eq!(copied.status, 200, "{:?}", String::from_utf8_lossy(&copied.body));
    wait_metric(&server, "actorbus_queue_enqueued_total{name=\"resize\"} ", 3.0);
    assert!(entries(&server, "").is_empty());
    let j = job(&server, &fail_job);
    assert_eq!((j["status"].as_str(), j["attempts"].as_u64()), (Some("failed"), Some(1)));
}
