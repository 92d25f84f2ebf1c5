//! Priority queue: urgent messages first, FIFO within a level, and aging so
//! that low priorities are not starved.
//!
//! `cargo run --example priority_queue`

use std::time::Duration;

use actorbus::{Bus, Envelope, Priority};

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().build()?;
    let tickets = bus.queue::<String>("tickets").priority(Some(Duration::from_millis(50))).start()?;
    for (text, level) in [("newsletter", 0), ("outage", 9), ("password reset", 5), ("billing", 5), ("db down", 9)] {
        tickets.send_envelope(Envelope::new(text.to_owned()).with_priority(Priority::new(level)?)).await?;
    }
    let mut consumer = tickets.consumer(1).await?;
    for _ in 0..5 {
        let Some(d) = consumer.recv().await else { break };
        println!("level {} {}", d.envelope().priority.get(), d.payload());
        d.ack();
    }
    // Aging: a level-0 message waiting 450 ms is treated as level 9.
    tickets.send_envelope(Envelope::new("old low".to_owned()).with_priority(Priority::MIN)).await?;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    tickets.send_envelope(Envelope::new("fresh urgent".to_owned()).with_priority(Priority::MAX)).await?;
    for _ in 0..2 {
        let Some(d) = consumer.recv().await else { break };
        println!("after aging: level {} {}", d.envelope().priority.get(), d.payload());
        d.ack();
    }
    Ok(())
}
