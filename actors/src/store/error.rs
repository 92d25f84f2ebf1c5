//! The error every storage operation returns.

use std::path::PathBuf;

/// A storage operation failed.
///
/// Errors carry text rather than the backend's own error type so that one
/// failed commit can be reported to every append that was waiting on it
/// (`StoreError` is `Clone`), and so that a second backend can report its own
/// failures through the same type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend (SQLite, …) reported an error.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// A file or directory could not be created or opened.
    #[error("i/o error on {path}: {message}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The database schema could not be brought up to date, or is newer than
    /// this build understands.
    #[error("schema migration failed: {0}")]
    Migration(String),
    /// A stored value could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(String),
    /// Stored data violates an invariant (for example a version that does not
    /// fit in `u64`).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The actor or thread that owns the storage is gone.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Codec(e.to_string())
    }
}

impl From<actix::MailboxError> for StoreError {
    fn from(e: actix::MailboxError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Converts a stored `i64` into a `u64`, or reports corrupt data.
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

/// Converts a `u64` into the `i64` SQLite stores, or reports an overflow.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} does not fit in i64")))
}
