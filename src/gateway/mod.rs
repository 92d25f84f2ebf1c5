//! The HTTP gateway (feature `http`): the runtime's patterns for programs in
//! any language, over the same actors the Rust API uses (DESIGN §7).
//!
//! Every route answers JSON; every error is `{"error": {"code", "message"}}`
//! with its status (400 malformed, 401/403 token, 404 unknown, 409 conflict,
//! 413 too large, 429 or 503 when a bounded queue is full). Request bodies are
//! limited to `max_body_bytes`. Handlers never panic on input: bodies are
//! parsed by hand into typed errors, and actix-web's own rejections are
//! rewritten into the same JSON shape. The one exception is a request that is
//! not HTTP at all (say, raw non-ASCII bytes in the request line): the HTTP
//! parser answers a bare `400 Bad Request` before any route is involved.

mod auth;
mod dlq;
mod error;
mod jobs;
pub mod queues;
mod sagas;
mod streams;
pub mod topics;

pub use error::ApiError;
pub use queues::Receipts;

use std::io;
use std::net::SocketAddr;

use actix_web::http::StatusCode;
use actix_web::middleware::ErrorHandlers;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;

use crate::Bus;

/// What every handler can reach.
pub struct State {
    /// The runtime.
    pub bus: Bus,
    /// The token that admin routes require.
    pub admin_token: Option<String>,
    /// Queue deliveries handed to HTTP clients and not settled yet.
    pub receipts: Receipts,
}

impl State {
    /// The state of a gateway over `bus`.
    pub fn new(bus: Bus, admin_token: Option<String>) -> Self {
        State { bus, admin_token, receipts: Receipts::default() }
    }
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// The admin token.
    pub admin_token: Option<String>,
    /// HTTP worker threads.
    pub workers: usize,
}

/// Registers every route on an actix-web app (for embedding the gateway in an
/// application's own server).
pub fn configure(state: web::Data<State>, max_body_bytes: usize) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(state)
            .app_data(web::PayloadConfig::new(max_body_bytes))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .configure(queues::routes)
            .configure(topics::routes)
            .configure(jobs::routes)
            .configure(dlq::routes)
            .configure(streams::routes)
            .configure(sagas::routes);
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    // The bus opens its storage before the server binds; ready means the
    // store answers a read now.
    match state.bus.event_store().end_position().await {
        Ok(end) => Ok(HttpResponse::Ok().json(json!({"status": "ready", "events": end}))),
        Err(e) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string())),
    }
}

async fn metrics(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    match state.bus.render_metrics() {
        Some(text) => Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(text)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_metrics",
            "the application installed its own metrics recorder",
        )),
    }
}

/// Serves the gateway until the process gets SIGINT or SIGTERM.
pub async fn serve(bus: Bus, config: GatewayConfig) -> io::Result<()> {
    let state = web::Data::new(State::new(bus, config.admin_token));
    // Receipts past their queue's visibility timeout are forgotten even when
    // no request comes to notice them.
    let receipts = state.receipts.clone();
    let sweeper = actix_rt::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            every.tick().await;
            receipts.sweep(std::time::Instant::now());
        }
    });
    let max_body = config.max_body_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .wrap(ErrorHandlers::new().default_handler(error::json_errors))
            .configure(configure(state.clone(), max_body))
            .default_service(web::to(|| async {
                ApiError::not_found("not_found", "no such route").error_response_json()
            }))
    })
    .workers(config.workers.max(1))
    .bind(config.listen)?;
    for addr in server.addrs() {
        tracing::info!(%addr, "gateway listening");
        println!("actorbus gateway listening on http://{addr}");
    }
    let ran = server.run().await;
    sweeper.abort();
    ran
}

impl ApiError {
    fn error_response_json(&self) -> HttpResponse {
        actix_web::ResponseError::error_response(self)
    }
}
