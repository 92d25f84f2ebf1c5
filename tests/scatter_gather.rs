//! Fan-out/fan-in (DESIGN §6.6): 10 recipients, 2 slow and 1 that panics,
//! under each completion condition; topic subscribers as recipients; late
//! replies; dead-lettering on timeout.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use actorbus::actors::dlq::{DlqFilter, DlqSource};
use actorbus::actors::scatter_gather::{Aggregator, CompletedBy, GatherResult, TopicRequest};
use actorbus::{service_fn, Bus, FailureReason, HandlerError, Request};
use common::metric;
use tokio::sync::Semaphore;

#[derive(Clone, serde::Serialize)]
struct Quote(u32);
impl Request for Quote {
    type Response = u32;
}

const FAST: [&str; 7] = ["f1", "f2", "f3", "f4", "f5", "f6", "f7"];
const SLOW: [&str; 2] = ["s1", "s2"];
const PANICS: &str = "p";

fn all_names() -> Vec<&'static str> {
    let mut names = vec![PANICS];
    names.extend(FAST);
    names.extend(SLOW);
    names
}

struct Fixture {
    bus: Bus,
    fast: Arc<Semaphore>,
    slow: Arc<Semaphore>,
}

/// Ten quote services: seven answer 1 once `fast` lets them, two answer 1
/// once `slow` lets them, one panics at once.
async fn fixture() -> Fixture {
    let bus = Bus::builder().build().unwrap();
    let fast = Arc::new(Semaphore::new(0));
    let slow = Arc::new(Semaphore::new(0));
    for (names, gate) in [(&FAST[..], &fast), (&SLOW[..], &slow)] {
        for name in names {
            let gate = gate.clone();
            bus.service(name, move || {
                let gate = gate.clone();
                service_fn(move |_: Quote, _| {
                    let gate = gate.clone();
                    async move {
                        gate.acquire().await.map_err(|e| HandlerError::new(e.to_string()))?.forget();
                        Ok(1)
                    }
                })
            })
            .start()
            .await
            .unwrap();
        }
    }
    bus.service(PANICS, || service_fn(|_: Quote, _| async { panic!("quote engine crashed") })).start().await.unwrap();
    Fixture { bus, fast, slow }
}

impl Fixture {
    /// Waits until the panicking recipient has failed, so that its failure
    /// is in every result, then lets the fast ones answer.
    async fn release_fast_after_the_panic(&self) {
        let panicked = || metric(&self.bus, "actorbus_request_reply_handled_total", r#"name="p",outcome="panic""#);
        let before = panicked();
        for _ in 0..2_000 {
            if panicked() > before || before > 0.0 && panicked() >= before {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
        self.fast.add_permits(FAST.len());
    }
}

fn set(names: &[String]) -> BTreeSet<&str> {
    names.iter().map(String::as_str).collect()
}

fn check_failed(r: &GatherResult<u32>) {
    assert_eq!(r.failed.len(), 1, "{:?}", r.failed);
    assert_eq!(r.failed[0].0, PANICS);
    assert_eq!(r.failed[0].1, FailureReason::Panic("quote engine crashed".into()));
}

fn sum() -> Aggregator<u32, u32> {
    Aggregator::fold(0, |acc, _, n| acc + n)
}

async fn run(
    f: &Fixture,
    name: &str,
    shape: impl FnOnce(actorbus::Scatter<Quote, u32>) -> actorbus::Scatter<Quote, u32>,
    agg: Aggregator<u32, u32>,
) -> GatherResult<u32> {
    let scatter = shape(f.bus.scatter(name, Quote(7)).services(all_names()));
    let gather = actix_rt::spawn(scatter.run(agg));
    f.release_fast_after_the_panic().await;
    gather.await.unwrap().unwrap()
}

#[actix_rt::test]
async fn all_waits_for_every_recipient() {
    let f = fixture().await;
    f.slow.add_permits(SLOW.len());
    let r = run(&f, "sg-all", |s| s.timeout(Duration::from_secs(5)), sum()).await;
    assert_eq!(r.completed_by, CompletedBy::All);
    assert_eq!(r.aggregate, 9);
    assert_eq!(set(&r.replied), FAST.iter().chain(&SLOW).copied().collect());
    assert!(r.missing.is_empty());
    check_failed(&r);
    assert_eq!(metric(&f.bus, "actorbus_scatter_gather_completed_total", r#"name="sg-all",completed_by="all""#), 1.0);
}

#[actix_rt::test]
async fn first_n_stops_at_n_and_counts_the_late_replies() {
    let f = fixture().await;
    let r = run(&f, "sg-first", |s| s.first(5).timeout(Duration::from_secs(5)), sum()).await;
    assert_eq!(r.completed_by, CompletedBy::FirstN(5));
    assert_eq!((r.aggregate, r.replied.len()), (5, 5));
    check_failed(&r);
    let missing = set(&r.missing);
    assert_eq!(missing.len(), 4, "2 fast that were not needed + 2 slow: {missing:?}");
    assert!(SLOW.iter().all(|s| missing.contains(s)));
    assert!(set(&r.replied).is_disjoint(&missing));
    // The rest answer after completion: dropped and counted.
    f.slow.add_permits(SLOW.len());
    let late = || metric(&f.bus, "actorbus_scatter_gather_late_replies_total", r#"name="sg-first""#);
    for _ in 0..2_000 {
        if late() >= 4.0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(late(), 4.0);
    assert_eq!(metric(&f.bus, "actorbus_scatter_gather_missing_total", r#"name="sg-first""#), 4.0);
}

#[actix_rt::test]
async fn quorum_is_a_majority_of_successful_replies() {
    let f = fixture().await;
    let r = run(&f, "sg-quorum", |s| s.quorum().timeout(Duration::from_secs(5)), sum()).await;
    assert_eq!(r.completed_by, CompletedBy::Quorum(6), "10 recipients: 6 is a majority");
    assert_eq!(r.replied.len(), 6);
    check_failed(&r);
    assert_eq!(r.missing.len(), 3);
    assert!(SLOW.iter().all(|s| r.missing.iter().any(|m| m == s)));
}

#[actix_rt::test]
async fn a_predicate_on_the_aggregate_completes_it() {
    let f = fixture().await;
    let r = run(&f, "sg-pred", |s| s.timeout(Duration::from_secs(5)), sum().until(|total| *total >= 4)).await;
    assert_eq!(r.completed_by, CompletedBy::Predicate);
    assert_eq!((r.aggregate, r.replied.len()), (4, 4));
    check_failed(&r);
    assert_eq!(r.missing.len(), 5);
}

#[actix_rt::test]
async fn the_total_timeout_lists_the_slow_as_missing_and_can_dead_letter() {
    let f = fixture().await;
    let r =
        run(&f, "sg-timeout", move |s| s.first(9).timeout(Duration::from_millis(150)).dead_letter_on_timeout(), sum())
            .await;
    assert_eq!(r.completed_by, CompletedBy::Timeout);
    assert_eq!((r.aggregate, r.replied.len()), (7, 7));
    assert_eq!(set(&r.replied), FAST.iter().copied().collect());
    assert_eq!(r.missing, ["s1", "s2"]);
    check_failed(&r);
    assert!(r.dead_lettered);
    let letters = f.bus.dlq().list(DlqFilter::default()).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].source, DlqSource::new("scatter_gather", "sg-timeout"));
    assert_eq!(letters[0].reason, FailureReason::Timeout);
    assert_eq!(letters[0].envelope["missing"], serde_json::json!(["s1", "s2"]));
    assert_eq!(letters[0].envelope["envelope"]["payload"], 7);
    assert_eq!(letters[0].envelope["failed"][0]["recipient"], "p");
}

#[actix_rt::test]
async fn every_subscriber_of_a_topic_can_be_a_recipient() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<TopicRequest<u32, u32>>("pricing.requests").unwrap();
    let mut ids = Vec::new();
    for factor in [2u32, 3] {
        let mut sub = bus.subscribe::<TopicRequest<u32, u32>>("pricing.*").start().unwrap();
        ids.push(sub.id().to_string());
        actix_rt::spawn(async move {
            while let Some(env) = sub.next().await {
                env.payload.reply(Ok(env.payload.request * factor));
            }
        });
    }
    // One that dies holding the request, one that answers with an error.
    let mut dies = bus.subscribe::<TopicRequest<u32, u32>>("pricing.requests").start().unwrap();
    let dies_id = dies.id().to_string();
    actix_rt::spawn(async move {
        let _request = dies.next().await;
        // Dropped without a reply.
    });
    let mut refuses = bus.subscribe::<TopicRequest<u32, u32>>("pricing.>").start().unwrap();
    let refuses_id = refuses.id().to_string();
    actix_rt::spawn(async move {
        while let Some(env) = refuses.next().await {
            env.payload.reply(Err(HandlerError::new("no price for you")));
        }
    });

    let r = bus
        .scatter("sg-topic", 10u32)
        .topic(&topic)
        .timeout(Duration::from_secs(5))
        .run(Aggregator::fold(Vec::new(), |mut v: Vec<u32>, _, p| {
            v.push(p);
            v.sort();
            v
        }))
        .await
        .unwrap();
    assert_eq!(r.completed_by, CompletedBy::All);
    assert_eq!(r.aggregate, [20, 30]);
    assert_eq!(set(&r.replied), ids.iter().map(String::as_str).collect());
    let failed: Vec<(&str, String)> = r.failed.iter().map(|(n, why)| (n.as_str(), why.to_string())).collect();
    assert!(failed.contains(&(dies_id.as_str(), "failed: dropped without a reply".to_owned())), "{failed:?}");
    assert!(failed.contains(&(refuses_id.as_str(), "failed: no price for you".to_owned())), "{failed:?}");
    assert!(r.missing.is_empty());
}

#[actix_rt::test]
async fn unknown_services_are_failed_recipients() {
    let f = fixture().await;
    f.fast.add_permits(1);
    let r = f.bus.scatter("sg-unknown", Quote(1)).services(["f1", "nobody"]).collect().await.unwrap();
    assert_eq!(r.completed_by, CompletedBy::All);
    assert_eq!(r.replied, ["f1"]);
    assert_eq!(r.aggregate, [("f1".to_owned(), 1)]);
    assert_eq!(r.failed, [("nobody".to_owned(), FailureReason::Failed("no service named `nobody`".into()))]);
}
