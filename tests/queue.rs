//! Point-to-point queues: acks and credit, visibility timeouts, nack with
//! delay, retries up to max_deliveries and the DLQ history, redrive and
//! purge, expiry, overflow policies, and the priority mode (order, FIFO
//! within a level, aging, expiry away from the head, lowest dropped first).

mod common;

use std::time::{Duration, Instant};

use actorbus::actors::dlq::{DlqFilter, RedriveOptions};
use actorbus::actors::queue::{Consumer, QueueError, QueueHandle, RetryPolicy};
use actorbus::{Bus, Envelope, FailureReason, OverflowPolicy, Priority};

fn run<F: std::future::Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

fn bus() -> Bus {
    Bus::builder().build().unwrap()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn recv<T>(c: &mut Consumer<T>) -> actorbus::actors::queue::Delivery<T> {
    tokio::time::timeout(Duration::from_secs(10), c.recv()).await.expect("a delivery within 10 s").expect("open")
}

async fn nothing<T>(c: &mut Consumer<T>, for_: Duration) {
    if let Ok(Some(d)) = tokio::time::timeout(for_, c.recv()).await {
        panic!("unexpected delivery {}", d.id());
    }
}

fn quick(bus: &Bus, name: &str) -> actorbus::QueueBuilder<u32> {
    bus.queue::<u32>(name).tick(Duration::from_millis(2))
}

#[test]
fn fifo_with_acks_and_a_prefetch_limit() {
    run(async {
        let bus = bus();
        let q = quick(&bus, "fifo").start().unwrap();
        for i in 0..10 {
            q.send(i).await.unwrap();
        }
        let mut c = q.consumer(3).await.unwrap();
        let first: Vec<_> = [recv(&mut c).await, recv(&mut c).await, recv(&mut c).await].into();
        // Three unsettled: the fourth waits for credit.
        nothing(&mut c, Duration::from_millis(30)).await;
        assert_eq!(q.in_flight(), 3);
        assert_eq!(first.iter().map(|d| *d.payload()).collect::<Vec<_>>(), vec![0, 1, 2]);
        for d in first {
            d.ack();
        }
        let mut rest = Vec::new();
        for _ in 3..10 {
            let d = recv(&mut c).await;
            rest.push(*d.payload());
            d.ack();
        }
        assert_eq!(rest, (3..10).collect::<Vec<_>>());
        wait_until("acks", || q.stats().acked == 10).await;
        let s = q.stats();
        assert_eq!((s.enqueued, s.delivered, s.depth, s.in_flight), (10, 10, 0, 0));
        assert_eq!(common::metric(&bus, "actorbus_queue_acked_total", r#"name="fifo""#), 10.0);
    });
}

#[test]
fn an_unacked_delivery_is_redelivered_after_the_visibility_timeout() {
    run(async {
        let bus = bus();
        let q = quick(&bus, "visibility").visibility_timeout(Duration::from_millis(50)).start().unwrap();
        // Credit 2: the timed-out delivery keeps its credit until settled.
        let mut c = q.consumer(2).await.unwrap();
        q.send(7).await.unwrap();
        let first = recv(&mut c).await;
        let (sent, settler) = first.into_parts();
        assert_eq!(sent.attempt, 1);
        let started = Instant::now();
        let again = recv(&mut c).await;
        assert!(started.elapsed() >= Duration::from_millis(40), "not before the timeout");
        assert_eq!((again.id(), again.attempt(), *again.payload()), (sent.id, 2, 7));
        // The late ack of the first delivery is stale and ignored.
        settler.ack();
        wait_until("stale settle", || q.stats().stale_settles == 1).await;
        assert_eq!(q.stats().acked, 0);
        again.ack();
        wait_until("ack", || q.stats().acked == 1).await;
        let s = q.stats();
        assert_eq!((s.timeouts, s.redelivered, s.delivered), (1, 1, 2));
        let labels = r#"name="visibility""#;
        assert_eq!(common::metric(&bus, "actorbus_queue_visibility_timeouts_total", labels), 1.0);
    });
}

#[test]
fn nack_with_a_delay_waits_before_redelivering() {
    run(async {
        let bus = bus();
        let q = quick(&bus, "nack-delay").start().unwrap();
        let mut c = q.consumer(5).await.unwrap();
        q.send(1).await.unwrap();
        q.send(2).await.unwrap();
        let one = recv(&mut c).await;
        let started = Instant::now();
        one.retry_after(Duration::from_millis(80));
        // Message 2 is not held up by the delayed one.
        let two = recv(&mut c).await;
        assert_eq!(*two.payload(), 2);
        two.ack();
        let again = recv(&mut c).await;
        assert!(started.elapsed() >= Duration::from_millis(75), "{:?}", started.elapsed());
        assert_eq!((*again.payload(), again.attempt()), (1, 2));
        again.ack();
        // A plain nack with the immediate policy comes straight back.
        q.send(3).await.unwrap();
        let d = recv(&mut c).await;
        d.nack();
        let d = recv(&mut c).await;
        assert_eq!((*d.payload(), d.attempt()), (3, 2));
        d.ack();
    });
}

#[test]
fn max_deliveries_dead_letters_with_the_full_history_then_redrive_and_purge() {
    run(async {
        let bus = bus();
        let q = quick(&bus, "poison").max_deliveries(3).retry(RetryPolicy::IMMEDIATE).start().unwrap();
        let mut c = q.consumer(1).await.unwrap();
        let id = q.send(13).await.unwrap();
        let d = recv(&mut c).await;
        d.nack_with(FailureReason::Panic("boom".into()));
        let d = recv(&mut c).await;
        d.nack_with(FailureReason::Failed("db down".into()));
        let d = recv(&mut c).await;
        assert_eq!(d.attempt(), 3);
        drop(d); // dropped unsettled: a failure too
        wait_until("dead letter", || q.stats().dead_lettered == 1).await;
        nothing(&mut c, Duration::from_millis(20)).await;

        let letters = bus.dlq().list(DlqFilter::default().source("queue", "poison")).await.unwrap();
        assert_eq!(letters.len(), 1);
        let l = &letters[0];
        assert_eq!((l.message_id, l.reason.clone(), l.attempts), (Some(id), FailureReason::MaxDeliveries, 3));
        let history: Vec<_> = l.errors.iter().map(|e| (e.attempt, e.reason.as_str())).collect();
        assert_eq!(
            history,
            vec![(1, "panic: boom"), (2, "failed: db down"), (3, "failed: delivery dropped without ack")]
        );
        assert!(l.first_failed_at <= l.last_failed_at);
        assert_eq!(l.envelope["payload"], 13);
        let labels = r#"name="poison",reason="max_deliveries""#;
        assert_eq!(common::metric(&bus, "actorbus_queue_dead_lettered_total", labels), 1.0);

        // Redrive: back in the queue with a fresh attempt count, processed.
        let report = bus.dlq().redrive(l.id, RedriveOptions::to_source()).await.unwrap();
        assert_eq!(report.redriven, vec![l.id]);
        let d = recv(&mut c).await;
        assert_eq!((d.id(), d.attempt(), *d.payload()), (id, 1, 13));
        d.ack();
        wait_until("ack", || q.stats().acked == 1).await;
        assert!(bus.dlq().is_empty().await.unwrap());

        // Purge: a second poison message dead-lettered, then purged.
        q.send(14).await.unwrap();
        for _ in 0..3 {
            recv(&mut c).await.nack();
        }
        wait_until("second dead letter", || q.stats().dead_lettered == 2).await;
        let l = bus.dlq().list(DlqFilter::default()).await.unwrap().pop().unwrap();
        assert_eq!(bus.dlq().purge(l.id).await.unwrap(), 1);
        assert_eq!(bus.dlq().get(l.id).await.unwrap(), None);
        nothing(&mut c, Duration::from_millis(20)).await;
    });
}

#[test]
fn backoff_spaces_retries_out() {
    run(async {
        let bus = bus();
        let policy =
            RetryPolicy { jitter: 0.0, ..RetryPolicy::backoff(1, Duration::from_millis(40), Duration::from_secs(1)) };
        let q = quick(&bus, "backoff").retry(policy).start().unwrap();
        let mut c = q.consumer(1).await.unwrap();
        q.send(1).await.unwrap();
        recv(&mut c).await.nack();
        let started = Instant::now();
        recv(&mut c).await.nack(); // immediate retry, then 40 ms
        recv(&mut c).await.nack(); // then 80 ms
        let d = recv(&mut c).await;
        assert!(started.elapsed() >= Duration::from_millis(115), "{:?}", started.elapsed());
        assert_eq!(d.attempt(), 4);
        d.ack();
        assert_eq!(policy.delay(1, 0.5), Duration::ZERO);
        assert_eq!(policy.delay(4, 0.5), Duration::from_millis(160));
        assert_eq!(policy.delay(40, 0.5), Duration::from_secs(1));
    });
}

#[test]
fn expired_messages_never_reach_a_handler() {
    run(async {
        let bus = bus();
        let q = quick(&bus, "expiry").start().unwrap();
        // Waiting in the queue, behind a message without deadline.
        q.send(1).await.unwrap();
        let doomed = Envelope::new(2).with_timeout(Duration::from_millis(20));
        let doomed_id = q.send_envelope(doomed).await.unwrap();
        q.send(3).await.unwrap();
        wait_until("expiry", || q.stats().dead_lettered == 1).await;
        assert_eq!(q.depth(), 2);
        // Sitting in a consumer's prefetch buffer when it expires.
        let mut c = q.consumer(10).await.unwrap();
        let late = Envelope::new(4).with_timeout(Duration::from_millis(30));
        let late_id = q.send_envelope(late).await.unwrap();
        actix_rt::time::sleep(Duration::from_millis(60)).await;
        let mut got = Vec::new();
        for _ in 0..2 {
            let d = recv(&mut c).await;
            got.push(*d.payload());
            d.ack();
        }
        assert_eq!(got, vec![1, 3]);
        nothing(&mut c, Duration::from_millis(20)).await;
        wait_until("second expiry", || q.stats().dead_lettered == 2).await;
        let expired = bus.dlq().list(DlqFilter::default().source("queue", "expiry").reason("expired")).await.unwrap();
        let ids: Vec<_> = expired.iter().map(|l| l.message_id.unwrap()).collect();
        assert_eq!(ids, vec![doomed_id, late_id]);
        assert_eq!(q.stats().expired, 2);
        // Already expired when sent: straight to the DLQ.
        let mut gone = Envelope::new(5).with_timeout(Duration::from_millis(1));
        gone.created_at = actorbus::Timestamp(0);
        gone.deadline = Some(actorbus::Timestamp(1));
        q.send_envelope(gone).await.unwrap();
        wait_until("third expiry", || q.stats().dead_lettered == 3).await;
        nothing(&mut c, Duration::from_millis(20)).await;
    });
}

async fn fill(q: &QueueHandle<u32>, n: u32) {
    for i in 0..n {
        q.send(i).await.unwrap();
    }
}

#[test]
fn overflow_policies() {
    run(async {
        let bus = bus();
        let reject = quick(&bus, "of-reject").capacity(2).overflow(OverflowPolicy::Reject).start().unwrap();
        fill(&reject, 2).await;
        assert_eq!(reject.send(9).await, Err(QueueError::Full("of-reject".into())));
        assert_eq!(reject.stats().rejected, 1);

        let newest = quick(&bus, "of-newest").capacity(2).overflow(OverflowPolicy::DropNewest).start().unwrap();
        fill(&newest, 3).await;
        let mut c = newest.consumer(5).await.unwrap();
        assert_eq!(vec![*recv(&mut c).await.payload(), *recv(&mut c).await.payload()], vec![0, 1]);
        assert_eq!(newest.stats().dropped, 1);

        let oldest = quick(&bus, "of-oldest").capacity(2).overflow(OverflowPolicy::DropOldest).start().unwrap();
        fill(&oldest, 3).await;
        wait_until("drop", || oldest.stats().dropped == 1).await;
        let mut c = oldest.consumer(5).await.unwrap();
        assert_eq!(vec![*recv(&mut c).await.payload(), *recv(&mut c).await.payload()], vec![1, 2]);

        let dead = quick(&bus, "of-dead").capacity(2).overflow(OverflowPolicy::DeadLetter).start().unwrap();
        fill(&dead, 3).await;
        wait_until("dead letter", || dead.stats().dead_lettered == 1).await;
        let l = bus.dlq().list(DlqFilter::default().source("queue", "of-dead")).await.unwrap();
        assert_eq!(
            (l[0].reason.to_string(), l[0].envelope["payload"].as_u64()),
            ("overflow: dead_letter".into(), Some(2))
        );

        // Block: the send waits until an ack makes room.
        let block = quick(&bus, "of-block").capacity(2).start().unwrap();
        fill(&block, 2).await;
        let sender = block.clone();
        let pending = actix_rt::spawn(async move { sender.send(2).await });
        actix_rt::time::sleep(Duration::from_millis(30)).await;
        assert!(!pending.is_finished(), "blocked while full");
        let mut c = block.consumer(1).await.unwrap();
        recv(&mut c).await.ack();
        pending.await.unwrap().unwrap();
        assert_eq!(block.stats().enqueued, 3);
    });
}

/// A send is made when it is called (the future only reports it); one that
/// has to wait for room waits in its future, and a future dropped before
/// it resolves sends nothing and keeps no place.
#[test]
fn a_send_is_made_at_the_call_and_a_blocked_one_given_up_leaves_nothing() {
    run(async {
        let bus = bus();
        let q = quick(&bus, "eager").capacity(2).start().unwrap();
        drop(q.send(1));
        let second = q.send(2);
        assert_eq!((q.depth(), q.stats().enqueued), (2, 2), "both in before any poll");
        // Full (`block`): the third waits in its future; given up, it is gone.
        assert!(tokio::time::timeout(Duration::from_millis(20), q.send(3)).await.is_err());
        drop(q.send(4));
        let id = second.await.unwrap();
        let mut c = q.consumer(10).await.unwrap();
        let (a, b) = (recv(&mut c).await, recv(&mut c).await);
        assert_eq!((*a.payload(), *b.payload(), b.id()), (1, 2, id));
        nothing(&mut c, Duration::from_millis(30)).await;
        a.ack();
        b.ack();
        // Both places are free again: two sends go straight in.
        q.send(5).await.unwrap();
        q.send(6).await.unwrap();
        assert_eq!((q.depth(), q.stats().enqueued, q.stats().rejected), (2, 4, 0));
    });
}

async fn send_at(q: &QueueHandle<u32>, payload: u32, level: u8) {
    q.send_envelope(Envelope::new(payload).with_priority(Priority::new(level).unwrap())).await.unwrap();
}

#[test]
fn priority_order_by_level_fifo_within_a_level_kept_on_redelivery() {
    run(async {
        let bus = bus();
        let q = quick(&bus, "prio-order").priority(None).retry(RetryPolicy::IMMEDIATE).start().unwrap();
        for (payload, level) in [(10, 1), (90, 9), (11, 1), (50, 5), (91, 9), (0, 0), (51, 5), (92, 9)] {
            send_at(&q, payload, level).await;
        }
        let mut c = q.consumer(1).await.unwrap();
        let mut order = Vec::new();
        for i in 0..8 {
            let d = recv(&mut c).await;
            if i == 1 {
                // A redelivery keeps its level and comes back before its peers.
                assert_eq!(*d.payload(), 91);
                d.nack();
                let again = recv(&mut c).await;
                assert_eq!((*again.payload(), again.attempt(), again.envelope().priority.get()), (91, 2, 9));
                order.push(*again.payload());
                again.ack();
                continue;
            }
            order.push(*d.payload());
            d.ack();
        }
        assert_eq!(order, vec![90, 91, 92, 50, 51, 10, 11, 0]);
    });
}

#[test]
fn aging_lets_a_level_zero_message_through_a_level_nine_flood() {
    run(async {
        let bus = bus();
        let q = quick(&bus, "prio-aging").priority(Some(Duration::from_millis(10))).start().unwrap();
        send_at(&q, 0, 0).await;
        for i in 1..=50 {
            send_at(&q, 1000 + i, 9).await;
        }
        let mut c = q.consumer(1).await.unwrap();
        let started = Instant::now();
        let mut flood_before = 0;
        loop {
            let d = recv(&mut c).await;
            if *d.payload() == 0 {
                d.ack();
                break;
            }
            flood_before += 1;
            assert!(flood_before < 5_000, "the level-0 message starved");
            d.ack();
            // Keep the flood constant: one level-9 message in for each out.
            send_at(&q, 2000 + flood_before, 9).await;
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        // Nine levels of 10 ms: lifted to 9 after 90 ms, not before.
        assert!(started.elapsed() >= Duration::from_millis(85), "{:?}", started.elapsed());
        assert!(flood_before > 0);
        assert_eq!(q.depth(), 50, "the flood is still there");
    });
}

#[test]
fn priority_expiry_of_a_message_not_at_the_head_and_lowest_dropped_first() {
    run(async {
        let bus = bus();
        let q = quick(&bus, "prio-expiry").priority(None).start().unwrap();
        for i in 0..5 {
            send_at(&q, 90 + i, 9).await;
        }
        let doomed = Envelope::new(1).with_priority(Priority::MIN).with_timeout(Duration::from_millis(20));
        let doomed_id = q.send_envelope(doomed).await.unwrap();
        send_at(&q, 2, 0).await;
        wait_until("expiry", || q.stats().dead_lettered == 1).await;
        let l = bus.dlq().list(DlqFilter::default().source("queue", "prio-expiry")).await.unwrap();
        assert_eq!((l[0].message_id, l[0].reason.clone()), (Some(doomed_id), FailureReason::Expired));
        assert_eq!(q.depth(), 6);

        let full = quick(&bus, "prio-overflow").priority(None).capacity(3).overflow(OverflowPolicy::DeadLetter);
        let full = full.start().unwrap();
        send_at(&full, 50, 5).await;
        send_at(&full, 10, 1).await;
        send_at(&full, 11, 1).await;
        send_at(&full, 90, 9).await; // evicts 10, the oldest of the lowest level
        send_at(&full, 0, 0).await; // lower than all: itself dead-lettered
        wait_until("two dead letters", || full.stats().dead_lettered == 2).await;
        let dead = bus.dlq().list(DlqFilter::default().source("queue", "prio-overflow")).await.unwrap();
        let payloads: Vec<_> = dead.iter().map(|l| l.envelope["payload"].as_u64().unwrap()).collect();
        assert_eq!(payloads, vec![10, 0]);
        let mut c = full.consumer(5).await.unwrap();
        let got: Vec<u32> =
            vec![*recv(&mut c).await.payload(), *recv(&mut c).await.payload(), *recv(&mut c).await.payload()];
        assert_eq!(got, vec![90, 50, 11]);
    });
}

#[test]
fn the_bus_registers_queues_by_name_and_type() {
    run(async {
        let bus = bus();
        quick(&bus, "named").start().unwrap();
        assert!(bus.queue_handle::<u32>("named").is_some());
        assert!(bus.queue_handle::<String>("named").is_none(), "wrong type");
        assert!(quick(&bus, "named").start().is_err(), "name taken");
        assert!(bus.queue::<u32>("bad").capacity(0).start().is_err());
    });
}
