//! The data directory and durable SQLite connections in it.
//!
//! Everything actorbus persists lives under one directory, `./actorbus-data/`
//! unless configured otherwise. Each subsystem keeps its own SQLite file there
//! (`events.sqlite3` for the event store; the dead letter queue, saga log and
//! claim check add theirs), so that their writers never wait on each other's
//! locks and each file migrates on its own schema version.
//!
//! [`DataDir::open_sqlite`] is the one way to open such a file: it creates the
//! directory, opens the file, sets the durability pragmas (WAL journal,
//! `synchronous = FULL`, so a commit that returned survives a kill -9 or a
//! power cut) and applies the subsystem's migrations.
//!
//! ```
//! use actorbus_actors::store::{DataDir, Migration};
//!
//! let dir = std::env::temp_dir().join(format!("actorbus-doc-{}", std::process::id()));
//! let data = DataDir::new(&dir);
//! const SCHEMA: &[Migration] = &[Migration {
//!     version: 1,
//!     description: "greetings",
//!     sql: "CREATE TABLE greetings (text TEXT NOT NULL);",
//! }];
//! let conn = data.open_sqlite("doc_example", SCHEMA).unwrap();
//! conn.execute("INSERT INTO greetings VALUES ('hello')", []).unwrap();
//! assert!(dir.join("doc_example.sqlite3").exists());
//! # drop(conn);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::migrate::{migrate, Migration};
use super::StoreError;

/// How long a connection waits for another connection's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory that holds every file actorbus persists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The default location, relative to the working directory.
    pub const DEFAULT: &'static str = "./actorbus-data";

    /// A data directory at `root` (created when first used).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Creates the directory (and its parents) if missing.
    pub fn ensure(&self) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| StoreError::Io { path: self.root.clone(), message: e.to_string() })
    }

    /// The file of the database called `name`: `<root>/<name>.sqlite3`.
    ///
    /// Names are restricted to ASCII letters, digits, `_` and `-` so that a
    /// name can never escape the directory.
    pub fn database_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(StoreError::Io {
                path: self.root.join(name),
                message: "database names may only use ASCII letters, digits, `_` and `-`".into(),
            });
        }
        Ok(self.root.join(format!("{name}.sqlite3")))
    }

    /// Opens (creating if needed) the database `name` in this directory,
    /// configured for durability, with `migrations` applied.
    pub fn open_sqlite(&self, name: &str, migrations: &[Migration]) -> Result<Connection, StoreError> {
        self.ensure()?;
        let path = self.database_path(name)?;
        open_sqlite_file(&path, migrations)
    }
}

impl Default for DataDir {
    fn default() -> Self {
        DataDir::new(Self::DEFAULT)
    }
}

/// Opens (creating if needed) a SQLite file with the durability settings and
/// applies `migrations`. Used for the first connection to a file.
pub fn open_sqlite_file(path: &Path, migrations: &[Migration]) -> Result<Connection, StoreError> {
    let mut conn =
        Connection::open(path).map_err(|e| StoreError::Io { path: path.to_owned(), message: e.to_string() })?;
    configure_durable(&conn)?;
    migrate(&mut conn, migrations)?;
    Ok(conn)
}

/// Opens another connection to a file that [`open_sqlite_file`] already set
/// up (WAL mode is a property of the file, so readers only need the
/// per-connection settings). The connection can write, but callers that only
/// read should keep it to reads so the single writer stays the only one.
pub fn open_sqlite_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Io { path: path.to_owned(), message: e.to_string() })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Sets WAL journaling, `synchronous = FULL` and a busy timeout on `conn`.
///
/// With WAL and `FULL`, every commit fsyncs the log before it returns: a
/// transaction that committed survives a crash, and one that did not is
/// rolled back whole when the file is next opened.
pub fn configure_durable(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    // In-memory databases answer `memory`; files must be in WAL mode.
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        return Err(StoreError::Backend(format!("could not switch the journal to WAL (got `{mode}`)")));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_wal_with_full_sync_and_refuses_bad_names() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::new(tmp.path().join("nested/data"));
        let conn = data.open_sqlite("unit", &[]).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "synchronous = FULL");
        assert!(tmp.path().join("nested/data/unit.sqlite3").exists());
        for bad in ["", "../x", "a/b", "a.b"] {
            assert!(data.database_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(DataDir::default().path(), Path::new("./actorbus-data"));
    }
}
