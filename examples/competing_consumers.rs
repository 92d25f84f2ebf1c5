//! Competing consumers: a pool of workers on two arbiters drains one queue;
//! a worker that panics is replaced; partition keys keep per-customer order.
//!
//! `cargo run --example competing_consumers`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actorbus::actors::pool::handler_fn;
use actorbus::{Bus, Envelope};

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().worker_arbiters(2).build()?;
    let payments = bus.queue::<u64>("payments").partition_by_header("customer").start()?;
    let handled = Arc::new(AtomicU64::new(0));
    let count = handled.clone();
    let pool = bus
        .consumer_pool(&payments, move || {
            let count = count.clone();
            handler_fn(move |env: Envelope<u64>| {
                if env.payload == 13 && env.attempt == 1 {
                    panic!("worker crashed on payment 13");
                }
                count.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            })
        })
        .scale(2, 8)
        .start()
        .await?;
    for n in 0..1_000u64 {
        let env = Envelope::new(n).with_header("customer", format!("c{}", n % 20));
        payments.send_envelope(env).await?;
    }
    while payments.stats().acked < 1_000 {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "handled {} payments with up to {} workers; {} worker(s) replaced after a panic",
        handled.load(Ordering::Relaxed),
        pool.workers(),
        pool.restarts()
    );
    pool.stop().await;
    Ok(())
}
