//! `/v1/jobs`: asynchronous request-reply over HTTP (DESIGN §6.2).
//!
//! - `POST /v1/jobs/{kind}`: 202 + `Location` + `Retry-After` + the status.
//! - `GET /v1/jobs/{id}`: 200 while pending or running (with `Retry-After`),
//!   303 to the result once succeeded, 200 with the error once failed.
//! - `GET /v1/jobs/{id}/result`: the result, 404 before it exists.
//! - `DELETE /v1/jobs/{id}`: 202 cancelled, 409 when it already ended.
//!
//! External workers of a queue-backed kind (`worker = "queue:<name>"`) take
//! `{"job_id", "kind", "input"}` messages from the queue and report:
//!
//! - `POST /v1/jobs/{id}/progress` `{"progress": 0-100, "message": "..."}`:
//!   progress is an integer percent (fractions are rounded down), as in the
//!   status body; the first report turns a pending job `running`.
//! - `POST /v1/jobs/{id}/complete` `{"result": <any JSON>}`: `succeeded`.
//! - `POST /v1/jobs/{id}/fail` `{"error": "..."}`: `failed` (and
//!   dead-lettered with source `job:<kind>`).
//!
//! Each answers 200 with the job's status; 404 for an unknown job, 409
//! (`already_ended`) once the job ended or was cancelled (the worker should
//! ack its message and move on), 409 (`not_external`) for a job that an
//! in-process worker runs. Reports need no token, as submissions do not.

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actorbus_actors::jobs::{JobId, JobStatus, JobUpdate, JobView};
use serde_json::{json, Value};

use super::error::ApiError;
use super::State;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/jobs/{kind}", web::post().to(submit))
        .route("/v1/jobs/{id}", web::get().to(status))
        .route("/v1/jobs/{id}", web::delete().to(cancel))
        .route("/v1/jobs/{id}/result", web::get().to(result))
        .route("/v1/jobs/{id}/progress", web::post().to(progress))
        .route("/v1/jobs/{id}/complete", web::post().to(complete))
        .route("/v1/jobs/{id}/fail", web::post().to(fail));
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
        "message": job.message,
        "attempts": job.attempts,
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

/// The body as a JSON object.
fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("invalid_body", "the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request("malformed_json", format!("the body is not JSON: {e}"))),
    }
}

/// Longest progress message or error text kept.
const MAX_TEXT: usize = 4096;

fn text_field(map: &serde_json::Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_TEXT => Ok(Some(s.clone())),
        Some(_) => {
            Err(ApiError::bad_request("invalid_body", format!("`{name}` must be a string of at most {MAX_TEXT} bytes")))
        }
    }
}

async fn report(state: &State, id: &str, update: JobUpdate) -> Result<HttpResponse, ApiError> {
    let job = state.bus.jobs().report(parse_id(id)?, update).await?;
    Ok(HttpResponse::Ok().json(status_body(&job)))
}

async fn progress(state: web::Data<State>, id: web::Path<String>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let map = object(&body)?;
    let percent =
        map.get("progress").and_then(Value::as_f64).filter(|p| (0.0..=100.0).contains(p)).ok_or_else(|| {
            ApiError::bad_request("invalid_body", "`progress` must be a number from 0 to 100 (percent)")
        })?;
    let message = text_field(&map, "message")?;
    // In range, so the cast only drops the fraction.
    let update = JobUpdate::Progress { percent: percent.floor() as u8, message };
    report(&state, &id, update).await
}

async fn complete(state: web::Data<State>, id: web::Path<String>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let mut map = object(&body)?;
    let result = map
        .remove("result")
        .ok_or_else(|| ApiError::bad_request("invalid_body", "`result` is required (any JSON value)"))?;
    report(&state, &id, JobUpdate::Complete(result)).await
}

async fn fail(state: web::Data<State>, id: web::Path<String>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let map = object(&body)?;
    let error = text_field(&map, "error")?
        .filter(|e| !e.is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid_body", "`error` is required: a non-empty string"))?;
    report(&state, &id, JobUpdate::Fail(error)).await
}
