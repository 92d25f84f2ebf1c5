//! kill -9 test of durable queues (DESIGN §7: "an acknowledged write
//! survives a kill -9 of the process").
//!
//! The test re-executes this test binary as a child process (running the
//! `#[ignore]`d `child_durable_queue`, told where its data lives by an
//! environment variable). In the child, 64 concurrent senders send to a
//! durable queue and print every id once `send` resolved, while a consumer
//! acks messages, printing each id before it acks. The parent SIGKILLs the
//! child at a random moment, several rounds on the same directory, and
//! after each round reads the queue's file: every acknowledged send not
//! acked since is there, exactly once.

#[path = "common/crash.rs"]
mod crash;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use actorbus::actors::queue::{QueueStore, SqliteQueueStore, StoredBody};
use actorbus::Bus;

const QUEUE: &str = "crash";
const SENDERS: u64 = 64;
const ROUNDS: usize = 3;
/// Sends acknowledged in a round before the kill may come.
const MIN_SENT: usize = 300;

/// The child: runs until killed.
#[test]
#[ignore = "child process of acknowledged_sends_survive_kill_9"]
fn child_durable_queue() {
    let Some(dir) = crash::child_dir() else {
        return;
    };
    actix_rt::System::new().block_on(async move {
        let bus = Bus::builder().data_dir(&dir).metrics(false).build().expect("bus");
        let q = bus
            .queue::<String>(QUEUE)
            .durable()
            .capacity(1_000_000)
            .visibility_timeout(Duration::from_secs(60))
            .start()
            .expect("queue");
        let pid = std::process::id();
        let mut tasks: Vec<_> = (0..SENDERS)
            .map(|s| {
                let q = q.clone();
                actix_rt::spawn(async move {
                    for i in 0u64.. {
                        let body = format!("{pid}-{s}-{i}");
                        q.send(body.clone()).await.expect("send");
                        // println! locks and flushes stdout per line.
                        println!("sent {body}");
                    }
                })
            })
            .collect();
        tasks.push(actix_rt::spawn(async move {
            let mut c = q.consumer(8).await.expect("consumer");
            while let Some(d) = c.recv().await {
                actix_rt::time::sleep(Duration::from_micros(500)).await;
                // Printed before the ack: an ack not printed never happened.
                println!("acking {}", d.payload());
                d.ack();
            }
        }));
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[derive(Default)]
struct Round {
    sent: Vec<String>,
    acking: Vec<String>,
}

impl Round {
    fn take(&mut self, line: &str) {
        // libtest prints the test's name without a newline before the
        // child's first line.
        let line = line.strip_prefix("test child_durable_queue ... ").unwrap_or(line);
        if let Some(id) = line.strip_prefix("sent ") {
            self.sent.push(id.to_owned());
        } else if let Some(id) = line.strip_prefix("acking ") {
            self.acking.push(id.to_owned());
        }
    }
}

/// Runs the child until it acknowledged `MIN_SENT` sends, plus a random
/// delay, then SIGKILLs it; returns what it printed.
fn run_and_kill(dir: &Path) -> Round {
    let mut child = crash::spawn_child("child_durable_queue", dir);
    let lines = crash::lines_of(&mut child);
    let mut round = Round::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while round.sent.len() < MIN_SENT {
        let line =
            lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("child made no progress");
        round.take(&line);
    }
    let until = Instant::now() + Duration::from_millis(rand::random_range(0..150));
    while let Ok(line) = lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
        round.take(&line);
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the child was killed, not finished");
    // Lines written before the kill are still in the pipe.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        round.take(&line);
    }
    round
}

/// The payload of a stored row: a codec tag (0: postcard), then postcard's
/// `String`: a varint length and the bytes.
fn decode_string(bytes: &[u8]) -> String {
    let (tag, rest) = bytes.split_first().expect("tag byte");
    assert_eq!(*tag, 0, "a String is stored as postcard");
    let start = rest.iter().position(|b| b & 0x80 == 0).expect("varint") + 1;
    let text = String::from_utf8(rest[start..].to_vec()).expect("utf-8");
    assert_eq!(rest[..start].iter().rev().fold(0usize, |n, b| n << 7 | usize::from(b & 0x7f)), text.len());
    text
}

/// What the queue's file holds, by payload; checks the file and that no
/// message is stored twice.
fn stored(dir: &Path) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(dir.join("queues.sqlite3")).expect("open file");
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity check");
    assert_eq!(check, "ok");
    drop(conn);
    let rows = SqliteQueueStore::open_file(dir.join("queues.sqlite3")).expect("reopen").load(QUEUE).expect("load");
    let ids: BTreeSet<_> = rows.iter().map(|r| r.envelope.id).collect();
    assert_eq!(ids.len(), rows.len(), "a message id stored twice");
    let payloads: BTreeSet<String> = rows
        .iter()
        .map(|r| match &r.body {
            StoredBody::Inline(bytes) => decode_string(bytes),
            StoredBody::Ticket(t) => panic!("no claim check here, found ticket {}", t.id),
        })
        .collect();
    assert_eq!(payloads.len(), rows.len(), "a payload stored twice");
    payloads
}

/// `pid-sender-i` → ((pid, sender), i).
fn parse(id: &str) -> ((u64, u64), u64) {
    let mut parts = id.split('-').map(|p| p.parse::<u64>().expect("number"));
    let (pid, s, i) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    ((pid, s), i)
}

#[test]
fn acknowledged_sends_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut sent: BTreeSet<String> = BTreeSet::new();
    let mut acking: BTreeSet<String> = BTreeSet::new();
    let mut last_sent: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut held = BTreeSet::new();
    for round in 1..=ROUNDS {
        let r = run_and_kill(dir);
        assert!(r.sent.len() >= MIN_SENT);
        let round_sent = r.sent.len();
        for id in &r.sent {
            let (who, i) = parse(id);
            let last = last_sent.entry(who).or_insert(i);
            *last = (*last).max(i);
            assert!(sent.insert(id.clone()), "{id} acknowledged twice");
        }
        acking.extend(r.acking.iter().cloned());

        held = stored(dir);
        // Every acknowledged send that nobody acked is there.
        let lost: Vec<&String> = sent.iter().filter(|id| !acking.contains(*id) && !held.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged sends lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        // Rows whose send was not acknowledged yet (committed just before
        // the kill): at most the one send in progress per sender.
        let mut unacknowledged: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
        for id in held.iter().filter(|id| !sent.contains(*id)) {
            let (who, i) = parse(id);
            unacknowledged.entry(who).or_default().push(i);
        }
        for (who, is) in &unacknowledged {
            let next = last_sent.get(who).map_or(0, |l| l + 1);
            assert_eq!(is, &vec![next], "sender {who:?}: only its send in progress may be stored unacknowledged");
        }
        // Acked messages may come back (an ack is written lazily; at-least-
        // once allows one more delivery), never the other way round.
        let resurrected = held.iter().filter(|id| acking.contains(*id)).count();
        let expected = sent.len() - sent.iter().filter(|id| acking.contains(*id)).count()
            + unacknowledged.values().map(Vec::len).sum::<usize>()
            + resurrected;
        assert_eq!(held.len(), expected, "round {round}: stored = unacked + in progress + acks not yet written");
        eprintln!(
            "round {round}: {round_sent} sends acknowledged ({} in all), {} acked in all, {} stored, \
             {resurrected} acked but not yet deleted, {} senders with a send committed but not acknowledged",
            sent.len(),
            acking.len(),
            held.len(),
            unacknowledged.len()
        );
        // Some acked messages were deleted, so deletes do reach the disk.
        assert!(acking.iter().any(|id| !held.contains(id)), "round {round}: no ack reached the disk");
    }

    // A last, orderly life: the queue delivers exactly what the file holds.
    let dir = dir.to_owned();
    let expected = held.clone();
    let delivered = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let bus = Bus::builder().data_dir(&dir).build().expect("bus");
            let q = bus.queue::<String>(QUEUE).durable().capacity(1_000_000).start().expect("queue");
            assert_eq!(q.depth() as usize, expected.len());
            let mut c = q.consumer(64).await.expect("consumer");
            let mut got = Vec::new();
            while got.len() < expected.len() {
                let d = tokio::time::timeout(Duration::from_secs(10), c.recv()).await.expect("delivery").expect("open");
                got.push(d.payload().clone());
                d.ack();
            }
            q.flush().await.expect("flush");
            got
        })
    })
    .join()
    .expect("final life");
    assert_eq!(delivered.len(), held.len());
    assert_eq!(delivered.into_iter().collect::<BTreeSet<_>>(), held);
    assert!(stored(tmp.path()).is_empty(), "all acked and written");
}
