//! Fault test: 100,000 messages through a queue and a pool of 32 workers
//! whose handler panics on a random 10 % of deliveries and hangs past the
//! visibility timeout on 1 %. Every message ends processed or
//! dead-lettered, never both, never neither, and the metrics agree.

mod common;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actorbus::actors::dlq::DlqFilter;
use actorbus::actors::pool::handler_fn;
use actorbus::actors::queue::RetryPolicy;
use actorbus::{Bus, Envelope, HandlerError, MessageId};

const MESSAGES: u32 = 100_000;

/// A fixed pseudo-random draw in 0..1000 per (message, attempt).
fn draw(id: MessageId, attempt: u32) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (id, attempt).hash(&mut h);
    h.finish() % 1000
}

#[test]
fn every_message_is_processed_or_dead_lettered_under_panics_and_hangs() {
    actix_rt::System::new().block_on(async {
        let bus = Bus::builder().worker_arbiters(2).build().unwrap();
        let q = bus
            .queue::<u32>("fault")
            .capacity(20_000)
            .max_deliveries(3)
            .visibility_timeout(Duration::from_millis(100))
            .retry(RetryPolicy::IMMEDIATE)
            .tick(Duration::from_millis(5))
            .start()
            .unwrap();
        let processed: Arc<Mutex<HashSet<MessageId>>> = Arc::default();
        let p = processed.clone();
        let pool = bus
            .consumer_pool(&q, move || {
                let processed = p.clone();
                handler_fn(move |env: Envelope<u32>| {
                    let processed = processed.clone();
                    async move {
                        match draw(env.id, env.attempt) {
                            0..100 => panic!("injected panic on attempt {}", env.attempt),
                            100..110 => {
                                // Hangs past the visibility timeout; its late
                                // answer is stale and ignored.
                                actix_rt::time::sleep(Duration::from_millis(200)).await;
                                Err(HandlerError::new("hung"))
                            }
                            _ => {
                                processed.lock().unwrap().insert(env.id);
                                Ok(())
                            }
                        }
                    }
                })
            })
            .workers(32)
            .start()
            .await
            .unwrap();
        // Silence the expected panics' messages (10,000 of them).
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));

        let started = Instant::now();
        let mut sent = HashSet::new();
        for i in 0..MESSAGES {
            sent.insert(q.send(i).await.unwrap());
        }
        let done = || {
            let s = q.stats();
            s.acked + s.dead_lettered == u64::from(MESSAGES) && s.pending_dead_letters == 0
        };
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(240), "stuck: {:?}", q.stats());
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        std::panic::set_hook(hook);
        pool.stop().await;

        let s = q.stats();
        let processed = std::mem::take(&mut *processed.lock().unwrap());
        let dead = bus.dlq().list(DlqFilter::default().source("queue", "fault")).await.unwrap();
        let dead_ids: HashSet<MessageId> = dead.iter().filter_map(|l| l.message_id).collect();
        eprintln!("fault test: {s:?} in {:?}, pool restarts {}", started.elapsed(), pool.restarts());

        assert_eq!(dead.len(), dead_ids.len(), "one DLQ entry per message");
        assert!(processed.is_disjoint(&dead_ids), "processed and dead-lettered");
        assert_eq!(processed.len() + dead_ids.len(), MESSAGES as usize);
        assert_eq!(processed.union(&dead_ids).copied().collect::<HashSet<_>>(), sent);
        assert_eq!(s.acked, processed.len() as u64);
        assert_eq!(s.dead_lettered, dead_ids.len() as u64);
        assert!(s.timeouts > 0 && s.nacked > 0 && s.stale_settles > 0, "{s:?}");
        assert!(dead.iter().all(|l| l.errors.len() == 3 && l.attempts == 3));
        assert_eq!((s.depth, s.in_flight), (0, 0));

        // The metrics say the same.
        let m = |name: &str, labels: &str| common::metric(&bus, name, labels) as u64;
        assert_eq!(m("actorbus_queue_enqueued_total", r#"name="fault""#), u64::from(MESSAGES));
        assert_eq!(m("actorbus_queue_acked_total", r#"name="fault""#), s.acked);
        let dead_metric = m("actorbus_queue_dead_lettered_total", r#"name="fault",reason="max_deliveries""#);
        assert_eq!(dead_metric, s.dead_lettered);
        let dlq_metric =
            m("actorbus_dlq_dead_lettered_total", r#"pattern="queue",name="fault",reason="max_deliveries""#);
        assert_eq!(dlq_metric, s.dead_lettered);
        assert_eq!(m("actorbus_queue_visibility_timeouts_total", r#"name="fault""#), s.timeouts);
        assert_eq!(m("actorbus_supervision_restarts_total", r#"kind="pool",name="fault""#), pool.restarts());
    });
}
