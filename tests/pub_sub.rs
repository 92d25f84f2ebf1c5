//! Publish-subscribe (DESIGN §6.4): wildcards, per-subscription buffers and
//! overflow policies, filters, dead subscribers, the durable-sink seam.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actorbus::actors::dead_letter::{MemoryDeadLetters, SharedHook};
use actorbus::actors::dlq::DlqFilter;
use actorbus::actors::topic::{
    DurableError, DurableFuture, DurableSink, Pattern, PublishError, Published, TopicConfig,
};
use actorbus::{Bus, Envelope, FailureReason, OverflowPolicy};
use common::metric;

async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2_000 {
        if cond() {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("not reached within 2 s: {what}");
}

#[test]
fn wildcard_matching_table() {
    // (pattern, subject, matches)
    let table = [
        ("orders.created", "orders.created", true),
        ("orders.created", "orders.updated", false),
        ("orders.created", "orders.created.eu", false),
        ("orders.*", "orders.created", true),
        ("orders.*", "orders", false),
        ("orders.*", "orders.eu.created", false), // `*` is one token, never more
        ("orders.*.created", "orders.eu.created", true),
        ("orders.*.created", "orders.eu.updated", false),
        ("orders.*.created", "orders.eu.west.created", false),
        ("*.created", "orders.created", true),
        ("*.created", "created", false),
        ("orders.>", "orders.created", true),
        ("orders.>", "orders.eu.west.created", true), // `>` is the rest, one or more
        ("orders.>", "orders", false),
        ("orders.>", "ordersx.created", false), // tokens match whole, no prefix matching
        ("orders.*.>", "orders.eu.created", true),
        ("orders.*.>", "orders.eu", false),
        (">", "anything.at.all", true),
        ("*", "one", true),
        ("*", "one.two", false),
        ("orders.eu.*", "payments.eu.created", false), // no match across roots
    ];
    for (pattern, subject, expected) in table {
        let p: Pattern = pattern.parse().unwrap();
        assert_eq!(p.matches(subject), expected, "{pattern} vs {subject}");
    }
    for bad in ["orders..x", "orders.>.x", "ord*", "", "orders."] {
        assert!(bad.parse::<Pattern>().is_err(), "{bad:?} must be refused");
    }
}

#[actix_rt::test]
async fn wildcard_subscriptions_route_across_topics_made_before_and_after() {
    let bus = Bus::builder().build().unwrap();
    let early = bus.topic::<u32>("orders.eu.created").unwrap();
    let mut one = bus.subscribe::<u32>("orders.*.created").start().unwrap();
    let mut rest = bus.subscribe::<u32>("orders.>").start().unwrap();
    let mut exact = bus.subscribe::<u32>("orders.us.created").start().unwrap();
    let late = bus.topic::<u32>("orders.us.created").unwrap(); // created after the subscriptions
    let deep = bus.topic::<u32>("orders.us.west.created").unwrap();
    let other = bus.topic::<u32>("payments.eu.created").unwrap();
    // A topic of another payload type is invisible to `u32` subscriptions.
    let strings = bus.topic::<String>("orders.eu.updated").unwrap();

    early.publish(1).await.unwrap();
    late.publish(2).await.unwrap();
    deep.publish(3).await.unwrap();
    let r = other.publish(4).await.unwrap();
    assert_eq!((r.subscriptions, r.delivered), (0, 0), "nothing matches payments.*");
    assert_eq!(strings.publish("x".into()).await.unwrap().subscriptions, 0);

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(rest.next().await.unwrap().payload);
    }
    assert_eq!(got, [1, 2, 3]);
    assert_eq!([one.next().await.unwrap().payload, one.next().await.unwrap().payload], [1, 2]);
    assert_eq!(exact.next().await.unwrap().payload, 2);
    for sub in [&one, &rest, &exact] {
        assert_eq!(sub.stats().buffered, 0, "{}: nothing else was routed to it", sub.pattern());
    }
    assert_eq!(metric(&bus, "actorbus_topic_unrouted_total", r#"name="payments.eu.created""#), 1.0);
    assert!(matches!(bus.topic::<String>("orders.eu.created"), Err(actorbus::actors::topic::TopicError::WrongType(_))));
}

#[actix_rt::test]
async fn a_slow_subscriber_under_drop_oldest_does_not_slow_the_others() {
    const N: u32 = 5_000;
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u32>("ticks").unwrap();
    // The slow subscriber never reads while the publisher runs.
    let mut slow = bus.subscribe::<u32>("ticks").capacity(16).overflow(OverflowPolicy::DropOldest).start().unwrap();
    // Three fast ones under `block`: the publisher waits for them if needed,
    // so everything published reaches them.
    let fast: Vec<_> = (0..3)
        .map(|_| {
            let mut sub = bus.subscribe::<u32>("ticks").capacity(64).start().unwrap();
            actix_rt::spawn(async move {
                let mut got = Vec::with_capacity(N as usize);
                while got.len() < N as usize {
                    got.push(sub.next().await.unwrap().payload);
                }
                got
            })
        })
        .collect();
    for i in 0..N {
        let receipt = topic.publish(i).await.unwrap();
        assert_eq!(receipt.delivered, 4);
    }
    for f in fast {
        assert_eq!(f.await.unwrap(), (0..N).collect::<Vec<_>>(), "every message, in order");
    }
    // The slow one holds the newest 16, and counted what it lost.
    let stats = slow.stats();
    assert_eq!((stats.buffered, stats.lost), (16, u64::from(N) - 16));
    let mut kept = Vec::new();
    for _ in 0..16 {
        kept.push(slow.next().await.unwrap().payload);
    }
    assert_eq!(kept, (N - 16..N).collect::<Vec<_>>());
    assert_eq!(metric(&bus, "actorbus_topic_dropped_total", r#"name="ticks",reason="drop_oldest""#), f64::from(N - 16));
    assert_eq!(metric(&bus, "actorbus_topic_deliveries_total", r#"name="ticks""#), f64::from(4 * N));
}

#[actix_rt::test]
async fn overflow_policies_account_for_every_message() {
    let bus = Bus::builder().build().unwrap();
    let dlq = MemoryDeadLetters::default();
    let topic =
        bus.create_topic::<u32>("flood", TopicConfig::new().dead_letter(Arc::new(dlq.clone()) as SharedHook)).unwrap();
    let newest = bus.subscribe::<u32>("flood").capacity(4).overflow(OverflowPolicy::DropNewest).start().unwrap();
    let dead = bus.subscribe::<u32>("flood").capacity(4).overflow(OverflowPolicy::DeadLetter).start().unwrap();
    let reject = bus.subscribe::<u32>("flood").capacity(4).overflow(OverflowPolicy::Reject).start().unwrap();
    let mut rejected = 0;
    for i in 0..10 {
        match topic.publish(i).await {
            Ok(_) => {}
            Err(PublishError::Rejected { rejected: 1, receipt }) => {
                rejected += 1;
                assert_eq!(receipt.subscriptions, 3, "the others still got it");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(rejected, 6);
    for sub in [&newest, &dead, &reject] {
        let s = sub.stats();
        assert_eq!((s.buffered, s.lost), (4, 6));
    }
    let letters = dlq.take();
    assert_eq!(letters.len(), 6);
    assert!(letters.iter().all(|l| l.reason == FailureReason::Overflow("dead_letter".into()) && l.pattern == "topic"));
    assert_eq!(letters[0].envelope["payload"], 4, "the first message that did not fit");
}

#[actix_rt::test]
async fn topics_made_by_the_bus_dead_letter_to_its_dlq() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u32>("audit.flood").unwrap();
    let dead = bus.subscribe::<u32>("audit.*").capacity(2).overflow(OverflowPolicy::DeadLetter).start().unwrap();
    for i in 0..5 {
        topic.publish(i).await.unwrap();
    }
    assert_eq!(dead.stats().buffered, 2);
    let letters = bus.dlq().list(DlqFilter::default().source("topic", "audit.flood")).await.unwrap();
    let payloads: Vec<_> = letters.iter().map(|l| l.envelope["payload"].clone()).collect();
    assert_eq!(payloads, [2, 3, 4].map(serde_json::Value::from));
    assert!(letters.iter().all(|l| l.reason == FailureReason::Overflow("dead_letter".into()) && l.attempts == 1));
    assert_eq!(bus.dlq().len().await.unwrap(), 3);
}

#[actix_rt::test]
async fn filters_select_per_subscription() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u32>("numbers").unwrap();
    let mut even = bus.subscribe::<u32>("numbers").filter(|e: &Envelope<u32>| e.payload % 2 == 0).start().unwrap();
    let mut vip = bus
        .subscribe::<u32>("numbers")
        .filter(|e: &Envelope<u32>| e.headers.get("tier").is_some_and(|t| t == "vip"))
        .start()
        .unwrap();
    for i in 0..6 {
        let mut env = Envelope::new(i);
        if i == 3 {
            env = env.with_header("tier", "vip");
        }
        topic.publish_envelope(env).await.unwrap();
    }
    let mut evens = Vec::new();
    for _ in 0..3 {
        evens.push(even.next().await.unwrap().payload);
    }
    assert_eq!(evens, [0, 2, 4]);
    assert_eq!(vip.next().await.unwrap().payload, 3);
    assert_eq!((even.stats().buffered, vip.stats().buffered), (0, 0));
    assert_eq!(metric(&bus, "actorbus_topic_filtered_total", r#"name="numbers""#), 8.0);
}

/// An actor subscriber that records what it gets.
struct Recorder(Arc<Mutex<Vec<u32>>>);
impl Actor for Recorder {
    type Context = Context<Self>;
}
impl Handler<Published<u32>> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: Published<u32>, _: &mut Context<Self>) {
        self.0.lock().unwrap().push(msg.envelope.payload);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Stop;
impl Handler<Stop> for Recorder {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[actix_rt::test]
async fn dead_subscribers_are_removed() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u32>("lifecycle").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let actor = Recorder(seen.clone()).start();
    bus.subscribe::<u32>("lifecycle").recipient(actor.clone().recipient()).unwrap();
    let dropped = bus.subscribe::<u32>("lifecycle").start().unwrap();
    let mut alive = bus.subscribe::<u32>("lifecycle").start().unwrap();
    assert_eq!(topic.subscription_count(), 3);

    for i in 0..3 {
        topic.publish(i).await.unwrap();
    }
    until("the actor got 3", || seen.lock().unwrap().len() == 3).await;
    assert_eq!(*seen.lock().unwrap(), [0, 1, 2]);

    // One subscriber unsubscribes by dropping its handle, the actor dies.
    drop(dropped);
    actor.send(Stop).await.unwrap();
    until("the actor stopped", || !actor.connected()).await;
    // The publish finds both gone and has the topic actor forget them.
    let r = topic.publish(3).await.unwrap();
    assert_eq!(r.delivered, 1);
    until("both removed", || topic.subscription_count() == 1).await;
    assert_eq!(topic.sweep().await, 0, "nothing left to sweep");
    let r = topic.publish(4).await.unwrap();
    assert_eq!((r.subscriptions, r.delivered), (1, 1));
    let got: Vec<u32> =
        [alive.next().await, alive.next().await, alive.next().await, alive.next().await, alive.next().await]
            .into_iter()
            .map(|e| e.unwrap().payload)
            .collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    assert_eq!(*seen.lock().unwrap(), [0, 1, 2], "nothing after it stopped");
    let removed = |reason: &str| {
        metric(&bus, "actorbus_topic_subscriptions_removed_total", &format!(r#"name="lifecycle",reason="{reason}""#))
    };
    assert_eq!((removed("unsubscribed"), removed("subscriber_dead")), (1.0, 1.0));
    assert_eq!(metric(&bus, "actorbus_topic_subscriptions_active", r#"name="lifecycle""#), 1.0);
}

#[actix_rt::test]
async fn a_dead_actor_is_removed_without_any_publish() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.create_topic::<u32>("idle", TopicConfig::new().sweep_interval(Duration::from_millis(5))).unwrap();
    let actor = Recorder(Arc::default()).start();
    bus.subscribe::<u32>("idle").recipient(actor.clone().recipient()).unwrap();
    assert_eq!(topic.subscription_count(), 1);
    actor.send(Stop).await.unwrap();
    until("the periodic sweep removed it", || topic.subscription_count() == 0).await;
}

/// Stands in for a queue: stores what it is given, or refuses.
#[derive(Default)]
struct FakeQueue {
    stored: Mutex<Vec<u32>>,
    refuse: AtomicUsize,
}

impl DurableSink<u32> for FakeQueue {
    fn name(&self) -> &str {
        "fake-queue"
    }
    fn forward(&self, envelope: Envelope<u32>) -> DurableFuture {
        let out = if self.refuse.load(Ordering::SeqCst) > 0 {
            Err(DurableError { sink: "fake-queue".into(), reason: "full".into() })
        } else {
            self.stored.lock().unwrap().push(envelope.payload);
            Ok(())
        };
        Box::pin(std::future::ready(out))
    }
}

#[actix_rt::test]
async fn durable_sinks_store_before_fan_out_and_a_refusal_fails_the_publish() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u32>("audit").unwrap();
    let queue = Arc::new(FakeQueue::default());
    topic.bind_durable(queue.clone());
    let mut plain = bus.subscribe::<u32>("audit").start().unwrap();
    assert_eq!(topic.publish(1).await.unwrap().durable, 1);
    queue.refuse.store(1, Ordering::SeqCst);
    assert!(matches!(topic.publish(2).await, Err(PublishError::Durable(e)) if e.sink == "fake-queue"));
    queue.refuse.store(0, Ordering::SeqCst);
    topic.publish(3).await.unwrap();
    assert_eq!(*queue.stored.lock().unwrap(), [1, 3]);
    assert_eq!(plain.next().await.unwrap().payload, 1);
    assert_eq!(plain.next().await.unwrap().payload, 3, "2 failed before any plain subscription saw it");
    assert!(topic.unbind_durable("fake-queue"));
    assert_eq!(topic.publish(4).await.unwrap().durable, 0);
}

#[actix_rt::test]
async fn block_makes_the_publisher_wait_for_room_and_loses_nothing() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u32>("backpressure").unwrap();
    let mut sub = bus.subscribe::<u32>("backpressure").capacity(2).overflow(OverflowPolicy::Block).start().unwrap();
    let t = topic.clone();
    let publisher = actix_rt::spawn(async move {
        for i in 0..100 {
            t.publish(i).await.unwrap();
        }
    });
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    assert!(!publisher.is_finished(), "waits for room");
    assert_eq!(sub.stats().buffered, 2, "the buffer never grows past its capacity");
    let mut got = Vec::new();
    for _ in 0..100 {
        got.push(sub.next().await.unwrap().payload);
    }
    publisher.await.unwrap();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert_eq!(sub.stats().lost, 0);
}

/// DESIGN §6.4: a durable subscription is a queue bound to the topic, so its
/// consumers get at-least-once delivery: a consumer that panics loses
/// nothing (the queue redelivers), and messages published while no
/// consumer runs wait in the queue.
#[actix_rt::test]
async fn a_durable_subscription_survives_its_consumers_panic_with_no_loss() {
    use actorbus::actors::pool::handler_fn;
    use actorbus::actors::queue::RetryPolicy;
    use std::collections::HashMap;

    const EARLY: u32 = 100;
    const TOTAL: u32 = 500;
    let bus = Bus::builder().worker_arbiters(2).build().unwrap();
    let queue = bus.queue::<u32>("billing").retry(RetryPolicy::IMMEDIATE).max_deliveries(5).start().unwrap();
    let topic = bus.bind_queue::<u32>("orders.placed", "billing").unwrap();
    assert!(!topic.bind_queue(&queue), "binding twice changes nothing");
    let mut plain = bus.subscribe::<u32>("orders.*").capacity(1_000).start().unwrap();

    for i in 0..EARLY {
        let receipt = topic.publish(i).await.unwrap();
        assert_eq!((receipt.durable, receipt.delivered), (1, 1));
    }
    until("the early messages wait in the queue", || queue.depth() == u64::from(EARLY)).await;
    assert_eq!(queue.stats().delivered, 0, "no consumer yet");

    // Every 10th message panics its worker on the first delivery.
    let handled: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let seen = handled.clone();
    let pool = bus
        .consumer_pool(&queue, move || {
            let seen = seen.clone();
            handler_fn(move |env: Envelope<u32>| {
                if env.payload % 10 == 0 && env.attempt == 1 {
                    panic!("consumer blew up on {}", env.payload);
                }
                *seen.lock().unwrap().entry(env.payload).or_default() += 1;
                async { Ok(()) }
            })
        })
        .workers(4)
        .start()
        .await
        .unwrap();
    for i in EARLY..TOTAL {
        topic.publish(i).await.unwrap();
    }
    for _ in 0..4_000 {
        if queue.stats().acked == u64::from(TOTAL) {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let handled = handled.lock().unwrap().clone();
    let mut distinct: Vec<u32> = handled.keys().copied().collect();
    distinct.sort_unstable();
    assert_eq!(distinct, (0..TOTAL).collect::<Vec<_>>(), "every message handled, none lost");
    assert!(handled.values().all(|&n| n >= 1));
    let stats = queue.stats();
    assert_eq!(stats.acked, u64::from(TOTAL));
    assert_eq!((stats.nacked, stats.redelivered, stats.dead_lettered), (50, 50, 0), "{stats:?}");
    assert_eq!(pool.restarts(), 50);
    // The plain subscription got every message too, at most once.
    let mut plain_seen = Vec::new();
    while plain_seen.len() < TOTAL as usize {
        plain_seen.push(plain.next().await.unwrap().payload);
    }
    assert_eq!(plain_seen, (0..TOTAL).collect::<Vec<_>>());
    assert_eq!(metric(&bus, "actorbus_topic_durable_forwarded_total", r#"name="orders.placed""#), f64::from(TOTAL));
    assert!(bus.bind_queue::<u32>("orders.placed", "nowhere").is_err(), "an unknown queue is an error");
}
