//! The claim check on queues (DESIGN §6.9, issue 5): large payloads travel
//! as tickets, consumers see the bytes, payloads are freed on the ack, on a
//! DLQ purge, or at expiry; a payload that cannot be claimed dead-letters
//! its message.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actorbus::actors::claim_check::{
    ticket_in, ClaimBackend, ClaimCheck, ClaimStats, MemoryClaims, Released, StoredPayload, TicketId,
};
use actorbus::actors::dlq::{DlqFilter, RedriveOptions};
use actorbus::actors::queue::{Consumer, Queue, QueueConfig};
use actorbus::actors::store::StoreError;
use actorbus::Bus;
use actorbus::Timestamp;
use bytes::Bytes;
use common::metric;

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

async fn next<T>(c: &mut Consumer<T>) -> actorbus::actors::queue::Delivery<T> {
    tokio::time::timeout(Duration::from_secs(10), c.recv()).await.expect("a delivery within 10 s").expect("open")
}

/// Waits (at most 5 s) until the store holds `n` payloads; releases run in
/// the background after an ack.
async fn wait_payloads(claims: &ClaimCheck, n: u64) {
    let start = Instant::now();
    loop {
        let held = claims.stats().await.unwrap().payloads;
        if held == n {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the store still holds {held} payloads, expected {n}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_dead_letters(bus: &Bus, n: u64) {
    let start = Instant::now();
    while bus.dlq().len().await.unwrap() < n {
        assert!(start.elapsed() < Duration::from_secs(5), "fewer than {n} dead letters");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn a_5_mb_payload_travels_as_a_ticket_and_is_freed_by_the_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = Bus::builder().data_dir(tmp.path()).build().unwrap();
    let claims = bus.claim_check().clone();
    let scans = bus.queue::<Vec<u8>>("scans").durable().claim_check(64 * 1024).start().unwrap();

    let big = payload(5 * 1024 * 1024);
    scans.send(big.clone()).await.unwrap();
    scans.send(vec![1, 2, 3]).await.unwrap();

    // The queue holds one ticket standing for 5 MB (encoded: a codec tag
    // byte, then postcard's 4-byte varint length and the bytes); the small
    // one is inline.
    let encoded = 5 * 1024 * 1024 + 5;
    let stats = scans.stats();
    assert_eq!((stats.claim_checked, stats.ticketed, stats.ticketed_bytes), (1, 1, encoded));
    let held = claims.stats().await.unwrap();
    assert_eq!((held.payloads, held.bytes), (1, encoded), "one copy in the store");
    // What the queue stored on disk for the big message is a small row.
    let conn = rusqlite::Connection::open(tmp.path().join("queues.sqlite3")).unwrap();
    let rows: Vec<(i64, i64)> = conn
        .prepare("SELECT seq, length(envelope) + ifnull(length(payload), 0) + ifnull(length(ticket), 0) FROM queue_messages ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[0].1 < 1024, "the stored entry of the 5 MB message is {} bytes", rows[0].1);

    // The handler gets the bytes; the ack frees the store.
    let mut consumer = scans.consumer(4).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.payload().len(), big.len());
    assert!(d.payload() == &big, "the consumer sees the original bytes");
    d.ack();
    assert_eq!(next(&mut consumer).await.payload(), &[1, 2, 3]);
    wait_payloads(&claims, 0).await;
    assert_eq!(scans.stats().ticketed, 0);
    assert_eq!(metric(&bus, "actorbus_queue_claim_checked_total", r#"name="scans""#), 1.0);
}

/// Payloads in memory, claimed slowly on a blocking thread: a claim that
/// is still under way when its `recv` is dropped.
struct SlowClaims(MemoryClaims);

impl ClaimBackend for SlowClaims {
    fn blocking(&self) -> bool {
        true
    }
    fn put(&self, id: TicketId, bytes: Bytes, expires_at: Timestamp, refs: u32) -> Result<(), StoreError> {
        self.0.put(id, bytes, expires_at, refs)
    }
    fn get(&self, id: TicketId) -> Result<Option<StoredPayload>, StoreError> {
        std::thread::sleep(Duration::from_millis(30));
        self.0.get(id)
    }
    fn release(&self, id: TicketId, n: u32) -> Result<Released, StoreError> {
        self.0.release(id, n)
    }
    fn delete(&self, id: TicketId) -> Result<Option<u64>, StoreError> {
        self.0.delete(id)
    }
    fn sweep(&self, now: Timestamp) -> Result<Vec<(TicketId, u64)>, StoreError> {
        self.0.sweep(now)
    }
    fn stats(&self) -> Result<ClaimStats, StoreError> {
        self.0.stats()
    }
}

/// A `recv` given up while it claims a payload (a `select!` that took
/// another branch) loses nothing: the next one returns that delivery, as
/// the same attempt.
#[actix_rt::test]
async fn a_recv_dropped_mid_claim_leaves_the_delivery_to_the_next() {
    let bus = Bus::builder().build().unwrap();
    let claims = ClaimCheck::with_backend("slow", Arc::new(SlowClaims(MemoryClaims::default()))).unwrap();
    let config = QueueConfig::named("mid-claim").with_claim_check(claims, 1024);
    let scans = Queue::<Vec<u8>>::start(config, bus.dlq().clone()).unwrap();
    let big = payload(4096);
    scans.send(big.clone()).await.unwrap();
    scans.send(vec![7]).await.unwrap();

    let mut consumer = scans.consumer(4).await.unwrap();
    let mut first = consumer.recv();
    assert!(futures::poll!(&mut first).is_pending(), "the claim waits for its blocking thread");
    drop(first);
    let d = next(&mut consumer).await;
    assert_eq!((d.payload() == &big, d.attempt()), (true, 1));
    d.ack();
    let small = next(&mut consumer).await;
    assert_eq!(small.payload(), &[7]);
    small.ack();
    let stats = scans.stats();
    assert_eq!((stats.delivered, stats.acked, stats.redelivered, stats.dead_lettered), (2, 2, 0, 0));
}

#[actix_rt::test]
async fn a_tampered_payload_is_a_digest_error_and_dead_lettered() {
    let bus = Bus::builder().build().unwrap();
    let backend = Arc::new(MemoryClaims::default());
    let claims = ClaimCheck::with_backend("queue-tamper", backend.clone()).unwrap();
    let config = QueueConfig::named("contracts").with_claim_check(claims.clone(), 1024);
    let q = Queue::<Vec<u8>>::start(config, bus.dlq().clone()).unwrap();
    q.send(payload(4096)).await.unwrap();
    q.send(vec![7]).await.unwrap();
    let ids = backend.ids();
    assert_eq!(ids.len(), 1);
    let mut forged = payload(4096);
    forged[100] ^= 0x80;
    assert!(backend.tamper(ids[0], forged.into()));

    let mut consumer = q.consumer(4).await.unwrap();
    assert_eq!(next(&mut consumer).await.payload(), &[7], "the tampered message never reaches the handler");
    wait_dead_letters(&bus, 1).await;
    let letters = bus.dlq().list(DlqFilter::default().source("queue", "contracts")).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason.code(), "claim_check");
    assert!(letters[0].reason.to_string().contains("fails verification"), "{}", letters[0].reason);
    assert_eq!(letters[0].attempts, 1);
    assert!(ticket_in(&letters[0].envelope).is_some(), "the dead letter keeps the ticket");
    let stats = q.stats();
    assert_eq!((stats.claim_failures, stats.dead_lettered, stats.ticketed), (1, 1, 0));
    assert_eq!(metric(&bus, "actorbus_queue_claim_failures_total", r#"name="contracts""#), 1.0);
    assert_eq!(
        metric(&bus, "actorbus_claim_check_claims_total", r#"name="queue-tamper",outcome="digest_mismatch""#),
        1.0
    );
}

#[actix_rt::test]
async fn an_expired_ticket_dead_letters_its_message() {
    let bus = Bus::builder().build().unwrap();
    let q = bus.queue::<Vec<u8>>("reports").claim_check(1024).claim_ttl(Duration::from_millis(20)).start().unwrap();
    q.send(payload(10_000)).await.unwrap();
    q.send(vec![9]).await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(40)).await;

    let mut consumer = q.consumer(4).await.unwrap();
    assert_eq!(next(&mut consumer).await.payload(), &[9], "the expired one is skipped");
    wait_dead_letters(&bus, 1).await;
    let letters = bus.dlq().list(DlqFilter::default().source("queue", "reports")).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason.code(), "claim_check");
    assert!(letters[0].reason.to_string().contains("expired"), "{}", letters[0].reason);
    assert_eq!(q.stats().claim_failures, 1);
    assert_eq!(bus.claim_check().stats().await.unwrap().payloads, 0, "an expired payload is deleted");
}

#[actix_rt::test]
async fn a_dead_letter_keeps_its_ticket_until_purged() {
    let bus = Bus::builder().build().unwrap();
    let claims = bus.claim_check().clone();
    let q = bus.queue::<Vec<u8>>("uploads").claim_check(1024).start().unwrap();
    let mut consumer = q.consumer(4).await.unwrap();
    q.send(payload(200_000)).await.unwrap();
    next(&mut consumer).await.reject("corrupt upload");
    wait_dead_letters(&bus, 1).await;

    let letter = bus.dlq().list(DlqFilter::default().source("queue", "uploads")).await.unwrap().remove(0);
    assert_eq!(letter.reason.code(), "failed");
    let ticket = ticket_in(&letter.envelope).expect("the dead letter holds a ticket");
    assert_eq!(ticket.size, 200_000 + 4, "tag byte, 3-byte length, the bytes");
    let json = serde_json::to_string(&letter.envelope).unwrap();
    assert!(json.len() < 1024, "the DLQ entry is {} bytes, not the payload", json.len());
    assert_eq!(claims.stats().await.unwrap().payloads, 1, "the payload waits for the dead letter");

    assert_eq!(bus.dlq().purge(letter.id).await.unwrap(), 1);
    assert_eq!(claims.stats().await.unwrap().payloads, 0, "the purge freed it");
    assert_eq!(
        claims.claim(&ticket).await.map(|b| b.len()),
        Err(actorbus::actors::claim_check::ClaimError::NotFound(ticket.id))
    );
}

#[actix_rt::test]
async fn a_claim_checked_dead_letter_redrives_as_its_ticket() {
    let bus = Bus::builder().build().unwrap();
    let claims = bus.claim_check().clone();
    let q = bus.queue::<Vec<u8>>("renders").claim_check(1024).max_deliveries(1).start().unwrap();
    let mut consumer = q.consumer(4).await.unwrap();
    let original = payload(300_000);
    q.send(original.clone()).await.unwrap();
    next(&mut consumer).await.nack();
    wait_dead_letters(&bus, 1).await;
    let checked_in = q.stats().claim_checked;

    let report =
        bus.dlq().redrive(DlqFilter::default().source("queue", "renders"), RedriveOptions::to_source()).await.unwrap();
    assert_eq!((report.redriven.len(), report.failed.len()), (1, 0));
    let d = next(&mut consumer).await;
    assert_eq!(d.attempt(), 1);
    assert!(d.payload() == &original, "the redriven message delivers the original bytes");
    assert_eq!(q.stats().claim_checked, checked_in, "redrive moved the ticket, no new check-in");
    assert_eq!(claims.stats().await.unwrap().payloads, 1, "one copy all along");
    d.ack();
    wait_payloads(&claims, 0).await;
    assert!(bus.dlq().is_empty().await.unwrap());
}

#[actix_rt::test]
async fn a_ticket_cannot_be_redriven_into_a_queue_without_a_claim_check() {
    let bus = Bus::builder().build().unwrap();
    let q = bus.queue::<Vec<u8>>("big").claim_check(1024).max_deliveries(1).start().unwrap();
    let _plain = bus.queue::<Vec<u8>>("plain").start().unwrap();
    let mut consumer = q.consumer(1).await.unwrap();
    q.send(payload(5000)).await.unwrap();
    next(&mut consumer).await.nack();
    wait_dead_letters(&bus, 1).await;
    let target = actorbus::actors::dlq::DlqSource::queue("plain");
    let report = bus.dlq().redrive(DlqFilter::default(), RedriveOptions::to_target(target)).await.unwrap();
    assert_eq!(report.redriven.len(), 0);
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].1.contains("no claim check"), "{}", report.failed[0].1);
    assert_eq!(bus.dlq().len().await.unwrap(), 1, "the entry stays");
    assert_eq!(bus.claim_check().stats().await.unwrap().payloads, 1, "and so does its payload");
}

#[actix_rt::test]
async fn a_payload_nobody_claims_is_swept_at_its_expiry() {
    let bus = Bus::builder().claim_check_sweep(Duration::from_millis(10)).build().unwrap();
    let q = bus.queue::<Vec<u8>>("forgotten").claim_check(1024).claim_ttl(Duration::from_millis(30)).start().unwrap();
    q.send(payload(8192)).await.unwrap();
    assert_eq!(bus.claim_check().stats().await.unwrap().payloads, 1);
    // Nobody consumes: the sweep deletes the payload at its expiry.
    wait_payloads(bus.claim_check(), 0).await;
    assert!(metric(&bus, "actorbus_claim_check_expired_total", r#"name="memory""#) >= 1.0);
    // The message is still queued; when it comes up it is dead-lettered.
    let mut consumer = q.consumer(1).await.unwrap();
    q.send(vec![1]).await.unwrap();
    assert_eq!(next(&mut consumer).await.payload(), &[1]);
    wait_dead_letters(&bus, 1).await;
    let letter = bus.dlq().list(DlqFilter::default().source("queue", "forgotten")).await.unwrap().remove(0);
    assert_eq!(letter.reason.code(), "claim_check");
}
