//! The HTTP gateway, driven through the real `actorbus serve` binary
//! (DESIGN §6.2, §7).

#[path = "common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use server::{Response, Server};

const CONFIG: &str = r#"
max_body_bytes = 4096
admin_token = "openapi-check"
job_retention_ms = 60000

[[jobs]]
kind = "echo"
worker = "builtin:echo"
workers = 2

[[jobs]]
kind = "sleep"
worker = "builtin:sleep"

[[jobs]]
kind = "fail"
worker = "builtin:fail"

[[queues]]
name = "orders"

[[topics]]
name = "orders.created"
durable_subscriptions = [{ queue = "orders" }]
"#;

/// Polls a job's status URL until it stops answering 200-and-unfinished.
fn poll_until_ended(server: &Server, location: &str) -> Response {
    let started = Instant::now();
    loop {
        let r = server.get(location);
        let unfinished = r.status == 200 && matches!(r.json()["status"].as_str(), Some("pending" | "running"));
        if !unfinished {
            return r;
        }
        assert!(r.header("retry-after").is_some(), "an unfinished job says when to ask again");
        assert!(started.elapsed() < Duration::from_secs(10), "job did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn async_request_reply_flow() {
    let server = Server::start(CONFIG);
    let accepted = server.post_json("/v1/jobs/sleep", r#"{"ms": 400}"#);
    assert_eq!(accepted.status, 202);
    let location = accepted.header("location").expect("Location").to_owned();
    assert!(location.starts_with("/v1/jobs/"));
    let retry: u64 = accepted.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry));
    let body = accepted.json();
    assert_eq!(body["kind"], "sleep");
    assert_eq!(format!("/v1/jobs/{}", body["id"].as_str().unwrap()), location);
    for field in ["id", "kind", "status", "progress", "created_at", "updated_at", "error"] {
        assert!(body.get(field).is_some(), "status body has `{field}`: {body}");
    }

    std::thread::sleep(Duration::from_millis(100));
    let running = server.get(&location);
    assert_eq!(running.status, 200);
    assert_eq!(running.json()["status"], "running");
    assert!(running.header("retry-after").is_some());

    let done = poll_until_ended(&server, &location);
    assert_eq!(done.status, 303);
    assert_eq!(done.json()["status"], "succeeded");
    let result_location = done.header("location").expect("303 Location").to_owned();
    assert_eq!(result_location, format!("{location}/result"));
    let result = server.get(&result_location);
    assert_eq!(result.status, 200);
    assert_eq!(result.json(), serde_json::json!({"slept_ms": 400}));
}

#[test]
fn idempotent_resubmission_returns_the_same_job() {
    let server = Server::start(CONFIG);
    let headers = [("Idempotency-Key", "order-42")];
    let first = server.request("POST", "/v1/jobs/echo", &headers, Some(br#"{"n": 1}"#));
    let again = server.request("POST", "/v1/jobs/echo", &headers, Some(br#"{"n": 2}"#));
    assert_eq!((first.status, again.status), (202, 202));
    assert_eq!(first.header("location"), again.header("location"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let done = poll_until_ended(&server, first.header("location").unwrap());
    let result = server.get(done.header("location").unwrap());
    assert_eq!(result.json(), serde_json::json!({"n": 1}), "the repeat ran nothing");
    let bad_key = server.request("POST", "/v1/jobs/echo", &[("Idempotency-Key", "has space")], Some(b"{}"));
    assert_eq!((bad_key.status, bad_key.error_code().as_str()), (400, "bad_header"));
}

#[test]
fn cancel_failed_jobs_and_unknowns() {
    let server = Server::start(CONFIG);
    let long = server.post_json("/v1/jobs/sleep", r#"{"ms": 5000}"#);
    let location = long.header("location").unwrap().to_owned();
    let cancelled = server.request("DELETE", &location, &[], None);
    assert_eq!(cancelled.status, 202);
    assert_eq!(cancelled.json()["status"], "cancelled");
    let again = server.request("DELETE", &location, &[], None);
    assert_eq!((again.status, again.error_code().as_str()), (409, "already_ended"));
    assert_eq!(server.get(&location).json()["status"], "cancelled");

    let failing = server.post_json("/v1/jobs/fail", r#"{"message": "no disk"}"#);
    let failed = poll_until_ended(&server, failing.header("location").unwrap());
    assert_eq!(failed.status, 200);
    let body = failed.json();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["error"], "failed: no disk");
    let no_result = server.get(&format!("{}/result", failing.header("location").unwrap()));
    assert_eq!((no_result.status, no_result.error_code().as_str()), (404, "no_result"));
    let finished_cancel = server.request("DELETE", failing.header("location").unwrap(), &[], None);
    assert_eq!(finished_cancel.status, 409);

    let ghost = "/v1/jobs/01a2065c-3aed-7386-b51b-0ab22e573974";
    assert_eq!((server.get(ghost).status, server.get(ghost).error_code().as_str()), (404, "unknown_job"));
    assert_eq!(server.get("/v1/jobs/not-a-uuid").status, 404);
    let unknown_kind = server.post_json("/v1/jobs/teleport", "{}");
    assert_eq!((unknown_kind.status, unknown_kind.error_code().as_str()), (404, "unknown_kind"));
    let invalid = server.post_json("/v1/jobs/sleep", r#"{"ms": "forever"}"#);
    assert_eq!((invalid.status, invalid.error_code().as_str()), (400, "invalid_input"));
}

#[test]
fn health_readiness_and_metrics() {
    let server = Server::start(CONFIG);
    assert_eq!(server.get("/healthz").json()["status"], "ok");
    assert_eq!(server.get("/readyz").json()["status"], "ready");
    let submitted = server.post_json("/v1/jobs/echo", "{}");
    poll_until_ended(&server, submitted.header("location").unwrap());
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains("actorbus_jobs_submitted_total{kind=\"echo\"} 1"), "{text}");
    assert!(text.contains("actorbus_jobs_finished_total{kind=\"echo\",outcome=\"succeeded\"} 1"), "{text}");
    assert!(text.contains("# TYPE actorbus_jobs_by_state_jobs gauge"), "{text}");
}

/// 200 malformed requests: each gets a 4xx JSON error, the server keeps
/// answering, and jobs accepted before the flood are all still there.
#[test]
fn malformed_requests_get_json_errors_and_lose_nothing() {
    let server = Server::start(CONFIG);
    let before: Vec<String> = (0..5)
        .map(|i| server.post_json("/v1/jobs/echo", &format!(r#"{{"i": {i}}}"#)).header("location").unwrap().to_owned())
        .collect();
    let mut stored: Vec<String> = (0..5)
        .map(|i| {
            server.post_json("/v1/queues/orders/messages", &format!(r#"{{"payload": {i}}}"#)).json()["id"].to_string()
        })
        .collect();
    stored.push(server.post_json("/v1/topics/orders.created", r#"{"payload": "via topic"}"#).json()["id"].to_string());

    let huge = format!(r#"{{"blob": "{}"}}"#, "x".repeat(10_000));
    let mut cases: Vec<(Vec<u8>, u16)> = vec![
        (post("/v1/jobs/echo", b"{not json"), 400),
        (post("/v1/jobs/echo", b""), 400),
        (post("/v1/jobs/echo", b"\xff\xfe\x00"), 400),
        (post("/v1/jobs/echo", b"[1, 2"), 400),
        (post("/v1/jobs/sleep", br#"{"ms": -5}"#), 400),
        (post("/v1/jobs/sleep", br#"{"ms": 1e99}"#), 400),
        (post("/v1/jobs/sleep", br#"{}"#), 400),
        (post("/v1/jobs/fail", br#"{"message": 7}"#), 400),
        (post("/v1/jobs/echo", huge.as_bytes()), 413),
        (post("/v1/jobs/%00%ff", b"{}"), 404),
        (post("/v1/jobs/..%2F..%2Fetc%2Fpasswd", b"{}"), 404),
        (raw_get("/v1/jobs/'%20OR%201=1"), 404),
        // Not HTTP at all (raw UTF-8 in the request line): the parser refuses
        // it before routing, with a bare 400 (see `protocol_errors` below).
        (raw_get("/v1/jobs/\u{1F4A3}"), 400),
        (b"GARBAGE\r\n\r\n".to_vec(), 400),
        (raw_get("/v1/jobs//result"), 404),
        (raw_get("/v1/nothing/here"), 404),
        (raw_get("/v1/jobs/00000000-0000-0000-0000-000000000000/result"), 404),
        (b"DELETE /v1/jobs/zzz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 404),
        (b"PUT /v1/jobs/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}".to_vec(), 404),
        (
            b"POST /v1/jobs/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nIdempotency-Key: \x01\x02\r\nContent-Length: 2\r\n\r\n{}"
                .to_vec(),
            400,
        ),
        (
            b"POST /v1/jobs/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 99999999\r\n\r\n{}".to_vec(),
            413,
        ),
        (
            format!(
                "POST /v1/jobs/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nIdempotency-Key: {}\r\nContent-Length: 2\r\n\r\n{{}}",
                "k".repeat(300)
            )
            .into_bytes(),
            400,
        ),
        // Queues and topics.
        (post("/v1/queues/orders/messages", b"{not json"), 400),
        (post("/v1/queues/orders/messages", b""), 400),
        (post("/v1/queues/orders/messages", b"[1]"), 400),
        (post("/v1/queues/orders/messages", br#"{"priority": 1}"#), 400),
        (post("/v1/queues/orders/messages", br#"{"payload": 1, "priority": 10}"#), 400),
        (post("/v1/queues/orders/messages", br#"{"payload": 1, "priority": -1}"#), 400),
        (post("/v1/queues/orders/messages", br#"{"payload": 1, "priority": "high"}"#), 400),
        (post("/v1/queues/orders/messages", br#"{"payload": 1, "priority": 1.5}"#), 400),
        (post("/v1/queues/orders/messages", br#"{"payload": 1, "deadline_ms": 0}"#), 400),
        (post("/v1/queues/orders/messages", br#"{"payload": 1, "deadline_ms": 1e99}"#), 400),
        (post("/v1/queues/orders/messages", br#"{"payload": 1, "headers": {"k": 1}}"#), 400),
        (post("/v1/queues/orders/messages", br#"{"payload": 1, "headers": ["k"]}"#), 400),
        (post("/v1/queues/orders/messages", br#"{"payload": 1, "colour": "red"}"#), 400),
        (post("/v1/queues/orders/messages", huge.as_bytes()), 413),
        (post("/v1/queues/orders/receive?max=0", b""), 400),
        (post("/v1/queues/orders/receive?max=101", b""), 400),
        (post("/v1/queues/orders/receive?max=lots", b""), 400),
        (post("/v1/queues/orders/receive?wait_ms=-1", b""), 400),
        (post("/v1/queues/orders/receive?max=1&max=%ff", b""), 400),
        (post("/v1/queues/orders/receive?take=all", b""), 400),
        (post("/v1/queues/orders/ack", b"{}"), 400),
        (post("/v1/queues/orders/ack", br#"{"receipts": []}"#), 400),
        (post("/v1/queues/orders/ack", br#"{"receipts": "1.0000000000000000"}"#), 400),
        (post("/v1/queues/orders/ack", br#"{"receipts": ["nonsense"]}"#), 400),
        (post("/v1/queues/orders/ack", br#"{"receipts": ["1.zzzzzzzzzzzzzzzz"]}"#), 400),
        (post("/v1/queues/orders/ack", br#"{"receipts": [7]}"#), 400),
        (post("/v1/queues/orders/ack", br#"{"receipts": ["1.0000000000000000"], "delay_ms": 5}"#), 400),
        (post("/v1/queues/orders/ack", br#"{"receipts": ["1.0000000000000000"]}"#), 409),
        (post("/v1/queues/orders/nack", br#"{"receipts": ["99.00000000000000ff"]}"#), 409),
        (post("/v1/queues/orders/nack", br#"{"receipts": ["1.0000000000000000"], "delay_ms": "soon"}"#), 400),
        (post("/v1/queues/orders/nack", br#"{"receipts": ["1.0000000000000000"], "delay_ms": 1e20}"#), 400),
        (post("/v1/queues/orders/nack", br#"{"receipts": ["1.0000000000000000"], "delay_ms": 999999999999}"#), 400),
        (post("/v1/queues/%00/messages", br#"{"payload": 1}"#), 404),
        (post("/v1/queues/..%2Forders/messages", br#"{"payload": 1}"#), 404),
        (post("/v1/queues/orders/purge", b"{}"), 404),
        (raw_get("/v1/queues/orders/messages"), 404),
        (raw_get("/v1/queues/orders/receive"), 404),
        (post("/v1/topics/orders.created", b"{\"payload\": "), 400),
        (post("/v1/topics/orders.created", br#"{"payload": 1, "priority": 99}"#), 400),
        (post("/v1/topics/orders.%3E", br#"{"payload": 1}"#), 404),
        (post("/v1/topics/", br#"{"payload": 1}"#), 404),
        (post("/v1/topics/no.such.topic", br#"{"payload": 1}"#), 404),
    ];
    // Fill to 200 with repeats. The lying Content-Length case is left out of
    // the repeats: the server answers 413 at once but then lingers ~1 s for
    // the body that never comes before closing.
    let base: Vec<_> = cases.iter().filter(|(req, _)| !req.windows(8).any(|w| w == b"99999999")).cloned().collect();
    let mut i = 0;
    while cases.len() < 200 {
        let (req, status) = &base[i % base.len()];
        cases.push((req.clone(), *status));
        i += 1;
    }

    let mut protocol_errors = 0;
    for (n, (request, expected)) in cases.iter().enumerate() {
        let r = server.raw(request);
        assert_eq!(
            r.status,
            *expected,
            "case {n}: {:?} -> {:?}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&r.body)
        );
        if r.body.is_empty() && r.status == 400 {
            // A request line that is not HTTP never reaches the application.
            protocol_errors += 1;
            continue;
        }
        assert!(!r.error_code().is_empty());
    }
    let not_http = |req: &[u8]| {
        req.starts_with(b"GARBAGE")
            || req.starts_with(raw_get("/v1/jobs/\u{1F4A3}").as_slice())
            || req.windows(2).any(|w| w == b"\x01\x02")
    };
    assert_eq!(protocol_errors, cases.iter().filter(|(req, _)| not_http(req)).count());
    assert_eq!(server.get("/healthz").status, 200, "still serving");
    for location in before {
        let r = poll_until_ended(&server, &location);
        assert_eq!(r.status, 303, "job {location} survived the flood");
    }
    let mut ids: Vec<String> = Vec::new();
    loop {
        let held = server.post_json("/v1/queues/orders/receive?max=100&wait_ms=1000", "");
        let batch = held.json()["messages"].as_array().unwrap().clone();
        if batch.is_empty() {
            break;
        }
        ids.extend(batch.iter().map(|m| m["id"].to_string()));
    }
    ids.sort();
    stored.sort();
    assert_eq!(ids, stored, "every stored message is still in the queue, once");
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn raw_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Every route in `docs/openapi.json` exists on the server: it answers
/// something other than "no such route" / "method not allowed", with the
/// admin token so that admin routes are exercised past the token check.
#[test]
fn every_route_in_the_openapi_document_answers() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../docs/openapi.json")).expect("docs/openapi.json is JSON");
    let server = Server::start(CONFIG);
    let job = server.post_json("/v1/jobs/echo", "{}");
    let id = job.json()["id"].as_str().unwrap().to_owned();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let concrete = path
                .replace("{kind}", "echo")
                .replace("{id}", &id)
                .replace("{stream}", "orders")
                .replace("{queue}", "orders")
                .replace("{topic}", "orders.created");
            let auth = [("Authorization", "Bearer openapi-check")];
            let r = server.request(&method.to_uppercase(), &concrete, &auth, Some(b"{}"));
            assert!(!matches!(r.status, 401 | 403), "{method} {path}: the token is accepted");
            let documented: Vec<u16> =
                op["responses"].as_object().unwrap().keys().filter_map(|k| k.parse().ok()).collect();
            assert!(
                documented.contains(&r.status),
                "{method} {path}: status {} not documented {documented:?}",
                r.status
            );
            if r.status == 404 {
                assert_ne!(r.error_code(), "not_found", "{method} {path} is not routed");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 24);
}

/// `/metrics` passes `promtool check metrics` (Debian's `prometheus` package;
/// installed here through apt when missing, as on a fresh machine).
#[test]
fn metrics_pass_promtool() {
    let promtool = server::promtool();
    let server = Server::start(CONFIG);
    for kind in ["echo", "fail"] {
        let r = server.post_json(&format!("/v1/jobs/{kind}"), r#"{"message": "x"}"#);
        poll_until_ended(&server, r.header("location").unwrap());
    }
    let text = server.get("/metrics").body;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&text)
    );
}
