//! `actorbus demo`: every pattern end to end, with live progress and a closing
//! summary per pattern. Each section checks what it shows: a count that does
//! not add up marks the pattern failed and the command exits non-zero.

use std::future::IntoFuture;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actorbus::{
    service_fn, Backoff, Bus, FailureReason, HandlerError, MessageId, OverflowPolicy, Request, RequestError, Restart,
    Strategy, SupervisionEvent,
};
use futures::future::join_all;
use tokio::sync::broadcast::error::TryRecvError;

mod messaging;

/// One line of the closing summary.
struct Outcome {
    pattern: &'static str,
    ok: bool,
    detail: String,
}

pub fn run(data_dir: &Path, messages: u32) -> Result<bool, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(data_dir)?;
    // Panics are part of the show: print one line each instead of the default
    // report (the handler's caller gets the typed error anyway).
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or(info.payload().downcast_ref::<String>().map(String::as_str));
        progress_note(&format!("handler panicked: {}", msg.unwrap_or("?")));
    }));
    println!("actorbus demo: every pattern end to end (data in {})\n", data_dir.display());
    let outcomes = actix::System::new().block_on(async move {
        let bus = Bus::builder().worker_arbiters(1).data_dir(data_dir).build()?;
        let outcomes = vec![
            request_reply(&bus, messages).await?,
            supervision(&bus, messages.min(3_000)).await?,
            async_jobs(&bus, (messages / 10).clamp(10, 1_000)).await?,
            event_sourcing(&bus, messages.clamp(64, 20_000)).await?,
            sagas(&bus, messages.clamp(20, 2_000)).await?,
            messaging::queues(&bus, messages.clamp(100, 100_000)).await?,
            messaging::dead_letters(&bus).await?,
            messaging::pub_sub(&bus, messages.clamp(10, 100_000)).await?,
            messaging::fan_out(&bus).await?,
            messaging::claim_check(&bus).await?,
        ];
        bus.shutdown(Duration::from_secs(2)).await;
        Ok::<_, Box<dyn std::error::Error>>(outcomes)
    })?;
    println!("\nsummary");
    for o in &outcomes {
        println!("  {} {:<14} {}", if o.ok { "ok  " } else { "FAIL" }, o.pattern, o.detail);
    }
    Ok(outcomes.iter().all(|o| o.ok))
}

fn progress(label: &str, done: u32, total: u32) {
    if std::io::stdout().is_terminal() {
        print!("\r  {label}: {done}/{total}");
        let _ = std::io::stdout().flush();
        if done == total {
            println!();
        }
    } else if done == total {
        println!("  {label}: {done}/{total}");
    }
}

fn progress_note(line: &str) {
    if !std::io::stdout().is_terminal() {
        return;
    }
    print!("\r\x1b[2K  · {line}");
    let _ = std::io::stdout().flush();
}

struct Quote(u32);
impl Request for Quote {
    type Response = u32;
}

async fn request_reply(bus: &Bus, n: u32) -> Result<Outcome, Box<dyn std::error::Error>> {
    println!("request-reply: `pricing` answers quotes on a worker arbiter");
    let pricing = bus
        .service("pricing", || {
            service_fn(|Quote(sku): Quote, _| async move {
                match sku {
                    u32::MAX => Err(HandlerError::new("no such product")),
                    0 => {
                        actix_rt::time::sleep(Duration::from_millis(200)).await;
                        Ok(0)
                    }
                    sku => Ok(sku * 3),
                }
            })
        })
        .on_worker(0)
        .start()
        .await?;
    let started = Instant::now();
    let mut answered = 0;
    let batch = 500;
    let mut sent = 0;
    while sent < n {
        let size = batch.min(n - sent);
        let replies = join_all((sent + 1..=sent + size).map(|i| pricing.request(Quote(i)).into_future())).await;
        answered += replies.iter().enumerate().filter(|(k, r)| **r == Ok((sent + 1 + *k as u32) * 3)).count() as u32;
        sent += size;
        progress("quotes answered", answered, n);
    }
    let took = started.elapsed();
    println!("  {n} requests in {took:.2?} ({:.0} req/s)", f64::from(n) / took.as_secs_f64());
    let failed = pricing.request(Quote(u32::MAX)).await;
    println!("  handler error  -> {}", show(&failed));
    let timeout = pricing.request(Quote(0)).timeout(Duration::from_millis(50)).await;
    println!("  50 ms timeout  -> {}", show(&timeout));
    let unknown = bus.request("shipping", Quote(1)).await;
    println!("  unknown name   -> {}", show(&unknown));
    let ok = answered == n
        && matches!(failed, Err(RequestError::Failed(FailureReason::Failed(_))))
        && timeout == Err(RequestError::Timeout(Duration::from_millis(50)))
        && unknown == Err(RequestError::UnknownService("shipping".into()));
    Ok(Outcome {
        pattern: "request-reply",
        ok,
        detail: format!("{answered}/{n} answered in {took:.2?}; handler error, timeout and unknown service typed"),
    })
}

fn show<T: std::fmt::Debug>(r: &Result<T, RequestError>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("error: {e}"),
    }
}

struct Work(u32);
impl Request for Work {
    type Response = u32;
}

async fn supervision(bus: &Bus, n: u32) -> Result<Outcome, Box<dyn std::error::Error>> {
    println!("\nsupervision: every 3rd request panics; the service is rebuilt each time");
    let sup = bus
        .supervisor("demo-workers")
        .strategy(Strategy::OneForOne)
        .intensity(n, Duration::from_secs(60))
        .backoff(Backoff::NONE)
        .start()
        .await?;
    let builds = Arc::new(AtomicU32::new(0));
    let b = builds.clone();
    let flaky = sup
        .service("flaky", move || {
            b.fetch_add(1, Ordering::Relaxed);
            service_fn(|Work(i): Work, _| async move {
                if i % 3 == 2 {
                    panic!("request {i} is a third one");
                }
                Ok(i)
            })
        })
        // Senders wait for room rather than being refused, so every request
        // is handled: the mailbox holds 256, the rest wait their turn.
        .mailbox(256, OverflowPolicy::Block)
        .start()
        .await?;
    let replies = join_all((0..n).map(|i| flaky.request(Work(i)).timeout(Duration::from_secs(30)).into_future())).await;
    let answered = replies.iter().filter(|r| r.is_ok()).count() as u32;
    let panicked =
        replies.iter().filter(|r| matches!(r, Err(RequestError::Failed(FailureReason::Panic(_))))).count() as u32;
    let rejected = replies.iter().filter(|r| matches!(r, Err(RequestError::MailboxFull(_)))).count() as u32;
    progress("requests settled", answered + panicked + rejected, n);
    let restarts = builds.load(Ordering::Relaxed) - 1;
    println!("  {answered} answered + {panicked} panics reported to their callers + {rejected} refused = {n} sent; {restarts} restarts");

    println!("  a supervisor allowing 2 restarts in 10 s meets a service that always panics:");
    let mut events = bus.supervision_events();
    let fragile = bus
        .supervisor("demo-fragile")
        .intensity(2, Duration::from_secs(10))
        .backoff(Backoff::NONE)
        .restart(Restart::Temporary)
        .start()
        .await?;
    let doomed = fragile
        .service("doomed", || {
            service_fn(|Work(i): Work, _| async move {
                if i < u32::MAX {
                    panic!("always")
                } else {
                    Ok(i)
                }
            })
        })
        .start()
        .await?;
    let mut escalated = false;
    for i in 0..3 {
        let _ = doomed.request(Work(i)).await;
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        match events.try_recv() {
            Ok(SupervisionEvent::Escalated { supervisor, cause }) => {
                println!("  escalated: {supervisor} gave up after {cause}");
                escalated = supervisor == "root/demo-fragile";
            }
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    let after = doomed.request(Work(0)).await;
    println!("  afterwards     -> {}", show(&after));
    let expected_panics = (0..n).filter(|i| i % 3 == 2).count() as u32;
    let ok = panicked == expected_panics
        && rejected == 0
        && answered == n - expected_panics
        && restarts == expected_panics
        && escalated
        && matches!(after, Err(RequestError::Unavailable { .. }));
    Ok(Outcome {
        pattern: "supervision",
        ok,
        detail: format!(
            "{n} sent = {answered} answered + {panicked} panics + {rejected} refused; {restarts} restarts; escalation after 3 panics"
        ),
    })
}

async fn async_jobs(bus: &Bus, n: u32) -> Result<Outcome, Box<dyn std::error::Error>> {
    use actorbus::actors::jobs::{BuiltinWorker, JobStatus};
    use serde_json::json;

    println!("\nasync request-reply: {n} `echo` jobs and a cancelled `sleep` job, polled to the end");
    let jobs = bus.jobs();
    jobs.builtin("echo", BuiltinWorker::Echo).workers(4).start().await?;
    jobs.builtin("sleep", BuiltinWorker::Sleep).start().await?;
    let mut ids = Vec::with_capacity(n as usize);
    for i in 0..n {
        ids.push(jobs.submit("echo", json!({"i": i, "delay_ms": 1}), None).await?.job.id);
    }
    let long = jobs.submit("sleep", json!({"ms": 1_000}), None).await?.job.id;
    actix_rt::time::sleep(Duration::from_millis(250)).await;
    let progress = jobs.get(long).await?.progress;
    let cancelled = jobs.cancel(long).await?.status == JobStatus::Cancelled;
    let mut succeeded = 0;
    for (i, id) in ids.iter().enumerate() {
        loop {
            let view = jobs.get(*id).await?;
            if view.status.is_final() {
                if view.status == JobStatus::Succeeded && view.result == Some(json!({"i": i, "delay_ms": 1})) {
                    succeeded += 1;
                }
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
        progress_report(succeeded, n);
    }
    println!(
        "  the sleep job was at {progress}% when cancelled: {}",
        if cancelled { "cancelled" } else { "NOT cancelled" }
    );
    Ok(Outcome {
        pattern: "async jobs",
        ok: succeeded == n && cancelled && progress > 0,
        detail: format!("{succeeded}/{n} jobs succeeded with their own result; a running job cancelled at {progress}%"),
    })
}

fn progress_report(done: u32, total: u32) {
    progress("jobs finished", done, total);
}

async fn event_sourcing(bus: &Bus, n: u32) -> Result<Outcome, Box<dyn std::error::Error>> {
    use actorbus::actors::store::{AppendError, ExpectedVersion, NewEvent};
    use serde_json::json;

    let store = bus.event_store();
    let where_ = bus.data_dir().map_or("memory".to_owned(), |d| d.join("events.sqlite3").display().to_string());
    println!("\nevent sourcing: {n} deposits over 64 accounts by 64 concurrent writers, durable in {where_}");
    // Streams of earlier demo runs stay in the store; this run's get their own names.
    // The tail of a v7 id is its per-thread random part (the head is time).
    let id = MessageId::new().to_string();
    let run = id[id.len() - 8..].to_owned();
    let start = store.end_position().await?;
    let mut subscription = store.subscribe_all(start);
    let started = Instant::now();
    let per_writer = n / 64;
    let writers = (0..64u32).map(|w| {
        let store = store.clone();
        let stream = format!("demo-{run}-account-{w}");
        async move {
            let mut acked = 0u32;
            for i in 0..per_writer {
                let event = NewEvent::new("Deposited", json!({"amount": i + 1}));
                let expected =
                    if i == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(u64::from(i) - 1) };
                if store.append(stream.as_str(), expected, vec![event]).await.is_ok() {
                    acked += 1;
                }
            }
            acked
        }
    });
    let acked: u32 = join_all(writers).await.into_iter().sum();
    let took = started.elapsed();
    progress("deposits acknowledged", acked, per_writer * 64);
    println!(
        "  {acked} durable appends in {took:.2?} ({:.0}/s, group commit shares each fsync)",
        f64::from(acked) / took.as_secs_f64()
    );

    let stream = format!("demo-{run}-account-0");
    let stale =
        store.append(stream.as_str(), ExpectedVersion::Exact(0), vec![NewEvent::new("Withdrawn", json!({}))]).await;
    let conflict = matches!(stale, Err(AppendError::WrongExpectedVersion { .. }));
    println!("  a writer holding version 0 of {stream} is refused: {}", if conflict { "yes" } else { "NO" });

    let history = store.read_stream(stream.as_str(), 0, actorbus::actors::store::Direction::Forward, 10_000).await?;
    let balance = |upto: usize| history.iter().take(upto).filter_map(|e| e.data["amount"].as_u64()).sum::<u64>();
    let half = history.len() / 2;
    println!(
        "  {stream}: balance {} now, {} at version {}",
        balance(history.len()),
        balance(half),
        half.saturating_sub(1)
    );

    let mut seen = 0u32;
    let mut in_order = true;
    let mut last_position = None;
    while seen < acked {
        match tokio::time::timeout(Duration::from_secs(5), subscription.next()).await {
            Ok(Some(Ok(e))) => {
                in_order &= last_position.is_none_or(|p| e.position > p);
                last_position = Some(e.position);
                if e.stream.starts_with(&format!("demo-{run}-")) {
                    seen += 1;
                }
            }
            _ => break,
        }
    }
    println!(
        "  a catch-up subscription started before the writers saw {seen} of them{}",
        if in_order { ", in order" } else { ", OUT OF ORDER" }
    );
    let expected_balance = u64::from(per_writer) * (u64::from(per_writer) + 1) / 2;
    let ok =
        acked == per_writer * 64 && conflict && seen == acked && in_order && balance(history.len()) == expected_balance;
    Ok(Outcome {
        pattern: "event sourcing",
        ok,
        detail: format!("{acked} appends by 64 writers in {took:.2?}; conflict typed; subscription saw {seen}/{acked}"),
    })
}

/// Order sagas on the durable saga log: reserve stock, charge the card (the
/// pivot), ship (retryable). Every 4th card is declined, so its reservation
/// is compensated; every 7th shipment meets a busy carrier once and is
/// retried. The stock must add up at the end.
async fn sagas(bus: &Bus, n: u32) -> Result<Outcome, Box<dyn std::error::Error>> {
    use actorbus::actors::saga::{RetryPolicy, SagaDefinition, SagaStatus, StepError};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Order {
        n: u32,
        quantity: u32,
    }

    let where_ = bus.data_dir().map_or("memory".to_owned(), |d| d.join("sagas.sqlite3").display().to_string());
    println!("\nsagas: {n} orders (reserve stock → charge card → ship), log durable in {where_}");
    let stock = Arc::new(AtomicU32::new(n * 2));
    let carrier_retries = Arc::new(AtomicU32::new(0));
    let (reserve, release, retries) = (stock.clone(), stock.clone(), carrier_retries.clone());
    let order = SagaDefinition::<Order>::new("demo-order")
        .step("reserve_stock", move |o: Order, _| {
            let stock = reserve.clone();
            async move {
                stock.fetch_sub(o.quantity, Ordering::SeqCst);
                Ok(o)
            }
        })
        .compensate(move |o: Order, _| {
            let stock = release.clone();
            async move {
                stock.fetch_add(o.quantity, Ordering::SeqCst);
                Ok(o)
            }
        })
        .pivot("charge_card", |o: Order, _| async move {
            match o.n % 4 {
                3 => Err(StepError::permanent("card declined")),
                _ => Ok(o),
            }
        })
        .retryable("ship", move |o: Order, cx| {
            let retries = retries.clone();
            async move {
                if o.n % 7 == 6 && cx.attempt == 1 {
                    retries.fetch_add(1, Ordering::SeqCst);
                    return Err(StepError::transient("carrier busy"));
                }
                Ok(o)
            }
        })
        .retry(RetryPolicy::attempts(3, Duration::from_millis(5)));
    let sagas = bus.sagas().definition(order).start().await?;
    let saga = sagas.saga::<Order>("demo-order")?;
    let started = Instant::now();
    let done = Arc::new(AtomicU32::new(0));
    let runs = (0..n).map(|i| {
        let (saga, done) = (saga.clone(), done.clone());
        async move {
            let outcome = saga.run(Order { n: i, quantity: 2 }).await;
            progress("sagas ended", done.fetch_add(1, Ordering::SeqCst) + 1, n);
            outcome
        }
    });
    let outcomes = join_all(runs).await.into_iter().collect::<Result<Vec<_>, _>>()?;
    let took = started.elapsed();
    let count = |s: SagaStatus| outcomes.iter().filter(|o| o.status == s).count() as u32;
    let (completed, compensated) = (count(SagaStatus::Completed), count(SagaStatus::Compensated));
    let declined = (0..n).filter(|i| i % 4 == 3).count() as u32;
    println!(
        "  {completed} completed, {compensated} compensated (declined cards), {} shipments retried, in {took:.2?}",
        carrier_retries.load(Ordering::SeqCst)
    );
    if let Some(first) = outcomes.iter().find(|o| o.status == SagaStatus::Compensated) {
        if let Some(state) = sagas.status(first.id).await? {
            println!("  saga {} (a declined card), from the log:", first.id);
            for line in state.timeline().lines() {
                println!("  {line}");
            }
        }
    }
    let left = stock.load(Ordering::SeqCst);
    let expected_left = n * 2 - completed * 2;
    println!("  stock left {left} (expected {expected_left}: every compensated reservation came back)");
    let ok = completed == n - declined && compensated == declined && left == expected_left;
    Ok(Outcome {
        pattern: "sagas",
        ok,
        detail: format!("{completed} completed, {compensated} compensated in reverse order, stock adds up"),
    })
}
