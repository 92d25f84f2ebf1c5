//! Schema migrations versioned in code.
//!
//! Each database file keeps its schema version in SQLite's `PRAGMA
//! user_version` (0 for a new file). A module that stores data lists its
//! [`Migration`]s in order, numbered from 1, and [`migrate`] applies the ones
//! the file has not seen yet, each in its own transaction together with the
//! version bump, so a crash half-way leaves the file at the last complete
//! version. A file whose version is newer than the code is refused rather
//! than guessed at.
//!
//! ```
//! use actorbus_actors::store::migrate::{migrate, Migration};
//!
//! const MIGRATIONS: &[Migration] = &[
//!     Migration { version: 1, description: "notes", sql: "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);" },
//!     Migration { version: 2, description: "note tags", sql: "ALTER TABLE notes ADD COLUMN tag TEXT;" },
//! ];
//! let mut conn = rusqlite::Connection::open_in_memory().unwrap();
//! assert_eq!(migrate(&mut conn, MIGRATIONS).unwrap(), 2);
//! // Running again is a no-op.
//! assert_eq!(migrate(&mut conn, MIGRATIONS).unwrap(), 2);
//! ```

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// One schema change.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// The `user_version` the file has after this migration; the first
    /// migration is 1 and each next one adds 1.
    pub version: u32,
    /// What it does, for error messages.
    pub description: &'static str,
    /// SQL executed as one batch (several statements allowed).
    pub sql: &'static str,
}

/// The schema version of an open database (`PRAGMA user_version`).
pub fn schema_version(conn: &Connection) -> Result<u32, StoreError> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    u32::try_from(v).map_err(|_| StoreError::Migration(format!("invalid user_version {v}")))
}

/// Applies the migrations the database has not seen yet and returns the
/// resulting schema version.
///
/// Fails when the list is not numbered 1, 2, 3, … or when the file is already
/// at a version newer than the last migration (written by a newer build).
pub fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<u32, StoreError> {
    for (i, m) in migrations.iter().enumerate() {
        if usize::try_from(m.version).ok() != Some(i + 1) {
            return Err(StoreError::Migration(format!(
                "migration `{}` has version {}, expected {}",
                m.description,
                m.version,
                i + 1
            )));
        }
    }
    let latest = migrations.last().map_or(0, |m| m.version);
    loop {
        // IMMEDIATE takes the write lock first, so two processes opening the
        // same file do not both apply a migration.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = schema_version(&tx)?;
        if current > latest {
            return Err(StoreError::Migration(format!(
                "database schema version {current} is newer than this build knows ({latest})"
            )));
        }
        let Some(next) = migrations.iter().find(|m| m.version == current + 1) else {
            tx.commit()?;
            return Ok(current);
        };
        tx.execute_batch(next.sql).map_err(|e| {
            StoreError::Migration(format!("migration {} ({}) failed: {e}", next.version, next.description))
        })?;
        tx.pragma_update(None, "user_version", i64::from(next.version))?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &[Migration] = &[
        Migration { version: 1, description: "t", sql: "CREATE TABLE t (a INTEGER);" },
        Migration { version: 2, description: "u", sql: "CREATE TABLE u (b INTEGER); INSERT INTO u VALUES (7);" },
    ];

    #[test]
    fn applies_each_migration_once_in_order() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn, &TWO[..1]).unwrap(), 1);
        assert_eq!(schema_version(&conn).unwrap(), 1);
        assert_eq!(migrate(&mut conn, TWO).unwrap(), 2);
        assert_eq!(migrate(&mut conn, TWO).unwrap(), 2);
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM u", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "migration 2 ran exactly once");
    }

    #[test]
    fn refuses_a_newer_file_and_a_badly_numbered_list() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, TWO).unwrap();
        let err = migrate(&mut conn, &TWO[..1]).unwrap_err();
        assert!(matches!(err, StoreError::Migration(m) if m.contains("newer")));
        let bad = [TWO[1]];
        assert!(matches!(migrate(&mut Connection::open_in_memory().unwrap(), &bad), Err(StoreError::Migration(_))));
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        let broken = [
            TWO[0],
            Migration { version: 2, description: "broken", sql: "CREATE TABLE v (x INTEGER); THIS IS NOT SQL;" },
        ];
        assert!(migrate(&mut conn, &broken).is_err());
        assert_eq!(schema_version(&conn).unwrap(), 1);
        let v_exists: i64 =
            conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'v'", [], |r| r.get(0)).unwrap();
        assert_eq!(v_exists, 0, "the failed migration was rolled back whole");
    }
}
