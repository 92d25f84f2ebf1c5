//! A small durable key/value table, for subsystems that need to keep a few
//! records without designing a schema.
//!
//! Keys live in namespaces (`"projection"`, `"saga"`, …); values are bytes,
//! usually JSON or postcard. [`SqliteKv`] keeps them in a `kv` table of its
//! own database file in the [`DataDir`]; [`MemoryKv`] keeps
//! them in memory for tests. Calls block: run them on a `SyncArbiter` or a
//! dedicated thread, never on an async arbiter.
//!
//! ```
//! use actorbus_actors::store::kv::{KeyValueStore, MemoryKv};
//!
//! let mut kv = MemoryKv::default();
//! kv.put("sagas", "order-1", b"running").unwrap();
//! assert_eq!(kv.get("sagas", "order-1").unwrap().as_deref(), Some(&b"running"[..]));
//! assert!(kv.delete("sagas", "order-1").unwrap());
//! assert_eq!(kv.get("sagas", "order-1").unwrap(), None);
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{params, Connection, OptionalExtension};

use super::migrate::Migration;
use super::{DataDir, StoreError};

/// Namespaced byte values by string key. Every write is durable once it
/// returns (for the persistent backends).
pub trait KeyValueStore: Send {
    /// The value under `key`, if any.
    fn get(&mut self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `value` under `key`, replacing any previous value.
    fn put(&mut self, namespace: &str, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; true when it existed.
    fn delete(&mut self, namespace: &str, key: &str) -> Result<bool, StoreError>;
    /// Every entry of `namespace` whose key starts with `prefix`, by key.
    fn scan(&mut self, namespace: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}

/// The schema of a key/value database.
pub const KV_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "kv table",
    sql: "CREATE TABLE kv (
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (namespace, key)
          ) WITHOUT ROWID;",
}];

/// A [`KeyValueStore`] in a SQLite file of the data directory.
#[derive(Debug)]
pub struct SqliteKv {
    conn: Connection,
}

impl SqliteKv {
    /// Opens (creating if needed) the key/value database `name` in `dir`.
    pub fn open(dir: &DataDir, name: &str) -> Result<Self, StoreError> {
        Ok(SqliteKv { conn: dir.open_sqlite(name, KV_MIGRATIONS)? })
    }
}

impl KeyValueStore for SqliteKv {
    fn get(&mut self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM kv WHERE namespace = ?1 AND key = ?2")?
            .query_row(params![namespace, key], |r| r.get(0))
            .optional()?)
    }

    fn put(&mut self, namespace: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO kv (namespace, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![namespace, key, value])?;
        Ok(())
    }

    fn delete(&mut self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM kv WHERE namespace = ?1 AND key = ?2")?
            .execute(params![namespace, key])?;
        Ok(n > 0)
    }

    fn scan(&mut self, namespace: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, value FROM kv WHERE namespace = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
        )?;
        let rows = stmt.query_map(params![namespace, prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

type Entries = BTreeMap<(String, String), Vec<u8>>;

/// A [`KeyValueStore`] in memory; clones share the same map.
#[derive(Clone, Debug, Default)]
pub struct MemoryKv {
    map: Arc<Mutex<Entries>>,
}

impl MemoryKv {
    fn with<R>(&self, f: impl FnOnce(&mut Entries) -> R) -> R {
        let mut guard = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }
}

impl KeyValueStore for MemoryKv {
    fn get(&mut self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(|m| m.get(&(namespace.to_owned(), key.to_owned())).cloned()))
    }

    fn put(&mut self, namespace: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.with(|m| m.insert((namespace.to_owned(), key.to_owned()), value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        Ok(self.with(|m| m.remove(&(namespace.to_owned(), key.to_owned())).is_some()))
    }

    fn scan(&mut self, namespace: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.with(|m| {
            m.range((namespace.to_owned(), prefix.to_owned())..)
                .take_while(|((ns, k), _)| ns == namespace && k.starts_with(prefix))
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(kv: &mut dyn KeyValueStore) {
        kv.put("a", "k1", b"1").unwrap();
        kv.put("a", "k2", b"2").unwrap();
        kv.put("a", "j1", b"3").unwrap();
        kv.put("b", "k1", b"4").unwrap();
        kv.put("a", "k1", b"5").unwrap();
        assert_eq!(kv.get("a", "k1").unwrap(), Some(b"5".to_vec()));
        assert_eq!(kv.get("c", "k1").unwrap(), None);
        let scanned = kv.scan("a", "k").unwrap();
        assert_eq!(scanned, vec![("k1".to_owned(), b"5".to_vec()), ("k2".to_owned(), b"2".to_vec())]);
        assert!(kv.delete("a", "k2").unwrap());
        assert!(!kv.delete("a", "k2").unwrap());
        assert_eq!(kv.scan("a", "").unwrap().len(), 2);
    }

    #[test]
    fn memory_and_sqlite_behave_alike_and_sqlite_persists() {
        exercise(&mut MemoryKv::default());
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        exercise(&mut SqliteKv::open(&dir, "kv").unwrap());
        let mut reopened = SqliteKv::open(&dir, "kv").unwrap();
        assert_eq!(reopened.get("b", "k1").unwrap(), Some(b"4".to_vec()));
    }
}
