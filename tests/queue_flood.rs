//! Flood test (ignored by default; README "Flood test"): 1,000,000 messages
//! into a queue of capacity 10,000 with the `block` policy, drained by a slow
//! consumer. The producer is held back, so resident memory stays bounded.
//!
//! `cargo test --release --test queue_flood -- --ignored --nocapture`

use std::time::{Duration, Instant};

use actorbus::Bus;

fn resident_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / 1e6
}

#[test]
#[ignore = "a million messages: run with --release --ignored"]
fn a_fast_producer_and_a_slow_consumer_hold_memory_flat() {
    actix_rt::System::new().block_on(async {
        let bus = Bus::builder().build().unwrap();
        let q = bus.queue::<Vec<u8>>("flood").capacity(10_000).start().unwrap();
        let consumer_q = q.clone();
        actix_rt::spawn(async move {
            let mut c = consumer_q.consumer(64).await.unwrap();
            let mut n = 0u64;
            while let Some(d) = c.recv().await {
                d.ack();
                n += 1;
                if n % 1_000 == 0 {
                    // Slow: a pause every thousand messages.
                    actix_rt::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        let started = Instant::now();
        let mut peak = 0.0f64;
        let baseline = resident_mb();
        for i in 0..1_000_000u32 {
            q.send(vec![(i % 251) as u8; 64]).await.unwrap();
            if i % 50_000 == 0 {
                peak = peak.max(resident_mb());
                assert!(q.depth() + q.in_flight() <= 10_000, "bounded by the capacity");
            }
        }
        while q.stats().acked < 1_000_000 {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        peak = peak.max(resident_mb());
        println!(
            "flood: 1,000,000 messages in {:?}; resident {baseline:.1} MB at start, peak {peak:.1} MB",
            started.elapsed()
        );
        assert!(peak - baseline < 100.0, "memory grew by {:.1} MB", peak - baseline);
    });
}
