//! Where a durable queue keeps its messages: the [`QueueStore`] trait, a
//! memory backend and the SQLite backend (`queues.sqlite3`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use rusqlite::{params, Connection, TransactionBehavior};
use serde::Serialize;

use crate::claim_check::Ticket;
use crate::envelope::Envelope;
use crate::store::data_dir::open_sqlite_file;
use crate::store::{DataDir, Migration, StoreError};

/// What a durable queue stores of a message's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredBody {
    /// The payload, encoded (postcard).
    Inline(Vec<u8>),
    /// A claim-check ticket: the payload is in the claim-check store.
    Ticket(Ticket),
}

/// One message of a durable queue as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    /// Enqueue order within the queue (FIFO key), unique per queue.
    pub seq: u64,
    /// Deliveries handed out so far: the next delivery's attempt is
    /// `delivered + 1`.
    pub delivered: u32,
    /// The envelope without its payload.
    pub envelope: Envelope<()>,
    /// The payload or its ticket.
    pub body: StoredBody,
}

/// Changes to one queue, applied in one transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueBatch {
    /// New messages.
    pub inserts: Vec<StoredMessage>,
    /// New delivery counts, by `seq`.
    pub delivered: Vec<(u64, u32)>,
    /// Messages gone (acked, dead-lettered, dropped), by `seq`.
    pub deletes: Vec<u64>,
}

impl QueueBatch {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.delivered.is_empty() && self.deletes.is_empty()
    }
}

/// Blocking storage of durable queues. A queue calls it on a blocking
/// thread when [`blocking`](Self::blocking) says so, inline otherwise; one
/// store may hold many queues (told apart by name).
pub trait QueueStore: Send + Sync + 'static {
    /// True when calls do I/O and must not run on an async arbiter.
    fn blocking(&self) -> bool;
    /// Every message of `queue`, by `seq`.
    fn load(&self, queue: &str) -> Result<Vec<StoredMessage>, StoreError>;
    /// Applies `batch` to `queue` atomically; durable once it returns.
    fn commit(&self, queue: &str, batch: &QueueBatch) -> Result<(), StoreError>;
}

/// Durable queues in process memory: survives a queue's restart, not the
/// process. For tests and for trying the durable code path without a disk.
#[derive(Debug, Default)]
pub struct MemoryQueueStore {
    queues: Mutex<BTreeMap<String, BTreeMap<u64, StoredMessage>>>,
}

impl MemoryQueueStore {
    /// Messages stored for `queue`.
    pub fn len(&self, queue: &str) -> usize {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner).get(queue).map_or(0, BTreeMap::len)
    }

    /// True when `queue` has no stored message.
    pub fn is_empty(&self, queue: &str) -> bool {
        self.len(queue) == 0
    }
}

impl QueueStore for MemoryQueueStore {
    fn blocking(&self) -> bool {
        false
    }

    fn load(&self, queue: &str) -> Result<Vec<StoredMessage>, StoreError> {
        let queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(queues.get(queue).map(|q| q.values().cloned().collect()).unwrap_or_default())
    }

    fn commit(&self, queue: &str, batch: &QueueBatch) -> Result<(), StoreError> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let q = queues.entry(queue.to_owned()).or_default();
        for m in &batch.inserts {
            q.insert(m.seq, m.clone());
        }
        for (seq, delivered) in &batch.delivered {
            if let Some(m) = q.get_mut(seq) {
                m.delivered = *delivered;
            }
        }
        for seq in &batch.deletes {
            q.remove(seq);
        }
        Ok(())
    }
}

/// The schema of `queues.sqlite3`.
pub const QUEUE_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "durable queue messages",
    sql: "
        CREATE TABLE queue_messages (
            queue     TEXT    NOT NULL,
            seq       INTEGER NOT NULL,
            delivered INTEGER NOT NULL,
            envelope  TEXT    NOT NULL,
            payload   BLOB,
            ticket    TEXT,
            PRIMARY KEY (queue, seq)
        );
    ",
}];

/// Durable queues in a SQLite file (`queues.sqlite3` in the data
/// directory, WAL, `synchronous = FULL`): a commit that returned survives a
/// kill -9. One file holds every durable queue of a bus.
#[derive(Debug)]
pub struct SqliteQueueStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteQueueStore {
    /// The database name in the data directory.
    pub const DATABASE: &'static str = "queues";

    /// Opens (creating and migrating if needed) `queues.sqlite3` in `dir`.
    pub fn open(dir: &DataDir) -> Result<Self, StoreError> {
        dir.ensure()?;
        Self::open_file(dir.database_path(Self::DATABASE)?)
    }

    /// Opens (creating and migrating if needed) a queue database at `path`.
    pub fn open_file(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let conn = open_sqlite_file(&path, QUEUE_MIGRATIONS)?;
        Ok(SqliteQueueStore { conn: Mutex::new(conn), path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn seq_sql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("queue sequence {seq} out of range")))
}

fn json<S: Serialize>(value: &S) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Codec(e.to_string()))
}

type Row = (i64, i64, String, Option<Vec<u8>>, Option<String>);

fn decode(row: Row) -> Result<StoredMessage, StoreError> {
    let (seq, delivered, envelope, payload, ticket) = row;
    let corrupt = |what: &str| StoreError::Corrupt(format!("queue message {seq}: {what}"));
    let body = match (payload, ticket) {
        (_, Some(t)) => StoredBody::Ticket(serde_json::from_str(&t).map_err(|e| corrupt(&format!("ticket: {e}")))?),
        (Some(p), None) => StoredBody::Inline(p),
        (None, None) => return Err(corrupt("neither payload nor ticket")),
    };
    Ok(StoredMessage {
        seq: u64::try_from(seq).map_err(|_| corrupt("sequence"))?,
        delivered: u32::try_from(delivered).map_err(|_| corrupt("delivery count"))?,
        envelope: serde_json::from_str(&envelope).map_err(|e| corrupt(&format!("envelope: {e}")))?,
        body,
    })
}

impl QueueStore for SqliteQueueStore {
    fn blocking(&self) -> bool {
        true
    }

    fn load(&self, queue: &str) -> Result<Vec<StoredMessage>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stmt = conn.prepare_cached(
            "SELECT seq, delivered, envelope, payload, ticket FROM queue_messages WHERE queue = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([queue], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode(row?)?);
        }
        Ok(out)
    }

    fn commit(&self, queue: &str, batch: &QueueBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO queue_messages (queue, seq, delivered, envelope, payload, ticket)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for m in &batch.inserts {
                let (payload, ticket) = match &m.body {
                    StoredBody::Inline(bytes) => (Some(bytes.as_slice()), None),
                    StoredBody::Ticket(t) => (None, Some(json(t)?)),
                };
                insert.execute(params![
                    queue,
                    seq_sql(m.seq)?,
                    i64::from(m.delivered),
                    json(&m.envelope)?,
                    payload,
                    ticket
                ])?;
            }
            let mut update =
                tx.prepare_cached("UPDATE queue_messages SET delivered = ?3 WHERE queue = ?1 AND seq = ?2")?;
            for (seq, delivered) in &batch.delivered {
                update.execute(params![queue, seq_sql(*seq)?, i64::from(*delivered)])?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM queue_messages WHERE queue = ?1 AND seq = ?2")?;
            for seq in &batch.deletes {
                delete.execute(params![queue, seq_sql(*seq)?])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claim_check::{Sha256Digest, TicketId};
    use crate::envelope::{Priority, Timestamp};

    fn message(seq: u64, body: StoredBody) -> StoredMessage {
        let envelope = Envelope::new(())
            .with_priority(Priority::new(7).unwrap())
            .with_header("k", "v")
            .with_deadline(Timestamp::now().after(std::time::Duration::from_secs(60)));
        StoredMessage { seq, delivered: 0, envelope, body }
    }

    fn exercise(store: &dyn QueueStore) {
        let ticket = Ticket { id: TicketId(42), size: 5, sha256: Sha256Digest::of(b"hello"), expires_at: Timestamp(9) };
        let a = message(1, StoredBody::Inline(vec![1, 2, 3]));
        let b = message(2, StoredBody::Ticket(ticket));
        let c = message(3, StoredBody::Inline(vec![]));
        let other = message(1, StoredBody::Inline(vec![9]));
        store
            .commit("q", &QueueBatch { inserts: vec![c.clone(), a.clone(), b.clone()], ..QueueBatch::default() })
            .unwrap();
        store.commit("other", &QueueBatch { inserts: vec![other.clone()], ..QueueBatch::default() }).unwrap();
        assert_eq!(store.load("q").unwrap(), vec![a.clone(), b.clone(), c.clone()], "by seq, every field back");
        let batch = QueueBatch { inserts: vec![], delivered: vec![(2, 3)], deletes: vec![1, 99] };
        store.commit("q", &batch).unwrap();
        let left = store.load("q").unwrap();
        assert_eq!(left.iter().map(|m| (m.seq, m.delivered)).collect::<Vec<_>>(), vec![(2, 3), (3, 0)]);
        assert_eq!(store.load("other").unwrap(), vec![other]);
        assert!(store.load("nobody").unwrap().is_empty());
    }

    #[test]
    fn memory_and_sqlite_agree() {
        exercise(&MemoryQueueStore::default());
        let tmp = tempfile::tempdir().unwrap();
        exercise(&SqliteQueueStore::open(&DataDir::new(tmp.path())).unwrap());
        let reopened = SqliteQueueStore::open(&DataDir::new(tmp.path())).unwrap();
        assert_eq!(reopened.load("q").unwrap().len(), 2, "the file is the store");
        assert!(tmp.path().join("queues.sqlite3").exists());
    }
}
