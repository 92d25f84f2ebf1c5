//! Backpressure (DESIGN §4): bounded mailboxes under `reject` and `block`.

mod common;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actorbus::{service_fn, Bus, BusError, HandlerError, OverflowPolicy, Request, RequestError};
use common::metric;
use tokio::sync::Semaphore;

struct Work(u32);
impl Request for Work {
    type Response = u32;
}

/// A service whose handler waits for a permit from `gate`, counting calls.
async fn gated(bus: &Bus, name: &str, capacity: usize, policy: OverflowPolicy) -> (Arc<Semaphore>, Arc<AtomicUsize>) {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, c) = (gate.clone(), calls.clone());
    bus.service(name, move || {
        let (g, c) = (g.clone(), c.clone());
        service_fn(move |Work(n): Work, _| {
            let (g, c) = (g.clone(), c.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                g.acquire().await.map_err(|e| HandlerError::new(e.to_string()))?.forget();
                Ok(n)
            }
        })
    })
    .mailbox(capacity, policy)
    .start()
    .await
    .unwrap();
    (gate, calls)
}

async fn until(cond: impl Fn() -> bool) {
    for _ in 0..1_000 {
        if cond() {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("condition not reached within 1 s");
}

#[actix_rt::test]
async fn reject_refuses_the_overflow_with_a_typed_error() {
    let bus = Bus::builder().build().unwrap();
    let (gate, calls) = gated(&bus, "bp-reject", 4, OverflowPolicy::Reject).await;

    // One request in the handler, then a burst of 20 against 4 free slots.
    let first = actix_rt::spawn(bus.request("bp-reject", Work(0)).into_future());
    until(|| calls.load(Ordering::SeqCst) == 1).await;
    let burst: Vec<_> = (1..=20).map(|n| actix_rt::spawn(bus.request("bp-reject", Work(n)).into_future())).collect();
    // Rejections are immediate; give the accepted ones time to sit queued.
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    gate.add_permits(100);

    let mut accepted = vec![first.await.unwrap().unwrap()];
    let mut rejected = 0;
    for task in burst {
        match task.await.unwrap() {
            Ok(n) => accepted.push(n),
            Err(RequestError::MailboxFull(name)) => {
                assert_eq!(name, "bp-reject");
                rejected += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted, vec![0, 1, 2, 3, 4], "the mailbox held exactly its capacity, in order");
    assert_eq!(rejected, 16);
    assert_eq!(calls.load(Ordering::SeqCst), 5, "every accepted request was handled, no other");
    assert_eq!(metric(&bus, "actorbus_request_reply_refused_total", r#"name="bp-reject",reason="mailbox_full""#), 16.0);
}

#[actix_rt::test]
async fn block_makes_the_sender_wait_and_loses_nothing() {
    let bus = Bus::builder().build().unwrap();
    let (gate, calls) = gated(&bus, "bp-block", 2, OverflowPolicy::Block).await;
    let handle = bus.service_handle::<Work>("bp-block").unwrap();

    let first = actix_rt::spawn(handle.request(Work(0)).into_future());
    until(|| calls.load(Ordering::SeqCst) == 1).await;
    let queued: Vec<_> = (1..=2).map(|n| actix_rt::spawn(handle.request(Work(n)).into_future())).collect();
    until(|| handle.queued() == 2).await;
    // The mailbox is full: the next sender waits instead of failing.
    let blocked = actix_rt::spawn(handle.request(Work(3)).timeout(Duration::from_secs(5)).into_future());
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    assert!(!blocked.is_finished(), "a blocked send waits for room");
    assert_eq!(handle.queued(), 2, "and does not overfill the mailbox");

    gate.add_permits(100);
    let mut answers = vec![first.await.unwrap().unwrap()];
    for t in queued {
        answers.push(t.await.unwrap().unwrap());
    }
    answers.push(blocked.await.unwrap().unwrap());
    assert_eq!(answers, vec![0, 1, 2, 3]);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[actix_rt::test]
async fn many_blocked_senders_each_get_in_as_room_is_made() {
    let bus = Bus::builder().build().unwrap();
    let (gate, calls) = gated(&bus, "bp-many", 3, OverflowPolicy::Block).await;
    let handle = bus.service_handle::<Work>("bp-many").unwrap();
    let first = actix_rt::spawn(handle.request(Work(0)).into_future());
    until(|| calls.load(Ordering::SeqCst) == 1).await;
    // 3 fill the mailbox, 17 more wait for room.
    let rest: Vec<_> = (1..=20)
        .map(|n| actix_rt::spawn(handle.request(Work(n)).timeout(Duration::from_secs(10)).into_future()))
        .collect();
    until(|| handle.queued() == 3).await;
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(handle.queued(), 3, "waiting senders do not overfill the mailbox");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // One permit at a time: each request taken makes room for one waiter.
    for handled in 1..=20 {
        gate.add_permits(1);
        until(|| calls.load(Ordering::SeqCst) == handled + 1).await;
        assert!(handle.queued() <= 3, "never more than the capacity queued");
    }
    gate.add_permits(1);
    let mut answers = vec![first.await.unwrap().unwrap()];
    for t in rest {
        answers.push(t.await.unwrap().unwrap());
    }
    answers.sort_unstable();
    assert_eq!(answers, (0..=20).collect::<Vec<_>>(), "every blocked request got in and was answered once");
    assert_eq!(calls.load(Ordering::SeqCst), 21);
    assert_eq!(handle.queued(), 0);
}

#[actix_rt::test]
async fn shutdown_with_a_full_mailbox_answers_every_request() {
    let bus = Bus::builder().build().unwrap();
    let (gate, calls) = gated(&bus, "bp-shutdown", 4, OverflowPolicy::Reject).await;
    let first = actix_rt::spawn(bus.request("bp-shutdown", Work(0)).into_future());
    until(|| calls.load(Ordering::SeqCst) == 1).await;
    let queued: Vec<_> = (1..=4).map(|n| actix_rt::spawn(bus.request("bp-shutdown", Work(n)).into_future())).collect();
    let handle = bus.service_handle::<Work>("bp-shutdown").unwrap();
    until(|| handle.queued() == 4).await;
    assert!(matches!(bus.request("bp-shutdown", Work(5)).await, Err(RequestError::MailboxFull(_))));

    // The shutdown command gets into the full mailbox; let the handler go so
    // that the actor can take it.
    let stopping = bus.clone();
    let shutdown = actix_rt::spawn(async move { stopping.shutdown(Duration::from_secs(5)).await });
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    gate.add_permits(100);
    shutdown.await.unwrap();

    assert_eq!(first.await.unwrap(), Ok(0));
    let (mut answered, mut refused) = (0, 0);
    for t in queued {
        match t.await.unwrap() {
            Ok(_) => answered += 1,
            Err(RequestError::Unavailable { .. } | RequestError::ShuttingDown) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(answered + refused, 4, "no queued request was left without an answer");
    assert_eq!(calls.load(Ordering::SeqCst), 1 + answered, "the refused ones never ran");
}

#[actix_rt::test]
async fn a_blocked_sender_times_out_with_a_typed_error() {
    let bus = Bus::builder().build().unwrap();
    let (gate, calls) = gated(&bus, "bp-block-timeout", 1, OverflowPolicy::Block).await;
    let first = actix_rt::spawn(bus.request("bp-block-timeout", Work(0)).into_future());
    until(|| calls.load(Ordering::SeqCst) == 1).await;
    let second = actix_rt::spawn(bus.request("bp-block-timeout", Work(1)).into_future());
    actix_rt::time::sleep(Duration::from_millis(10)).await;
    let third = bus.request("bp-block-timeout", Work(2)).timeout(Duration::from_millis(40)).await;
    assert_eq!(third, Err(RequestError::Timeout(Duration::from_millis(40))));
    gate.add_permits(10);
    assert_eq!(first.await.unwrap(), Ok(0));
    assert_eq!(second.await.unwrap(), Ok(1));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the timed-out send never entered the mailbox");
}

#[actix_rt::test]
async fn request_mailboxes_refuse_evicting_policies() {
    let bus = Bus::builder().build().unwrap();
    for policy in [OverflowPolicy::DropOldest, OverflowPolicy::DropNewest, OverflowPolicy::DeadLetter] {
        let out = bus
            .service("bp-bad", || service_fn(|Work(n): Work, _| async move { Ok(n) }))
            .mailbox(8, policy)
            .start()
            .await;
        assert!(matches!(out, Err(BusError::Invalid(_))), "{policy}: {:?}", out.err());
    }
    let zero = bus
        .service("bp-zero", || service_fn(|Work(n): Work, _| async move { Ok(n) }))
        .mailbox(0, OverflowPolicy::Reject)
        .start()
        .await;
    assert!(matches!(zero, Err(BusError::Invalid(_))));
}
