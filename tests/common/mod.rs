//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use actorbus::{Bus, SupervisionEvent};
use tokio::sync::broadcast;

/// The value of the Prometheus sample `name{labels}` (labels in the order the
/// exporter prints them, e.g. `kind="service",name="x"`), 0 when absent.
pub fn metric(bus: &Bus, name: &str, labels: &str) -> f64 {
    let text = bus.render_metrics().expect("actorbus installs the Prometheus recorder");
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("numeric sample"))
        .unwrap_or(0.0)
}

/// Waits (at most 5 s) for the first event that `pred` accepts.
pub async fn wait_event(
    events: &mut broadcast::Receiver<SupervisionEvent>,
    pred: impl Fn(&SupervisionEvent) -> bool,
) -> SupervisionEvent {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await;
    found.expect("expected supervision event within 5 s")
}
