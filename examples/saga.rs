//! A saga: order → reserve stock → charge card → ship.
//!
//! Three orders run through the same saga definition:
//!
//! 1. a good order: every step succeeds, the saga completes;
//! 2. a declined card: `charge` (the pivot) fails permanently, so the
//!    reservation made by `reserve` is compensated (the stock comes back)
//!    and the saga ends compensated;
//! 3. a busy carrier: `ship` fails once with a transient error and is
//!    retried with the same idempotency key, and the saga completes.
//!
//! Each saga's log is printed as a timeline.
//!
//! ```text
//! cargo run --example saga
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actorbus::actors::saga::{RetryPolicy, SagaDefinition, SagaStatus, StepContext, StepError};
use actorbus::Bus;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Order {
    item: String,
    quantity: u32,
    card: String,
    reservation: Option<String>,
    payment: Option<String>,
    tracking: Option<String>,
}

/// The services the saga calls: a warehouse, a payment provider and a
/// carrier, each deduplicating calls by idempotency key as real services
/// must for at-least-once steps.
#[derive(Default)]
struct Services {
    stock: HashMap<String, u32>,
    seen: HashMap<String, String>,
    carrier_calls: u32,
}

type Shared = Arc<Mutex<Services>>;

fn lock(services: &Shared) -> std::sync::MutexGuard<'_, Services> {
    services.lock().unwrap_or_else(|p| p.into_inner())
}

fn definition(services: &Shared) -> SagaDefinition<Order> {
    let (reserve, release, charge, ship) = (services.clone(), services.clone(), services.clone(), services.clone());
    SagaDefinition::new("order")
        .step("reserve_stock", move |mut order: Order, cx: StepContext| {
            let services = reserve.clone();
            async move {
                let mut s = lock(&services);
                if let Some(done) = s.seen.get(&cx.idempotency_key) {
                    order.reservation = Some(done.clone());
                    return Ok(order);
                }
                let left = s.stock.get(&order.item).copied().unwrap_or(0);
                if left < order.quantity {
                    return Err(StepError::permanent(format!("only {left} {} left", order.item)));
                }
                s.stock.insert(order.item.clone(), left - order.quantity);
                let id = cx.saga_id.to_string();
                let reservation = format!("R-{}", &id[id.len() - 6..]);
                s.seen.insert(cx.idempotency_key.clone(), reservation.clone());
                order.reservation = Some(reservation);
                Ok(order)
            }
        })
        .compensate(move |mut order: Order, cx: StepContext| {
            let services = release.clone();
            async move {
                let mut s = lock(&services);
                if s.seen.insert(cx.idempotency_key.clone(), "released".into()).is_none() {
                    *s.stock.entry(order.item.clone()).or_default() += order.quantity;
                }
                order.reservation = None;
                Ok(order)
            }
        })
        .pivot("charge_card", move |mut order: Order, cx: StepContext| {
            let services = charge.clone();
            async move {
                if order.card.starts_with("4000") {
                    return Err(StepError::permanent("card declined"));
                }
                let mut s = lock(&services);
                let payment = s
                    .seen
                    .entry(cx.idempotency_key.clone())
                    .or_insert_with(|| format!("P-{}", &order.card[order.card.len() - 4..]));
                order.payment = Some(payment.clone());
                Ok(order)
            }
        })
        .retryable("ship", move |mut order: Order, cx: StepContext| {
            let services = ship.clone();
            async move {
                let mut s = lock(&services);
                s.carrier_calls += 1;
                if order.item == "piano" && cx.attempt == 1 {
                    return Err(StepError::transient("carrier busy"));
                }
                order.tracking = Some(format!("T-{}", s.carrier_calls));
                Ok(order)
            }
        })
        .retry(RetryPolicy::attempts(5, Duration::from_millis(20)))
}

fn order(item: &str, quantity: u32, card: &str) -> Order {
    Order { item: item.into(), quantity, card: card.into(), reservation: None, payment: None, tracking: None }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let services: Shared = Arc::default();
    lock(&services).stock.extend([("book".to_string(), 10), ("piano".to_string(), 2)]);

    let bus = Bus::builder().build()?;
    let sagas = bus.sagas().definition(definition(&services)).start().await?;
    let saga = sagas.saga::<Order>("order")?;

    let orders = [
        ("a good order", order("book", 3, "5555 4444 3333 1111"), SagaStatus::Completed),
        ("a declined card", order("book", 4, "4000 0000 0000 0002"), SagaStatus::Compensated),
        ("a busy carrier", order("piano", 1, "5555 4444 3333 1111"), SagaStatus::Completed),
    ];
    for (title, data, expected) in orders {
        let outcome = saga.run(data).await?;
        let state = sagas.status(outcome.id).await?.ok_or("saga not in the log")?;
        println!("── {title}: saga {} ended {}", outcome.id, outcome.status.as_str());
        print!("{}", state.timeline());
        println!(
            "   reservation {:?}, payment {:?}, tracking {:?}\n",
            outcome.data.reservation, outcome.data.payment, outcome.data.tracking
        );
        if outcome.status != expected {
            return Err(format!("{title}: expected {expected:?}, got {:?}", outcome.status).into());
        }
    }

    let stock = lock(&services).stock.clone();
    println!("stock left: book {} (10 - 3; the declined order's 4 came back), piano {}", stock["book"], stock["piano"]);
    if stock["book"] != 7 || stock["piano"] != 1 {
        return Err("stock does not add up".into());
    }
    bus.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
