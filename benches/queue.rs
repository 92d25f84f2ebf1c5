//! Queues, each beside its baseline in the same run:
//!
//! - `queue/ack_per_message` vs `queue/raw_actix_do_send`: one producer, one
//!   consumer acking every message, all on one arbiter, vs raw actix
//!   `do_send` to a counting actor.
//! - `queue/priority_ack_per_message` vs the plain queue: the same with
//!   random priority levels.
//! - `pool/workers_2` vs `pool/workers_1`: a handler burning 10 µs of CPU,
//!   workers on two arbiters.
//! - memory: resident memory of 1,000,000 queued 64-byte messages (printed
//!   after the criterion part).
//!
//! `cargo bench --bench queue`; `MEMORY_ONLY=1` runs only the memory part.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbus::actors::pool::handler_fn;
use actorbus::actors::queue::QueueHandle;
use actorbus::{Bus, Envelope, Priority};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

const BATCH: u64 = 10_000;

#[derive(Message)]
#[rtype(result = "()")]
struct Bump;

#[derive(Message)]
#[rtype(result = "u64")]
struct Read;

struct Counter(u64);
impl Actor for Counter {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX >> 4);
    }
}
impl Handler<Bump> for Counter {
    type Result = ();
    fn handle(&mut self, _: Bump, _: &mut Context<Self>) {
        self.0 += 1;
    }
}
impl Handler<Read> for Counter {
    type Result = u64;
    fn handle(&mut self, _: Read, _: &mut Context<Self>) -> u64 {
        self.0
    }
}

/// A consumer on the current arbiter that acks everything; returns when
/// `acked` reached `target`.
async fn drain(q: &QueueHandle<u64>, target: u64) {
    while q.stats().acked < target {
        tokio::task::yield_now().await;
    }
}

fn start_acker(q: &QueueHandle<u64>) {
    let q = q.clone();
    actix_rt::spawn(async move {
        let mut c = q.consumer(256).await.expect("consumer");
        while let Some(d) = c.recv().await {
            d.ack();
        }
    });
}

fn point_to_point(c: &mut Criterion) {
    let sys = System::new();
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(BATCH)).sample_size(20).measurement_time(Duration::from_secs(5));
    let (bus, plain, prio, raw) = sys.block_on(async {
        let bus = Bus::builder().metrics(true).build().expect("bus");
        let plain = bus.queue::<u64>("bench-plain").capacity(1 << 20).start().expect("queue");
        let prio = bus.queue::<u64>("bench-prio").capacity(1 << 20).priority(None).start().expect("queue");
        start_acker(&plain);
        start_acker(&prio);
        (bus, plain, prio, Counter(0).start())
    });
    group.bench_function(BenchmarkId::new("raw_actix_do_send", BATCH), |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..BATCH {
                        raw.do_send(Bump);
                    }
                    let _ = raw.send(Read).await;
                }
                start.elapsed()
            })
        })
    });
    for (name, q, prioritised) in [("ack_per_message", &plain, false), ("priority_ack_per_message", &prio, true)] {
        group.bench_function(BenchmarkId::new(name, BATCH), |b| {
            b.iter_custom(|iters| {
                sys.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let target = q.stats().acked + BATCH;
                        for i in 0..BATCH {
                            let mut env = Envelope::new(i);
                            if prioritised {
                                env.priority = Priority::new((i % 10) as u8).unwrap_or_default();
                            }
                            q.send_envelope(env).await.expect("send");
                        }
                        drain(q, target).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
    drop(bus);
}

/// Burns about `d` of CPU.
fn burn(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn competing_consumers(c: &mut Criterion) {
    const N: u64 = 2_000;
    let sys = System::new();
    let mut group = c.benchmark_group("pool");
    group.throughput(Throughput::Elements(N)).sample_size(10).measurement_time(Duration::from_secs(5));
    for workers in [1usize, 2] {
        let (bus, q, pool) = sys.block_on(async {
            let bus = Bus::builder().worker_arbiters(2).build().expect("bus");
            let q = bus.queue::<u64>(&format!("bench-pool-{workers}")).capacity(1 << 16).start().expect("queue");
            let pool = bus
                .consumer_pool(&q, || {
                    handler_fn(|_: Envelope<u64>| {
                        burn(Duration::from_micros(10));
                        async { Ok(()) }
                    })
                })
                .workers(workers)
                .prefetch(32)
                .start()
                .await
                .expect("pool");
            (bus, q, pool)
        });
        group.bench_function(BenchmarkId::new(format!("workers_{workers}"), "10us_handler"), |b| {
            b.iter_custom(|iters| {
                sys.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let target = q.stats().acked + N;
                        for i in 0..N {
                            q.send(i).await.expect("send");
                        }
                        while q.stats().acked < target {
                            actix_rt::time::sleep(Duration::from_micros(50)).await;
                        }
                    }
                    start.elapsed()
                })
            })
        });
        sys.block_on(pool.stop());
        sys.block_on(bus.shutdown(Duration::from_millis(100)));
    }
    group.finish();
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Resident memory of 1,000,000 queued 64-byte messages (a `Vec<u8>` each,
/// in a default envelope), measured as the growth of RSS.
fn memory_report() {
    const N: usize = 1_000_000;
    let sys = System::new();
    sys.block_on(async {
        let bus = Bus::builder().build().expect("bus");
        let q = bus.queue::<Vec<u8>>("bench-memory").capacity(N).start().expect("queue");
        let before = resident_bytes();
        for i in 0..N {
            q.send(vec![(i % 251) as u8; 64]).await.expect("send");
        }
        while (q.depth() as usize) < N {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        let after = resident_bytes();
        let grown = after.saturating_sub(before);
        println!(
            "\nqueue memory: {N} queued 64-byte messages: +{:.1} MB resident ({} bytes/message), process {:.1} MB",
            grown as f64 / 1e6,
            grown / N as u64,
            after as f64 / 1e6
        );
    });
}

criterion_group!(benches, point_to_point, competing_consumers);

fn main() {
    if std::env::var_os("MEMORY_ONLY").is_none() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    memory_report();
}
