//! Event store: durable appends with 1, 16 and 64 concurrent writers, beside
//! a plain rusqlite loop that commits each event on its own (same kind of
//! file: WAL, `synchronous = FULL`), in the same run.
//!
//! Target (DESIGN §8): 64 writers ≥ 20 × the plain loop, in events per second.
//!
//! ```text
//! cargo bench --bench event_store
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use actorbus::actors::event_store::{EventStore, EventStoreConfig, EventStoreHandle, ExpectedVersion, NewEvent};
use actorbus::actors::store::DataDir;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

/// A directory on the same disk as the build (not a tmpfs `/tmp`, where
/// fsync costs nothing and the comparison would mean nothing).
fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench dir")
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("Deposited", json!({ "account": n % 1000, "amount": n }))
}

/// `writers` tasks, each appending `per_writer` single-event appends to its
/// own stream, one after the other (each waits for its durable ack).
async fn run_writers(store: &EventStoreHandle, writers: u64, per_writer: u64, round: u64) {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            actix_rt::spawn(async move {
                for i in 0..per_writer {
                    store
                        .append(format!("bench-{round}-{w}"), ExpectedVersion::Any, vec![event(i)])
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer task");
    }
}

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("event_store_append_durable");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));

    // Baseline: one transaction (one fsync) per event on the same kind of file.
    {
        let dir = bench_dir();
        let conn = plain_connection(dir.path());
        let mut n = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function("plain_rusqlite_commit_per_event", |b| {
            b.iter(|| {
                n += 1;
                let data = serde_json::to_vec(&json!({ "account": n % 1000, "amount": n })).expect("json");
                conn.execute(
                    "INSERT INTO events (id, stream, version, event_type, data, metadata, timestamp)
                     VALUES (?1, ?2, ?3, 'Deposited', ?4, x'7b7d', ?5)",
                    rusqlite::params![uuid::Uuid::now_v7().as_bytes().as_slice(), "plain", n as i64, data, n as i64],
                )
                .expect("insert");
            })
        });
    }

    for writers in [1u64, 16, 64] {
        let dir = bench_dir();
        let system = actix_rt::System::new();
        let store = system
            .block_on(async { EventStore::open(&DataDir::new(dir.path()), EventStoreConfig::named("bench")) })
            .expect("open store");
        // Enough appends per iteration for every writer to queue behind a
        // commit several times.
        let per_writer = if writers == 1 { 16 } else { 8 };
        group.throughput(Throughput::Elements(writers * per_writer));
        let mut round = 0u64;
        group.bench_function(format!("actorbus_{writers}_writers"), |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        round += 1;
                        run_writers(&store, writers, per_writer, round).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn plain_connection(dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("plain.sqlite3")).expect("open");
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).expect("wal");
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE events (
            position   INTEGER PRIMARY KEY,
            id         BLOB    NOT NULL UNIQUE,
            stream     TEXT    NOT NULL,
            version    INTEGER NOT NULL,
            event_type TEXT    NOT NULL,
            data       BLOB    NOT NULL,
            metadata   BLOB    NOT NULL,
            timestamp  INTEGER NOT NULL
         );
         CREATE UNIQUE INDEX events_stream_version ON events (stream, version);",
    )
    .expect("schema");
    conn
}

criterion_group!(benches, appends);
criterion_main!(benches);
