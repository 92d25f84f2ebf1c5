//! Where checked-in payloads are kept: the [`ClaimBackend`] trait and its
//! in-memory and SQLite implementations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{ClaimStats, TicketId};
use crate::envelope::Timestamp;
use crate::store::data_dir::open_sqlite_file;
use crate::store::{DataDir, Migration, StoreError};

/// A payload as stored, with what the store knows of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPayload {
    /// The bytes, exactly as stored (not yet verified).
    pub bytes: Bytes,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Consumers that have not released it yet.
    pub refs: u32,
}

/// What a [`ClaimBackend::release`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// The last reference went: the payload is deleted; its size in bytes.
    Freed(u64),
    /// Others still hold references (how many).
    Remaining(u32),
    /// Nothing was stored under the id.
    Missing,
}

/// Blocking storage for claim-check payloads. [`ClaimCheck`](super::ClaimCheck)
/// calls it on a blocking thread when the backend says so
/// ([`blocking`](Self::blocking)), inline otherwise.
pub trait ClaimBackend: Send + Sync + 'static {
    /// True when calls do I/O and must not run on an async arbiter.
    fn blocking(&self) -> bool;
    /// Stores `bytes` under `id` with `refs` references.
    fn put(&self, id: TicketId, bytes: Bytes, expires_at: Timestamp, refs: u32) -> Result<(), StoreError>;
    /// The payload under `id`, if any.
    fn get(&self, id: TicketId) -> Result<Option<StoredPayload>, StoreError>;
    /// Drops `n` references; deletes the payload when none are left.
    fn release(&self, id: TicketId, n: u32) -> Result<Released, StoreError>;
    /// Deletes the payload whatever its references; its size when it existed.
    fn delete(&self, id: TicketId) -> Result<Option<u64>, StoreError>;
    /// Deletes every payload that expired at or before `now`; the ids and
    /// sizes of what was deleted.
    fn sweep(&self, now: Timestamp) -> Result<Vec<(TicketId, u64)>, StoreError>;
    /// Payloads and bytes stored.
    fn stats(&self) -> Result<ClaimStats, StoreError>;
}

struct Entry {
    bytes: Bytes,
    expires_at: Timestamp,
    refs: u32,
}

/// Payloads in process memory: fast, gone with the process. Claims return
/// the stored buffer itself (a reference count, no copy).
#[derive(Default)]
pub struct MemoryClaims {
    map: Mutex<HashMap<TicketId, Entry>>,
}

impl MemoryClaims {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<TicketId, Entry>) -> R) -> R {
        f(&mut self.map.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Ids of the payloads stored now, for inspection and tests.
    pub fn ids(&self) -> Vec<TicketId> {
        self.with(|m| m.keys().copied().collect())
    }

    /// Replaces the stored bytes of `id` without touching its ticket: a
    /// stand-in for corruption or tampering, for tests. False when missing.
    pub fn tamper(&self, id: TicketId, bytes: Bytes) -> bool {
        self.with(|m| m.get_mut(&id).map(|e| e.bytes = bytes).is_some())
    }
}

impl ClaimBackend for MemoryClaims {
    fn blocking(&self) -> bool {
        false
    }

    fn put(&self, id: TicketId, bytes: Bytes, expires_at: Timestamp, refs: u32) -> Result<(), StoreError> {
        self.with(|m| m.insert(id, Entry { bytes, expires_at, refs }));
        Ok(())
    }

    fn get(&self, id: TicketId) -> Result<Option<StoredPayload>, StoreError> {
        Ok(self.with(|m| {
            m.get(&id).map(|e| StoredPayload { bytes: e.bytes.clone(), expires_at: e.expires_at, refs: e.refs })
        }))
    }

    fn release(&self, id: TicketId, n: u32) -> Result<Released, StoreError> {
        Ok(self.with(|m| match m.get_mut(&id) {
            None => Released::Missing,
            Some(e) if e.refs > n => {
                e.refs -= n;
                Released::Remaining(e.refs)
            }
            Some(_) => Released::Freed(m.remove(&id).map_or(0, |e| e.bytes.len() as u64)),
        }))
    }

    fn delete(&self, id: TicketId) -> Result<Option<u64>, StoreError> {
        Ok(self.with(|m| m.remove(&id).map(|e| e.bytes.len() as u64)))
    }

    fn sweep(&self, now: Timestamp) -> Result<Vec<(TicketId, u64)>, StoreError> {
        Ok(self.with(|m| {
            let expired: Vec<TicketId> = m.iter().filter(|(_, e)| e.expires_at <= now).map(|(id, _)| *id).collect();
            expired.into_iter().filter_map(|id| m.remove(&id).map(|e| (id, e.bytes.len() as u64))).collect()
        }))
    }

    fn stats(&self) -> Result<ClaimStats, StoreError> {
        Ok(self
            .with(|m| ClaimStats { payloads: m.len() as u64, bytes: m.values().map(|e| e.bytes.len() as u64).sum() }))
    }
}

/// The schema of `claims.sqlite3`.
pub const CLAIM_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "claim-check payloads",
    sql: "CREATE TABLE claims (
            id         BLOB    PRIMARY KEY,
            size       INTEGER NOT NULL,
            refs       INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            payload    BLOB    NOT NULL
          );
          CREATE INDEX claims_expiry ON claims (expires_at);",
}];

/// Payloads as BLOBs in `claims.sqlite3` of the data directory (WAL,
/// `synchronous = FULL`: a check-in that returned survives a crash).
///
/// One connection serves every call, one at a time: claim-check traffic is
/// few large payloads, where the copy and the fsync cost more than waiting
/// for the connection.
pub struct SqliteClaims {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteClaims {
    /// The database name in the data directory (`claims.sqlite3`).
    pub const DATABASE: &'static str = "claims";

    /// Opens (creating and migrating if needed) the claim store of `dir`.
    pub fn open(dir: &DataDir) -> Result<Self, StoreError> {
        dir.ensure()?;
        Self::open_file(dir.database_path(Self::DATABASE)?)
    }

    /// Opens (creating and migrating if needed) a claim store at `path`.
    pub fn open_file(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let conn = open_sqlite_file(&path, CLAIM_MIGRATIONS)?;
        Ok(SqliteClaims { conn: Mutex::new(conn), path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<R>(&self, f: impl FnOnce(&mut Connection) -> Result<R, StoreError>) -> Result<R, StoreError> {
        f(&mut self.conn.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} does not fit in i64")))
}

fn id_bytes(id: &TicketId) -> [u8; 16] {
    id.0.to_be_bytes()
}

fn size_of(v: i64) -> Result<u64, StoreError> {
    to_u64(v, "size")
}

impl ClaimBackend for SqliteClaims {
    fn blocking(&self) -> bool {
        true
    }

    fn put(&self, id: TicketId, bytes: Bytes, expires_at: Timestamp, refs: u32) -> Result<(), StoreError> {
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO claims (id, size, refs, created_at, expires_at, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                id_bytes(&id).as_slice(),
                to_i64(bytes.len() as u64, "size")?,
                i64::from(refs),
                to_i64(Timestamp::now().0, "created_at")?,
                to_i64(expires_at.0, "expires_at")?,
                bytes.as_ref(),
            ])?;
            Ok(())
        })
    }

    fn get(&self, id: TicketId) -> Result<Option<StoredPayload>, StoreError> {
        self.with(|c| {
            let row: Option<(Vec<u8>, i64, i64)> = c
                .prepare_cached("SELECT payload, expires_at, refs FROM claims WHERE id = ?1")?
                .query_row([id_bytes(&id).as_slice()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            row.map(|(bytes, expires_at, refs)| {
                Ok(StoredPayload {
                    bytes: Bytes::from(bytes),
                    expires_at: Timestamp(to_u64(expires_at, "expires_at")?),
                    refs: u32::try_from(refs).map_err(|_| StoreError::Corrupt(format!("refs {refs}")))?,
                })
            })
            .transpose()
        })
    }

    fn release(&self, id: TicketId, n: u32) -> Result<Released, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let key = id_bytes(&id);
            let row: Option<(i64, i64)> = tx
                .prepare_cached("SELECT refs, size FROM claims WHERE id = ?1")?
                .query_row([key.as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let out = match row {
                None => Released::Missing,
                Some((refs, size)) if refs > i64::from(n) => {
                    tx.prepare_cached("UPDATE claims SET refs = refs - ?2 WHERE id = ?1")?
                        .execute(params![key.as_slice(), i64::from(n)])?;
                    let _ = size;
                    Released::Remaining(u32::try_from(refs - i64::from(n)).unwrap_or(u32::MAX))
                }
                Some((_, size)) => {
                    tx.prepare_cached("DELETE FROM claims WHERE id = ?1")?.execute([key.as_slice()])?;
                    Released::Freed(size_of(size)?)
                }
            };
            tx.commit()?;
            Ok(out)
        })
    }

    fn delete(&self, id: TicketId) -> Result<Option<u64>, StoreError> {
        self.with(|c| {
            let size: Option<i64> = c
                .prepare_cached("DELETE FROM claims WHERE id = ?1 RETURNING size")?
                .query_row([id_bytes(&id).as_slice()], |r| r.get(0))
                .optional()?;
            size.map(size_of).transpose()
        })
    }

    fn sweep(&self, now: Timestamp) -> Result<Vec<(TicketId, u64)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached("DELETE FROM claims WHERE expires_at <= ?1 RETURNING id, size")?;
            let rows =
                stmt.query_map([to_i64(now.0, "now")?], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, size) = row?;
                let id: [u8; 16] = id.try_into().map_err(|_| StoreError::Corrupt("claim id is not 16 bytes".into()))?;
                out.push((TicketId(u128::from_be_bytes(id)), size_of(size)?));
            }
            Ok(out)
        })
    }

    fn stats(&self) -> Result<ClaimStats, StoreError> {
        self.with(|c| {
            let (payloads, bytes): (i64, i64) =
                c.query_row("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM claims", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(ClaimStats { payloads: to_u64(payloads, "count")?, bytes: size_of(bytes)? })
        })
    }
}
