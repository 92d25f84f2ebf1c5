//! Supervision (DESIGN §3): panics become typed errors, state is rebuilt from
//! its factory, intensity escalates to the parent, strategies restart siblings.

mod common;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actorbus::{
    service_fn, Backoff, Bus, Exit, FailureReason, HandlerError, Request, RequestContext, RequestError, Restart,
    Service, Strategy, SupervisionEvent,
};
use common::{metric, wait_event};
use futures::future::join_all;

/// `Job(n, panic)`: answers `n`, or panics when `panic` is set.
struct Job(u64, bool);
impl Request for Job {
    type Response = u64;
}

/// A service that counts the requests its current state has seen, and how
/// many times its factory ran.
struct Counter {
    seen: u64,
}

impl Service for Counter {
    type Request = Job;
    async fn call(&mut self, Job(n, panic): Job, _: RequestContext) -> Result<u64, HandlerError> {
        if panic {
            panic!("job {n} blew up");
        }
        self.seen += 1;
        Ok(self.seen)
    }
}

fn counting_factory() -> (Arc<AtomicUsize>, impl Fn() -> Counter + Send + Sync + 'static) {
    let built = Arc::new(AtomicUsize::new(0));
    let b = built.clone();
    (built, move || {
        b.fetch_add(1, Ordering::SeqCst);
        Counter { seen: 0 }
    })
}

#[actix_rt::test]
async fn every_third_of_300_panics_the_rest_are_answered() {
    let bus = Bus::builder().build().unwrap();
    let sup = bus
        .supervisor("sv-flaky")
        .intensity(1_000, Duration::from_secs(10))
        .backoff(Backoff::NONE)
        .start()
        .await
        .unwrap();
    let built = Arc::new(AtomicUsize::new(0));
    let b = built.clone();
    sup.service("sv-flaky-svc", move || {
        b.fetch_add(1, Ordering::SeqCst);
        service_fn(|Job(n, _): Job, _| async move {
            if n % 3 == 2 {
                panic!("message {n} is every third");
            }
            Ok(n)
        })
    })
    .start()
    .await
    .unwrap();

    let replies = join_all(
        (0..300u64).map(|n| bus.request("sv-flaky-svc", Job(n, false)).timeout(Duration::from_secs(10)).into_future()),
    )
    .await;
    let mut answered = 0;
    let mut panicked = 0;
    for (n, reply) in replies.into_iter().enumerate() {
        match reply {
            Ok(v) => {
                assert_eq!(v, n as u64);
                answered += 1;
            }
            Err(RequestError::Failed(FailureReason::Panic(msg))) => {
                assert_eq!(msg, format!("message {n} is every third"));
                panicked += 1;
            }
            Err(other) => panic!("request {n}: unexpected {other:?}"),
        }
    }
    assert_eq!((answered, panicked), (200, 100));
    assert_eq!(built.load(Ordering::SeqCst), 101, "the state was rebuilt after each panic");
    let labels = r#"kind="service",name="sv-flaky-svc""#;
    assert_eq!(metric(&bus, "actorbus_supervision_restarts_total", labels), 100.0);
    assert_eq!(metric(&bus, "actorbus_supervision_panics_total", labels), 100.0);
}

#[actix_rt::test]
async fn intensity_exceeded_escalates_and_stops_restarting() {
    let bus = Bus::builder().build().unwrap();
    let mut events = bus.supervision_events();
    // Temporary: when it gives up, the root does not restart it.
    let sup = bus
        .supervisor("sv-fragile")
        .intensity(2, Duration::from_secs(60))
        .backoff(Backoff::NONE)
        .restart(Restart::Temporary)
        .start()
        .await
        .unwrap();
    let (built, factory) = counting_factory();
    let handle = sup.service("sv-fragile-svc", factory).start().await.unwrap();

    for round in 0..2 {
        let out = handle.request(Job(round, true)).await;
        assert!(matches!(out, Err(RequestError::Failed(FailureReason::Panic(_)))), "{out:?}");
        wait_event(
            &mut events,
            |e| matches!(e, SupervisionEvent::Restarting { path, .. } if path == "root/sv-fragile/sv-fragile-svc"),
        )
        .await;
    }
    assert!(handle.request(Job(9, true)).await.is_err());
    let escalated = wait_event(&mut events, |e| matches!(e, SupervisionEvent::Escalated { .. })).await;
    assert_eq!(
        escalated,
        SupervisionEvent::Escalated {
            supervisor: "root/sv-fragile".into(),
            cause: Exit::Panic("job 9 blew up".into())
        }
    );
    // The parent (root) sees its child supervisor exit with the escalation…
    let seen_by_parent =
        wait_event(&mut events, |e| matches!(e, SupervisionEvent::Exited { path, .. } if path == "root/sv-fragile"))
            .await;
    assert!(matches!(seen_by_parent, SupervisionEvent::Exited { exit: Exit::Escalated { .. }, .. }));
    // …and, the child being temporary, leaves it stopped.
    wait_event(&mut events, |e| matches!(e, SupervisionEvent::Stopped { path } if path == "root/sv-fragile")).await;

    // No more restarts: the service refuses work with a typed error, and its
    // factory ran exactly 1 + 2 times.
    for _ in 0..5 {
        let out = handle.request(Job(1, false)).await;
        assert!(matches!(out, Err(RequestError::Unavailable { .. })), "{out:?}");
    }
    assert_eq!(built.load(Ordering::SeqCst), 3);
    assert_eq!(metric(&bus, "actorbus_supervision_escalations_total", r#"name="root/sv-fragile""#), 1.0);
}

#[actix_rt::test]
async fn a_permanent_parent_restarts_the_escalated_subtree() {
    let bus = Bus::builder().build().unwrap();
    let mut events = bus.supervision_events();
    let parent = bus
        .supervisor("sv-parent")
        .intensity(1, Duration::from_secs(60))
        .backoff(Backoff::NONE)
        .restart(Restart::Temporary)
        .start()
        .await
        .unwrap();
    let child = parent
        .supervisor("sv-child")
        .intensity(0, Duration::from_secs(60))
        .backoff(Backoff::NONE)
        .start()
        .await
        .unwrap();
    let (built, factory) = counting_factory();
    let handle = child.service("sv-nested", factory).start().await.unwrap();
    assert_eq!(handle.request(Job(0, false)).await, Ok(1));

    // Intensity 0: the first panic escalates; the parent restarts the subtree.
    assert!(handle.request(Job(0, true)).await.is_err());
    wait_event(
        &mut events,
        |e| matches!(e, SupervisionEvent::Escalated { supervisor, .. } if supervisor == "root/sv-parent/sv-child"),
    )
    .await;
    wait_event(
        &mut events,
        |e| matches!(e, SupervisionEvent::Restarting { path, .. } if path == "root/sv-parent/sv-child"),
    )
    .await;
    let mut restarted = false;
    for _ in 0..200 {
        if let Ok(n) = handle.request(Job(0, false)).await {
            assert_eq!(n, 1, "fresh state after the subtree restart");
            restarted = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(restarted, "the handle taken before the restart works after it");
    assert_eq!(built.load(Ordering::SeqCst), 2);

    // The second escalation exceeds the parent's budget too: it gives up.
    assert!(handle.request(Job(0, true)).await.is_err());
    wait_event(
        &mut events,
        |e| matches!(e, SupervisionEvent::Escalated { supervisor, .. } if supervisor == "root/sv-parent"),
    )
    .await;
    wait_event(&mut events, |e| matches!(e, SupervisionEvent::Stopped { path } if path == "root/sv-parent")).await;
    assert!(matches!(handle.request(Job(0, false)).await, Err(RequestError::Unavailable { .. })));
    assert_eq!(built.load(Ordering::SeqCst), 2);
}

async fn strategy_restarts(strategy: Strategy, prefix: &str) -> Vec<usize> {
    let bus = Bus::builder().build().unwrap();
    let mut events = bus.supervision_events();
    let sup = bus.supervisor(prefix).strategy(strategy).backoff(Backoff::NONE).start().await.unwrap();
    let mut builds = Vec::new();
    let mut handles = Vec::new();
    for i in 0..3 {
        let (built, factory) = counting_factory();
        handles.push(sup.service(&format!("{prefix}-{i}"), factory).start().await.unwrap());
        builds.push(built);
    }
    for h in &handles {
        assert_eq!(h.request(Job(0, false)).await, Ok(1));
    }
    // The middle child fails.
    assert!(handles[1].request(Job(0, true)).await.is_err());
    let failed = format!("root/{prefix}/{prefix}-1");
    wait_event(&mut events, |e| matches!(e, SupervisionEvent::Restarting { path, .. } if *path == failed)).await;
    // Every handle still works; a rebuilt state counts from 1 again.
    let mut counts = Vec::new();
    for h in &handles {
        let mut reply = h.request(Job(0, false)).await;
        for _ in 0..100 {
            if reply.is_ok() {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
            reply = h.request(Job(0, false)).await;
        }
        counts.push(reply.unwrap());
    }
    let built: Vec<usize> = builds.iter().map(|b| b.load(Ordering::SeqCst)).collect();
    // A restarted child saw 1 request since its rebuild; a spared one saw 2.
    for (i, (&b, &c)) in built.iter().zip(&counts).enumerate() {
        assert_eq!(c, if b == 2 { 1 } else { 2 }, "child {i}: builds {b}, count {c}");
    }
    built
}

#[actix_rt::test]
async fn one_for_one_restarts_only_the_failed_child() {
    assert_eq!(strategy_restarts(Strategy::OneForOne, "sv-ofo").await, vec![1, 2, 1]);
}

#[actix_rt::test]
async fn one_for_all_restarts_the_siblings() {
    assert_eq!(strategy_restarts(Strategy::OneForAll, "sv-ofa").await, vec![2, 2, 2]);
}

#[actix_rt::test]
async fn rest_for_one_restarts_the_later_children() {
    assert_eq!(strategy_restarts(Strategy::RestForOne, "sv-rfo").await, vec![1, 2, 2]);
}

#[actix_rt::test]
async fn a_factory_that_panics_is_supervised_too() {
    let bus = Bus::builder().build().unwrap();
    let mut events = bus.supervision_events();
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let sup = bus
        .supervisor("sv-badfactory")
        .intensity(3, Duration::from_secs(60))
        .backoff(Backoff::NONE)
        .restart(Restart::Temporary)
        .start()
        .await
        .unwrap();
    let handle = sup
        .service("sv-badfactory-svc", move || -> Counter {
            a.fetch_add(1, Ordering::SeqCst);
            panic!("cannot connect");
        })
        .start()
        .await
        .unwrap();
    wait_event(&mut events, |e| matches!(e, SupervisionEvent::Escalated { .. })).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 4, "first build + 3 restarts, then escalation");
    assert!(matches!(handle.request(Job(1, false)).await, Err(RequestError::Unavailable { .. })));
}
