//! `/v1/queues`: point-to-point queues over HTTP (DESIGN §6.3, §7).
//!
//! The routes serve queues of JSON payloads (`bus.queue::<serde_json::Value>`),
//! whoever started them: `[[queues]]` in the config, or an embedding program.
//!
//! - `POST /v1/queues/{queue}/messages` with `{"payload", "priority"?,
//!   "deadline_ms"?, "headers"?}`: 202 `{"id"}` once the queue accepted it.
//!   A full queue answers by its overflow policy: `reject` 429 `queue_full`
//!   (with `Retry-After`); `block` waits up to [`BLOCK_WAIT`] for room, then
//!   503 `queue_full`; `drop_newest`, `drop_oldest` and `dead_letter` answer
//!   202, the queue having dropped or dead-lettered a message (the new one
//!   for `drop_newest` and `dead_letter`, the oldest waiting one for
//!   `drop_oldest`), counted in its metrics.
//! - `POST /v1/queues/{queue}/receive?max=N&wait_ms=T`: up to `max`
//!   deliveries (1 to [`MAX_RECEIVE`], default 1), waiting up to `wait_ms`
//!   (default 0, at most [`MAX_WAIT`]) for the first: `{"messages": [{"id",
//!   "receipt", "attempt", "priority", "payload", "headers", "enqueued_at"}]}`.
//! - `POST /v1/queues/{queue}/ack` and `/nack` with `{"receipts": [..],
//!   "delay_ms"?}` (`delay_ms` for nack only: without it the queue's retry
//!   policy decides): 200 `{"acked" | "nacked": n, "stale": [..]}` when at
//!   least one receipt settled; 409 `stale_receipt` when none did.
//!
//! ## Receipts
//!
//! A delivery handed to an HTTP client stays in flight in its queue; the
//! gateway holds its settler under an opaque receipt (`<n>.<random>`: the
//! queue's delivery number and 64 random bits, so receipts cannot be
//! guessed) until the client settles it, or until the queue's visibility
//! timeout delivers the message again. A receipt stops settling anything a
//! little *before* that timeout (a tenth of it, 20 ms to 1 s), so an ack the
//! gateway accepts always reaches the queue in time; the gateway forgets it
//! the same margin *after* the timeout (then the queue has redelivered it
//! and ignores the late settle). Settling a receipt that is settled
//! already, past its time, or was never issued is `stale`. At most
//! [`MAX_HELD`] deliveries are held; a receive beyond that answers 429
//! `too_many_unsettled`.
//!
//! The gateway takes from a queue only what a request returns: each receive
//! opens a consumer with a credit of `max`, and closes it before answering,
//! so a delivery it was sent but did not return goes back to the queue
//! without counting an attempt.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actorbus_actors::backpressure::OverflowPolicy;
use actorbus_actors::envelope::{Envelope, Priority};
use actorbus_actors::error::FailureReason;
use actorbus_actors::metrics as m;
use actorbus_actors::queue::{QueueError, QueueHandle, Settler};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::State;

/// Most deliveries one receive returns.
pub const MAX_RECEIVE: usize = 100;
/// Longest long-poll wait; longer `wait_ms` values are cut to it.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// How long an enqueue waits for room in a full `block` queue before it
/// answers 503.
pub const BLOCK_WAIT: Duration = Duration::from_secs(1);
/// Deliveries the gateway holds for its clients at most, over all queues.
pub const MAX_HELD: usize = 100_000;
/// Receipts one ack or nack settles at most.
pub const MAX_SETTLE: usize = 1_000;
/// Longest nack delay.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
/// Longest message deadline.
pub const MAX_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);
/// Headers one message may carry, at most.
pub const MAX_HEADERS: usize = 64;
/// A receive without `wait_ms` on a queue that holds messages waits this
/// long for the queue to answer the new consumer.
const GRACE: Duration = Duration::from_millis(50);
/// After the first delivery, how long a receive waits for each next one
/// before it answers with what it has.
const LINGER: Duration = Duration::from_millis(5);

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // A scope with a static prefix: other requests skip these routes with a
    // string comparison instead of running each route's pattern (a regex).
    cfg.service(
        web::scope("/v1/queues")
            .route("/{queue}/messages", web::post().to(enqueue))
            .route("/{queue}/receive", web::post().to(receive))
            .route("/{queue}/ack", web::post().to(ack))
            .route("/{queue}/nack", web::post().to(nack)),
    );
}

/// Parses an enqueue or publish body: `{"payload": <any JSON>, "priority":
/// 0-9, "deadline_ms": N, "headers": {"k": "v"}}`, all but `payload`
/// optional (`null` counts as absent).
pub(super) fn message_in(body: &[u8]) -> Result<Envelope<Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("the body is not JSON: {e}")))?;
    let invalid = |m: String| ApiError::bad_request("invalid_message", m);
    let Value::Object(mut fields) = value else {
        return Err(invalid("the body must be an object: {\"payload\": ...}".into()));
    };
    let payload = fields.remove("payload").ok_or_else(|| invalid("`payload` is required".into()))?;
    let mut envelope = Envelope::new(payload);
    for (key, value) in fields {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "priority" => {
                let level = value.as_u64().and_then(|n| u8::try_from(n).ok()).and_then(|n| Priority::new(n).ok());
                envelope.priority = level
                    .ok_or_else(|| ApiError::bad_request("invalid_priority", "`priority` is an integer 0 to 9"))?;
            }
            "deadline_ms" => {
                let max = MAX_DEADLINE.as_millis() as u64;
                let ms = value.as_u64().filter(|ms| (1..=max).contains(ms)).ok_or_else(|| {
                    invalid(format!("`deadline_ms` is an integer from 1 to {max} (milliseconds from now)"))
                })?;
                envelope = envelope.with_timeout(Duration::from_millis(ms));
            }
            "headers" => envelope.headers = headers_in(value)?,
            other => return Err(invalid(format!("unknown field `{other}` (payload, priority, deadline_ms, headers)"))),
        }
    }
    Ok(envelope)
}

fn headers_in(value: Value) -> Result<actorbus_actors::envelope::Headers, ApiError> {
    let invalid = |m: String| ApiError::bad_request("invalid_message", m);
    let Value::Object(map) = value else { return Err(invalid("`headers` must be an object of strings".into())) };
    if map.len() > MAX_HEADERS {
        return Err(invalid(format!("at most {MAX_HEADERS} headers")));
    }
    let mut headers = actorbus_actors::envelope::Headers::new();
    for (k, v) in map {
        let Value::String(v) = v else { return Err(invalid(format!("header `{k}` must be a string"))) };
        if k.is_empty() || k.len() > 256 || v.len() > 4096 {
            return Err(invalid("header names are 1 to 256 bytes, values at most 4096".into()));
        }
        headers.insert(k, v);
    }
    Ok(headers)
}

fn rfc3339(t: actorbus_actors::envelope::Timestamp) -> String {
    humantime::format_rfc3339_millis(t.into()).to_string()
}

fn queue_of(state: &State, name: &str) -> Result<QueueHandle<Value>, ApiError> {
    state
        .bus
        .queue_handle::<Value>(name)
        .ok_or_else(|| ApiError::not_found("unknown_queue", format!("no queue named {name:?}")))
}

fn queue_error(e: QueueError) -> ApiError {
    let message = e.to_string();
    match e {
        QueueError::Full(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message),
        QueueError::Closed(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
        QueueError::Invalid(_) | QueueError::Codec(_) => ApiError::bad_request("invalid_message", message),
        QueueError::ClaimCheck(_) | QueueError::Storage(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage", message)
        }
    }
}

async fn enqueue(
    state: web::Data<State>,
    queue: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let queue = queue_of(&state, &queue)?;
    let envelope = message_in(&body)?;
    let id = if queue.overflow() == OverflowPolicy::Block {
        // `send_envelope` is cancel-safe while it waits for room: giving up
        // leaves the queue as it was. On a durable queue the wait can also
        // end during the commit, after the message was handed over; then it
        // may be stored, and a client that retries the 503 may store it
        // twice (at-least-once, as the 503's message says).
        match tokio::time::timeout(BLOCK_WAIT, queue.send_envelope(envelope)).await {
            Ok(sent) => sent.map_err(queue_error)?,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_full",
                    format!(
                        "queue `{}` did not take the message within {} ms: {}",
                        queue.name(),
                        BLOCK_WAIT.as_millis(),
                        if queue.is_durable() {
                            "full, or its commit was slow (it may be stored: a retry may store it twice)"
                        } else {
                            "full (nothing was stored)"
                        }
                    ),
                ))
            }
        }
    } else {
        // The other policies answer at once; no timer needed.
        queue.send_envelope(envelope).await.map_err(queue_error)?
    };
    // A UUID needs no escaping: skip building a JSON value for one field.
    Ok(HttpResponse::Accepted().content_type("application/json").body(format!("{{\"id\":\"{id}\"}}")))
}

/// `max` and `wait_ms` of a receive.
fn receive_query(req: &HttpRequest) -> Result<(usize, Duration), ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_query", m);
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|e| bad(format!("unreadable query string: {e}")))?;
    let mut max = 1;
    let mut wait = Duration::ZERO;
    for (key, value) in query.iter() {
        match key.as_str() {
            "max" => {
                max = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_RECEIVE).contains(n))
                    .ok_or_else(|| bad(format!("`max` is an integer from 1 to {MAX_RECEIVE}")))?;
            }
            "wait_ms" => {
                let ms = value.parse::<u64>().map_err(|_| bad("`wait_ms` is a number of milliseconds".into()))?;
                wait = Duration::from_millis(ms).min(MAX_WAIT);
            }
            other => return Err(bad(format!("unknown parameter `{other}` (max, wait_ms)"))),
        }
    }
    Ok((max, wait))
}

async fn receive(
    state: web::Data<State>,
    queue: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let queue = queue_of(&state, &queue)?;
    let (max, mut wait) = receive_query(&req)?;
    let held = &state.receipts;
    // Places are reserved before taking from the queue, so concurrent
    // receives together never hold more than MAX_HELD.
    let reservation = held.reserve(max, Instant::now());
    let room = reservation.places;
    if room == 0 {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_unsettled",
            format!("the gateway holds {MAX_HELD} unsettled deliveries: ack or nack some first"),
        ));
    }
    let max = max.min(room);
    if wait.is_zero() && queue.depth() > 0 {
        wait = GRACE;
    }
    let mut taken = Vec::new();
    if !wait.is_zero() {
        let mut consumer = queue.consumer(max).await.map_err(queue_error)?;
        if let Ok(Some(first)) = tokio::time::timeout(wait, consumer.recv()).await {
            // Each delivery's clock starts when it got here, which is as
            // close as the gateway sees to when the queue sent it.
            taken.push((first, Instant::now()));
            // The queue sends a batch one delivery at a time from its own
            // thread: the rest of it may still be on its way. It publishes
            // its depth once a batch is out, so a depth of 0 means nothing
            // more is coming.
            while taken.len() < max {
                match consumer.try_recv() {
                    Some(d) => taken.push((d, Instant::now())),
                    None if queue.depth() == 0 => break,
                    None => match tokio::time::timeout(LINGER, consumer.recv()).await {
                        Ok(Some(d)) => taken.push((d, Instant::now())),
                        _ => break,
                    },
                }
            }
        }
        // Closing it now sends back whatever the queue pushed to it beyond
        // what this request returns.
        drop(consumer);
    }
    let visibility = queue.visibility_timeout();
    let messages: Vec<Value> = taken
        .into_iter()
        .map(|(delivery, arrived)| {
            let (envelope, settler) = delivery.into_parts();
            let receipt = held.hold(queue.name(), settler, arrived, visibility);
            json!({
                "id": envelope.id.to_string(),
                "receipt": receipt,
                "attempt": envelope.attempt,
                "priority": envelope.priority.get(),
                "payload": envelope.payload,
                "headers": envelope.headers,
                "enqueued_at": rfc3339(envelope.created_at),
            })
        })
        .collect();
    drop(reservation);
    Ok(HttpResponse::Ok().json(json!({ "messages": messages })))
}

/// An ack or nack body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleIn {
    receipts: Vec<String>,
    #[serde(default)]
    delay_ms: Option<u64>,
}

enum Outcome {
    Ack,
    Nack(Option<Duration>),
}

fn settle_in(body: &[u8]) -> Result<SettleIn, ApiError> {
    let parsed: SettleIn = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("malformed_json", format!("the body must be {{\"receipts\": [\"...\"]}}: {e}"))
    })?;
    if parsed.receipts.is_empty() || parsed.receipts.len() > MAX_SETTLE {
        return Err(ApiError::bad_request("invalid_receipt", format!("give 1 to {MAX_SETTLE} receipts")));
    }
    Ok(parsed)
}

async fn ack(state: web::Data<State>, queue: web::Path<String>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let queue = queue_of(&state, &queue)?;
    let parsed = settle_in(&body)?;
    if parsed.delay_ms.is_some() {
        return Err(ApiError::bad_request("invalid_receipt", "`delay_ms` is for nack only"));
    }
    settle(&state, &queue, &parsed.receipts, Outcome::Ack)
}

async fn nack(state: web::Data<State>, queue: web::Path<String>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let queue = queue_of(&state, &queue)?;
    let parsed = settle_in(&body)?;
    let delay = match parsed.delay_ms {
        None => None,
        Some(ms) if Duration::from_millis(ms) <= MAX_DELAY => Some(Duration::from_millis(ms)),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_delay",
                format!("`delay_ms` is at most {} (24 h)", MAX_DELAY.as_millis()),
            ))
        }
    };
    settle(&state, &queue, &parsed.receipts, Outcome::Nack(delay))
}

fn settle(
    state: &State,
    queue: &QueueHandle<Value>,
    receipts: &[String],
    outcome: Outcome,
) -> Result<HttpResponse, ApiError> {
    let parsed = receipts
        .iter()
        .map(|r| {
            parse_receipt(r).ok_or_else(|| ApiError::bad_request("invalid_receipt", format!("{r:?} is not a receipt")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (settlers, stale) = state.receipts.take(queue.name(), &parsed, Instant::now());
    if settlers.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_receipt",
            format!(
                "no receipt settled anything ({}): each was settled already, passed its visibility timeout, or was \
                 never issued; the queue delivers such messages again",
                stale.iter().map(|&i| receipts[i].as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let n = settlers.len();
    for settler in settlers {
        match outcome {
            Outcome::Ack => settler.ack(),
            Outcome::Nack(None) => settler.nack(),
            Outcome::Nack(Some(delay)) => settler.retry_after(delay),
        }
    }
    let key = match outcome {
        Outcome::Ack => "acked",
        Outcome::Nack(_) => "nacked",
    };
    let stale: Vec<&str> = stale.iter().map(|&i| receipts[i].as_str()).collect();
    let mut body = Map::new();
    body.insert(key.into(), json!(n));
    body.insert("stale".into(), json!(stale));
    Ok(HttpResponse::Ok().json(Value::Object(body)))
}

/// A receipt as clients see it: the queue's delivery number, a dot, and 16
/// hex digits of randomness.
fn format_receipt(receipt: u64, nonce: u64) -> String {
    format!("{receipt}.{nonce:016x}")
}

fn parse_receipt(text: &str) -> Option<(u64, u64)> {
    let (n, nonce) = text.split_once('.')?;
    if nonce.len() != 16 || n.is_empty() || n.len() > 20 {
        return None;
    }
    Some((n.parse().ok()?, u64::from_str_radix(nonce, 16).ok()?))
}

type Key = (Arc<str>, u64);

struct HeldDelivery {
    nonce: u64,
    settler: Settler,
    /// Settles until then.
    valid_until: Instant,
    /// Its place in `by_drop`: forgotten at that time.
    slot: (Instant, u64),
}

#[derive(Default)]
struct Table {
    by_key: HashMap<Key, HeldDelivery>,
    by_drop: BTreeMap<(Instant, u64), Key>,
    per_queue: HashMap<Arc<str>, usize>,
    /// Places promised to receives under way.
    reserved: usize,
    serial: u64,
}

/// Places a receive may fill; given back when dropped (also when the client
/// went away mid-request).
struct Reservation {
    receipts: Receipts,
    places: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut table = self.receipts.lock();
        table.reserved = table.reserved.saturating_sub(self.places);
    }
}

impl Table {
    fn count(&mut self, queue: &Arc<str>, delta: isize) {
        let n = self.per_queue.entry(queue.clone()).or_default();
        *n = n.saturating_add_signed(delta);
        metrics::gauge!(m::GATEWAY_HELD_DELIVERIES, m::LABEL_NAME => queue.to_string()).set(*n as f64);
    }

    fn remove(&mut self, key: &Key) -> Option<HeldDelivery> {
        let held = self.by_key.remove(key)?;
        self.by_drop.remove(&held.slot);
        self.count(&key.0, -1);
        Some(held)
    }
}

/// The deliveries the gateway holds for HTTP clients, by receipt, shared by
/// every HTTP worker. Bounded by [`MAX_HELD`]; entries leave when settled or
/// a little after their queue's visibility timeout.
#[derive(Clone, Default)]
pub struct Receipts {
    table: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for Receipts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipts").field("held", &self.lock().by_key.len()).finish()
    }
}

/// How long before (and after) the visibility timeout a receipt stops
/// settling (and is forgotten).
fn margin(visibility: Duration) -> Duration {
    (visibility / 10).clamp(Duration::from_millis(20), Duration::from_secs(1))
}

impl Receipts {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deliveries held now.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reserves up to `wanted` places (after forgetting expired deliveries);
    /// the places go back when the reservation is dropped, by which time the
    /// deliveries taken hold places of their own.
    fn reserve(&self, wanted: usize, now: Instant) -> Reservation {
        self.sweep(now);
        let mut table = self.lock();
        let free = MAX_HELD.saturating_sub(table.by_key.len() + table.reserved);
        let places = wanted.min(free);
        table.reserved += places;
        Reservation { receipts: self.clone(), places }
    }

    fn hold(&self, queue: &str, settler: Settler, now: Instant, visibility: Duration) -> String {
        let nonce = uuid::Uuid::new_v4().as_u64_pair().0;
        let receipt = settler.receipt();
        let margin = margin(visibility);
        let mut table = self.lock();
        let queue: Arc<str> = match table.per_queue.get_key_value(queue) {
            Some((k, _)) => k.clone(),
            None => queue.into(),
        };
        table.serial += 1;
        let slot = (now + visibility + margin, table.serial);
        let held = HeldDelivery { nonce, settler, valid_until: now + visibility.saturating_sub(margin), slot };
        table.by_drop.insert(slot, (queue.clone(), receipt));
        match table.by_key.insert((queue.clone(), receipt), held) {
            // Receipts are unique per queue, but a queue restarted under the
            // same name counts again from 1: the old delivery's queue is gone.
            Some(old) => {
                table.by_drop.remove(&old.slot);
            }
            None => table.count(&queue, 1),
        }
        format_receipt(receipt, nonce)
    }

    /// Takes the settlers of the receipts that may still settle; gives the
    /// indexes of the others.
    fn take(&self, queue: &str, receipts: &[(u64, u64)], now: Instant) -> (Vec<Settler>, Vec<usize>) {
        let mut table = self.lock();
        let mut settlers = Vec::new();
        let mut stale = Vec::new();
        for (i, &(receipt, nonce)) in receipts.iter().enumerate() {
            let key: Key = (queue.into(), receipt);
            let usable = table.by_key.get(&key).is_some_and(|h| h.nonce == nonce && now < h.valid_until);
            match usable.then(|| table.remove(&key)).flatten() {
                Some(held) => settlers.push(held.settler),
                None => stale.push(i),
            }
        }
        (settlers, stale)
    }

    /// Forgets deliveries past their visibility timeout (the queue has
    /// delivered them again); their late settle tells the queue to forget
    /// them too.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut expired = Vec::new();
        {
            let mut table = self.lock();
            while let Some(entry) = table.by_drop.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let key = entry.remove();
                if let Some(held) = table.by_key.remove(&key) {
                    table.count(&key.0, -1);
                    metrics::counter!(m::GATEWAY_EXPIRED_RECEIPTS, m::LABEL_NAME => key.0.to_string()).increment(1);
                    expired.push(held.settler);
                }
            }
        }
        let n = expired.len();
        for settler in expired {
            settler.nack_with(FailureReason::Timeout);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_refuse_junk() {
        let r = format_receipt(42, 0x00ab_cdef_0123_4567);
        assert_eq!(r, "42.00abcdef01234567");
        assert_eq!(parse_receipt(&r), Some((42, 0x00ab_cdef_0123_4567)));
        for junk in [
            "",
            "42",
            "42.",
            ".00abcdef01234567",
            "42.abc",
            "x.00abcdef01234567",
            "42.00abcdef0123456g",
            "-1.00abcdef01234567",
        ] {
            assert_eq!(parse_receipt(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn a_receipt_stops_settling_before_the_queue_redelivers() {
        assert_eq!(margin(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(margin(Duration::from_millis(500)), Duration::from_millis(50));
        assert_eq!(margin(Duration::from_millis(50)), Duration::from_millis(20));
    }

    #[actix_rt::test]
    async fn held_deliveries_settle_once_and_expire_with_no_leak() {
        use actorbus_actors::dlq::DlqSink;
        use actorbus_actors::queue::{Queue, QueueConfig};

        let queue = Queue::<u32>::start(QueueConfig::named("held"), DlqSink::in_memory()).unwrap();
        let mut consumer = queue.consumer(2).await.unwrap();
        queue.send(1).await.unwrap();
        queue.send(2).await.unwrap();
        let receipts = Receipts::default();
        let now = Instant::now();
        let vis = Duration::from_secs(1);
        let (_, a) = consumer.recv().await.unwrap().into_parts();
        let (_, b) = consumer.recv().await.unwrap().into_parts();
        let ra = parse_receipt(&receipts.hold("held", a, now, vis)).unwrap();
        let rb = parse_receipt(&receipts.hold("held", b, now, vis)).unwrap();
        assert_eq!(receipts.len(), 2);
        // A guessed random part settles nothing and leaves the real one held.
        let (got, stale) = receipts.take("held", &[(ra.0, ra.1 ^ 1)], now);
        assert_eq!((got.len(), stale), (0, vec![0]));
        let (got, stale) = receipts.take("held", &[ra, ra], now);
        assert_eq!((got.len(), stale), (1, vec![1]), "a receipt settles once");
        got.into_iter().for_each(Settler::ack);
        // Past the margin before the timeout: stale, but still held until
        // the queue has redelivered it; then forgotten.
        let (got, _) = receipts.take("held", &[rb], now + vis - Duration::from_millis(50));
        assert!(got.is_empty());
        assert_eq!(receipts.sweep(now + vis), 0);
        assert_eq!(receipts.sweep(now + vis + margin(vis)), 1);
        assert!(receipts.is_empty());
        let reservation = receipts.reserve(MAX_HELD + 5, now);
        assert_eq!(reservation.places, MAX_HELD);
        assert_eq!(receipts.reserve(1, now).places, 0, "nothing left while reserved");
        drop(reservation);
        assert_eq!(receipts.reserve(1, now).places, 1);
    }
}
