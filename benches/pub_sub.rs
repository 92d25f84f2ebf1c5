//! Publish-subscribe: 1 publisher → 8 subscribers through an actorbus topic,
//! beside tokio `broadcast` with 8 receivers, in the same run and on the
//! same single-threaded arbiter.
//!
//! Both sides publish in bursts of 512 and yield between bursts so that
//! subscribers drain; neither loses a message (the broadcast publisher waits
//! while its slowest reader is 512 behind in a ring of 1024; actorbus
//! subscriptions hold 1024 under `block`). A delivery is one message received by one
//! subscriber. Target (DESIGN §8): actorbus ≥ 0.5 × broadcast, in
//! deliveries per second.
//!
//! After criterion, a report pass times 400,000 messages (3.2 M deliveries)
//! per variant, three rounds alternating, and prints the medians and ratio.
//!
//! ```text
//! cargo bench --bench pub_sub
//! ```

use std::time::{Duration, Instant};

use actix::System;
use actorbus::actors::topic::{SubscriptionConfig, TopicConfig, TopicHandle, Topics};
use criterion::{criterion_group, Criterion, Throughput};
use tokio::sync::broadcast;

const SUBSCRIBERS: usize = 8;
const BURST: u64 = 512;

async fn actorbus_round(topics: &Topics, topic: &TopicHandle<u64>, n: u64) -> Duration {
    let subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| topics.subscribe::<u64>("bench.ticks", SubscriptionConfig::new().capacity(1024)).expect("subscribe"))
        .collect();
    let start = Instant::now();
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            actix_rt::spawn(async move {
                let mut sum = 0u64;
                for _ in 0..n {
                    sum = sum.wrapping_add(sub.next().await.expect("open").payload);
                }
                sum
            })
        })
        .collect();
    for i in 0..n {
        topic.publish(i).await.expect("publish");
        if i % BURST == BURST - 1 {
            tokio::task::yield_now().await;
        }
    }
    for r in readers {
        r.await.expect("reader");
    }
    start.elapsed()
}

async fn broadcast_round(n: u64) -> Duration {
    let (tx, _) = broadcast::channel::<u64>(1024);
    let rxs: Vec<_> = (0..SUBSCRIBERS).map(|_| tx.subscribe()).collect();
    let start = Instant::now();
    let readers: Vec<_> = rxs
        .into_iter()
        .map(|mut rx| {
            actix_rt::spawn(async move {
                let mut sum = 0u64;
                for _ in 0..n {
                    sum = sum.wrapping_add(rx.recv().await.expect("no lag at this pace"));
                }
                sum
            })
        })
        .collect();
    for i in 0..n {
        // Never overrun the ring: wait (as a `block` subscription makes an
        // actorbus publisher wait) while the slowest reader is 512 behind.
        while tx.len() >= BURST as usize {
            tokio::task::yield_now().await;
        }
        let _ = tx.send(i);
        if i % BURST == BURST - 1 {
            tokio::task::yield_now().await;
        }
    }
    for r in readers {
        r.await.expect("reader");
    }
    start.elapsed()
}

fn fan_out(c: &mut Criterion) {
    let sys = System::new();
    let topics = Topics::new();
    let topic = sys.block_on(async { topics.create::<u64>("bench.ticks", TopicConfig::new()).expect("topic") });
    let mut group = c.benchmark_group("pub_sub_1_to_8");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    group.bench_function("tokio_broadcast", |b| {
        b.iter_custom(|iters| sys.block_on(broadcast_round(iters.max(BURST))) * iters as u32 / iters.max(BURST) as u32)
    });
    group.bench_function("actorbus_topic", |b| {
        b.iter_custom(|iters| {
            sys.block_on(actorbus_round(&topics, &topic, iters.max(BURST))) * iters as u32 / iters.max(BURST) as u32
        })
    });
    group.finish();
}

fn report() {
    const N: u64 = 400_000;
    let sys = System::new();
    let topics = Topics::new();
    let topic = sys.block_on(async { topics.create::<u64>("bench.ticks", TopicConfig::new()).expect("topic") });
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    sys.block_on(async {
        broadcast_round(N / 10).await;
        actorbus_round(&topics, &topic, N / 10).await;
        for _ in 0..3 {
            theirs.push(broadcast_round(N).await);
            ours.push(actorbus_round(&topics, &topic, N).await);
        }
    });
    let rate = |d: Duration| (N * SUBSCRIBERS as u64) as f64 / d.as_secs_f64();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[1]
    };
    let (b, a) = (rate(median(theirs)), rate(median(ours)));
    println!("\npub_sub 1 -> {SUBSCRIBERS}, {N} messages per round, median of 3 (deliveries/s)");
    println!("tokio_broadcast   {:>12.0}", b);
    println!("actorbus_topic    {:>12.0}   ratio {:.2}", a, a / b);
}

criterion_group!(benches, fan_out);

fn main() {
    if std::env::var_os("REPORT_ONLY").is_none() {
        benches();
    }
    report();
    Criterion::default().configure_from_args().final_summary();
}
