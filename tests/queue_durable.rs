//! Durable queues (DESIGN §6.3, §7): messages committed before `send`
//! resolves, kept across a stop and a restart, with their attempt counts,
//! priority, deadline, headers and claim-check tickets.

mod common;

use std::path::Path;
use std::time::Duration;

use actorbus::actors::dlq::DlqFilter;
use actorbus::actors::queue::{Consumer, Delivery, MemoryQueueStore, Queue, QueueConfig, QueueHandle, QueueStore};
use actorbus::{Bus, BusError, Envelope, Priority, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    n: u32,
    note: String,
}

fn order(n: u32) -> Order {
    Order { n, note: format!("order number {n}") }
}

async fn next<T>(c: &mut Consumer<T>) -> Delivery<T> {
    tokio::time::timeout(Duration::from_secs(10), c.recv()).await.expect("a delivery within 10 s").expect("open")
}

async fn nothing_more<T>(c: &mut Consumer<T>) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(100), c.recv()).await {
        panic!("unexpected delivery {} (attempt {})", d.id(), d.attempt());
    }
}

/// Runs `f` on a fresh actix system in its own thread: one "process life"
/// of the bus (everything it started is gone when it returns).
fn life<R: Send + 'static>(
    dir: &Path,
    f: impl FnOnce(Bus) -> futures::future::BoxFuture<'static, R> + Send + 'static,
) -> R {
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let bus = Bus::builder().data_dir(&dir).build().expect("bus");
            f(bus).await
        })
    })
    .join()
    .expect("the life ended without a panic")
}

fn orders(bus: &Bus) -> QueueHandle<Order> {
    bus.queue::<Order>("orders").durable().max_deliveries(3).start().expect("durable queue")
}

#[test]
fn messages_acked_stay_gone_and_the_rest_come_back_with_their_attempts() {
    let tmp = tempfile::tempdir().unwrap();
    let deadline = Timestamp::now().after(Duration::from_secs(3600));
    let sent = life(tmp.path(), move |bus| {
        Box::pin(async move {
            let q = orders(&bus);
            let mut ids = Vec::new();
            for n in 0..10 {
                let env = Envelope::new(order(n))
                    .with_priority(Priority::new((n % 10) as u8).unwrap())
                    .with_deadline(deadline)
                    .with_header("tenant", format!("t{}", n % 3));
                ids.push(q.send_envelope(env).await.unwrap());
            }
            let mut c = q.consumer(5).await.unwrap();
            let mut held = Vec::new();
            for _ in 0..5 {
                held.push(next(&mut c).await);
            }
            assert_eq!(held.iter().map(|d| d.payload().n).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
            // 0 and 1 are done; 2, 3 and 4 are in flight when the life ends.
            let mut held = held.into_iter();
            held.next().unwrap().ack();
            held.next().unwrap().ack();
            let in_flight: Vec<_> = held.collect();
            q.flush().await.unwrap();
            std::mem::forget(in_flight); // never settled: as if the process died
            std::mem::forget(c);
            ids
        })
    });

    let back = life(tmp.path(), |bus| {
        Box::pin(async move {
            let q = orders(&bus);
            assert_eq!(q.depth(), 8, "two acked, eight left");
            let mut c = q.consumer(16).await.unwrap();
            let mut back = Vec::new();
            for _ in 0..8 {
                let d = next(&mut c).await;
                back.push((d.envelope().clone(), d.attempt()));
                d.ack();
            }
            nothing_more(&mut c).await;
            q.flush().await.unwrap();
            back
        })
    });
    // In enqueue order. The three in flight at the stop come back as attempt
    // 2: a delivery counts once a consumer took it (into its buffer too), as
    // a crash cannot tell whether a handler saw it. 5 and 6 were never
    // taken: the two acks gave the consumer credit, but it did not ask again.
    let seen: Vec<(u32, u32)> = back.iter().map(|(e, a)| (e.payload.n, *a)).collect();
    assert_eq!(seen, [(2, 2), (3, 2), (4, 2), (5, 1), (6, 1), (7, 1), (8, 1), (9, 1)]);
    for (env, _) in &back {
        let n = env.payload.n;
        assert_eq!(env.id, sent[n as usize], "same message id");
        assert_eq!(env.payload, order(n));
        assert_eq!(env.priority.get(), (n % 10) as u8);
        assert_eq!(env.deadline, Some(deadline));
        assert_eq!(env.headers.get("tenant").map(String::as_str), Some(format!("t{}", n % 3).as_str()));
    }
    // Everything was acked: a third life finds nothing.
    let left = life(tmp.path(), |bus| Box::pin(async move { orders(&bus).depth() }));
    assert_eq!(left, 0);
}

#[test]
fn max_deliveries_holds_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    life(tmp.path(), |bus| {
        Box::pin(async move {
            let q = orders(&bus);
            let mut c = q.consumer(1).await.unwrap();
            q.send(order(1)).await.unwrap();
            next(&mut c).await.nack();
            let second = next(&mut c).await;
            assert_eq!(second.attempt(), 2);
            q.flush().await.unwrap();
            std::mem::forget(second);
            std::mem::forget(c);
        })
    });
    // Attempt 3 of 3 is in flight when the process "crashes" again.
    life(tmp.path(), |bus| {
        Box::pin(async move {
            let q = orders(&bus);
            let mut c = q.consumer(1).await.unwrap();
            let third = next(&mut c).await;
            assert_eq!((third.payload().n, third.attempt()), (1, 3));
            q.flush().await.unwrap();
            std::mem::forget(third);
            std::mem::forget(c);
        })
    });
    // Delivered max_deliveries times: dead-lettered at start, not a 4th time.
    let letters = life(tmp.path(), |bus| {
        Box::pin(async move {
            let q = orders(&bus);
            let mut c = q.consumer(1).await.unwrap();
            nothing_more(&mut c).await;
            q.flush().await.unwrap();
            assert_eq!(q.stats().dead_lettered, 1);
            bus.dlq().list(DlqFilter::default().source("queue", "orders")).await.unwrap()
        })
    });
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason.code(), "max_deliveries");
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].envelope["payload"]["n"], 1);
    let left = life(tmp.path(), |bus| Box::pin(async move { orders(&bus).depth() }));
    assert_eq!(left, 0, "the dead-lettered row is deleted");
}

#[test]
fn priority_order_and_claim_check_tickets_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let expected = big.clone();
    life(tmp.path(), move |bus| {
        Box::pin(async move {
            let q = bus.queue::<Vec<u8>>("media").durable().priority(None).claim_check(1024).start().unwrap();
            for (p, payload) in [(1u8, vec![1u8]), (9, big), (5, vec![5])] {
                q.send_envelope(Envelope::new(payload).with_priority(Priority::new(p).unwrap())).await.unwrap();
            }
            assert_eq!(q.stats().ticketed, 1);
        })
    });
    let got = life(tmp.path(), |bus| {
        Box::pin(async move {
            let q = bus.queue::<Vec<u8>>("media").durable().priority(None).claim_check(1024).start().unwrap();
            assert_eq!((q.depth(), q.stats().ticketed), (3, 1));
            let mut c = q.consumer(8).await.unwrap();
            let mut got = Vec::new();
            for _ in 0..3 {
                let d = next(&mut c).await;
                got.push((d.envelope().priority.get(), d.payload().clone()));
                d.ack();
            }
            q.flush().await.unwrap();
            let start = std::time::Instant::now();
            while bus.claim_check().stats().await.unwrap().payloads > 0 {
                assert!(start.elapsed() < Duration::from_secs(5), "payload not freed");
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
            got
        })
    });
    assert_eq!(got.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [9, 5, 1]);
    assert!(got[0].1 == expected, "the ticket still claims the original bytes after the restart");
}

/// Types that postcard cannot decode (`serde_json::Value`, what the gateway
/// carries; fields skipped when empty) are stored as JSON instead.
#[test]
fn json_values_and_non_positional_types_round_trip() {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Sparse {
        id: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    }
    let tmp = tempfile::tempdir().unwrap();
    let big = serde_json::json!({ "blob": "x".repeat(100_000), "n": 1 });
    let values =
        vec![serde_json::json!({ "order": 42, "lines": [1, 2.5, null, "x"] }), big, serde_json::json!("plain")];
    let sparse = vec![Sparse { id: 1, note: None }, Sparse { id: 2, note: Some("n".into()) }];
    let (v, sp) = (values.clone(), sparse.clone());
    life(tmp.path(), move |bus| {
        Box::pin(async move {
            let q = bus.queue::<serde_json::Value>("json").durable().claim_check(1024).start().unwrap();
            for value in v {
                q.send(value).await.unwrap();
            }
            assert_eq!(q.stats().ticketed, 1);
            let s = bus.queue::<Sparse>("sparse").durable().start().unwrap();
            for x in sp {
                s.send(x).await.unwrap();
            }
        })
    });
    let (got, got_sparse) = life(tmp.path(), |bus| {
        Box::pin(async move {
            let q = bus.queue::<serde_json::Value>("json").durable().claim_check(1024).start().unwrap();
            let s = bus.queue::<Sparse>("sparse").durable().start().unwrap();
            let (mut c, mut cs) = (q.consumer(8).await.unwrap(), s.consumer(8).await.unwrap());
            let mut got = Vec::new();
            for _ in 0..3 {
                let d = next(&mut c).await;
                got.push(d.payload().clone());
                d.ack();
            }
            let mut got_sparse = Vec::new();
            for _ in 0..2 {
                let d = next(&mut cs).await;
                got_sparse.push(d.payload().clone());
                d.ack();
            }
            (got, got_sparse)
        })
    });
    assert_eq!(got, values);
    assert_eq!(got_sparse, sparse);
}

/// An ack's delete is written lazily; until it is, the payload stays
/// claimable, so a crash in between brings back a message that still works.
#[test]
fn a_payload_outlives_its_message_until_the_delete_is_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let expected = big.clone();
    // A long tick: nothing but a send or a flush writes the delete.
    let media = |bus: &Bus| {
        bus.queue::<Vec<u8>>("media").durable().claim_check(1024).tick(Duration::from_secs(60)).start().unwrap()
    };
    life(tmp.path(), move |bus| {
        Box::pin(async move {
            let q = media(&bus);
            let mut c = q.consumer(1).await.unwrap();
            q.send(big).await.unwrap();
            let d = next(&mut c).await;
            q.flush().await.unwrap(); // its delivery count is written: nothing is being written now
            d.ack();
            actix_rt::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(bus.claim_check().stats().await.unwrap().payloads, 1, "not released before the delete");
            std::mem::forget(c); // the process dies before the delete is written
        })
    });
    let back = life(tmp.path(), move |bus| {
        Box::pin(async move {
            let q = media(&bus);
            let mut c = q.consumer(1).await.unwrap();
            let d = next(&mut c).await;
            let back = (d.attempt(), d.payload().clone());
            d.ack();
            q.flush().await.unwrap();
            let start = std::time::Instant::now();
            while bus.claim_check().stats().await.unwrap().payloads > 0 {
                assert!(start.elapsed() < Duration::from_secs(5), "payload not freed after the committed delete");
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
            back
        })
    });
    assert_eq!(back.0, 2, "redelivered (at-least-once)");
    assert!(back.1 == expected, "and still claimable");
}

#[test]
fn a_bus_without_a_data_directory_refuses_a_durable_queue() {
    actix_rt::System::new().block_on(async {
        let bus = Bus::builder().build().unwrap();
        let err = bus.queue::<Order>("orders").durable().start().unwrap_err();
        assert!(matches!(&err, BusError::NoDataDir(what) if what.contains("orders")), "{err}");
        // The name is still free for a queue in memory.
        assert!(!bus.queue::<Order>("orders").start().unwrap().is_durable());
    });
}

#[actix_rt::test]
async fn any_queue_store_backs_a_queue() {
    let store = std::sync::Arc::new(MemoryQueueStore::default());
    let bus = Bus::builder().build().unwrap();
    let config = QueueConfig::named("mem");
    let q = Queue::<Order>::start_durable(config.clone(), bus.dlq().clone(), store.clone()).unwrap();
    for n in 0..3 {
        q.send(order(n)).await.unwrap();
    }
    assert_eq!(store.len("mem"), 3, "committed before send resolved");
    let mut c = q.consumer(1).await.unwrap();
    next(&mut c).await.ack();
    let _held = next(&mut c).await;
    q.flush().await.unwrap();
    let rows = store.load("mem").unwrap();
    assert_eq!(
        rows.iter().map(|r| (r.seq, r.delivered)).collect::<Vec<_>>(),
        [(2, 1), (3, 0)],
        "one acked, one handed out"
    );
}
