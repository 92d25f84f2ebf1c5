//! Dead letter queue: poison and expired messages land there with their
//! history; an operator inspects, redrives and purges.
//!
//! `cargo run --example dead_letter_queue`

use std::time::Duration;

use actorbus::actors::dlq::{DlqFilter, DlqSelector, RedriveOptions};
use actorbus::actors::queue::RetryPolicy;
use actorbus::{Bus, Envelope};

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("actorbus-dlq-example-{}", std::process::id()));
    let bus = Bus::builder().data_dir(&dir).build()?; // the DLQ is durable: dlq.sqlite3
    let emails = bus.queue::<String>("emails").max_deliveries(2).retry(RetryPolicy::IMMEDIATE).start()?;
    emails.send("to: nobody@invalid".into()).await?;
    emails.send_envelope(Envelope::new("stale digest".to_owned()).with_timeout(Duration::from_millis(10))).await?;
    actix_rt::time::sleep(Duration::from_millis(50)).await;

    let mut consumer = emails.consumer(1).await?;
    for _ in 0..2 {
        if let Some(d) = consumer.recv().await {
            println!("attempt {} failed", d.attempt());
            d.nack();
        }
    }
    while emails.stats().dead_lettered < 2 {
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    for l in bus.dlq().list(DlqFilter::default()).await? {
        println!("{} from {} reason={} attempts={} history={:?}", l.id, l.source, l.reason, l.attempts, l.errors);
    }
    // Redrive the poison message after "fixing" the consumer, purge the rest.
    let poison = DlqFilter::default().source("queue", "emails").reason("max_deliveries");
    let report = bus.dlq().redrive(poison, RedriveOptions::to_source().per_second(10)).await?;
    println!("redriven: {:?}", report.redriven);
    if let Some(d) = consumer.recv().await {
        println!("back again, attempt {}: {}", d.attempt(), d.payload());
        d.ack();
    }
    println!("purged {}", bus.dlq().purge(DlqSelector::all()).await?);
    drop(bus);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
