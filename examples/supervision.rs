//! Supervision: a panicking handler is a typed error for its caller, the
//! service's state is rebuilt, one-for-all restarts the siblings, and a
//! supervisor that exceeds its restart intensity escalates.
//!
//! `cargo run --example supervision`

use std::time::Duration;

use actorbus::{Backoff, Bus, HandlerError, Request, RequestContext, Restart, Service, Strategy, SupervisionEvent};

/// Count, or crash when asked to.
struct Tick {
    crash: bool,
}
impl Request for Tick {
    type Response = u32;
}

struct Counter {
    name: &'static str,
    ticks: u32,
}
impl Service for Counter {
    type Request = Tick;
    async fn call(&mut self, t: Tick, _: RequestContext) -> Result<u32, HandlerError> {
        if t.crash {
            panic!("{} was asked to crash", self.name);
        }
        self.ticks += 1;
        Ok(self.ticks)
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().build()?;
    let mut events = bus.supervision_events();
    actix::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                SupervisionEvent::Exited { path, exit } => println!("  [event] {path} exited: {exit}"),
                SupervisionEvent::Restarting { path, delay } => println!("  [event] {path} restarts in {delay:?}"),
                SupervisionEvent::Stopped { path } => println!("  [event] {path} stopped"),
                SupervisionEvent::Escalated { supervisor, cause } => {
                    println!("  [event] {supervisor} escalated: {cause}")
                }
            }
        }
    });

    // Two services that share fate: when one crashes, both restart.
    let pair = bus
        .supervisor("pair")
        .strategy(Strategy::OneForAll)
        .intensity(2, Duration::from_secs(10))
        .backoff(Backoff::NONE)
        .restart(Restart::Temporary)
        .start()
        .await?;
    let left = pair.service("left", || Counter { name: "left", ticks: 0 }).start().await?;
    let right = pair.service("right", || Counter { name: "right", ticks: 0 }).start().await?;

    println!("both count:");
    for _ in 0..3 {
        left.request(Tick { crash: false }).await?;
    }
    println!(
        "  left {} right {}",
        left.request(Tick { crash: false }).await?,
        right.request(Tick { crash: false }).await?
    );

    println!("left crashes; its caller gets a typed error:");
    let err = left.request(Tick { crash: true }).await.unwrap_err();
    println!("  error: {err}");
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    println!(
        "  after one-for-all: left {} right {}",
        left.request(Tick { crash: false }).await?,
        right.request(Tick { crash: false }).await?
    );

    println!("two more crashes exceed 2 restarts in 10 s; the supervisor gives up:");
    for _ in 0..2 {
        let _ = left.request(Tick { crash: true }).await;
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let err = right.request(Tick { crash: false }).await.unwrap_err();
    println!("  right is now unavailable: {err}");

    bus.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
