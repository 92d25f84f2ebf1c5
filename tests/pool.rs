//! Competing consumers: a panicking worker is replaced without loss, per-key
//! order over a partitioned queue, autoscaling up and down, handler
//! timeouts, and the blocking (SyncArbiter) variant.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actorbus::actors::pool::{handler_fn, BlockingPool};
use actorbus::actors::queue::RetryPolicy;
use actorbus::{Bus, Envelope, HandlerError};
use serde::{Deserialize, Serialize};

fn run<F: std::future::Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn four_workers_one_panics_it_is_replaced_and_nothing_is_lost() {
    run(async {
        let bus = Bus::builder().worker_arbiters(2).build().unwrap();
        let q = bus.queue::<u32>("pool-panic").retry(RetryPolicy::IMMEDIATE).start().unwrap();
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let panicked = Arc::new(AtomicBool::new(false));
        let (s, p) = (seen.clone(), panicked.clone());
        let pool = bus
            .consumer_pool(&q, move || {
                let (seen, panicked) = (s.clone(), p.clone());
                handler_fn(move |env: Envelope<u32>| {
                    if env.payload == 123 && !panicked.swap(true, Ordering::SeqCst) {
                        panic!("worker blew up on {}", env.payload);
                    }
                    seen.lock().unwrap().insert(env.payload);
                    async { Ok(()) }
                })
            })
            .workers(4)
            .start()
            .await
            .unwrap();
        wait_until("four workers", Duration::from_secs(5), || pool.workers() == 4).await;
        for i in 0..400 {
            q.send(i).await.unwrap();
        }
        wait_until("all acked", Duration::from_secs(20), || q.stats().acked == 400).await;
        assert_eq!(seen.lock().unwrap().len(), 400, "every message handled");
        // The redelivery does not wait for the replacement: the others may
        // finish first.
        wait_until("replacement", Duration::from_secs(5), || pool.workers() == 4 && pool.restarts() == 1).await;
        assert_eq!(pool.restarts(), 1);
        let s = q.stats();
        assert_eq!((s.nacked, s.redelivered, s.dead_lettered), (1, 1, 0));
        let labels = r#"kind="pool",name="pool-panic""#;
        assert_eq!(common::metric(&bus, "actorbus_supervision_restarts_total", labels), 1.0);
        pool.stop().await;
        assert_eq!(pool.workers(), 0);
    });
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Keyed {
    key: u32,
    seq: u32,
}

#[test]
fn partition_key_order_holds_over_ten_thousand_messages_and_fifty_keys() {
    run(async {
        let bus = Bus::builder().worker_arbiters(2).build().unwrap();
        let q = bus.queue::<Keyed>("pool-partition").partition_by_header("key").start().unwrap();
        let log: Arc<Mutex<HashMap<u32, Vec<u32>>>> = Arc::default();
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (l, r, p) = (log.clone(), running.clone(), peak.clone());
        let pool = bus
            .consumer_pool(&q, move || {
                let (log, running, peak) = (l.clone(), r.clone(), p.clone());
                handler_fn(move |env: Envelope<Keyed>| {
                    let (log, running, peak) = (log.clone(), running.clone(), peak.clone());
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        log.lock().unwrap().entry(env.payload.key).or_default().push(env.payload.seq);
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok::<(), HandlerError>(())
                    }
                })
            })
            .workers(8)
            .start()
            .await
            .unwrap();
        for seq in 0..200 {
            for key in 0..50 {
                let env = Envelope::new(Keyed { key, seq }).with_header("key", key.to_string());
                q.send_envelope(env).await.unwrap();
            }
        }
        wait_until("all acked", Duration::from_secs(60), || q.stats().acked == 10_000).await;
        let log = std::mem::take(&mut *log.lock().unwrap());
        assert_eq!(log.len(), 50);
        for (key, seqs) in log.iter() {
            assert_eq!(*seqs, (0..200).collect::<Vec<_>>(), "key {key} out of order");
        }
        assert!(peak.load(Ordering::SeqCst) > 1, "different keys ran in parallel");
        pool.stop().await;
    });
}

#[test]
fn the_pool_grows_under_load_and_shrinks_when_idle() {
    run(async {
        let bus = Bus::builder().build().unwrap();
        let q = bus.queue::<u32>("pool-scale").start().unwrap();
        let pool = bus
            .consumer_pool(&q, || {
                handler_fn(|_: Envelope<u32>| async {
                    actix_rt::time::sleep(Duration::from_millis(5)).await;
                    Ok(())
                })
            })
            .scale(1, 4)
            .scale_interval(Duration::from_millis(10))
            .scale_up_depth(5)
            .idle_before_scale_down(Duration::from_millis(100))
            .start()
            .await
            .unwrap();
        wait_until("one worker", Duration::from_secs(5), || pool.workers() == 1).await;
        for i in 0..300 {
            q.send(i).await.unwrap();
        }
        wait_until("four workers", Duration::from_secs(10), || pool.workers() == 4).await;
        wait_until("all acked", Duration::from_secs(30), || q.stats().acked == 300).await;
        wait_until("back to one", Duration::from_secs(10), || pool.workers() == 1).await;
        let workers = common::metric(&bus, "actorbus_pool_workers_workers", r#"name="pool-scale""#);
        assert_eq!(workers, 1.0);
        assert_eq!(q.stats().dead_lettered, 0);
    });
}

#[test]
fn a_handler_past_its_timeout_is_abandoned_and_retried() {
    run(async {
        let bus = Bus::builder().build().unwrap();
        let q = bus.queue::<u32>("pool-timeout").retry(RetryPolicy::IMMEDIATE).start().unwrap();
        let pool = bus
            .consumer_pool(&q, || {
                handler_fn(|env: Envelope<u32>| async move {
                    if env.attempt == 1 {
                        actix_rt::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Ok(())
                })
            })
            .handler_timeout(Duration::from_millis(30))
            .start()
            .await
            .unwrap();
        q.send(1).await.unwrap();
        wait_until("ack", Duration::from_secs(5), || q.stats().acked == 1).await;
        let labels = r#"name="pool-timeout",outcome="timeout""#;
        assert_eq!(common::metric(&bus, "actorbus_pool_handled_total", labels), 1.0);
        assert_eq!(q.stats().nacked, 1);
        pool.stop().await;
    });
}

#[test]
fn a_blocking_pool_survives_a_panic_on_its_sync_arbiter() {
    run(async {
        let bus = Bus::builder().build().unwrap();
        let q = bus.queue::<u32>("pool-blocking").retry(RetryPolicy::IMMEDIATE).start().unwrap();
        let done = Arc::new(Mutex::new(HashSet::new()));
        let panicked = Arc::new(AtomicBool::new(false));
        let (d, p) = (done.clone(), panicked.clone());
        let pool = BlockingPool::start(q.clone(), 2, move || {
            let (done, panicked) = (d.clone(), p.clone());
            move |env: Envelope<u32>| -> Result<(), HandlerError> {
                std::thread::sleep(Duration::from_micros(200));
                if env.payload == 7 && !panicked.swap(true, Ordering::SeqCst) {
                    panic!("blocking handler blew up");
                }
                done.lock().unwrap().insert(env.payload);
                Ok(())
            }
        })
        .await
        .unwrap();
        for i in 0..100 {
            q.send(i).await.unwrap();
        }
        wait_until("all acked", Duration::from_secs(20), || q.stats().acked == 100).await;
        assert_eq!(done.lock().unwrap().len(), 100);
        assert_eq!((pool.threads(), pool.restarts()), (2, 1));
    });
}
