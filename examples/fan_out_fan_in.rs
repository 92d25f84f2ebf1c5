//! Fan-out/fan-in: ask five shipping carriers for a quote and take the
//! cheapest, under different completion conditions. One carrier is slow,
//! one crashes.
//!
//! `cargo run --example fan_out_fan_in`

use std::time::Duration;

use actorbus::actors::scatter_gather::{Aggregator, GatherResult};
use actorbus::{service_fn, Bus, Request};

#[derive(Clone)]
struct ShippingQuote {
    kg: u32,
}
impl Request for ShippingQuote {
    type Response = u32;
}

fn show(label: &str, r: &GatherResult<Option<(String, u32)>>) {
    println!(
        "{label:<26} completed by {:<10} best {:<16} replied {:?} missing {:?} failed {:?}",
        r.completed_by.to_string(),
        format!("{:?}", r.aggregate),
        r.replied,
        r.missing,
        r.failed.iter().map(|(n, why)| format!("{n}: {why}")).collect::<Vec<_>>()
    );
}

fn cheapest() -> Aggregator<u32, Option<(String, u32)>> {
    Aggregator::fold(None, |best: Option<(String, u32)>, carrier, price| match best {
        Some((_, b)) if b <= price => best,
        _ => Some((carrier.to_owned(), price)),
    })
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().build()?;
    for (name, per_kg, delay_ms) in [("dhl", 9, 5), ("ups", 8, 10), ("fedex", 11, 1), ("postnl", 7, 400)] {
        bus.service(name, move || {
            service_fn(move |q: ShippingQuote, _| async move {
                actix_rt::time::sleep(Duration::from_millis(delay_ms)).await;
                Ok(q.kg * per_kg)
            })
        })
        .start()
        .await?;
    }
    bus.service("crashy", || service_fn(|_: ShippingQuote, _| async { panic!("carrier API changed") })).start().await?;
    let carriers = ["dhl", "ups", "fedex", "postnl", "crashy"];
    let ask =
        || bus.scatter("shipping", ShippingQuote { kg: 3 }).services(carriers).timeout(Duration::from_millis(200));

    show("all (200 ms timeout)", &ask().run(cheapest()).await?);
    show("first 2", &ask().first(2).run(cheapest()).await?);
    show("quorum (3 of 5)", &ask().quorum().run(cheapest()).await?);
    show("until a quote < 25", &ask().run(cheapest().until(|b| b.as_ref().is_some_and(|(_, p)| *p < 25))).await?);
    show("all (1 s timeout)", &ask().timeout(Duration::from_secs(1)).run(cheapest()).await?);
    Ok(())
}
