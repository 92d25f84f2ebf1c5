//! Claim check with 1 MB payloads: check in, claim (verified), release,
//! on the in-memory and the SQLite backends, each beside its baseline in
//! the same run:
//!
//! - memory: SHA-256 of the payload twice plus one copy, the least any
//!   verified store must do (hash at check-in, hash at claim);
//! - SQLite: a plain rusqlite INSERT, SELECT and DELETE of the same blob,
//!   one transaction each, on a file with the same settings (WAL,
//!   `synchronous = FULL`), on the build's disk rather than a tmpfs.
//!
//! ```text
//! cargo bench --bench claim_check
//! ```

use std::path::Path;
use std::time::Duration;

use actix::System;
use actorbus::actors::claim_check::{ClaimCheck, Sha256Digest};
use actorbus::actors::store::DataDir;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SIZE: usize = 1 << 20;

fn payload() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 31 % 251) as u8).collect()
}

fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench dir")
}

fn plain_connection(dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("plain.sqlite3")).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL").expect("wal");
    conn.pragma_update(None, "synchronous", "FULL").expect("full");
    conn.execute_batch("CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);")
        .expect("schema");
    conn
}

fn claim_check(c: &mut Criterion) {
    let sys = System::new();
    let bytes = bytes::Bytes::from(payload());
    let mut group = c.benchmark_group("claim_check_1mb");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));

    group.bench_function("baseline_sha256_twice_and_copy", |b| {
        b.iter(|| {
            let copy = bytes.to_vec();
            let a = Sha256Digest::of(&bytes);
            let b = Sha256Digest::of(&copy);
            assert_eq!(a, b);
        })
    });
    let memory = ClaimCheck::in_memory();
    group.bench_function("memory_check_in_claim_release", |b| {
        b.iter(|| {
            sys.block_on(async {
                let t = memory.check_in(bytes.clone()).await.expect("check in");
                assert_eq!(memory.claim(&t).await.expect("claim").len(), SIZE);
                memory.release(&t).await.expect("release");
            })
        })
    });

    let dir = bench_dir();
    let conn = plain_connection(dir.path());
    group.bench_function("baseline_rusqlite_insert_select_delete", |b| {
        b.iter(|| {
            conn.execute("INSERT INTO blobs (id, payload) VALUES (1, ?1)", [bytes.as_ref()]).expect("insert");
            let back: Vec<u8> =
                conn.query_row("SELECT payload FROM blobs WHERE id = 1", [], |r| r.get(0)).expect("select");
            assert_eq!(back.len(), SIZE);
            conn.execute("DELETE FROM blobs WHERE id = 1", []).expect("delete");
        })
    });
    let sqlite = ClaimCheck::open(&DataDir::new(dir.path())).expect("open");
    group.bench_function("sqlite_check_in_claim_release", |b| {
        b.iter(|| {
            sys.block_on(async {
                let t = sqlite.check_in(bytes.clone()).await.expect("check in");
                assert_eq!(sqlite.claim(&t).await.expect("claim").len(), SIZE);
                sqlite.release(&t).await.expect("release");
            })
        })
    });
    group.finish();
}

criterion_group!(benches, claim_check);
criterion_main!(benches);
