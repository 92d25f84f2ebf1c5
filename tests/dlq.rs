//! Dead letter queue: persistence across reopen, filters, inspect, purge,
//! redrive (to the source, to another target, rate-limited, refused), the
//! bus's DLQ and its metrics.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actorbus::actors::dlq::*;
use actorbus::actors::envelope::{Envelope, Timestamp};
use actorbus::actors::store::DataDir;
use actorbus::{Bus, FailureReason};

fn run<F: std::future::Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

fn letter(pattern: &str, name: &str, reason: FailureReason, payload: &str) -> DeadLetter {
    let env = Envelope::new(payload.to_owned());
    let errors = vec![
        FailureRecord { at: Timestamp(1_000), attempt: 1, reason: "panic: first".into() },
        FailureRecord { at: Timestamp(2_000), attempt: 2, reason: "timeout".into() },
    ];
    DeadLetter::new(DlqSource::new(pattern, name), reason, &env, errors)
}

/// A redrive target that records what it was given.
fn recorder() -> (Arc<Mutex<Vec<DeadLetter>>>, impl RedriveTarget) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let target = move |l: DeadLetter| -> RedriveFuture {
        sink.lock().unwrap().push(l);
        Box::pin(async { Ok(()) })
    };
    (got, target)
}

#[test]
fn entries_survive_a_reopen_with_their_history() {
    let tmp = tempfile::tempdir().unwrap();
    let stored = run(async {
        let dlq = DlqSink::open(&DataDir::new(tmp.path())).unwrap();
        let l = letter("queue", "orders", FailureReason::MaxDeliveries, "order-1");
        dlq.dead_letter(l.clone()).await.unwrap();
        l
    });
    assert!(tmp.path().join("dlq.sqlite3").exists());
    run(async {
        let dlq = DlqSink::open(&DataDir::new(tmp.path())).unwrap();
        assert_eq!(dlq.len().await.unwrap(), 1);
        let back = dlq.get(stored.id).await.unwrap().expect("stored entry");
        assert_eq!(back, stored);
        assert_eq!(back.attempts, 2);
        assert_eq!(back.errors.len(), 2);
        assert_eq!((back.first_failed_at, back.last_failed_at), (Timestamp(1_000), Timestamp(2_000)));
        assert_eq!(back.envelope["payload"], "order-1");
        assert_eq!(back.message_id.map(|m| m.to_string()), back.envelope["id"].as_str().map(str::to_owned));
    });
}

#[test]
fn filters_by_source_reason_time_and_pages() {
    run(async {
        let dlq = DlqSink::in_memory();
        let a = letter("queue", "a", FailureReason::Expired, "1");
        let b = letter("queue", "b", FailureReason::Panic("boom".into()), "2");
        let c = letter("saga", "trip", FailureReason::Failed("compensation".into()), "3");
        let mut d = letter("queue", "a", FailureReason::MaxDeliveries, "4");
        d.last_failed_at = Timestamp::now();
        for l in [&a, &b, &c, &d] {
            dlq.dead_letter(l.clone()).await.unwrap();
        }
        let ids = |v: Vec<DeadLetter>| v.into_iter().map(|l| l.id).collect::<Vec<_>>();
        assert_eq!(ids(dlq.list(DlqFilter::default()).await.unwrap()), vec![a.id, b.id, c.id, d.id]);
        assert_eq!(ids(dlq.list(DlqFilter::default().source("queue", "a")).await.unwrap()), vec![a.id, d.id]);
        assert_eq!(ids(dlq.list(DlqFilter::default().pattern("saga")).await.unwrap()), vec![c.id]);
        assert_eq!(ids(dlq.list(DlqFilter::default().reason("panic")).await.unwrap()), vec![b.id]);
        assert_eq!(ids(dlq.list(DlqFilter::default().within(Duration::from_secs(60))).await.unwrap()), vec![d.id]);
        let page1 = ids(dlq.list(DlqFilter::default().limit(2)).await.unwrap());
        let page2 = ids(dlq.list(DlqFilter::default().after(page1[1]).limit(2)).await.unwrap());
        assert_eq!((page1, page2), (vec![a.id, b.id], vec![c.id, d.id]));
    });
}

#[test]
fn purge_by_id_filter_and_all() {
    run(async {
        let dlq = DlqSink::in_memory();
        let letters: Vec<_> = (0..5)
            .map(|i| letter("queue", if i % 2 == 0 { "even" } else { "odd" }, FailureReason::Expired, "x"))
            .collect();
        for l in &letters {
            dlq.dead_letter(l.clone()).await.unwrap();
        }
        assert_eq!(dlq.purge(letters[0].id).await.unwrap(), 1);
        assert_eq!(dlq.purge(letters[0].id).await.unwrap(), 0, "already gone");
        assert_eq!(dlq.get(letters[0].id).await.unwrap(), None);
        assert_eq!(dlq.purge(DlqFilter::default().source("queue", "odd")).await.unwrap(), 2);
        assert_eq!(dlq.len().await.unwrap(), 2);
        assert_eq!(dlq.purge(DlqSelector::all()).await.unwrap(), 2);
        assert!(dlq.is_empty().await.unwrap());
    });
}

#[test]
fn redrive_to_source_to_another_target_and_refusals() {
    run(async {
        let dlq = DlqSink::in_memory();
        let (orders, to_orders) = recorder();
        let (audit, to_audit) = recorder();
        dlq.register_redrive(DlqSource::queue("orders"), to_orders);
        dlq.register_redrive(DlqSource::queue("audit"), to_audit);
        dlq.register_redrive(DlqSource::queue("broken"), |_l: DeadLetter| -> RedriveFuture {
            Box::pin(async { Err("queue is full".to_owned()) })
        });
        let one = letter("queue", "orders", FailureReason::MaxDeliveries, "1");
        let two = letter("queue", "orders", FailureReason::Expired, "2");
        let orphan = letter("queue", "gone", FailureReason::Expired, "3");
        let refused = letter("queue", "broken", FailureReason::Expired, "4");
        for l in [&one, &two, &orphan, &refused] {
            dlq.dead_letter(l.clone()).await.unwrap();
        }

        // One entry, back to its source.
        let report = dlq.redrive(one.id, RedriveOptions::to_source()).await.unwrap();
        assert_eq!(report.redriven, vec![one.id]);
        assert_eq!(orders.lock().unwrap().iter().map(|l| l.id).collect::<Vec<_>>(), vec![one.id]);
        assert_eq!(dlq.get(one.id).await.unwrap(), None);

        // A filter, to another queue.
        let report = dlq
            .redrive(
                DlqFilter::default().source("queue", "orders"),
                RedriveOptions::to_target(DlqSource::queue("audit")),
            )
            .await
            .unwrap();
        assert_eq!(report.redriven, vec![two.id]);
        assert_eq!(audit.lock().unwrap()[0].envelope["payload"], "2");

        // Everything left: no target, and a refusal, both stay.
        let report = dlq.redrive(DlqSelector::all(), RedriveOptions::to_source()).await.unwrap();
        assert!(report.redriven.is_empty());
        assert_eq!(report.failed.len(), 2);
        assert!(report.failed.iter().any(|(id, why)| *id == orphan.id && why.contains("no redrive target")));
        assert!(report.failed.iter().any(|(id, why)| *id == refused.id && why == "queue is full"));
        assert_eq!(dlq.len().await.unwrap(), 2);
        assert!(matches!(
            dlq.redrive(one.id, RedriveOptions::to_source()).await,
            Err(DlqError::NotFound(id)) if id == one.id
        ));
    });
}

#[test]
fn redrive_respects_its_rate_limit() {
    run(async {
        let dlq = DlqSink::in_memory();
        let (got, target) = recorder();
        dlq.register_redrive(DlqSource::queue("slow"), target);
        for _ in 0..5 {
            dlq.dead_letter(letter("queue", "slow", FailureReason::Expired, "x")).await.unwrap();
        }
        let started = Instant::now();
        let report = dlq.redrive(DlqSelector::all(), RedriveOptions::to_source().per_second(50)).await.unwrap();
        assert_eq!(report.redriven.len(), 5);
        assert_eq!(got.lock().unwrap().len(), 5);
        // Four gaps of 20 ms between five redrives.
        assert!(started.elapsed() >= Duration::from_millis(80), "{:?}", started.elapsed());
    });
}

#[test]
fn the_bus_has_a_dlq_durable_with_a_data_dir_and_counted_in_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    run(async {
        let bus = Bus::builder().data_dir(tmp.path()).build().unwrap();
        let l = letter("queue", "bus-dlq-metrics", FailureReason::Overflow("dead_letter".into()), "x");
        bus.dlq().dead_letter(l.clone()).await.unwrap();
        assert_eq!(bus.dlq().get(l.id).await.unwrap(), Some(l));
        let labels = r#"pattern="queue",name="bus-dlq-metrics",reason="overflow""#;
        assert_eq!(common::metric(&bus, "actorbus_dlq_dead_lettered_total", labels), 1.0);
    });
    assert!(tmp.path().join("dlq.sqlite3").exists());
}
