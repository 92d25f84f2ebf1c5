//! Publish-subscribe: order events on `orders.<region>.<event>` topics,
//! subscribers with NATS-style wildcards, a filter, a slow subscriber that
//! drops the oldest, and an actor subscriber.
//!
//! `cargo run --example pub_sub`

use std::time::Duration;

use actix::prelude::*;
use actorbus::actors::topic::Published;
use actorbus::{Bus, Envelope, OverflowPolicy};

#[derive(Clone, Debug, serde::Serialize)]
struct Order {
    id: u32,
    total_cents: u64,
}

/// An actor subscriber: the audit log.
struct Audit {
    seen: usize,
}
impl Actor for Audit {
    type Context = Context<Self>;
}
impl Handler<Published<Order>> for Audit {
    type Result = ();
    fn handle(&mut self, msg: Published<Order>, _: &mut Context<Self>) {
        self.seen += 1;
        println!("  audit     #{} order {} ({})", self.seen, msg.envelope.payload.id, msg.subscription);
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().build()?;

    // `*` is one token, `>` the rest.
    let mut eu = bus.subscribe::<Order>("orders.eu.*").start()?;
    let mut big =
        bus.subscribe::<Order>("orders.>").filter(|e: &Envelope<Order>| e.payload.total_cents >= 10_000).start()?;
    // A dashboard that only cares about the latest: a small buffer that
    // drops the oldest instead of slowing anyone down.
    let mut dashboard =
        bus.subscribe::<Order>("orders.*.created").capacity(2).overflow(OverflowPolicy::DropOldest).start()?;
    bus.subscribe::<Order>("orders.>").recipient(Audit { seen: 0 }.start().recipient())?;

    let eu_created = bus.topic::<Order>("orders.eu.created")?;
    let us_created = bus.topic::<Order>("orders.us.created")?;
    let eu_paid = bus.topic::<Order>("orders.eu.paid")?;

    println!("publishing 5 orders");
    for (topic, id, total_cents) in [
        (&eu_created, 1, 2_500),
        (&us_created, 2, 40_000),
        (&eu_paid, 1, 2_500),
        (&eu_created, 3, 12_000),
        (&us_created, 4, 900),
    ] {
        let r = topic.publish(Order { id, total_cents }).await?;
        println!("  {:<18} order {id}: {} subscription(s) got it, {} filtered", topic.name(), r.delivered, r.filtered);
    }
    actix_rt::time::sleep(Duration::from_millis(20)).await;

    let drain = |sub: &actorbus::actors::topic::Subscription<Order>| sub.stats().buffered;
    let show = |label: &str, ids: Vec<u32>| println!("  {label:<10} {ids:?}");
    let mut take = Vec::new();
    for _ in 0..drain(&eu) {
        take.push(eu.next().await.ok_or("closed")?.payload.id);
    }
    show("eu.*", std::mem::take(&mut take));
    for _ in 0..drain(&big) {
        take.push(big.next().await.ok_or("closed")?.payload.id);
    }
    show("big (>=100)", std::mem::take(&mut take));
    let lost = dashboard.stats().lost;
    for _ in 0..drain(&dashboard) {
        take.push(dashboard.next().await.ok_or("closed")?.payload.id);
    }
    show("dashboard", take);
    println!("  dashboard lost {lost} to drop_oldest (counted in actorbus_topic_dropped_total)");
    Ok(())
}
