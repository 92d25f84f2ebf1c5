//! Request-reply: a checkout service asks a pricing service, with a timeout,
//! typed errors and the conversation's correlation id carried along.
//!
//! `cargo run --example request_reply`

use std::time::Duration;

use actorbus::{Bus, HandlerError, Request, RequestContext, RequestError, Service};

/// Ask the price of a product, in cents.
struct Quote {
    sku: String,
}
impl Request for Quote {
    type Response = u64;
}

/// Check out a basket: the total, in cents.
struct Checkout {
    skus: Vec<String>,
}
impl Request for Checkout {
    type Response = u64;
}

struct Pricing;
impl Service for Pricing {
    type Request = Quote;
    async fn call(&mut self, q: Quote, cx: RequestContext) -> Result<u64, HandlerError> {
        println!("  pricing  {:<8} correlation {}", q.sku, cx.correlation_id());
        match q.sku.as_str() {
            "book" => Ok(1_250),
            "pen" => Ok(199),
            "slow" => {
                actix_rt::time::sleep(Duration::from_millis(300)).await;
                Ok(1)
            }
            other => Err(HandlerError::new(format!("unknown sku {other}"))),
        }
    }
}

struct Shop {
    bus: Bus,
}
impl Service for Shop {
    type Request = Checkout;
    async fn call(&mut self, c: Checkout, cx: RequestContext) -> Result<u64, HandlerError> {
        println!("  checkout {} items, correlation {}", c.skus.len(), cx.correlation_id());
        let mut total = 0;
        for sku in c.skus {
            // Joins this conversation and never waits past its deadline.
            total += self.bus.request("pricing", Quote { sku }).await?;
        }
        Ok(total)
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().build()?;
    bus.service("pricing", || Pricing).start().await?;
    let b = bus.clone();
    bus.service("checkout", move || Shop { bus: b.clone() }).start().await?;

    println!("a basket:");
    let total = bus.request("checkout", Checkout { skus: vec!["book".into(), "pen".into()] }).await?;
    println!("  total {total} cents");
    assert_eq!(total, 1_449);

    println!("an unknown product:");
    let err = bus.request("checkout", Checkout { skus: vec!["lamp".into()] }).await.unwrap_err();
    println!("  error: {err}");
    assert!(matches!(err, RequestError::Failed(_)));

    println!("a slow answer with a 100 ms budget:");
    let err =
        bus.request("pricing", Quote { sku: "slow".into() }).timeout(Duration::from_millis(100)).await.unwrap_err();
    println!("  error: {err}");
    assert_eq!(err, RequestError::Timeout(Duration::from_millis(100)));

    println!("nobody home:");
    let err = bus.request("shipping", Quote { sku: "book".into() }).await.unwrap_err();
    println!("  error: {err}");

    let report = bus.shutdown(Duration::from_secs(1)).await;
    println!("shut down {} services in {:?}", report.services, report.took);
    Ok(())
}
