//! Point-to-point: a producer, a queue, a consumer that acks, nacks and
//! rejects.
//!
//! `cargo run --example point_to_point`

use std::time::Duration;

use actorbus::actors::dlq::DlqFilter;
use actorbus::Bus;

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().build()?;
    let orders = bus.queue::<String>("orders").max_deliveries(3).visibility_timeout(Duration::from_secs(5)).start()?;
    for order in ["book", "flaky lamp", "broken chair", "pen"] {
        orders.send(order.to_owned()).await?;
    }
    let mut consumer = orders.consumer(4).await?;
    let mut settled = 0;
    while settled < 4 {
        let Some(d) = consumer.recv().await else { break };
        match (d.payload().as_str(), d.attempt()) {
            ("flaky lamp", 1) => {
                println!("nack    {} (attempt {}), will come back", d.payload(), d.attempt());
                d.nack();
            }
            ("broken chair", _) => {
                println!("reject  {}: straight to the dead letter queue", d.payload());
                d.reject("item discontinued");
                settled += 1;
            }
            _ => {
                println!("ack     {} (attempt {})", d.payload(), d.attempt());
                d.ack();
                settled += 1;
            }
        }
    }
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    println!("stats: {:?}", orders.stats());
    for l in bus.dlq().list(DlqFilter::default().source("queue", "orders")).await? {
        println!("dead letter: {} reason={} payload={}", l.id, l.reason, l.envelope["payload"]);
    }
    Ok(())
}
