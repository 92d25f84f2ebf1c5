//! `/v1/jobs`: asynchronous request-reply over HTTP (DESIGN §6.2).
//!
//! - `POST /v1/jobs/{kind}`: 202 + `Location` + `Retry-After` + the status.
//! - `GET /v1/jobs/{id}`: 200 while pending or running (with `Retry-After`),
//!   303 to the result once succeeded, 200 with the error once failed.
//! - `GET /v1/jobs/{id}/result`: the result, 404 before it exists.
//! - `DELETE /v1/jobs/{id}`: 202 cancelled, 409 when it already ended.

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actorbus_actors::jobs::{JobId, JobStatus, JobView};
use serde_json::{json, Value};

use super::error::ApiError;
use super::State;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/jobs/{kind}", web::post().to(submit))
        .route("/v1/jobs/{id}", web::get().to(status))
        .route("/v1/jobs/{id}", web::delete().to(cancel))
        .route("/v1/jobs/{id}/result", web::get().to(result));
}

fn rfc3339(t: actorbus_actors::envelope::Timestamp) -> String {
    humantime::format_rfc3339_millis(t.into()).to_string()
}

/// The status body: `{id, kind, status, progress, created_at, updated_at, error}`.
pub fn status_body(job: &JobView) -> Value {
    json!({
        "id": job.id.to_string(),
        "kind": job.kind,
        "status": job.status.as_str(),
        "progress": job.progress,
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
        "error": job.error,
    })
}

fn location(id: JobId) -> String {
    format!("/v1/jobs/{id}")
}

fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("unknown_job", format!("no job {raw:?} (job ids are UUIDs)")))
}

/// The `Idempotency-Key` header, if any: visible ASCII, at most 255 bytes.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let bad = || ApiError::bad_request("bad_header", "Idempotency-Key must be 1 to 255 visible ASCII characters");
    let text = value.to_str().map_err(|_| bad())?;
    if text.is_empty() || text.len() > 255 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(text.to_owned()))
}

async fn submit(
    state: web::Data<State>,
    kind: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(req.headers())?;
    let input: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("the body is not JSON: {e}")))?;
    let submitted = state.bus.jobs().submit(&kind, input, key).await?;
    let job = &submitted.job;
    let mut response = HttpResponse::Accepted();
    response
        .insert_header((header::LOCATION, location(job.id)))
        .insert_header((header::RETRY_AFTER, job.retry_after.as_secs().max(1).to_string()));
    if submitted.existing {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(response.json(status_body(job)))
}

async fn status(state: web::Data<State>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let job = state.bus.jobs().get(parse_id(&id)?).await?;
    let body = status_body(&job);
    Ok(match job.status {
        JobStatus::Pending | JobStatus::Running => HttpResponse::Ok()
            .insert_header((header::RETRY_AFTER, job.retry_after.as_secs().max(1).to_string()))
            .json(body),
        JobStatus::Succeeded => HttpResponse::build(StatusCode::SEE_OTHER)
            .insert_header((header::LOCATION, format!("{}/result", location(job.id))))
            .json(body),
        JobStatus::Failed | JobStatus::Cancelled => HttpResponse::Ok().json(body),
    })
}

async fn result(state: web::Data<State>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let job = state.bus.jobs().get(parse_id(&id)?).await?;
    match (job.status, job.result) {
        (JobStatus::Succeeded, Some(result)) => Ok(HttpResponse::Ok().json(result)),
        (status, _) => {
            Err(ApiError::not_found("no_result", format!("job {} has no result ({})", job.id, status.as_str())))
        }
    }
}

async fn cancel(state: web::Data<State>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let job = state.bus.jobs().cancel(parse_id(&id)?).await?;
    Ok(HttpResponse::Accepted().json(status_body(&job)))
}
