//! Claim check (DESIGN §6.9): tickets, verified claims, reference counts,
//! expiry, both backends, and transparent use by topics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use actorbus::actors::claim_check::{ClaimCheck, ClaimError, MemoryClaims, SqliteClaims};
use actorbus::actors::dead_letter::{MemoryDeadLetters, SharedHook};
use actorbus::actors::store::DataDir;
use actorbus::actors::topic::TopicConfig;
use actorbus::Bus;
use common::metric;

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

async fn lifecycle(claims: &ClaimCheck) {
    let bytes = payload(300_000);
    let ticket = claims.check_in_shared(bytes.clone(), 2, None).await.unwrap();
    assert_eq!(ticket.size, 300_000);
    assert_eq!(ticket.sha256.to_string().len(), 64);
    assert_eq!(claims.stats().await.unwrap().payloads, 1);
    assert_eq!(claims.claim(&ticket).await.unwrap(), bytes);
    assert!(!claims.release(&ticket).await.unwrap(), "one of two consumers is done");
    assert_eq!(claims.claim(&ticket).await.unwrap().len(), 300_000, "the other can still claim");
    assert!(claims.release(&ticket).await.unwrap(), "the last release frees it");
    assert_eq!(claims.claim(&ticket).await, Err(ClaimError::NotFound(ticket.id)));
    assert!(!claims.release(&ticket).await.unwrap(), "releasing again is harmless");
    let stats = claims.stats().await.unwrap();
    assert_eq!((stats.payloads, stats.bytes), (0, 0));

    // Delete ignores the count (a purged dead letter).
    let t = claims.check_in_shared(vec![1u8; 10], 5, None).await.unwrap();
    assert!(claims.delete(&t).await.unwrap());
    assert!(!claims.delete(&t).await.unwrap());

    // Expiry: a claim after it fails and deletes; the sweep takes the rest.
    let short = claims.check_in_shared(vec![2u8; 10], 1, Some(Duration::from_millis(20))).await.unwrap();
    let swept = claims.check_in_shared(vec![3u8; 10], 1, Some(Duration::from_millis(20))).await.unwrap();
    let kept = claims.check_in(vec![4u8; 10]).await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(claims.claim(&short).await, Err(ClaimError::Expired(short.id)));
    assert_eq!(claims.sweep_expired().await.unwrap(), 1);
    assert_eq!(claims.claim(&swept).await, Err(ClaimError::Expired(swept.id)));
    assert_eq!(claims.claim(&kept).await.unwrap().as_ref(), &[4u8; 10]);
    assert_eq!(claims.stats().await.unwrap().payloads, 1);

    // Tickets are random 128-bit ids.
    let a = claims.check_in(vec![0u8]).await.unwrap();
    let b = claims.check_in(vec![0u8]).await.unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(a.sha256, b.sha256);
    assert_eq!(a.id.to_string().len(), 32);
    assert_eq!(a.id.to_string().parse::<actorbus::actors::claim_check::TicketId>().unwrap(), a.id);
}

#[actix_rt::test]
async fn memory_backend_lifecycle_and_tampering() {
    let backend = Arc::new(MemoryClaims::default());
    let claims = ClaimCheck::with_backend("mem-test", backend.clone()).unwrap();
    lifecycle(&claims).await;

    let ticket = claims.check_in(payload(1000)).await.unwrap();
    let mut forged = payload(1000);
    forged[500] ^= 1;
    assert!(backend.tamper(ticket.id, forged.into()));
    match claims.claim(&ticket).await {
        Err(ClaimError::DigestMismatch { id, expected, actual, .. }) => {
            assert_eq!(id, ticket.id);
            assert_eq!(expected, ticket.sha256);
            assert_ne!(actual, expected);
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
}

#[actix_rt::test]
async fn sqlite_backend_lifecycle_tampering_and_persistence() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path());
    let claims = ClaimCheck::open(&dir).unwrap();
    lifecycle(&claims).await;

    let ticket = claims.check_in(payload(70_000)).await.unwrap();
    let conn = rusqlite::Connection::open(tmp.path().join("claims.sqlite3")).unwrap();
    let n = conn
        .execute("UPDATE claims SET payload = zeroblob(70000) WHERE id = ?1", [ticket.id.0.to_be_bytes().as_slice()])
        .unwrap();
    assert_eq!(n, 1);
    assert!(matches!(claims.claim(&ticket).await, Err(ClaimError::DigestMismatch { .. })));

    // What was checked in survives a reopen (the file is the store).
    let durable = claims.check_in(payload(5)).await.unwrap();
    drop(claims);
    let reopened = ClaimCheck::with_backend("reopened", Arc::new(SqliteClaims::open(&dir).unwrap())).unwrap();
    assert_eq!(reopened.claim(&durable).await.unwrap(), payload(5));
}

/// The topic-level claim check: a 5 MB payload through a topic with a
/// 64 KB threshold.
#[actix_rt::test]
async fn a_large_payload_travels_as_a_ticket_and_is_freed_after_the_last_delivery() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = Bus::builder().data_dir(tmp.path()).build().unwrap();
    let claims = bus.claim_check().clone();
    let topic = bus
        .create_topic::<Vec<u8>>("media.uploaded", TopicConfig::new().claim_check(claims.clone(), 64 * 1024))
        .unwrap();
    let mut thumbnails = bus.subscribe::<Vec<u8>>("media.*").start().unwrap();
    let mut archive = bus.subscribe::<Vec<u8>>("media.>").start().unwrap();

    let big = payload(5 * 1024 * 1024);
    let receipt = topic.publish(big.clone()).await.unwrap();
    assert!(receipt.claim_checked);
    assert_eq!(receipt.delivered, 2);
    // A small one goes inline.
    assert!(!topic.publish(vec![1, 2, 3]).await.unwrap().claim_checked);

    // What the subscriptions buffer is a ticket, not 5 MB; the store holds
    // the payload once for both.
    for sub in [&thumbnails, &archive] {
        let s = sub.stats();
        assert_eq!((s.buffered, s.buffered_tickets), (2, 1));
    }
    let stats = claims.stats().await.unwrap();
    assert_eq!(stats.payloads, 1);
    assert!(stats.bytes >= 5 * 1024 * 1024 && stats.bytes < 5 * 1024 * 1024 + 8, "one copy: {}", stats.bytes);

    // Subscribers see the bytes.
    assert_eq!(thumbnails.next().await.unwrap().payload, big);
    assert_eq!(claims.stats().await.unwrap().payloads, 1, "the other subscriber still holds a reference");
    // A `next` dropped while its claim waits on the store loses nothing:
    // the claim goes on at the next call.
    assert!(futures::FutureExt::now_or_never(archive.next()).is_none(), "the claim waits on the store");
    assert_eq!((archive.stats().buffered, archive.stats().buffered_tickets), (2, 1));
    assert_eq!(archive.next().await.unwrap().payload, big);
    assert_eq!(claims.stats().await.unwrap().payloads, 0, "freed by the last consumer");
    assert_eq!(thumbnails.next().await.unwrap().payload, [1, 2, 3]);
    assert_eq!(metric(&bus, "actorbus_topic_claim_checked_total", r#"name="media.uploaded""#), 1.0);
}

#[actix_rt::test]
async fn an_expired_ticket_is_dead_lettered_and_skipped() {
    let bus = Bus::builder().build().unwrap();
    let claims = ClaimCheck::in_memory();
    let dlq = MemoryDeadLetters::default();
    let topic = bus
        .create_topic::<Vec<u8>>(
            "reports",
            TopicConfig::new()
                .claim_check(claims.clone(), 1024)
                .claim_ttl(Duration::from_millis(20))
                .dead_letter(Arc::new(dlq.clone()) as SharedHook),
        )
        .unwrap();
    let mut sub = bus.subscribe::<Vec<u8>>("reports").start().unwrap();
    topic.publish(payload(10_000)).await.unwrap();
    topic.publish(vec![9]).await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(40)).await;

    assert_eq!(sub.next().await.unwrap().payload, [9], "the expired one is skipped");
    let letters = dlq.take();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason.code(), "claim_check");
    assert!(letters[0].reason.to_string().contains("expired"), "{}", letters[0].reason);
    assert!(letters[0].envelope["payload"]["id"].is_string(), "the dead letter keeps the ticket");
    assert_eq!(sub.stats().lost, 1);
    assert_eq!(claims.stats().await.unwrap().payloads, 0, "an expired payload is deleted");
    assert_eq!(metric(&bus, "actorbus_topic_dropped_total", r#"name="reports",reason="claim_check""#), 1.0);
}

#[actix_rt::test]
async fn a_tampered_payload_is_a_digest_error_and_dead_lettered() {
    let bus = Bus::builder().build().unwrap();
    let backend = Arc::new(MemoryClaims::default());
    let claims = ClaimCheck::with_backend("tamper", backend.clone()).unwrap();
    let dlq = MemoryDeadLetters::default();
    let topic = bus
        .create_topic::<Vec<u8>>(
            "contracts",
            TopicConfig::new().claim_check(claims.clone(), 1024).dead_letter(Arc::new(dlq.clone()) as SharedHook),
        )
        .unwrap();
    let mut sub = bus.subscribe::<Vec<u8>>("contracts").start().unwrap();
    topic.publish(payload(4096)).await.unwrap();
    topic.publish(vec![7]).await.unwrap();
    // Change the stored bytes behind the ticket's back.
    let ids = backend.ids();
    assert_eq!(ids.len(), 1);
    let mut forged = payload(4096);
    forged[100] ^= 0x80;
    assert!(backend.tamper(ids[0], forged.into()));

    assert_eq!(sub.next().await.unwrap().payload, [7], "the tampered message never reaches the handler");
    let letters = dlq.take();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason.code(), "claim_check");
    assert!(letters[0].reason.to_string().contains("fails verification"), "{}", letters[0].reason);
    assert_eq!(sub.stats().lost, 1);
    assert_eq!(metric(&bus, "actorbus_claim_check_claims_total", r#"name="tamper",outcome="digest_mismatch""#), 1.0);
}
