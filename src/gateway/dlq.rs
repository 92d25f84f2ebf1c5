//! `/v1/dlq`: the dead letter queue over HTTP (DESIGN §6.7).
//!
//! Reads need no token (see [`auth`](super::auth)); every mutation needs
//! `Authorization: Bearer <admin token>`.
//!
//! - `GET /v1/dlq?source=&reason=&since=&until=&after=&limit=`: `{"entries":
//!   [...], "next_after"}`, oldest first. `source` is `pattern/name`
//!   (`queue/orders`, `job/resize`; `pattern:name` works too) or a pattern
//!   alone (`queue`); `pattern` and `name` may also be given apart.
//!   `reason` is a reason code (`max_deliveries`, `expired`, `failed`,
//!   `panic`, `timeout`, `overflow`, `shutdown`, `claim_check`). `since`
//!   (inclusive) and `until` (exclusive) bound the last failure time: RFC
//!   3339 in UTC (`2026-11-23T09:00:00Z`) or milliseconds since the epoch.
//!   `limit` defaults to 100 and is capped at 1000; `next_after` is the last
//!   entry's id when the page is full: pass it as `after` for the next page.
//! - `GET /v1/dlq/{id}`: one entry; 404 unknown, 400 when the id is not a UUID.
//! - `POST /v1/dlq/{id}/redrive` (body optional: `{"to_queue": "name"}`):
//!   back to its source, or to that queue; 409 when the target refused it
//!   (the entry stays).
//! - `POST /v1/dlq/redrive` with the same filter fields as the list, plus
//!   `per_second` and `to_queue`, in a JSON body (`{}`: everything): a report
//!   `{"redriven", "failed", "redriven_ids", "failures": [{"id", "error"}]}`.
//!   It answers when the last entry was sent: at `per_second`, a large
//!   redrive holds the request for a while.
//! - `DELETE /v1/dlq/{id}`: `{"purged": 1}`; 404 unknown.
//! - `DELETE /v1/dlq?<filter>`: purge what the filter matches; a filter or
//!   `all=true` is required, so a bare `DELETE /v1/dlq` cannot empty the DLQ
//!   by accident.
//!
//! What a redrive does depends on the source: a queue's entry is enqueued
//! again (attempt 1); a job's entry (source `job/<kind>`, or a message of a
//! queue-backed job kind) resubmits the job under its id.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actorbus_actors::dlq::{DeadLetter, DlqError, DlqFilter, DlqSource, RedriveOptions, RedriveReport};
use actorbus_actors::envelope::{MessageId, Timestamp};
use serde_json::{json, Map, Value};

use super::auth::require_admin;
use super::error::ApiError;
use super::State;

/// Entries a list returns when it does not say.
const DEFAULT_LIMIT: usize = 100;
/// Most entries a list returns.
const MAX_LIMIT: usize = 1000;
/// Fastest rate a bulk redrive accepts.
const MAX_PER_SECOND: u64 = 100_000;
/// Reason codes (`FailureReason::code`).
const REASONS: [&str; 8] =
    ["panic", "failed", "expired", "timeout", "overflow", "max_deliveries", "shutdown", "claim_check"];

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/dlq", web::get().to(list))
        .route("/v1/dlq", web::delete().to(purge_matching))
        .route("/v1/dlq/redrive", web::post().to(redrive_matching))
        .route("/v1/dlq/{id}", web::get().to(get))
        .route("/v1/dlq/{id}", web::delete().to(purge_one))
        .route("/v1/dlq/{id}/redrive", web::post().to(redrive_one));
}

fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_millis(t.into()).to_string()
}

/// An entry as the API shows it.
pub fn entry_body(l: &DeadLetter) -> Value {
    let errors: Vec<Value> =
        l.errors.iter().map(|e| json!({"at": rfc3339(e.at), "attempt": e.attempt, "reason": e.reason})).collect();
    json!({
        "id": l.id.to_string(),
        "message_id": l.message_id.map(|m| m.to_string()),
        "source": format!("{}/{}", l.source.pattern, l.source.name),
        "pattern": l.source.pattern,
        "name": l.source.name,
        "reason": l.reason.code(),
        "error": l.reason.to_string(),
        "attempts": l.attempts,
        "first_failed_at": rfc3339(l.first_failed_at),
        "last_failed_at": rfc3339(l.last_failed_at),
        "errors": errors,
        "envelope": l.envelope,
    })
}

fn dlq_error(e: DlqError) -> ApiError {
    match e {
        DlqError::NotFound(id) => ApiError::not_found("unknown_entry", format!("no dead letter {id}")),
        DlqError::Store(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage", e.to_string()),
    }
}

fn parse_id(raw: &str) -> Result<MessageId, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request("invalid_id", format!("dead letter id {raw:?} is not a UUID")))
}

/// The query string as a JSON object of strings (a repeated key: the last).
fn query(req: &HttpRequest) -> Result<Map<String, Value>, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    Ok(pairs.into_inner().into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

/// The body as a JSON object; an empty body is `{}`.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("invalid_body", "the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request("malformed_json", format!("the body is not JSON: {e}"))),
    }
}

fn string<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request("invalid_filter", format!("`{key}` must be a non-empty string"))),
    }
}

/// A positive integer given as a JSON number or a decimal string.
fn integer(map: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    let bad = || ApiError::bad_request("invalid_filter", format!("`{key}` must be a non-negative integer"));
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(bad),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// RFC 3339 (UTC) or milliseconds since the epoch.
fn time(map: &Map<String, Value>, key: &str) -> Result<Option<Timestamp>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_filter",
            format!("`{key}` must be an RFC 3339 UTC time (2026-11-23T09:00:00Z) or milliseconds since the epoch"),
        )
    };
    let millis = |ms: u64| Ok(Some(Timestamp(ms.saturating_mul(1000))));
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map_or_else(|| Err(bad()), millis),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_or_else(|_| Err(bad()), millis)
        }
        Some(Value::String(s)) => humantime::parse_rfc3339(s).map(|t| Some(Timestamp::from(t))).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// A filter from `map`, which may hold nothing but filter keys and `extra`.
/// Also says whether any filter key was given.
fn filter(map: &Map<String, Value>, extra: &[&str]) -> Result<(DlqFilter, bool), ApiError> {
    const KEYS: [&str; 7] = ["source", "pattern", "name", "reason", "since", "until", "after"];
    if let Some(unknown) = map.keys().find(|k| !KEYS.contains(&k.as_str()) && !extra.contains(&k.as_str())) {
        let mut known: Vec<&str> = KEYS.to_vec();
        known.extend_from_slice(extra);
        return Err(ApiError::bad_request(
            "invalid_filter",
            format!("unknown field `{unknown}` (known: {})", known.join(", ")),
        ));
    }
    let mut f = DlqFilter::default();
    if let Some(source) = string(map, "source")? {
        match source.split_once(['/', ':']) {
            Some((pattern, name)) if !pattern.is_empty() && !name.is_empty() => {
                f.pattern = Some(pattern.to_owned());
                f.name = Some(name.to_owned());
            }
            Some(_) => {
                return Err(ApiError::bad_request("invalid_filter", "`source` is `pattern/name` or a pattern alone"))
            }
            None => f.pattern = Some(source.to_owned()),
        }
    }
    if let Some(pattern) = string(map, "pattern")? {
        f.pattern = Some(pattern.to_owned());
    }
    if let Some(name) = string(map, "name")? {
        f.name = Some(name.to_owned());
    }
    if let Some(reason) = string(map, "reason")? {
        if !REASONS.contains(&reason) {
            return Err(ApiError::bad_request(
                "invalid_filter",
                format!("unknown reason `{reason}` (one of {})", REASONS.join(", ")),
            ));
        }
        f.reason = Some(reason.to_owned());
    }
    f.from = time(map, "since")?;
    f.to = time(map, "until")?;
    if let Some(after) = string(map, "after")? {
        f.after = Some(parse_id(after)?);
    }
    let given = KEYS.iter().any(|k| map.get(*k).is_some_and(|v| !v.is_null()));
    Ok((f, given))
}

async fn list(state: web::Data<State>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let map = query(&req)?;
    let (mut f, _) = filter(&map, &["limit"])?;
    let limit = match integer(&map, "limit")? {
        None => DEFAULT_LIMIT,
        Some(0) => return Err(ApiError::bad_request("invalid_filter", "`limit` must be at least 1")),
        Some(n) => usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
    };
    f.limit = Some(limit);
    let entries = state.bus.dlq().list(f).await.map_err(dlq_error)?;
    let next = if entries.len() == limit { entries.last().map(|l| l.id.to_string()) } else { None };
    let entries: Vec<Value> = entries.iter().map(entry_body).collect();
    Ok(HttpResponse::Ok().json(json!({"entries": entries, "next_after": next})))
}

async fn get(state: web::Data<State>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    match state.bus.dlq().get(id).await.map_err(dlq_error)? {
        Some(letter) => Ok(HttpResponse::Ok().json(entry_body(&letter))),
        None => Err(dlq_error(DlqError::NotFound(id))),
    }
}

/// Where a redrive goes: `to_queue` (a queue of this server), or each
/// entry's source.
fn redrive_options(state: &State, map: &Map<String, Value>) -> Result<RedriveOptions, ApiError> {
    let mut options = match string(map, "to_queue")? {
        Some(queue) => {
            if !state.bus.dlq().has_redrive_target(&DlqSource::queue(queue)) {
                return Err(ApiError::not_found("unknown_queue", format!("no queue named `{queue}`")));
            }
            RedriveOptions::to_target(DlqSource::queue(queue))
        }
        None => RedriveOptions::to_source(),
    };
    if let Some(rate) = integer(map, "per_second")? {
        if rate == 0 || rate > MAX_PER_SECOND {
            return Err(ApiError::bad_request(
                "invalid_filter",
                format!("`per_second` must be from 1 to {MAX_PER_SECOND}"),
            ));
        }
        options = options.per_second(u32::try_from(rate).unwrap_or(u32::MAX));
    }
    Ok(options)
}

fn report_body(report: &RedriveReport) -> Value {
    let ids: Vec<String> = report.redriven.iter().map(ToString::to_string).collect();
    let failures: Vec<Value> =
        report.failed.iter().map(|(id, why)| json!({"id": id.to_string(), "error": why})).collect();
    json!({
        "redriven": report.redriven.len(),
        "failed": report.failed.len(),
        "redriven_ids": ids,
        "failures": failures,
    })
}

async fn redrive_one(
    state: web::Data<State>,
    id: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let id = parse_id(&id)?;
    let map = body_object(&body)?;
    if let Some(unknown) = map.keys().find(|k| k.as_str() != "to_queue") {
        return Err(ApiError::bad_request("invalid_body", format!("unknown field `{unknown}` (known: to_queue)")));
    }
    let options = redrive_options(&state, &map)?;
    let report = state.bus.dlq().redrive(id, options).await.map_err(dlq_error)?;
    if let Some((_, why)) = report.failed.first() {
        return Err(ApiError::new(StatusCode::CONFLICT, "redrive_failed", why.clone()));
    }
    Ok(HttpResponse::Ok().json(report_body(&report)))
}

async fn redrive_matching(
    state: web::Data<State>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let map = body_object(&body)?;
    let (f, _) = filter(&map, &["per_second", "to_queue"])?;
    let options = redrive_options(&state, &map)?;
    let report = state.bus.dlq().redrive(f, options).await.map_err(dlq_error)?;
    Ok(HttpResponse::Ok().json(report_body(&report)))
}

async fn purge_one(state: web::Data<State>, id: web::Path<String>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let id = parse_id(&id)?;
    match state.bus.dlq().purge(id).await.map_err(dlq_error)? {
        0 => Err(dlq_error(DlqError::NotFound(id))),
        n => Ok(HttpResponse::Ok().json(json!({"purged": n}))),
    }
}

async fn purge_matching(state: web::Data<State>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let map = query(&req)?;
    let (f, given) = filter(&map, &["all"])?;
    let all = match string(&map, "all")? {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("invalid_filter", "`all` is `true` or `false`")),
    };
    if !given && !all {
        return Err(ApiError::bad_request(
            "filter_required",
            "purging needs a filter (source, reason, since, until, …) or `all=true` to empty the whole DLQ",
        ));
    }
    let n = state.bus.dlq().purge(f).await.map_err(dlq_error)?;
    Ok(HttpResponse::Ok().json(json!({"purged": n})))
}
