//! The baseline of the gateway enqueue bench (`scripts/bench-gateway.sh`):
//! an actix-web server whose one POST route reads the body and answers 202
//! with a small JSON body, doing nothing else. What `wrk` measures against
//! it is the cost of HTTP alone on this machine.
//!
//! ```text
//! cargo run --release --example gateway_baseline -- 127.0.0.1:8181 2
//! ```
//! (listen address, HTTP worker threads).

use actix_web::{web, App, HttpResponse, HttpServer};

async fn accept(body: web::Bytes) -> HttpResponse {
    // Look at the body, as the gateway must, without parsing it.
    let len = body.len();
    HttpResponse::Accepted().content_type("application/json").body(format!("{{\"len\":{len}}}"))
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8181".to_owned());
    let workers = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| {
            App::new()
                .app_data(web::PayloadConfig::new(1 << 20))
                .route("/v1/queues/{queue}/messages", web::post().to(accept))
        })
        .workers(workers)
        .bind(&listen)?;
        println!("baseline listening on http://{listen} with {workers} workers");
        server.run().await
    })
}
