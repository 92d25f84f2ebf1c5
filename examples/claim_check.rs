//! Claim check: a 5 MB scan travels through a topic as a ~100-byte ticket;
//! subscribers get the bytes; the payload is freed when the last one took
//! it. Then what happens to a ticket that expired, and to a payload
//! tampered with at rest.
//!
//! `cargo run --example claim_check`

use std::time::Duration;

use actorbus::actors::claim_check::{ClaimCheck, ClaimError};
use actorbus::actors::dlq::DlqFilter;
use actorbus::actors::topic::TopicConfig;
use actorbus::Bus;

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = std::env::temp_dir().join(format!("actorbus-claim-check-{}", std::process::id()));
    let bus = Bus::builder().data_dir(&data).build()?;
    let claims = bus.claim_check().clone(); // claims.sqlite3 in the data directory
    let scans =
        bus.create_topic::<Vec<u8>>("scans.uploaded", TopicConfig::new().claim_check(claims.clone(), 64 * 1024))?;
    let mut ocr = bus.subscribe::<Vec<u8>>("scans.*").start()?;
    let mut archive = bus.subscribe::<Vec<u8>>("scans.>").start()?;

    let scan: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let receipt = scans.publish(scan.clone()).await?;
    let stats = claims.stats().await?;
    println!(
        "published 5 MB: as a ticket = {}, store holds {} payload(s), {} bytes",
        receipt.claim_checked, stats.payloads, stats.bytes
    );
    println!("each subscription buffers {} ticket(s), not the bytes", ocr.stats().buffered_tickets);

    let got = ocr.next().await.ok_or("closed")?.payload;
    println!(
        "ocr got {} bytes, identical: {}; store still holds {}",
        got.len(),
        got == scan,
        claims.stats().await?.payloads
    );
    let got = archive.next().await.ok_or("closed")?.payload;
    println!(
        "archive got {} bytes; store now holds {} (freed by the last consumer)",
        got.len(),
        claims.stats().await?.payloads
    );

    // A ticket that expires before its subscriber gets to it.
    let reports = bus.create_topic::<Vec<u8>>(
        "reports.daily",
        TopicConfig::new().claim_check(claims.clone(), 64 * 1024).claim_ttl(Duration::from_millis(50)),
    )?;
    let mut reader = bus.subscribe::<Vec<u8>>("reports.daily").start()?;
    reports.publish(vec![7; 100 * 1024]).await?;
    reports.publish(vec![1, 2, 3]).await?;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let next = reader.next().await.ok_or("closed")?;
    // Topics made by the bus dead-letter to its DLQ (`dlq.sqlite3`).
    let letters: Vec<String> = bus
        .dlq()
        .list(DlqFilter::default().source("topic", "reports.daily"))
        .await?
        .iter()
        .map(|d| d.reason.to_string())
        .collect();
    println!(
        "after expiry, the reader's next message is the small one ({:?}); dead letters: {letters:?}",
        next.payload
    );
    println!("store holds {} payload(s): the expired one was deleted", claims.stats().await?.payloads);

    // A payload changed at rest fails verification.
    let store = ClaimCheck::in_memory();
    let ticket = store.check_in(b"invoice #42: 100 EUR".to_vec()).await?;
    println!("claim: {:?}", String::from_utf8_lossy(&store.claim(&ticket).await?));
    let mut wrong = ticket;
    wrong.size += 1;
    match store.claim(&wrong).await {
        Err(e @ ClaimError::DigestMismatch { .. }) => println!("claim with a ticket that does not match: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
