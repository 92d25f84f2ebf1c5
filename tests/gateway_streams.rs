//! Event streams over HTTP: appends with `Expected-Version`, reads, `$all`,
//! and acknowledged appends surviving a kill -9 of the server.

#[path = "common/server.rs"]
mod server;

use serde_json::json;
use server::Server;

fn append(server: &Server, stream: &str, expected: Option<&str>, body: &str) -> server::Response {
    let headers: Vec<(&str, &str)> = expected.map(|e| vec![("Expected-Version", e)]).unwrap_or_default();
    server.request("POST", &format!("/v1/streams/{stream}/events"), &headers, Some(body.as_bytes()))
}

#[test]
fn append_with_expected_version_read_and_conflict() {
    let server = Server::start("");
    let first = append(&server, "order-1", Some("no_stream"), r#"[{"type": "Placed", "data": {"total": 30}}]"#);
    assert_eq!(first.status, 201, "{:?}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.json()["version"], 0);
    let id = "01a2065c-3aed-7386-b51b-0ab22e5739aa";
    let two = format!(
        r#"[{{"type": "Paid", "data": {{"amount": 30}}, "id": "{id}", "metadata": {{"correlation_id": "01a2065c-3aed-7386-b51b-0ab22e573901", "tenant": "acme"}}}},
            {{"type": "Shipped", "data": null, "id": "01a2065c-3aed-7386-b51b-0ab22e5739ab"}}]"#
    );
    let second = append(&server, "order-1", Some("0"), &two);
    assert_eq!(second.status, 201);
    assert_eq!((second.json()["version"].as_u64(), second.json()["last_position"].as_u64()), (Some(2), Some(2)));

    // A writer that saw version 0 is refused and writes nothing.
    let stale = append(&server, "order-1", Some("0"), r#"[{"type": "Cancelled", "data": {}}]"#);
    assert_eq!((stale.status, stale.error_code().as_str()), (409, "wrong_expected_version"));
    let no_stream = append(&server, "order-1", Some("no_stream"), r#"[{"type": "Placed", "data": {}}]"#);
    assert_eq!(no_stream.status, 409);
    // A retry with the same event ids is idempotent: 200, nothing written.
    let retry = append(&server, "order-1", Some("0"), &two);
    assert_eq!(retry.status, 200, "{:?}", String::from_utf8_lossy(&retry.body));
    assert_eq!(retry.json()["written"], false);
    // Reusing one stored id beside a new event is not a repeat: refused.
    let partial = format!(r#"[{{"type": "Paid", "data": {{}}, "id": "{id}"}}, {{"type": "Refunded", "data": {{}}}}]"#);
    let partial = append(&server, "order-1", None, &partial);
    assert_eq!((partial.status, partial.error_code().as_str()), (409, "duplicate_event_id"));

    let read = server.get("/v1/streams/order-1?from=1&limit=10");
    assert_eq!(read.status, 200);
    let events = read.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["id"], id);
    assert_eq!(events[0]["type"], "Paid");
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[0]["data"], json!({"amount": 30}));
    assert_eq!(events[0]["metadata"]["tenant"], "acme");
    assert_eq!(events[0]["metadata"]["correlation_id"], "01a2065c-3aed-7386-b51b-0ab22e573901");
    for field in ["id", "stream", "version", "position", "type", "data", "metadata", "timestamp"] {
        assert!(events[1].get(field).is_some(), "read answer has `{field}`");
    }
    let backward = server.get("/v1/streams/order-1?direction=backward&limit=1").json();
    assert_eq!(backward["events"][0]["type"], "Shipped");

    append(&server, "order-2", None, r#"[{"type": "Placed", "data": {}}]"#);
    let all = server.get("/v1/streams/$all?from=0").json();
    let positions: Vec<u64> =
        all["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, vec![0, 1, 2, 3]);
    assert_eq!(all["events"][3]["stream"], "order-2");
}

#[test]
fn bad_appends_and_reads_are_typed_errors() {
    let server = Server::start("");
    for (stream, expected, body, status, code) in [
        ("s", Some("banana"), r#"[{"type": "A", "data": 1}]"#, 400, "bad_header"),
        ("s", None, r#"{"type": "A", "data": 1}"#, 400, "malformed_json"),
        ("s", None, "[]", 400, "invalid_event"),
        ("s", None, r#"[{"type": "", "data": 1}]"#, 400, "invalid_event"),
        ("s", None, r#"[{"type": "A"}]"#, 400, "malformed_json"),
        ("s", None, r#"[{"type": "A", "data": 1, "id": "nope"}]"#, 400, "invalid_event"),
        ("s", None, r#"[{"type": "A", "data": 1, "metadata": {"x": 1}}]"#, 400, "invalid_event"),
        ("s", None, r#"[{"type": "A", "data": 1, "extra": true}]"#, 400, "malformed_json"),
        ("$all", None, r#"[{"type": "A", "data": 1}]"#, 400, "invalid_stream"),
        ("s", Some("exists"), r#"[{"type": "A", "data": 1}]"#, 409, "wrong_expected_version"),
    ] {
        let r = append(&server, stream, expected, body);
        assert_eq!((r.status, r.error_code().as_str()), (status, code), "{body}");
    }
    assert_eq!(server.get("/v1/streams/s").error_code(), "unknown_stream", "nothing above was written");
    assert_eq!(server.get("/v1/streams/s?limit=0").status, 400);
    assert_eq!(server.get("/v1/streams/s?limit=5000").status, 400);
    assert_eq!(server.get("/v1/streams/s?direction=sideways").status, 400);
    assert_eq!(server.get("/v1/streams/s?from=-1").status, 400);
    assert_eq!(server.get("/v1/streams/s?bogus=1").status, 400);
}

#[test]
fn acknowledged_appends_survive_kill_9() {
    let dir = std::env::temp_dir().join(format!("actorbus-gw-kill9-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start_in("", &dir);
    let mut acked = 0;
    for i in 0..50 {
        let r = append(
            &server,
            &format!("acct-{}", i % 5),
            None,
            &format!(r#"[{{"type": "Deposited", "data": {{"n": {i}}}}}]"#),
        );
        assert_eq!(r.status, 201);
        acked += 1;
    }
    server.kill_9();
    let again = Server::start_in("", &dir);
    let all = again.get("/v1/streams/$all?limit=1000").json();
    let ns: Vec<u64> = all["events"].as_array().unwrap().iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..acked).collect::<Vec<u64>>(), "every acknowledged append, in order");
    assert_eq!(again.get("/readyz").json()["events"], acked);
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}
