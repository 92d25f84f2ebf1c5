//! `/v1/streams`: event sourcing over HTTP (DESIGN §6.5, §7).
//!
//! - `POST /v1/streams/{stream}/events` with an `Expected-Version` header
//!   (`any`, `no_stream`, `exists` or a number; default `any`) and a body
//!   `[{"type", "data", "id"?, "metadata"?}]`: 201 with the stream's new
//!   version and the events' positions, 200 when the events were already
//!   stored (an idempotent repeat), 409 on a version conflict.
//! - `GET /v1/streams/{stream}?from=V&limit=N&direction=forward|backward`:
//!   `{"events": [...]}`; 404 when the stream has no events.
//! - `GET /v1/streams/$all?from=P&limit=N`: the global log.

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actorbus_actors::envelope::MessageId;
use actorbus_actors::store::{AppendError, Direction, EventMetadata, ExpectedVersion, NewEvent, RecordedEvent};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::State;

/// Largest `limit` a read accepts.
pub const MAX_READ: usize = 1_000;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/streams/{stream}/events", web::post().to(append)).route("/v1/streams/{stream}", web::get().to(read));
}

/// One event of an append body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    #[serde(rename = "type")]
    event_type: String,
    data: Value,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

fn expected_version(headers: &HeaderMap) -> Result<ExpectedVersion, ApiError> {
    let Some(raw) = headers.get("expected-version") else { return Ok(ExpectedVersion::Any) };
    raw.to_str().ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
        ApiError::bad_request("bad_header", "Expected-Version must be any, no_stream, exists or a number")
    })
}

fn event_in(n: usize, e: EventIn) -> Result<NewEvent, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_event", format!("event {n}: {m}"));
    if e.event_type.is_empty() || e.event_type.len() > 256 {
        return Err(bad("`type` must be 1 to 256 characters".into()));
    }
    let mut event = NewEvent::new(e.event_type, e.data);
    if let Some(id) = e.id {
        event = event.with_id(id.parse::<MessageId>().map_err(|_| bad(format!("`id` {id:?} is not a UUID")))?);
    }
    if let Some(metadata) = e.metadata {
        // Known fields (correlation_id, causation_id) are typed; anything
        // else must be a string and becomes a header.
        let mut meta = EventMetadata::default();
        let Value::Object(map) = metadata else { return Err(bad("`metadata` must be an object".into())) };
        for (key, value) in map {
            let text = value.as_str().ok_or_else(|| bad(format!("metadata `{key}` must be a string")))?;
            match key.as_str() {
                "correlation_id" | "causation_id" => {
                    let id = text.parse::<MessageId>().map_err(|_| bad(format!("metadata `{key}` is not a UUID")))?;
                    if key == "correlation_id" {
                        meta.correlation_id = Some(id);
                    } else {
                        meta.causation_id = Some(id);
                    }
                }
                _ => {
                    meta.headers.insert(key, text.to_owned());
                }
            }
        }
        event = event.with_metadata(meta);
    }
    Ok(event)
}

async fn append(
    state: web::Data<State>,
    stream: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    if stream.starts_with('$') {
        return Err(ApiError::bad_request("invalid_stream", "streams starting with `$` are reserved"));
    }
    let expected = expected_version(req.headers())?;
    let events: Vec<EventIn> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("malformed_json", format!("the body must be a JSON array of events: {e}"))
    })?;
    if events.is_empty() {
        return Err(ApiError::bad_request("invalid_event", "append at least one event"));
    }
    let events = events.into_iter().enumerate().map(|(n, e)| event_in(n, e)).collect::<Result<Vec<_>, _>>()?;
    let result = state.bus.event_store().append(stream.as_str(), expected, events).await.map_err(append_error)?;
    let status = if result.written { StatusCode::CREATED } else { StatusCode::OK };
    let body = json!({
        "stream": stream.as_str(),
        "version": result.version,
        "first_position": result.positions.as_ref().map(|p| *p.start()),
        "last_position": result.positions.as_ref().map(|p| *p.end()),
        "written": result.written,
    });
    Ok(HttpResponse::build(status).insert_header((header::LOCATION, format!("/v1/streams/{stream}"))).json(body))
}

fn append_error(e: AppendError) -> ApiError {
    let message = e.to_string();
    match e {
        AppendError::WrongExpectedVersion { .. } => {
            ApiError::new(StatusCode::CONFLICT, "wrong_expected_version", message)
        }
        AppendError::DuplicateEventId { .. } => ApiError::new(StatusCode::CONFLICT, "duplicate_event_id", message),
        AppendError::InvalidRequest(_) => ApiError::bad_request("invalid_event", message),
        AppendError::Store(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage", message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    from: Option<u64>,
    limit: Option<usize>,
    direction: Option<String>,
}

async fn read(
    state: web::Data<State>,
    stream: web::Path<String>,
    query: web::Query<ReadQuery>,
) -> Result<HttpResponse, ApiError> {
    let direction = match query.direction.as_deref() {
        None | Some("forward") => Direction::Forward,
        Some("backward") => Direction::Backward,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("direction must be forward or backward, not {other:?}"),
            ))
        }
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_READ {
        return Err(ApiError::bad_request("bad_query", format!("limit must be 1 to {MAX_READ}")));
    }
    let from = query.from.unwrap_or(if direction == Direction::Forward { 0 } else { u64::MAX });
    let store = state.bus.event_store();
    let storage = |e: actorbus_actors::store::StoreError| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage", e.to_string())
    };
    let events = if stream.as_str() == "$all" {
        store.read_all(from, direction, limit).await.map_err(storage)?
    } else {
        let events = store.read_stream(stream.as_str(), from, direction, limit).await.map_err(storage)?;
        if events.is_empty() && store.stream_version(stream.as_str()).await.map_err(storage)?.is_none() {
            return Err(ApiError::not_found("unknown_stream", format!("stream `{stream}` has no events")));
        }
        events
    };
    Ok(HttpResponse::Ok().json(json!({ "events": events.iter().map(event_out).collect::<Vec<_>>() })))
}

/// An event as the read answer shows it.
fn event_out(e: &RecordedEvent) -> Value {
    let mut metadata = serde_json::Map::new();
    if let Some(id) = e.metadata.correlation_id {
        metadata.insert("correlation_id".into(), json!(id.to_string()));
    }
    if let Some(id) = e.metadata.causation_id {
        metadata.insert("causation_id".into(), json!(id.to_string()));
    }
    for (k, v) in &e.metadata.headers {
        metadata.insert(k.clone(), json!(v));
    }
    json!({
        "id": e.id.to_string(),
        "stream": e.stream,
        "version": e.version,
        "position": e.position,
        "type": e.event_type,
        "data": e.data,
        "metadata": metadata,
        "timestamp": humantime::format_rfc3339_micros(e.timestamp.into()).to_string(),
    })
}
