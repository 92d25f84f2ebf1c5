//! Where dead letters are kept: the [`DlqStore`] trait and its two backends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use uuid::Uuid;

use super::{DeadLetter, DlqFilter, DlqSource, FailureRecord};
use crate::envelope::{MessageId, Timestamp};
use crate::error::FailureReason;
use crate::store::data_dir::open_sqlite_file;
use crate::store::{DataDir, Migration, StoreError};

/// Blocking storage of dead letters. The [`DlqSink`](super::DlqSink) runs
/// these calls on a thread of its own, never on an async arbiter.
pub trait DlqStore: Send + 'static {
    /// Stores `letters` in one transaction (an entry with an id already
    /// stored replaces it). Returns how many older entries were evicted to
    /// make room (always 0 for stores without a limit).
    fn insert(&mut self, letters: &[DeadLetter]) -> Result<usize, StoreError>;
    /// The entry `id`.
    fn get(&mut self, id: MessageId) -> Result<Option<DeadLetter>, StoreError>;
    /// Entries `filter` matches, by id, at most `filter.limit`.
    fn list(&mut self, filter: &DlqFilter) -> Result<Vec<DeadLetter>, StoreError>;
    /// Deletes these entries; how many existed.
    fn delete(&mut self, ids: &[MessageId]) -> Result<usize, StoreError>;
    /// Deletes every entry `filter` matches (its `limit` ignored); how many.
    fn delete_matching(&mut self, filter: &DlqFilter) -> Result<usize, StoreError>;
    /// Entries stored.
    fn count(&mut self) -> Result<u64, StoreError>;
}

/// Dead letters in memory, at most `capacity` of them (the oldest go
/// first, counted by the sink).
#[derive(Debug)]
pub struct MemoryDlqStore {
    entries: BTreeMap<MessageId, DeadLetter>,
    capacity: usize,
}

impl MemoryDlqStore {
    /// The default capacity.
    pub const DEFAULT_CAPACITY: usize = 1_000_000;

    /// An empty store holding at most `capacity` entries (0 is raised to 1).
    pub fn new(capacity: usize) -> Self {
        MemoryDlqStore { entries: BTreeMap::new(), capacity: capacity.max(1) }
    }
}

impl Default for MemoryDlqStore {
    fn default() -> Self {
        MemoryDlqStore::new(Self::DEFAULT_CAPACITY)
    }
}

impl DlqStore for MemoryDlqStore {
    fn insert(&mut self, letters: &[DeadLetter]) -> Result<usize, StoreError> {
        let mut evicted = 0;
        for letter in letters {
            self.entries.insert(letter.id, letter.clone());
            while self.entries.len() > self.capacity {
                self.entries.pop_first();
                evicted += 1;
            }
        }
        Ok(evicted)
    }

    fn get(&mut self, id: MessageId) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.entries.get(&id).cloned())
    }

    fn list(&mut self, filter: &DlqFilter) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        Ok(self.entries.values().filter(|l| filter.matches(l)).take(limit).cloned().collect())
    }

    fn delete(&mut self, ids: &[MessageId]) -> Result<usize, StoreError> {
        Ok(ids.iter().filter(|id| self.entries.remove(id).is_some()).count())
    }

    fn delete_matching(&mut self, filter: &DlqFilter) -> Result<usize, StoreError> {
        let before = self.entries.len();
        self.entries.retain(|_, l| !filter.matches(l));
        Ok(before - self.entries.len())
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        Ok(self.entries.len() as u64)
    }
}

/// The schema of `dlq.sqlite3`.
pub const DLQ_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "dead letters",
    sql: "
        CREATE TABLE dead_letters (
            id              BLOB    PRIMARY KEY,
            message_id      BLOB,
            pattern         TEXT    NOT NULL,
            name            TEXT    NOT NULL,
            reason_code     TEXT    NOT NULL,
            reason          TEXT    NOT NULL,
            attempts        INTEGER NOT NULL,
            errors          TEXT    NOT NULL,
            first_failed_at INTEGER NOT NULL,
            last_failed_at  INTEGER NOT NULL,
            envelope        TEXT    NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX dead_letters_source ON dead_letters (pattern, name, id);
        CREATE INDEX dead_letters_reason ON dead_letters (reason_code, id);
        CREATE INDEX dead_letters_time ON dead_letters (last_failed_at);
    ",
}];

const COLUMNS: &str =
    "id, message_id, pattern, name, reason, attempts, errors, first_failed_at, last_failed_at, envelope";

/// Every optional filter field as a `?N IS NULL OR …` condition, so one
/// prepared statement serves every filter.
const WHERE: &str = "(?1 IS NULL OR pattern = ?1) AND (?2 IS NULL OR name = ?2) AND (?3 IS NULL OR reason_code = ?3)
     AND (?4 IS NULL OR last_failed_at >= ?4) AND (?5 IS NULL OR last_failed_at < ?5) AND (?6 IS NULL OR id > ?6)";

/// Dead letters in a SQLite file (`dlq.sqlite3` in the data directory),
/// durable once [`insert`](DlqStore::insert) returns.
#[derive(Debug)]
pub struct SqliteDlqStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteDlqStore {
    /// The database name in the data directory.
    pub const DATABASE: &'static str = "dlq";

    /// Opens (creating and migrating if needed) `dlq.sqlite3` in `dir`.
    pub fn open(dir: &DataDir) -> Result<Self, StoreError> {
        dir.ensure()?;
        Self::open_file(dir.database_path(Self::DATABASE)?)
    }

    /// Opens (creating and migrating if needed) a DLQ database at `path`.
    pub fn open_file(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let conn = open_sqlite_file(&path, DLQ_MIGRATIONS)?;
        Ok(SqliteDlqStore { conn, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn ts(t: Timestamp) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

type Row = (Vec<u8>, Option<Vec<u8>>, String, String, String, i64, String, i64, i64, String);

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?))
}

fn decode(row: Row) -> Result<DeadLetter, StoreError> {
    let (id, message_id, pattern, name, reason, attempts, errors, first, last, envelope) = row;
    let uuid = |b: &[u8]| Uuid::from_slice(b).map(MessageId).map_err(|e| StoreError::Corrupt(format!("id: {e}")));
    Ok(DeadLetter {
        id: uuid(&id)?,
        message_id: message_id.as_deref().map(uuid).transpose()?,
        source: DlqSource { pattern, name },
        reason: serde_json::from_str::<FailureReason>(&reason)?,
        attempts: u32::try_from(attempts).map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
        errors: serde_json::from_str::<Vec<FailureRecord>>(&errors)?,
        first_failed_at: Timestamp(u64::try_from(first).map_err(|_| StoreError::Corrupt("time".into()))?),
        last_failed_at: Timestamp(u64::try_from(last).map_err(|_| StoreError::Corrupt("time".into()))?),
        envelope: serde_json::from_str(&envelope)?,
    })
}

/// A filter's fields as SQL parameters `?1`..`?6`.
type FilterParams<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, Option<i64>, Option<i64>, Option<Vec<u8>>);

fn filter_params(f: &DlqFilter) -> FilterParams<'_> {
    (
        f.pattern.as_deref(),
        f.name.as_deref(),
        f.reason.as_deref(),
        f.from.map(ts),
        f.to.map(ts),
        f.after.map(|id| id.0.as_bytes().to_vec()),
    )
}

impl DlqStore for SqliteDlqStore {
    fn insert(&mut self, letters: &[DeadLetter]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO dead_letters (id, message_id, pattern, name, reason_code, reason, attempts,
                 errors, first_failed_at, last_failed_at, envelope) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for l in letters {
                stmt.execute(params![
                    l.id.0.as_bytes().as_slice(),
                    l.message_id.map(|m| m.0.as_bytes().to_vec()),
                    l.source.pattern,
                    l.source.name,
                    l.reason.code(),
                    serde_json::to_string(&l.reason)?,
                    i64::from(l.attempts),
                    serde_json::to_string(&l.errors)?,
                    ts(l.first_failed_at),
                    ts(l.last_failed_at),
                    serde_json::to_string(&l.envelope)?,
                ])?;
            }
        }
        tx.commit()?;
        Ok(0)
    }

    fn get(&mut self, id: MessageId) -> Result<Option<DeadLetter>, StoreError> {
        let row: Option<Row> = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?1"))?
            .query_row([id.0.as_bytes().as_slice()], read_row)
            .optional()?;
        row.map(decode).transpose()
    }

    fn list(&mut self, filter: &DlqFilter) -> Result<Vec<DeadLetter>, StoreError> {
        let (p, n, r, from, to, after) = filter_params(filter);
        let limit = filter.limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM dead_letters WHERE {WHERE} ORDER BY id LIMIT ?7"))?;
        let rows = stmt.query_map(params![p, n, r, from, to, after, limit], read_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode(row?)?);
        }
        Ok(out)
    }

    fn delete(&mut self, ids: &[MessageId]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
            for id in ids {
                n += stmt.execute([id.0.as_bytes().as_slice()])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    fn delete_matching(&mut self, filter: &DlqFilter) -> Result<usize, StoreError> {
        let (p, n, r, from, to, after) = filter_params(filter);
        Ok(self
            .conn
            .prepare_cached(&format!("DELETE FROM dead_letters WHERE {WHERE}"))?
            .execute(params![p, n, r, from, to, after])?)
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("count {n}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    fn letter(queue: &str, reason: FailureReason) -> DeadLetter {
        DeadLetter::new(DlqSource::queue(queue), reason, &Envelope::new(queue.to_owned()), vec![])
    }

    fn exercise(store: &mut dyn DlqStore) {
        let a = letter("a", FailureReason::Expired);
        let b = letter("b", FailureReason::Panic("boom".into()));
        let c = letter("a", FailureReason::MaxDeliveries);
        store.insert(&[a.clone(), b.clone(), c.clone()]).unwrap();
        assert_eq!(store.count().unwrap(), 3);
        assert_eq!(store.get(b.id).unwrap().as_ref(), Some(&b));
        let from_a = store.list(&DlqFilter::default().source("queue", "a")).unwrap();
        assert_eq!(from_a.iter().map(|l| l.id).collect::<Vec<_>>(), vec![a.id, c.id]);
        assert_eq!(store.list(&DlqFilter::default().reason("panic")).unwrap(), vec![b.clone()]);
        assert_eq!(store.list(&DlqFilter::default().after(a.id).limit(1)).unwrap(), vec![b.clone()]);
        assert_eq!(store.delete_matching(&DlqFilter::default().reason("expired")).unwrap(), 1);
        assert_eq!(store.delete(&[b.id, b.id, a.id]).unwrap(), 1);
        assert_eq!(store.count().unwrap(), 1);
    }

    #[test]
    fn memory_and_sqlite_agree() {
        exercise(&mut MemoryDlqStore::default());
        let tmp = tempfile::tempdir().unwrap();
        exercise(&mut SqliteDlqStore::open(&DataDir::new(tmp.path())).unwrap());
        assert_eq!(SqliteDlqStore::open(&DataDir::new(tmp.path())).unwrap().count().unwrap(), 1);
    }

    #[test]
    fn memory_store_evicts_the_oldest_past_its_capacity() {
        let mut store = MemoryDlqStore::new(2);
        let letters: Vec<_> = (0..3).map(|_| letter("q", FailureReason::Expired)).collect();
        assert_eq!(store.insert(&letters).unwrap(), 1);
        assert_eq!(store.get(letters[0].id).unwrap(), None);
        assert_eq!(store.count().unwrap(), 2);
    }
}
