//! Request-reply (DESIGN §6.1): typed asks, timeouts, deadlines, typed errors.

mod common;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actorbus::{
    service_fn, Bus, FailureReason, HandlerError, MessageId, Request, RequestContext, RequestError, Service, Timestamp,
};
use common::metric;

struct Echo(String);
impl Request for Echo {
    type Response = String;
}

struct Sleep(u64);
impl Request for Sleep {
    type Response = u64;
}

fn bus() -> Bus {
    Bus::builder().build().expect("inside an actix system")
}

#[actix_rt::test]
async fn replies_and_typed_errors() {
    let bus = bus();
    bus.service("rr-echo", || {
        service_fn(|Echo(s): Echo, _cx| async move {
            if s.is_empty() {
                Err(HandlerError::new("empty input"))
            } else {
                Ok(s.to_uppercase())
            }
        })
    })
    .start()
    .await
    .unwrap();

    assert_eq!(bus.request("rr-echo", Echo("hi".into())).await, Ok("HI".to_owned()));
    assert_eq!(
        bus.request("rr-echo", Echo(String::new())).await,
        Err(RequestError::Failed(FailureReason::Failed("empty input".into())))
    );
    assert_eq!(bus.request("nobody", Echo("x".into())).await, Err(RequestError::UnknownService("nobody".into())));
    assert_eq!(bus.request("rr-echo", Sleep(1)).await, Err(RequestError::WrongRequestType("rr-echo".into())));
    assert!(bus.service("rr-echo", || service_fn(|e: Echo, _| async move { Ok(e.0) })).start().await.is_err());
    assert_eq!(metric(&bus, "actorbus_request_reply_handled_total", r#"name="rr-echo",outcome="ok""#), 1.0);
    assert_eq!(metric(&bus, "actorbus_request_reply_handled_total", r#"name="rr-echo",outcome="error""#), 1.0);
}

#[actix_rt::test]
async fn timeout_then_late_reply_is_dropped_and_counted() {
    let bus = bus();
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    bus.service("rr-slow", move || {
        let f = f.clone();
        service_fn(move |Sleep(ms): Sleep, _cx| {
            let f = f.clone();
            async move {
                actix_rt::time::sleep(Duration::from_millis(ms)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok(ms)
            }
        })
    })
    .start()
    .await
    .unwrap();

    let started = std::time::Instant::now();
    let out = bus.request("rr-slow", Sleep(300)).timeout(Duration::from_millis(50)).await;
    assert_eq!(out, Err(RequestError::Timeout(Duration::from_millis(50))));
    assert!(started.elapsed() < Duration::from_millis(250), "timed out on time, not when the handler finished");
    // The handler still finishes; its reply has nobody to go to.
    for _ in 0..100 {
        if finished.load(Ordering::SeqCst) == 1 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    assert_eq!(metric(&bus, "actorbus_request_reply_late_replies_total", r#"name="rr-slow""#), 1.0);
    assert_eq!(metric(&bus, "actorbus_request_reply_refused_total", r#"name="rr-slow",reason="timeout""#), 1.0);
    // The service is healthy afterwards.
    assert_eq!(bus.request("rr-slow", Sleep(1)).await, Ok(1));
}

#[actix_rt::test]
async fn past_deadline_never_reaches_the_handler() {
    let bus = bus();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    bus.service("rr-deadline", move || {
        let (c, g) = (c.clone(), g.clone());
        service_fn(move |Sleep(n): Sleep, _cx| {
            let (c, g) = (c.clone(), g.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    // Hold the service busy until the test opens the gate.
                    let _permit = g.acquire().await.map_err(|e| HandlerError::new(e.to_string()))?;
                }
                Ok(n)
            }
        })
    })
    .start()
    .await
    .unwrap();

    // Already past: refused at send, the handler never runs.
    let past = Timestamp::now();
    assert_eq!(bus.request("rr-deadline", Sleep(1)).deadline(past).await, Err(RequestError::Expired));
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // Expires while queued behind a busy handler: never started either.
    let busy = actix_rt::spawn(bus.request("rr-deadline", Sleep(0)).timeout(Duration::from_secs(5)).into_future());
    while calls.load(Ordering::SeqCst) == 0 {
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
    let queued = bus.request("rr-deadline", Sleep(2)).timeout(Duration::from_millis(30)).await;
    assert_eq!(queued, Err(RequestError::Timeout(Duration::from_millis(30))));
    gate.add_permits(1);
    assert_eq!(busy.await.unwrap(), Ok(0));
    assert_eq!(bus.request("rr-deadline", Sleep(3)).await, Ok(3));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the expired request was skipped");
    assert_eq!(metric(&bus, "actorbus_request_reply_refused_total", r#"name="rr-deadline",reason="expired""#), 1.0);
}

struct Front;
impl Request for Front {
    type Response = (MessageId, MessageId, Option<Timestamp>, Option<Timestamp>);
}

struct Back;
impl Request for Back {
    type Response = (MessageId, Option<MessageId>, Option<Timestamp>);
}

struct FrontService {
    bus: Bus,
}

impl Service for FrontService {
    type Request = Front;
    async fn call(&mut self, _: Front, cx: RequestContext) -> Result<<Front as Request>::Response, HandlerError> {
        let (corr, cause, back_left) = self.bus.request("rr-back", Back).timeout(Duration::from_secs(60)).await?;
        assert_eq!(cause, Some(cx.id()), "causation id is the request being handled");
        Ok((corr, cx.correlation_id(), cx.envelope().deadline, back_left))
    }
}

#[actix_rt::test]
async fn correlation_and_deadline_propagate_to_nested_requests() {
    let bus = bus();
    bus.service("rr-back", || {
        service_fn(|_: Back, cx: RequestContext| async move {
            Ok((cx.correlation_id(), cx.envelope().causation_id, cx.envelope().deadline))
        })
    })
    .start()
    .await
    .unwrap();
    let b = bus.clone();
    bus.service("rr-front", move || FrontService { bus: b.clone() }).start().await.unwrap();

    let req = bus.request("rr-front", Front).timeout(Duration::from_millis(800));
    let correlation = req.envelope().correlation_id;
    let created = req.envelope().created_at;
    let (back_corr, front_corr, front_deadline, back_deadline) = req.await.unwrap();
    assert_eq!(front_corr, correlation);
    assert_eq!(back_corr, correlation, "the nested request joined the conversation");
    assert_eq!(front_deadline, Some(created.after(Duration::from_millis(800))));
    assert_eq!(back_deadline, front_deadline, "the nested request asked for 60 s but inherits the 800 ms deadline");
}

#[actix_rt::test]
async fn services_on_worker_arbiters_answer() {
    let bus = Bus::builder().worker_arbiters(2).build().unwrap();
    for i in 0..2 {
        bus.service(&format!("rr-worker-{i}"), || {
            service_fn(|Echo(s): Echo, _| async move { Ok(format!("{s}@{:?}", std::thread::current().id())) })
        })
        .on_worker(i)
        .start()
        .await
        .unwrap();
    }
    let here = format!("{:?}", std::thread::current().id());
    let a = bus.request("rr-worker-0", Echo("a".into())).await.unwrap();
    let b = bus.request("rr-worker-1", Echo("b".into())).await.unwrap();
    assert!(!a.ends_with(&here) && !b.ends_with(&here), "ran off the caller's thread");
    assert_ne!(a.split('@').nth(1), b.split('@').nth(1), "two workers, two threads");
    let report = bus.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.services, 2);
    assert!(report.abandoned.is_empty());
    assert_eq!(bus.request("rr-worker-0", Echo("late".into())).await, Err(RequestError::ShuttingDown));
}

#[actix_rt::test]
async fn every_sixteenth_request_is_timed_and_recorded_in_batches() {
    let bus = bus();
    bus.service("rr-timed", || service_fn(|Echo(s): Echo, _| async move { Ok(s) })).start().await.unwrap();
    let count = || metric(&bus, "actorbus_request_reply_handler_latency_seconds_count", r#"name="rr-timed""#);
    for i in 0..16 * 100 {
        bus.request("rr-timed", Echo(i.to_string())).await.unwrap();
    }
    // 100 samples: 64 recorded when the batch filled, the rest within a second.
    assert!(count() >= 64.0, "a full batch is recorded at once, got {}", count());
    actix_rt::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(count(), 100.0);
    assert_eq!(metric(&bus, "actorbus_request_reply_handled_total", r#"name="rr-timed",outcome="ok""#), 1600.0);
}

/// Counts its calls; panics, after waiting, on the calls whose count is a
/// multiple of 3.
struct Flaky {
    calls: u64,
}

impl Service for Flaky {
    type Request = Sleep;
    async fn call(&mut self, Sleep(ms): Sleep, _cx: RequestContext) -> Result<u64, HandlerError> {
        self.calls += 1;
        actix_rt::time::sleep(Duration::from_millis(ms)).await;
        if self.calls % 3 == 0 {
            panic!("call {} went wrong", self.calls);
        }
        Ok(self.calls)
    }
}

/// A handler that waits before it answers or panics is resumed by the
/// actor, not answered at once: the same outcomes, the state rebuilt after
/// each panic. Run with and without a tracing subscriber, which puts each
/// handler in a span.
#[test]
fn handlers_that_wait_then_answer_or_panic() {
    // Metrics are process-wide: each run has a service of its own.
    let run = |name: &'static str| {
        actix_rt::System::new().block_on(async {
            let bus = bus();
            bus.service(name, || Flaky { calls: 0 }).start().await.unwrap();
            let mut answers = Vec::new();
            for _ in 0..9 {
                answers.push(bus.request(name, Sleep(2)).await);
            }
            let panic = |n: u64| Err(RequestError::Failed(FailureReason::Panic(format!("call {n} went wrong"))));
            // Every third call panics, and the rebuilt state counts from 0.
            let expected: Vec<_> = (0..3).flat_map(|_| [Ok(1), Ok(2), panic(3)]).collect();
            assert_eq!(answers, expected);
            let handled = |outcome: &str| {
                metric(&bus, "actorbus_request_reply_handled_total", &format!(r#"name="{name}",outcome="{outcome}""#))
            };
            assert_eq!((handled("ok"), handled("panic")), (6.0, 3.0));
        })
    };
    run("rr-flaky");
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_test_writer().finish();
    tracing::subscriber::with_default(subscriber, || run("rr-flaky-traced"));
}

/// A closure handler that panics before it returns its future (in the
/// synchronous part of a `service_fn`) is inside the panic boundary too, and
/// sees its request's context there.
#[actix_rt::test]
async fn a_panic_before_the_handler_future_exists_is_caught() {
    let bus = bus();
    let built = Arc::new(AtomicUsize::new(0));
    let b = built.clone();
    bus.service("rr-eager", move || {
        b.fetch_add(1, Ordering::SeqCst);
        service_fn(|Sleep(n): Sleep, _cx| {
            let seen = actorbus::actors::request_reply::current_context().map(|c| c.correlation_id);
            if n == 0 {
                panic!("no future for 0");
            }
            async move { Ok(u64::from(seen.is_some())) }
        })
    })
    .start()
    .await
    .unwrap();
    assert_eq!(bus.request("rr-eager", Sleep(1)).await, Ok(1), "the context is set while the closure runs");
    assert_eq!(
        bus.request("rr-eager", Sleep(0)).await,
        Err(RequestError::Failed(FailureReason::Panic("no future for 0".into())))
    );
    assert_eq!(bus.request("rr-eager", Sleep(2)).await, Ok(1), "the service survived");
    assert_eq!(built.load(Ordering::SeqCst), 2, "and its state was rebuilt");
}
