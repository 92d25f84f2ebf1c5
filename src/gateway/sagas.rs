//! `/v1/sagas`: saga status and history over HTTP (DESIGN §6.8, §7).
//!
//! - `GET /v1/sagas/{id}`: the saga's state — `{"id", "saga", "status",
//!   "step", "data", "error", "steps", "started_at", "updated_at",
//!   "history"}`, timestamps in microseconds since the epoch, history
//!   oldest first; 404 when the log does not hold the saga (never started,
//!   or forgotten by an in-memory log) or when this runtime runs no saga
//!   coordinator; 400 when the id is not a UUID.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use actorbus_actors::saga::SagaId;

use super::error::ApiError;
use super::State;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/sagas/{id}", web::get().to(status));
}

async fn status(state: web::Data<State>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id: SagaId = id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_id", format!("saga id {:?} is not a UUID", id.as_str())))?;
    let unknown = || ApiError::not_found("unknown_saga", format!("no saga {id}"));
    let sagas = state.bus.saga_coordinator().ok_or_else(unknown)?;
    let saga = sagas
        .status(id)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage", e.to_string()))?
        .ok_or_else(unknown)?;
    Ok(HttpResponse::Ok().json(saga))
}
