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
//! - `queue_durable/actorbus_{1,64}_senders` vs
//!   `queue_durable/plain_rusqlite_commit_per_message`: durable send (resolved
//!   once committed) plus ack per message, with 1 and 64 concurrent senders,
//!   vs a plain rusqlite loop committing one row per message on the same
//!   kind of file (WAL, `synchronous = FULL`, on the build's disk). The
//!   ratios are printed after the criterion part, from rounds that time the
//!   three back to back (fsync costs on a shared disk swing too much for
//!   ratios of runs a minute apart).
//!
//! `cargo bench --bench queue`; `cargo bench --bench queue -- durable` runs
//! only the durable rows; `MEMORY_ONLY=1` runs only the memory part.

use std::sync::atomic::{AtomicBool, Ordering};
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
    stop(&sys, &bus);
}

/// Shuts `bus` down inside its runtime. A System dropped with actors that
/// never ran (a name filter skipped every bench of the group, so nothing
/// yielded to them) starts them from its destructor, outside any reactor,
/// and they panic setting their timers: let them run first.
fn stop(sys: &SystemRunner, bus: &Bus) {
    sys.block_on(async {
        tokio::task::yield_now().await;
        bus.shutdown(Duration::from_millis(100)).await;
    });
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
    let bus = sys.block_on(async {
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
        bus
    });
    stop(&sys, &bus);
}

/// Set when the durable group runs (a name filter may leave it out).
static DURABLE_RAN: AtomicBool = AtomicBool::new(false);

/// A directory on the same disk as the build (not a tmpfs `/tmp`, where
/// fsync costs nothing and the comparison would mean nothing).
fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench dir")
}

/// A WAL, `synchronous = FULL` file with the queue table, for the plain loop.
fn plain_connection(dir: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("plain.sqlite3")).expect("open");
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).expect("wal");
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE messages (queue TEXT NOT NULL, seq INTEGER NOT NULL, delivered INTEGER NOT NULL,
            envelope TEXT NOT NULL, payload BLOB, ticket TEXT, PRIMARY KEY (queue, seq));",
    )
    .expect("schema");
    conn
}

/// One message, one transaction: what a durable send costs done naively.
fn plain_insert(conn: &rusqlite::Connection, n: i64) {
    let envelope = serde_json::to_string(&Envelope::new(())).expect("json");
    conn.execute(
        "INSERT INTO messages (queue, seq, delivered, envelope, payload) VALUES ('plain', ?1, 0, ?2, ?3)",
        rusqlite::params![n, envelope, n.to_le_bytes().as_slice()],
    )
    .expect("insert");
}

/// `senders` tasks each sending `per_sender` messages one after the other
/// (each waiting for its commit); returns once all are acked.
async fn run_senders(q: &QueueHandle<u64>, senders: u64, per_sender: u64) -> Duration {
    let start = Instant::now();
    let target = q.stats().acked + senders * per_sender;
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            let q = q.clone();
            actix_rt::spawn(async move {
                for i in 0..per_sender {
                    q.send(i).await.expect("durable send");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("sender");
    }
    drain(q, target).await;
    start.elapsed()
}

fn durable(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue_durable");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));

    // Baseline: one transaction (one fsync) per message on the same kind of
    // file, and no delete (an ack would cost it another).
    {
        let dir = bench_dir();
        let conn = plain_connection(dir.path());
        let mut n = 0i64;
        group.throughput(Throughput::Elements(1));
        group.bench_function("plain_rusqlite_commit_per_message", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    n += 1;
                    plain_insert(&conn, n);
                }
                start.elapsed()
            })
        });
    }

    for senders in [1u64, 64] {
        let dir = bench_dir();
        let sys = System::new();
        let (bus, q) = sys.block_on(async {
            let bus = Bus::builder().data_dir(dir.path()).metrics(false).build().expect("bus");
            let q = bus.queue::<u64>("bench-durable").durable().capacity(1 << 20).start().expect("queue");
            start_acker(&q);
            (bus, q)
        });
        // Enough sends per iteration for every sender to queue behind a
        // commit several times.
        let per_sender = if senders == 1 { 16 } else { 8 };
        group.throughput(Throughput::Elements(senders * per_sender));
        let name: &'static str = if senders == 1 { "actorbus_1_sender" } else { "actorbus_64_senders" };
        group.bench_function(name, |b| {
            // Here, not at the top: criterion calls every group function and
            // skips only the benches a name filter leaves out.
            DURABLE_RAN.store(true, Ordering::Relaxed);
            b.iter_custom(|iters| {
                sys.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        run_senders(&q, senders, per_sender).await;
                    }
                    start.elapsed()
                })
            })
        });
        drop(q);
        stop(&sys, &bus);
    }
    group.finish();
}

/// The ratios, measured interleaved: fsync costs on a shared disk swing by
/// an order of magnitude within a minute, so each round times the plain
/// loop and both actorbus cases back to back, and the ratio is of the sums.
fn durable_report() {
    const ROUNDS: usize = 5;
    const PLAIN: u64 = 200;
    const ONE: u64 = 200;
    const PER_SENDER: u64 = 8;
    if !DURABLE_RAN.load(Ordering::Relaxed) {
        return;
    }
    let dir = bench_dir();
    let conn = plain_connection(dir.path());
    let sys = System::new();
    let (_bus, one, many) = sys.block_on(async {
        let bus = Bus::builder().data_dir(dir.path()).metrics(false).build().expect("bus");
        let one = bus.queue::<u64>("report-1").durable().capacity(1 << 20).start().expect("queue");
        let many = bus.queue::<u64>("report-64").durable().capacity(1 << 20).start().expect("queue");
        start_acker(&one);
        start_acker(&many);
        (bus, one, many)
    });
    let (mut plain_t, mut one_t, mut many_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut n = 0i64;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..PLAIN {
            n += 1;
            plain_insert(&conn, n);
        }
        plain_t += start.elapsed();
        one_t += sys.block_on(run_senders(&one, 1, ONE));
        many_t += sys.block_on(run_senders(&many, 64, PER_SENDER));
    }
    let rate = |msgs: u64, t: Duration| (msgs * ROUNDS as u64) as f64 / t.as_secs_f64().max(1e-9);
    let plain = rate(PLAIN, plain_t);
    let (one_r, many_r) = (rate(ONE, one_t), rate(64 * PER_SENDER, many_t));
    println!("\ndurable queue (send resolved after commit, then ack), {ROUNDS} interleaved rounds:");
    println!("  plain rusqlite, one commit per message: {plain:>9.0} msg/s");
    println!("  actorbus, 1 sender:                     {one_r:>9.0} msg/s = {:.2} x plain", one_r / plain);
    println!("  actorbus, 64 senders:                   {many_r:>9.0} msg/s = {:.2} x plain", many_r / plain);
}

criterion_group!(benches, point_to_point, competing_consumers, durable);

fn main() {
    if std::env::var_os("MEMORY_ONLY").is_none() {
        benches();
        Criterion::default().configure_from_args().final_summary();
        durable_report();
    }
    // A name filter (`-- durable`) runs only the matching benches: leave the
    // memory part out too.
    let filtered = std::env::args().skip(1).any(|a| !a.starts_with('-'));
    if std::env::var_os("MEMORY_ONLY").is_some() || !filtered {
        memory_report();
    }
}
