//! Queues and topics over HTTP, driven through the real `actorbus serve`
//! binary (DESIGN §6.3, §6.4, §7).

#[path = "common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server::Server;

const CONFIG: &str = r#"
[[queues]]
name = "work"

[[queues]]
name = "quick"
visibility_timeout_ms = 300

[[queues]]
name = "retry"
max_deliveries = 3

[[queues]]
name = "small"
capacity = 2
overflow = "reject"

[[queues]]
name = "blocking"
capacity = 1
overflow = "block"

[[queues]]
name = "lossy"
capacity = 1
overflow = "drop_newest"

[[queues]]
name = "audit"
priority = true

[[topics]]
name = "orders.created"
durable_subscriptions = [{ queue = "work" }, { queue = "audit" }]

[[topics]]
name = "orders.cancelled"

[[topics]]
name = "alerts"
durable_subscriptions = [{ queue = "small" }]
"#;

fn enqueue(server: &Server, queue: &str, body: Value) -> String {
    let r = server.post_json(&format!("/v1/queues/{queue}/messages"), &body.to_string());
    assert_eq!(r.status, 202, "enqueue {body}: {:?}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().expect("an id").to_owned()
}

fn receive(server: &Server, queue: &str, max: usize, wait_ms: u64) -> Vec<Value> {
    let r = server.post_json(&format!("/v1/queues/{queue}/receive?max={max}&wait_ms={wait_ms}"), "");
    assert_eq!(r.status, 200, "receive: {:?}", String::from_utf8_lossy(&r.body));
    r.json()["messages"].as_array().expect("a messages list").clone()
}

/// Receives until `n` messages came (`max` per call): a batch may come in
/// more than one answer when the machine is busy.
fn receive_n(server: &Server, queue: &str, n: usize, max: usize) -> Vec<Value> {
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        assert!(started.elapsed() < Duration::from_secs(10), "{queue}: only {} of {n} messages came", got.len());
        got.extend(receive(server, queue, max.min(n - got.len()), 1_000));
    }
    got
}

fn settle(server: &Server, queue: &str, op: &str, body: Value) -> server::Response {
    server.post_json(&format!("/v1/queues/{queue}/{op}"), &body.to_string())
}

fn receipts(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["receipt"].as_str().expect("a receipt").to_owned()).collect()
}

/// The sample of `name` whose labels include every `k="v"` of `labels`.
fn metric(server: &Server, name: &str, labels: &[&str]) -> f64 {
    let text = String::from_utf8(server.get("/metrics").body).unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

/// Polls until `metric` reads `want` (gauges are published on the queue's
/// tick).
fn wait_metric(server: &Server, name: &str, labels: &[&str], want: f64) {
    let started = Instant::now();
    loop {
        let got = metric(server, name, labels);
        if got == want {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{name}{labels:?} is {got}, want {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn enqueue_receive_ack_leaves_the_queue_empty() {
    let server = Server::start(CONFIG);
    let ids: Vec<String> = (0..3)
        .map(|i| enqueue(&server, "work", json!({"payload": {"n": i}, "priority": 7, "headers": {"tenant": "acme"}})))
        .collect();
    let got = receive_n(&server, "work", 3, 10);
    assert_eq!(got.len(), 3, "{got:?}");
    for (m, (i, id)) in got.iter().zip(ids.iter().enumerate()) {
        assert_eq!(m["id"], json!(id), "FIFO");
        assert_eq!(m["payload"], json!({"n": i}));
        assert_eq!((m["attempt"].as_u64(), m["priority"].as_u64()), (Some(1), Some(7)));
        assert_eq!(m["headers"], json!({"tenant": "acme"}));
        assert!(m["enqueued_at"].as_str().unwrap().ends_with('Z'), "{m}");
    }
    let rs = receipts(&got);
    assert_eq!(rs.len(), rs.iter().collect::<std::collections::HashSet<_>>().len(), "receipts are unique");
    wait_metric(&server, "actorbus_gateway_held_deliveries_messages", &[r#"name="work""#], 3.0);

    // One receipt acked alone, then two more beside one that is spent.
    let first = settle(&server, "work", "ack", json!({"receipts": [rs[0]]}));
    assert_eq!((first.status, first.json()), (200, json!({"acked": 1, "stale": []})));
    let rest = settle(&server, "work", "ack", json!({"receipts": [rs[1], rs[0], rs[2]]}));
    assert_eq!((rest.status, rest.json()), (200, json!({"acked": 2, "stale": [rs[0]]})));
    let again = settle(&server, "work", "ack", json!({"receipts": [rs[2]]}));
    assert_eq!((again.status, again.error_code().as_str()), (409, "stale_receipt"));
    // A receipt with the right number but a guessed random part settles nothing.
    let (n, _) = rs[0].split_once('.').unwrap();
    let guessed = settle(&server, "work", "ack", json!({"receipts": [format!("{n}.0000000000000000")]}));
    assert_eq!(guessed.status, 409);

    assert!(receive(&server, "work", 10, 200).is_empty(), "the queue is empty");
    let work = [r#"name="work""#];
    assert_eq!(metric(&server, "actorbus_queue_enqueued_total", &work), 3.0);
    assert_eq!(metric(&server, "actorbus_queue_acked_total", &work), 3.0);
    wait_metric(&server, "actorbus_queue_depth_messages", &work, 0.0);
    wait_metric(&server, "actorbus_queue_in_flight_messages", &work, 0.0);
    wait_metric(&server, "actorbus_gateway_held_deliveries_messages", &work, 0.0);
}

#[test]
fn a_receive_takes_no_more_than_it_returns() {
    let server = Server::start(CONFIG);
    let ids: Vec<String> = (0..5).map(|i| enqueue(&server, "work", json!({"payload": i}))).collect();
    let two = receive_n(&server, "work", 2, 2);
    assert_eq!(two.iter().map(|m| m["id"].clone()).collect::<Vec<_>>(), [json!(ids[0]), json!(ids[1])]);
    // The other three stay deliverable (never handed out, so attempt 1).
    let rest = receive_n(&server, "work", 3, 100);
    assert_eq!(
        rest.iter().map(|m| m["id"].clone()).collect::<Vec<_>>(),
        ids[2..].iter().map(|i| json!(i)).collect::<Vec<_>>()
    );
    assert!(rest.iter().all(|m| m["attempt"] == 1));
    let all: Vec<String> = receipts(&two).into_iter().chain(receipts(&rest)).collect();
    assert_eq!(settle(&server, "work", "ack", json!({"receipts": all})).json()["acked"], 5);
    wait_metric(&server, "actorbus_queue_in_flight_messages", &[r#"name="work""#], 0.0);
    assert_eq!(metric(&server, "actorbus_queue_redelivered_total", &[r#"name="work""#]), 0.0);
}

#[test]
fn an_unsettled_delivery_comes_back_after_the_visibility_timeout() {
    let server = Server::start(CONFIG);
    let id = enqueue(&server, "quick", json!({"payload": "slow job"}));
    let first = receive(&server, "quick", 1, 1_000);
    assert_eq!((first[0]["id"].as_str(), first[0]["attempt"].as_u64()), (Some(id.as_str()), Some(1)));
    let again = receive(&server, "quick", 1, 3_000);
    assert_eq!(again.len(), 1, "redelivered after 300 ms");
    assert_eq!((again[0]["id"].as_str(), again[0]["attempt"].as_u64()), (Some(id.as_str()), Some(2)));
    assert_ne!(again[0]["receipt"], first[0]["receipt"]);
    let late = settle(&server, "quick", "ack", json!({"receipts": receipts(&first)}));
    assert_eq!((late.status, late.error_code().as_str()), (409, "stale_receipt"));
    let ok = settle(&server, "quick", "ack", json!({"receipts": receipts(&again)}));
    assert_eq!(ok.json(), json!({"acked": 1, "stale": []}));
    let quick = [r#"name="quick""#];
    assert_eq!(metric(&server, "actorbus_queue_visibility_timeouts_total", &quick), 1.0);
    assert_eq!(metric(&server, "actorbus_queue_acked_total", &quick), 1.0);
    // The gateway forgot the expired receipt (no leak) and nothing is held.
    wait_metric(&server, "actorbus_gateway_expired_receipts_total", &quick, 1.0);
    wait_metric(&server, "actorbus_gateway_held_deliveries_messages", &quick, 0.0);
    wait_metric(&server, "actorbus_queue_in_flight_messages", &quick, 0.0);
    assert!(receive(&server, "quick", 1, 500).is_empty());
}

#[test]
fn nack_with_a_delay_then_until_max_deliveries_dead_letters() {
    let server = Server::start(CONFIG);
    let id = enqueue(&server, "retry", json!({"payload": "flaky"}));
    let first = receive(&server, "retry", 1, 1_000);
    let nacked = settle(&server, "retry", "nack", json!({"receipts": receipts(&first), "delay_ms": 700}));
    assert_eq!(nacked.json(), json!({"nacked": 1, "stale": []}));
    let nacked_at = Instant::now();
    assert!(receive(&server, "retry", 1, 0).is_empty(), "waits out its delay");
    let second = receive(&server, "retry", 1, 5_000);
    assert!(nacked_at.elapsed() >= Duration::from_millis(600), "not before the delay");
    assert_eq!((second[0]["id"].as_str(), second[0]["attempt"].as_u64()), (Some(id.as_str()), Some(2)));
    // Without a delay the queue's retry policy applies (backoff from 100 ms).
    settle(&server, "retry", "nack", json!({"receipts": receipts(&second)}));
    let third = receive(&server, "retry", 1, 5_000);
    assert_eq!(third[0]["attempt"], 3);
    settle(&server, "retry", "nack", json!({"receipts": receipts(&third)}));
    // max_deliveries = 3: the message left the queue for the DLQ.
    assert!(receive(&server, "retry", 1, 1_000).is_empty(), "never delivered again");
    let labels = [r#"name="retry""#, r#"reason="max_deliveries""#];
    wait_metric(&server, "actorbus_dlq_dead_lettered_total", &labels, 1.0);
    assert_eq!(metric(&server, "actorbus_queue_nacked_total", &[r#"name="retry""#]), 3.0);
    wait_metric(&server, "actorbus_queue_depth_messages", &[r#"name="retry""#], 0.0);
}

#[test]
fn full_queues_answer_by_their_overflow_policy() {
    let server = Server::start(CONFIG);
    enqueue(&server, "small", json!({"payload": 1}));
    enqueue(&server, "small", json!({"payload": 2}));
    let refused = server.post_json("/v1/queues/small/messages", r#"{"payload": 3}"#);
    assert_eq!((refused.status, refused.error_code().as_str()), (429, "queue_full"));
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(metric(&server, "actorbus_queue_rejected_total", &[r#"name="small""#]), 1.0);

    enqueue(&server, "blocking", json!({"payload": "a"}));
    let blocked = server.post_json("/v1/queues/blocking/messages", r#"{"payload": "b"}"#);
    assert_eq!((blocked.status, blocked.error_code().as_str()), (503, "queue_full"), "bounded wait, no hang");
    let got = receive(&server, "blocking", 10, 1_000);
    assert_eq!(got.iter().map(|m| m["payload"].clone()).collect::<Vec<_>>(), [json!("a")], "b was not stored");
    settle(&server, "blocking", "ack", json!({"receipts": receipts(&got)}));
    enqueue(&server, "blocking", json!({"payload": "c"}));

    enqueue(&server, "lossy", json!({"payload": "kept"}));
    enqueue(&server, "lossy", json!({"payload": "dropped"}));
    let got = receive(&server, "lossy", 10, 1_000);
    assert_eq!(got.iter().map(|m| m["payload"].clone()).collect::<Vec<_>>(), [json!("kept")]);
    assert_eq!(metric(&server, "actorbus_queue_dropped_total", &[r#"name="lossy""#, r#"policy="drop_newest""#]), 1.0);
}

#[test]
fn a_topic_publish_reaches_its_durable_subscriptions() {
    let server = Server::start(CONFIG);
    let r = server
        .post_json("/v1/topics/orders.created", r#"{"payload": {"order": 42}, "priority": 9, "headers": {"k": "v"}}"#);
    assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!((body["durable"].as_u64(), body["subscribers"].as_u64()), (Some(2), Some(0)));
    let id = body["id"].as_str().unwrap();
    for queue in ["work", "audit"] {
        let got = receive(&server, queue, 10, 1_000);
        assert_eq!(got.len(), 1, "{queue}: {got:?}");
        assert_eq!(got[0]["id"], id);
        assert_eq!(got[0]["payload"], json!({"order": 42}));
        assert_eq!((got[0]["priority"].as_u64(), got[0]["headers"]["k"].as_str()), (Some(9), Some("v")));
        settle(&server, queue, "ack", json!({"receipts": receipts(&got)}));
    }
    // A topic without durable subscriptions takes the publish and keeps nothing.
    let lone = server.post_json("/v1/topics/orders.cancelled", r#"{"payload": 1}"#);
    assert_eq!((lone.status, lone.json()["durable"].as_u64()), (202, Some(0)));
    assert!(receive(&server, "work", 10, 100).is_empty());
}

#[test]
fn unknown_queues_and_topics_are_404() {
    let server = Server::start(CONFIG);
    for path in
        ["/v1/queues/ghost/messages", "/v1/queues/ghost/receive", "/v1/queues/ghost/ack", "/v1/queues/ghost/nack"]
    {
        let r = server.post_json(path, r#"{"payload": 1, "receipts": ["1.0000000000000000"]}"#);
        assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_queue"), "{path}");
    }
    let r = server.post_json("/v1/topics/orders.updated", r#"{"payload": 1}"#);
    assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_topic"));
    let r = server.post_json("/v1/topics/orders.*", r#"{"payload": 1}"#);
    assert_eq!(r.status, 404);
}

#[test]
fn a_long_poll_returns_a_message_enqueued_while_it_waits() {
    let server = std::sync::Arc::new(Server::start(CONFIG));
    let waiting = {
        let server = server.clone();
        std::thread::spawn(move || receive(&server, "work", 5, 10_000))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiting.is_finished(), "an empty queue makes the receive wait");
    let id = enqueue(&server, "work", json!({"payload": "late"}));
    let got = waiting.join().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0]["id"].as_str(), got[0]["payload"].as_str()), (Some(id.as_str()), Some("late")));
    // Nothing else was taken: a second waiter sees an empty queue.
    assert!(receive(&server, "work", 5, 100).is_empty());
}

#[test]
fn a_bound_queue_that_refuses_fails_the_publish() {
    let server = Server::start(CONFIG);
    for i in 0..2 {
        let r = server.post_json("/v1/topics/alerts", &json!({"payload": i}).to_string());
        assert_eq!(r.status, 202);
    }
    let refused = server.post_json("/v1/topics/alerts", r#"{"payload": 2}"#);
    assert_eq!((refused.status, refused.error_code().as_str()), (503, "durable_refused"));
    assert_eq!(refused.header("retry-after"), Some("1"));
    let got = receive_n(&server, "small", 2, 10);
    assert_eq!(got.iter().map(|m| m["payload"].clone()).collect::<Vec<_>>(), [json!(0), json!(1)]);
}

/// DESIGN §7: a 202 on enqueue, or on a publish to a topic bound to a
/// durable queue, survives a `kill -9`; acked messages stay gone.
#[test]
fn acknowledged_enqueues_survive_kill_9() {
    const DURABLE: &str = r#"
[[queues]]
name = "orders"
claim_check_threshold_bytes = 1024

[[topics]]
name = "orders.created"
durable_subscriptions = [{ queue = "orders" }]
"#;
    let dir = std::env::temp_dir().join(format!("actorbus-gw-queue-kill9-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start_in(DURABLE, &dir);
    let big = "x".repeat(8 * 1024); // above the threshold: travels as a claim-check ticket
    for i in 0..40 {
        enqueue(&server, "orders", json!({"payload": {"n": i}, "priority": i % 10}));
    }
    enqueue(&server, "orders", json!({"payload": {"n": 40, "blob": big}}));
    for i in 41..50 {
        let r = server.post_json("/v1/topics/orders.created", &json!({"payload": {"n": i}}).to_string());
        assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
    }
    // Ack the first 10 (their deletes are committed lazily: wait until the
    // depth gauge says so before pulling the plug).
    let first = receive_n(&server, "orders", 10, 10);
    let r = settle(&server, "orders", "ack", json!({"receipts": receipts(&first)}));
    assert_eq!(r.json()["acked"], 10);
    wait_metric(&server, "actorbus_queue_depth_messages", &[r#"name="orders""#], 40.0);
    std::thread::sleep(Duration::from_millis(200));
    server.kill_9();

    let again = Server::start_in(DURABLE, &dir);
    let back = receive_n(&again, "orders", 40, 100);
    let mut ns: Vec<u64> = back.iter().map(|m| m["payload"]["n"].as_u64().unwrap()).collect();
    ns.sort_unstable();
    assert_eq!(ns, (10..50).collect::<Vec<u64>>(), "every acknowledged enqueue and publish, none acked twice");
    let blob = back.iter().find(|m| m["payload"]["n"] == 40).unwrap();
    assert_eq!(blob["payload"]["blob"].as_str().map(str::len), Some(8 * 1024), "the claim-checked payload is whole");
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}
