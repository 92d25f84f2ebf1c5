//! Saga status over HTTP: a program runs sagas on a data directory, then
//! `actorbus serve` on the same directory answers `GET /v1/sagas/{id}` from
//! the durable saga log.

#[path = "common/server.rs"]
mod server;

use std::time::Duration;

use actorbus::actors::saga::{SagaDefinition, SagaStatus, StepError};
use actorbus::Bus;
use server::Server;

/// Runs one saga that completes and one whose second step fails, and
/// returns their ids.
fn run_sagas(data: &std::path::Path) -> (String, String) {
    actix::System::new().block_on(async {
        let bus = Bus::builder().data_dir(data).build().expect("bus");
        let order = SagaDefinition::<Vec<String>>::new("order")
            .step("reserve", |mut d: Vec<String>, _| async move {
                d.push("reserved".into());
                Ok(d)
            })
            .compensate(|mut d: Vec<String>, _| async move {
                d.push("released".into());
                Ok(d)
            })
            .pivot("charge", |d: Vec<String>, _| async move {
                match d.first().map(String::as_str) {
                    Some("declined") => Err(StepError::permanent("card declined")),
                    _ => Ok(d),
                }
            });
        let sagas = bus.sagas().definition(order).start().await.expect("sagas");
        let saga = sagas.saga::<Vec<String>>("order").expect("saga");
        let ok = saga.run(vec!["ok".into()]).await.expect("run");
        let declined = saga.run(vec!["declined".into()]).await.expect("run");
        assert_eq!((ok.status, declined.status), (SagaStatus::Completed, SagaStatus::Compensated));
        bus.shutdown(Duration::from_secs(1)).await;
        (ok.id.to_string(), declined.id.to_string())
    })
}

#[test]
fn saga_status_and_history_from_the_durable_log() {
    let dir = tempfile::tempdir().expect("dir");
    let (ok, declined) = run_sagas(&dir.path().join("data"));
    let server = Server::start_in("", dir.path());

    let r = server.get(&format!("/v1/sagas/{declined}"));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let state = r.json();
    assert_eq!(state["id"], declined.as_str());
    assert_eq!(state["saga"], "order");
    assert_eq!(state["status"], "compensated");
    assert_eq!(state["error"], "card declined");
    assert_eq!(state["steps"], serde_json::json!(["reserve", "charge"]));
    assert_eq!(state["data"], serde_json::json!(["declined", "reserved", "released"]));
    let kinds: Vec<&str> =
        state["history"].as_array().unwrap().iter().map(|e| e["record"]["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "started",
            "step_started",
            "step_completed",
            "step_started",
            "step_failed",
            "compensating",
            "compensation_started",
            "compensation_completed",
            "compensated"
        ]
    );

    let r = server.get(&format!("/v1/sagas/{ok}"));
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("completed")));
    assert_eq!(r.json()["data"], serde_json::json!(["ok", "reserved"]));

    let r = server.get("/v1/sagas/01a2065c-3aed-7386-b51b-0ab22e573900");
    assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_saga"));
    let r = server.get("/v1/sagas/not-a-uuid");
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_id"));
}
