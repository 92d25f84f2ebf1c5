//! `/v1/topics`: publish-subscribe over HTTP (DESIGN §6.4, §7).
//!
//! - `POST /v1/topics/{topic}` with the enqueue body (`{"payload",
//!   "priority"?, "deadline_ms"?, "headers"?}`): 202 `{"id", "subscribers",
//!   "delivered", "durable"}`: the subscriptions attached when it was
//!   published, those that buffered it, and the durable subscriptions
//!   (bound queues) that stored it. Only topics of JSON payloads that exist
//!   (the config's `[[topics]]`, or ones an embedding program created) are
//!   served: others are 404 `unknown_topic`, so a typo does not publish into
//!   the void.
//!
//! Durable subscriptions store the message before the publish answers. A
//! bound queue that refuses it (full under `reject`, closed) makes the
//! publish 503 `durable_refused`; one that stays full (under `block`) for
//! [`PUBLISH_WAIT`] makes it 503 `timeout`. Either way the publisher may
//! publish again: queues that had stored the first attempt get it twice
//! (at-least-once). Plain subscribers whose buffer is full under `reject`
//! make it 429 `subscriber_full` (the others got it).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use actorbus_actors::topic::{PublishError, TopicHandle};
use serde_json::{json, Value};

use super::error::ApiError;
use super::queues::message_in;
use super::State;

/// How long a publish waits for its durable subscriptions (and `block`
/// subscribers) before it answers 503.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(2);

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/v1/topics").route("/{topic}", web::post().to(publish)));
}

fn topic_of(state: &State, name: &str) -> Result<TopicHandle<Value>, ApiError> {
    state
        .bus
        .topics()
        .get::<Value>(name)
        .map_err(|_| ApiError::not_found("unknown_topic", format!("no topic named {name:?}")))
}

async fn publish(
    state: web::Data<State>,
    topic: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let topic = topic_of(&state, &topic)?;
    let envelope = message_in(&body)?;
    let published = tokio::time::timeout(PUBLISH_WAIT, topic.publish_envelope(envelope)).await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("topic `{}`: a subscriber stayed full for {} ms", topic.name(), PUBLISH_WAIT.as_millis()),
        )
    })?;
    let receipt = published.map_err(|e| {
        let message = e.to_string();
        match e {
            PublishError::Durable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "durable_refused", message),
            PublishError::Rejected { .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "subscriber_full", message),
            PublishError::ClaimCheck(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "claim_check", message),
            PublishError::InvalidSubject(_) => ApiError::bad_request("invalid_topic", message),
        }
    })?;
    Ok(HttpResponse::Accepted().json(json!({
        "id": receipt.id.to_string(),
        "subscribers": receipt.subscriptions,
        "delivered": receipt.delivered,
        "durable": receipt.durable,
    })))
}
