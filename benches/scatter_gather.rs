//! Scatter-gather over 8 request-reply services, all replies awaited,
//! beside 8 raw actix `send()`s joined, in the same run on one arbiter.
//!
//! The actorbus side includes everything a gather does: 8 envelopes, 8
//! asks through bounded inboxes with deadlines and panic boundaries, the
//! fold, the completion check, the result lists and the metrics, hosted by
//! the bus's `ScatterGather` actor.
//!
//! ```text
//! cargo bench --bench scatter_gather
//! ```

use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbus::actors::scatter_gather::Aggregator;
use actorbus::{service_fn, Bus, Request};
use criterion::{criterion_group, Criterion, Throughput};
use futures::future::join_all;

const RECIPIENTS: usize = 8;

#[derive(Message)]
#[rtype(result = "u64")]
struct RawPing(u64);

struct RawEcho;
impl Actor for RawEcho {
    type Context = Context<Self>;
}
impl Handler<RawPing> for RawEcho {
    type Result = u64;
    fn handle(&mut self, RawPing(n): RawPing, _: &mut Context<Self>) -> u64 {
        n
    }
}

#[derive(Clone)]
struct Ping(u64);
impl Request for Ping {
    type Response = u64;
}

struct Setup {
    raw: Vec<Addr<RawEcho>>,
    bus: Bus,
    names: Vec<String>,
}

async fn setup() -> Setup {
    let bus = Bus::builder().build().expect("system running");
    let names: Vec<String> = (0..RECIPIENTS).map(|i| format!("echo-{i}")).collect();
    for name in &names {
        bus.service(name, || service_fn(|Ping(n): Ping, _| async move { Ok(n) })).start().await.expect("service");
    }
    let raw = (0..RECIPIENTS).map(|_| RawEcho.start()).collect();
    Setup { raw, bus, names }
}

async fn raw_gather(s: &Setup, i: u64) -> u64 {
    join_all(s.raw.iter().map(|a| a.send(RawPing(i)))).await.into_iter().map(|r| r.unwrap_or(0)).sum()
}

async fn actorbus_gather(s: &Setup, i: u64) -> u64 {
    let r = s
        .bus
        .scatter("bench", Ping(i))
        .services(&s.names)
        .timeout(Duration::from_secs(5))
        .run(Aggregator::fold(0u64, |acc, _, n| acc + n))
        .await
        .expect("gather");
    r.aggregate
}

fn gathers(c: &mut Criterion) {
    let sys = System::new();
    let s = sys.block_on(setup());
    let mut group = c.benchmark_group("scatter_gather_8");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    group.bench_function("raw_actix_send_join_all", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    raw_gather(&s, i).await;
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("actorbus_scatter_gather", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    actorbus_gather(&s, i).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn report() {
    const N: u64 = 20_000;
    let sys = System::new();
    let s = sys.block_on(setup());
    let (raw, ours) = sys.block_on(async {
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let t = Instant::now();
            for i in 0..N {
                raw_gather(&s, i).await;
            }
            raw.push(t.elapsed());
            let t = Instant::now();
            for i in 0..N {
                actorbus_gather(&s, i).await;
            }
            ours.push(t.elapsed());
        }
        raw.sort();
        ours.sort();
        (raw[1], ours[1])
    });
    let per = |d: Duration| d.as_secs_f64() * 1e6 / N as f64;
    println!("\nscatter_gather over {RECIPIENTS}, {N} gathers per round, median of 3 (µs per gather)");
    println!("raw_actix_send_join_all   {:>8.2}", per(raw));
    println!("actorbus_scatter_gather   {:>8.2}   ratio {:.2}", per(ours), per(ours) / per(raw));
}

criterion_group!(benches, gathers);

fn main() {
    if std::env::var_os("REPORT_ONLY").is_none() {
        benches();
    }
    report();
    Criterion::default().configure_from_args().final_summary();
}
