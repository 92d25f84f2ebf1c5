//! The SQLite event log: one file, `events.sqlite3`, in the data directory.
//!
//! ## Layout
//!
//! - `streams`: one row per stream name, giving it an integer id. Events
//!   refer to their stream by that id: the `(stream_id, version)` index
//!   entries are a few bytes instead of the name, so a commit dirties fewer
//!   index pages (fewer WAL frames to write) and compares integers, not text.
//! - `events`: one row per event, `position` as the integer primary key (the
//!   `$all` order), a unique index on the event id (idempotency checks) and
//!   one on `(stream_id, version)` (stream reads, the stream's current
//!   version for the expected-version check, and a last line of defence
//!   against two events at one version). Payload and metadata are JSON bytes.
//! - `snapshots` and `checkpoints`: aggregate snapshots and projection
//!   checkpoints.
//!
//! ## Durability
//!
//! The file is in WAL mode with `synchronous = FULL`: a commit returns only
//! after the log is fsynced. A batch is one `BEGIN IMMEDIATE … COMMIT`. Each
//! request is validated before it writes anything, so a refused request
//! leaves no trace while the others commit; a storage error part-way fails
//! the whole batch (the transaction is rolled back). After a kill -9, SQLite
//! rolls back whatever had not committed when the file is next opened: a
//! batch is on disk whole or not at all.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Params, Statement};
use uuid::Uuid;

use super::data_dir::{open_sqlite_file, open_sqlite_reader};
use super::error::{to_i64, to_u64};
use super::event_log::{
    plan_append, plan_valid_append, AppendError, AppendOutcome, AppendPlan, AppendRequest, AppendResult, Checkpoint,
    Direction, EventLog, EventMetadata, EventReader, EventWriter, NewEvent, RecordedEvent, Snapshot, StoredAt,
};
use super::migrate::Migration;
use super::{DataDir, StoreError};
use crate::envelope::{MessageId, Timestamp};

/// The schema of the events database, versioned by `PRAGMA user_version`.
pub const EVENT_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "events, snapshots, checkpoints",
        sql: "
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
        CREATE UNIQUE INDEX events_stream_version ON events (stream, version);
        CREATE TABLE snapshots (
            stream    TEXT    NOT NULL,
            version   INTEGER NOT NULL,
            timestamp INTEGER NOT NULL,
            state     BLOB    NOT NULL,
            PRIMARY KEY (stream, version)
        ) WITHOUT ROWID;
        CREATE TABLE checkpoints (
            name       TEXT    PRIMARY KEY,
            position   INTEGER NOT NULL,
            state      BLOB    NOT NULL,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID;
    ",
    },
    Migration {
        version: 2,
        description: "streams by integer id",
        // Streams get ids in the order of their first event. The events are
        // copied in position order, so positions, versions and ids stay as
        // they were. No foreign key from events to streams: it would cost a
        // lookup per inserted event, and only the writer inserts both.
        sql: "
            CREATE TABLE streams (
                id   INTEGER PRIMARY KEY,
                name TEXT    NOT NULL UNIQUE
            );
            INSERT INTO streams (name) SELECT stream FROM events GROUP BY stream ORDER BY MIN(position);
            CREATE TABLE events_by_id (
                position   INTEGER PRIMARY KEY,
                id         BLOB    NOT NULL UNIQUE,
                stream_id  INTEGER NOT NULL,
                version    INTEGER NOT NULL,
                event_type TEXT    NOT NULL,
                data       BLOB    NOT NULL,
                metadata   BLOB    NOT NULL,
                timestamp  INTEGER NOT NULL
            );
            INSERT INTO events_by_id (position, id, stream_id, version, event_type, data, metadata, timestamp)
                SELECT e.position, e.id, s.id, e.version, e.event_type, e.data, e.metadata, e.timestamp
                FROM events e JOIN streams s ON s.name = e.stream ORDER BY e.position;
            DROP TABLE events;
            ALTER TABLE events_by_id RENAME TO events;
            CREATE UNIQUE INDEX events_stream_version ON events (stream_id, version);
        ",
    },
];

/// The columns [`query_events`] decodes, from `events e` joined with
/// `streams s` (for the stream's name).
const EVENT_COLUMNS: &str = "e.position, e.id, s.name, e.version, e.event_type, e.data, e.metadata, e.timestamp";

/// An event log in one SQLite file.
///
/// ```
/// use actorbus_actors::store::{DataDir, EventLog, EventReader, SqliteEventLog};
///
/// let dir = std::env::temp_dir().join(format!("actorbus-sqlite-doc-{}", std::process::id()));
/// let log = SqliteEventLog::open(&DataDir::new(&dir)).unwrap();
/// assert_eq!(log.reader().unwrap().end_position().unwrap(), 0);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct SqliteEventLog {
    path: PathBuf,
}

impl SqliteEventLog {
    /// The database name in the data directory (`events.sqlite3`).
    pub const DATABASE: &'static str = "events";

    /// Opens (creating and migrating if needed) the event log of `dir`.
    pub fn open(dir: &DataDir) -> Result<Self, StoreError> {
        dir.ensure()?;
        Self::open_file(dir.database_path(Self::DATABASE)?)
    }

    /// Opens (creating and migrating if needed) an event log at `path`.
    pub fn open_file(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        drop(open_sqlite_file(&path, EVENT_MIGRATIONS)?);
        Ok(SqliteEventLog { path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl EventLog for SqliteEventLog {
    fn writer(&self) -> Result<Box<dyn EventWriter>, StoreError> {
        let conn = open_sqlite_file(&self.path, EVENT_MIGRATIONS)?;
        // SQLite's default page cache (2 MiB), on purpose not more: a page
        // split parks a page at a far page number for a moment (balance_nonroot
        // renumbering pages), and the commit that follows then walks the whole
        // cache to drop pages past the end of the file. With 32 MiB that walk
        // was 6% of the CPU time of the 64-writer bench; the pages the writer
        // needs (the tails of the indexes and their parents) fit in 2 MiB.
        conn.pragma_update(None, "cache_size", -2_000)?;
        // Room for every statement the writer keeps (rusqlite's default is
        // 16; the writer uses about 15, four of them the run's inserts).
        conn.set_prepared_statement_cache_capacity(32);
        let last: Option<i64> = conn
            .query_row("SELECT timestamp FROM events ORDER BY position DESC LIMIT 1", [], |r| r.get(0))
            .optional()?;
        let last_timestamp = Timestamp(last.map(|t| to_u64(t, "timestamp")).transpose()?.unwrap_or(0));
        Ok(Box::new(SqliteWriter { conn, last_timestamp, known: Known::default() }))
    }

    fn reader(&self) -> Result<Box<dyn EventReader>, StoreError> {
        Ok(Box::new(SqliteReader { conn: open_sqlite_reader(&self.path)? }))
    }
}

impl From<rusqlite::Error> for AppendError {
    fn from(e: rusqlite::Error) -> Self {
        AppendError::Store(e.into())
    }
}

struct SqliteWriter {
    conn: Connection,
    /// Timestamps never go backwards, even if the wall clock does.
    last_timestamp: Timestamp,
    known: Known,
}

/// The most streams whose version the writer remembers.
const MAX_KNOWN_STREAMS: usize = 65_536;

/// What the writer remembers of the log between batches, so that an append
/// needs no query for its stream's version and a batch none for the end of
/// `$all`. It only follows this connection's commits: it is forgotten when
/// another connection commits to the file (SQLite's `data_version` moves) and
/// when a batch fails (the rollback undoes what it recorded).
#[derive(Default)]
struct Known {
    data_version: i64,
    /// The position the next event gets.
    end: Option<u64>,
    /// The streams this writer appended to.
    streams: HashMap<String, KnownStream>,
}

/// A stream's integer id and last version.
#[derive(Clone, Copy)]
struct KnownStream {
    id: i64,
    /// `None`: the stream has a row in `streams` but no event yet (its
    /// first append was refused after the row went in).
    version: Option<u64>,
}

struct SqliteReader {
    conn: Connection,
}

type RawEvent = (i64, Vec<u8>, String, i64, String, Vec<u8>, Vec<u8>, i64);

fn query_events<P: Params>(stmt: &mut Statement<'_>, params: P) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows = stmt.query_map(params, |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        out.push(decode_event(row?)?);
    }
    Ok(out)
}

fn decode_event(raw: RawEvent) -> Result<RecordedEvent, StoreError> {
    let (position, id, stream, version, event_type, data, metadata, timestamp) = raw;
    let id = Uuid::from_slice(&id).map_err(|e| StoreError::Corrupt(format!("event id: {e}")))?;
    Ok(RecordedEvent {
        id: MessageId(id),
        stream,
        version: to_u64(version, "version")?,
        position: to_u64(position, "position")?,
        event_type,
        data: serde_json::from_slice(&data)?,
        metadata: serde_json::from_slice::<EventMetadata>(&metadata)?,
        timestamp: Timestamp(to_u64(timestamp, "timestamp")?),
    })
}

/// A query bound: `u64` values past `i64::MAX` mean "no bound".
fn bound(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn limit(max: usize) -> i64 {
    i64::try_from(max).unwrap_or(i64::MAX)
}

fn stream_version(conn: &Connection, stream: &str) -> Result<Option<u64>, StoreError> {
    Ok(find_stream(conn, stream)?.and_then(|s| s.version))
}

/// The id and last version of `stream`, `None` when it has no id yet.
fn find_stream(conn: &Connection, stream: &str) -> Result<Option<KnownStream>, StoreError> {
    let id: Option<i64> =
        conn.prepare_cached("SELECT id FROM streams WHERE name = ?1")?.query_row([stream], |r| r.get(0)).optional()?;
    let Some(id) = id else { return Ok(None) };
    // The last entry of the (stream_id, version) index: one B-tree descent.
    let v: Option<i64> =
        conn.prepare_cached("SELECT MAX(version) FROM events WHERE stream_id = ?1")?.query_row([id], |r| r.get(0))?;
    Ok(Some(KnownStream { id, version: v.map(|v| to_u64(v, "version")).transpose()? }))
}

impl SqliteWriter {
    /// Validates and writes every request of `batch` in the transaction open
    /// on `tx`.
    #[allow(clippy::type_complexity)]
    fn write_batch(
        tx: &Connection,
        known: &mut Known,
        batch: Vec<AppendRequest>,
        timestamp: Timestamp,
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        // The transaction holds the write lock, so no other connection can
        // commit before this batch does: what is checked here holds to the end.
        let data_version: i64 = tx.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))?;
        if data_version != known.data_version {
            *known = Known { data_version, ..Known::default() };
        }
        let mut next_position = match known.end {
            Some(end) => end,
            None => {
                let end: i64 = tx.query_row("SELECT COALESCE(MAX(position) + 1, 0) FROM events", [], |r| r.get(0))?;
                to_u64(end, "position")?
            }
        };
        let mut insert = tx.prepare_cached(&INSERT_SQL[INSERT_SIZES.len() - 1])?; // one row
        let mut results = Vec::with_capacity(batch.len());
        let mut run = Run { start: next_position, ..Run::default() };
        for mut req in batch {
            // The common case: an append the writer can plan from what it
            // knows joins the run, inserted with the others in a few
            // statements. Anything else (a version that does not match, which
            // may be an idempotent retry; an empty or invalid request) goes
            // alone through `append_one`, after the run is written, so that it
            // sees every request before it.
            if let Some((stream_id, first_version)) = Self::plan_known(tx, &mut known.streams, &mut req, next_position)?
            {
                run.push(req, stream_id, first_version, next_position, results.len())?;
                next_position += run.planned.last().map_or(0, |p| p.req.events.len() as u64);
                results.push(None);
                continue;
            }
            Self::write_run(
                tx,
                &mut insert,
                &mut known.streams,
                &mut run,
                &mut results,
                &mut next_position,
                timestamp,
            )?;
            let result = Self::append_one(tx, &mut insert, &mut known.streams, req, &mut next_position, timestamp);
            if let Err(AppendError::Store(e)) = result {
                // A storage error may have left part of this request written
                // (and some, like a full disk, roll the transaction back
                // under us). Fail the whole batch: dropping the transaction
                // rolls it back, so nothing of any request is written.
                return Err(e);
            }
            results.push(Some(result));
            run.start = next_position;
        }
        Self::write_run(tx, &mut insert, &mut known.streams, &mut run, &mut results, &mut next_position, timestamp)?;
        known.end = Some(next_position);
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| StoreError::Corrupt("an append of the batch was left unanswered".into())))
            .collect()
    }

    /// Plans `req` from what the writer knows, for the run: `Some((stream
    /// id, first version))` when it writes with the stream's remembered
    /// version (the stream row is made, and the stream remembered at its new
    /// version, as if the run were written). `None`, with nothing changed,
    /// for anything `append_one` must decide.
    fn plan_known(
        tx: &Connection,
        streams: &mut HashMap<String, KnownStream>,
        req: &mut AppendRequest,
        next_position: u64,
    ) -> Result<Option<(i64, u64)>, StoreError> {
        // A request built by hand may lack ids: give them here, once, so the
        // stored row and the recorded event carry the same one.
        for e in &mut req.events {
            e.id.get_or_insert_with(MessageId::new);
        }
        // One hash lookup for a stream the writer remembers (the common
        // case), and no second check of its name: it was checked when the
        // stream was first written.
        if let Some(known) = streams.get_mut(req.stream.as_str()) {
            let Ok(AppendPlan::Write { first_version }) = plan_valid_append(req, known.version, &[]) else {
                return Ok(None);
            };
            to_i64(next_position + req.events.len() as u64, "position")?;
            known.version = Some(first_version + req.events.len() as u64 - 1); // a `Write` plan has events
            return Ok(Some((known.id, first_version)));
        }
        if super::event_log::validate_stream_name(&req.stream).is_err() {
            return Ok(None);
        }
        // Most streams the writer does not remember are new ones: one
        // statement gives such a stream its id, where a lookup that found
        // nothing and then the insert took two.
        let known = match Self::add_stream(tx, req)? {
            Some(id) => Some(KnownStream { id, version: None }),
            None => find_stream(tx, &req.stream)?,
        };
        let Ok(AppendPlan::Write { first_version }) = plan_append(req, known.and_then(|s| s.version), &[]) else {
            return Ok(None);
        };
        // The position is checked here so that writing the run cannot fail
        // on it.
        to_i64(next_position + req.events.len() as u64, "position")?;
        let mut stream_id = known.map(|s| s.id);
        let id = match Self::stream_id(tx, &mut stream_id, &req.stream) {
            Ok(id) => id,
            Err(AppendError::Store(e)) => return Err(e),
            Err(e) => return Err(StoreError::Backend(e.to_string())),
        };
        let version = first_version + req.events.len() as u64 - 1;
        remember(streams, &req.stream, KnownStream { id, version: Some(version) });
        Ok(Some((id, first_version)))
    }

    /// The id of a new row of `streams` for `req`'s stream (whose name is
    /// valid), if the stream has none yet and `req` would write to a new
    /// stream (so that a refused append leaves no row behind); `None`
    /// otherwise.
    fn add_stream(tx: &Connection, req: &AppendRequest) -> Result<Option<i64>, StoreError> {
        if !matches!(plan_valid_append(req, None, &[]), Ok(AppendPlan::Write { .. })) {
            return Ok(None);
        }
        let added = tx
            .prepare_cached("INSERT INTO streams (name) VALUES (?1) ON CONFLICT (name) DO NOTHING")?
            .execute([&req.stream])?;
        Ok((added == 1).then(|| tx.last_insert_rowid()))
    }

    /// Inserts the events of the run, answers its requests and empties it.
    /// If an event id or version is already taken, nothing of the run stays:
    /// its requests go one by one through `append_one` instead, which tells
    /// an idempotent retry from a duplicate. What the writer remembers of
    /// streams is forgotten then, as the run had already counted on it.
    #[allow(clippy::type_complexity)]
    fn write_run(
        tx: &Connection,
        insert: &mut Statement<'_>,
        streams: &mut HashMap<String, KnownStream>,
        run: &mut Run,
        results: &mut [Option<Result<AppendOutcome, AppendError>>],
        next_position: &mut u64,
        timestamp: Timestamp,
    ) -> Result<(), StoreError> {
        if run.planned.is_empty() {
            return Ok(());
        }
        let planned = std::mem::take(&mut run.planned);
        if Self::insert_run(tx, &planned, run, timestamp)? {
            for p in planned {
                results[p.slot] = Some(Ok(recorded(p.req, p.first_version, p.first_position, timestamp)));
            }
        } else {
            tx.prepare_cached("DELETE FROM events WHERE position >= ?1")?.execute([to_i64(run.start, "position")?])?;
            streams.clear();
            *next_position = run.start;
            for p in planned {
                let result = Self::append_one(tx, insert, streams, p.req, next_position, timestamp);
                if let Err(AppendError::Store(e)) = result {
                    return Err(e);
                }
                results[p.slot] = Some(result);
            }
        }
        run.rows.clear();
        run.bytes.clear();
        run.start = *next_position;
        Ok(())
    }

    /// Inserts the run's events with as few statements as the sizes of
    /// [`INSERT_SQL`] allow. False when an event id or version is already
    /// taken (the rows written before the conflict stay: the caller deletes
    /// the run).
    fn insert_run(tx: &Connection, planned: &[Planned], run: &Run, timestamp: Timestamp) -> Result<bool, StoreError> {
        let timestamp = to_i64(timestamp.0, "timestamp")?;
        let mut events = planned.iter().flat_map(|p| {
            p.req
                .events
                .iter()
                .enumerate()
                .map(move |(i, e)| (p.first_position + i as u64, e, p.stream_id, p.first_version + i as u64))
        });
        let mut rows = run.rows.iter();
        let mut left = rows.len();
        while left > 0 {
            let (size, sql) = INSERT_SIZES
                .iter()
                .zip(INSERT_SQL.iter())
                .find(|(size, _)| **size <= left)
                .ok_or_else(|| StoreError::Corrupt("no insert statement fits".into()))?;
            let mut stmt = tx.prepare_cached(sql)?;
            let mut first = None;
            for n in 0..*size {
                let (Some((position, e, stream_id, version)), Some(row)) = (events.next(), rows.next()) else {
                    return Err(StoreError::Corrupt("a run has fewer events than rows".into()));
                };
                // The statement numbers its rows' positions from the first.
                let first = *first.get_or_insert(position);
                if position != first + n as u64 {
                    return Err(StoreError::Corrupt("a run's positions are not consecutive".into()));
                }
                let p = INSERT_SHARED + n * INSERT_ROW;
                stmt.raw_bind_parameter(p + 1, e.id.unwrap_or_default().0.as_bytes().as_slice())?; // set by `plan_known`
                stmt.raw_bind_parameter(p + 2, stream_id)?;
                stmt.raw_bind_parameter(p + 3, to_i64(version, "version")?)?;
                stmt.raw_bind_parameter(p + 4, e.event_type.as_str())?;
                let bytes = |r: &Range<usize>| {
                    run.bytes.get(r.clone()).ok_or_else(|| StoreError::Corrupt("a run row out of its buffer".into()))
                };
                stmt.raw_bind_parameter(p + 5, bytes(&row.data)?)?;
                match &row.metadata {
                    Some(m) => stmt.raw_bind_parameter(p + 6, bytes(m)?)?,
                    None => stmt.raw_bind_parameter(p + 6, rusqlite::types::Null)?,
                }
            }
            let first = first.ok_or_else(|| StoreError::Corrupt("an insert statement without rows".into()))?;
            stmt.raw_bind_parameter(1, to_i64(first, "position")?)?;
            stmt.raw_bind_parameter(2, timestamp)?;
            match stmt.raw_execute() {
                Ok(_) => {}
                // SQLite stopped at the conflicting row (`OR FAIL`) and left
                // the transaction open.
                Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            left -= size;
        }
        Ok(true)
    }

    fn append_one(
        tx: &Connection,
        insert: &mut Statement<'_>,
        streams: &mut HashMap<String, KnownStream>,
        mut req: AppendRequest,
        next_position: &mut u64,
        timestamp: Timestamp,
    ) -> Result<AppendOutcome, AppendError> {
        super::event_log::validate_stream_name(&req.stream)?;
        // A request built by hand may lack ids: give them here, once, so the
        // stored row and the recorded event carry the same one.
        for e in &mut req.events {
            e.id.get_or_insert_with(MessageId::new);
        }
        let known = match streams.get(req.stream.as_str()) {
            Some(&s) => Some(s),
            None => find_stream(tx, &req.stream)?,
        };
        let current = known.and_then(|s| s.version);
        // First assume that no event id of the request is stored: the unique
        // index on ids checks that as the events go in, which spares a lookup
        // per event. Only an append that conflicts pays for the lookups.
        let planned = match plan_append(&req, current, &[]) {
            Ok(AppendPlan::Write { first_version }) => Some(first_version),
            Ok(AppendPlan::Skip(result)) => return Ok(AppendOutcome { result, recorded: Vec::new() }),
            // A retry of an append that was written fails the version check
            // and must still be answered as an idempotent repeat.
            Err(AppendError::WrongExpectedVersion { .. }) => None,
            Err(e) => return Err(e),
        };
        // A new stream gets its id when an append first writes to it.
        let mut stream_id = known.map(|s| s.id);
        let first_version = match planned {
            Some(first_version)
                if Self::insert(
                    insert,
                    &req,
                    Self::stream_id(tx, &mut stream_id, &req.stream)?,
                    first_version,
                    *next_position,
                    timestamp,
                )? =>
            {
                first_version
            }
            _ => {
                if planned.is_some() {
                    // Take back the events of this request that went in before
                    // the one that conflicted.
                    tx.prepare_cached("DELETE FROM events WHERE position >= ?1")?
                        .execute([to_i64(*next_position, "position")?])?;
                }
                match Self::plan_from_storage(tx, &req)? {
                    AppendPlan::Skip(result) => return Ok(AppendOutcome { result, recorded: Vec::new() }),
                    AppendPlan::Write { first_version } => {
                        let id = Self::stream_id(tx, &mut stream_id, &req.stream)?;
                        if !Self::insert(insert, &req, id, first_version, *next_position, timestamp)? {
                            return Err(StoreError::Corrupt(format!(
                                "stream `{}`: an event id or version is taken twice",
                                req.stream
                            ))
                            .into());
                        }
                        first_version
                    }
                }
            }
        };
        let first_position = *next_position;
        *next_position += req.events.len() as u64;
        // A written append has at least one event.
        let version = first_version + req.events.len() as u64 - 1;
        let id = Self::stream_id(tx, &mut stream_id, &req.stream)?; // known: the events went in under it
        remember(streams, &req.stream, KnownStream { id, version: Some(version) });
        Ok(recorded(req, first_version, first_position, timestamp))
    }

    /// Plans `req` from what storage says (the stream's version and where
    /// each of its event ids is stored), not from what the writer remembers.
    fn plan_from_storage(tx: &Connection, req: &AppendRequest) -> Result<AppendPlan, AppendError> {
        let current = stream_version(tx, &req.stream)?;
        let mut existing = Vec::with_capacity(req.events.len());
        let mut find = tx.prepare_cached(
            "SELECT s.name, e.version, e.position FROM events e JOIN streams s ON s.id = e.stream_id WHERE e.id = ?1",
        )?;
        for e in &req.events {
            let found = match e.id {
                None => None,
                Some(id) => find
                    .query_row([id.0.as_bytes().as_slice()], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    })
                    .optional()?,
            };
            existing.push(match found {
                None => None,
                Some((stream, version, position)) => Some(StoredAt {
                    stream,
                    version: to_u64(version, "version")?,
                    position: to_u64(position, "position")?,
                }),
            });
        }
        plan_append(req, current, &existing)
    }

    /// The integer id of `stream`: `id` if known, else a new row of
    /// `streams` (remembered in `id`). If the append is then refused, the row
    /// stays: a stream id without events reads as no stream.
    fn stream_id(tx: &Connection, id: &mut Option<i64>, stream: &str) -> Result<i64, AppendError> {
        if let Some(id) = *id {
            return Ok(id);
        }
        // Not `RETURNING id`: SQLite collects returned rows in a temporary
        // B-tree, which costs more than the insert itself.
        tx.prepare_cached("INSERT INTO streams (name) VALUES (?1)")?.execute([stream])?;
        let new = tx.last_insert_rowid();
        *id = Some(new);
        Ok(new)
    }

    /// Inserts the events of `req` at versions `first_version..` and
    /// positions `position..` with `insert`. False when an event id or
    /// version is already taken; the events inserted before that one stay.
    fn insert(
        insert: &mut Statement<'_>,
        req: &AppendRequest,
        stream_id: i64,
        first_version: u64,
        position: u64,
        timestamp: Timestamp,
    ) -> Result<bool, AppendError> {
        let mut bytes = Vec::new();
        for (i, e) in req.events.iter().enumerate() {
            bytes.clear();
            let row = Row::encode(&mut bytes, e)?;
            // In the order of `INSERT_SQL`'s parameters.
            let inserted = insert.execute(params![
                to_i64(position + i as u64, "position")?,
                to_i64(timestamp.0, "timestamp")?,
                e.id.unwrap_or_default().0.as_bytes().as_slice(), // set by `append_one`
                stream_id,
                to_i64(first_version + i as u64, "version")?,
                e.event_type,
                &bytes[row.data],
                row.metadata.map(|m| &bytes[m]), // NULL: `{}`
            ]);
            match inserted {
                Ok(_) => {}
                // SQLite undid the failed statement and left the transaction open.
                Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}

/// The outcome of a written request: the request is spent, its events move
/// into the recorded ones.
fn recorded(req: AppendRequest, first_version: u64, first_position: u64, timestamp: Timestamp) -> AppendOutcome {
    let AppendRequest { stream, events, .. } = req;
    let n = events.len() as u64;
    // Every event but the last gets a copy of the stream name; the last
    // takes the request's own (most appends have one event: no copy).
    let mut stream = Some(stream);
    let recorded = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| RecordedEvent {
            id: e.id.unwrap_or_default(),
            stream: if i as u64 + 1 == n {
                stream.take().unwrap_or_default()
            } else {
                stream.clone().unwrap_or_default()
            },
            version: first_version + i as u64,
            position: first_position + i as u64,
            event_type: e.event_type,
            data: e.data,
            metadata: e.metadata,
            timestamp,
        })
        .collect();
    AppendOutcome {
        result: AppendResult {
            version: (n > 0).then(|| first_version + n - 1),
            positions: (n > 0).then(|| first_position..=first_position + n - 1),
            written: true,
        },
        recorded,
    }
}

/// Row counts of the multi-row insert statements, largest first: a run of
/// `n` events takes the largest that fits, then the next, down to one row.
/// One statement for many rows keeps its cursors on the table and the two
/// indexes open from row to row, where a statement per row opens them and
/// descends from the root of each B-tree again (a 64-event batch: about
/// 90 µs of inserts instead of 135 µs).
///
/// `OR FAIL`, not the default `OR ABORT`: a statement that may abort part
/// way through many rows makes SQLite keep a statement journal, a copy of
/// every page the statement touches, to undo its earlier rows. On a
/// conflict the writer throws the whole run away itself (`write_run`
/// deletes from the run's first position), so what a failed statement
/// leaves behind never matters, and the copies were pure cost.
const INSERT_SIZES: [usize; 4] = [64, 16, 4, 1];

/// Parameters of an insert statement shared by its rows: `?1` the first
/// row's position (the rows' positions are consecutive), `?2` the
/// timestamp (one per batch). Each value bound costs a copy into the
/// statement and another pass to clear it when the statement goes back to
/// the cache: a 64-row statement binds 386 values instead of 512.
const INSERT_SHARED: usize = 2;

/// Parameters of each row of an insert statement, after the shared ones:
/// id, stream id, version, type, data, metadata.
const INSERT_ROW: usize = 6;

/// The insert statements of [`INSERT_SIZES`], in the same order.
static INSERT_SQL: LazyLock<[String; 4]> = LazyLock::new(|| {
    INSERT_SIZES.map(|rows| {
        let mut sql = String::from(
            "INSERT OR FAIL INTO events (position, id, stream_id, version, event_type, data, metadata, timestamp) VALUES ",
        );
        for r in 0..rows {
            if r > 0 {
                sql.push(',');
            }
            let p = INSERT_SHARED + r * INSERT_ROW;
            let position = if r == 0 { "?1".to_owned() } else { format!("?1+{r}") };
            // NULL metadata is `{}`: most events have none.
            sql.push_str(&format!(
                "({position},?{},?{},?{},?{},?{},ifnull(?{},x'7b7d'),?2)",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6
            ));
        }
        sql
    })
});

/// Requests planned from what the writer remembers, waiting to be inserted
/// together, with their events encoded.
#[derive(Default)]
struct Run {
    planned: Vec<Planned>,
    /// The events of `planned`, in order, encoded into `bytes`.
    rows: Vec<Row>,
    /// Every payload and metadata of the run, one after the other: one
    /// buffer for the run instead of one per event.
    bytes: Vec<u8>,
    /// The position of the run's first event.
    start: u64,
}

struct Planned {
    req: AppendRequest,
    stream_id: i64,
    first_version: u64,
    first_position: u64,
    /// Where its answer goes in the batch's results.
    slot: usize,
}

/// Where an event's payload and metadata are in the buffer they were
/// encoded into ([`Row::encode`]).
struct Row {
    data: Range<usize>,
    /// `None`: empty metadata, bound as NULL and stored as `{}` (see
    /// [`INSERT_SQL`]), which spares SQLite a copy.
    metadata: Option<Range<usize>>,
}

impl Row {
    /// Appends `e`'s payload and metadata to `bytes`. Most events carry no
    /// metadata: its `{}` takes no serializer and no bytes.
    fn encode(bytes: &mut Vec<u8>, e: &NewEvent) -> Result<Self, StoreError> {
        let start = bytes.len();
        serde_json::to_writer(&mut *bytes, &e.data)?;
        let data = start..bytes.len();
        let metadata = if e.metadata == EventMetadata::default() {
            None
        } else {
            let start = bytes.len();
            serde_json::to_writer(&mut *bytes, &e.metadata)?;
            Some(start..bytes.len())
        };
        Ok(Row { data, metadata })
    }
}

impl Run {
    fn push(
        &mut self,
        req: AppendRequest,
        stream_id: i64,
        first_version: u64,
        first_position: u64,
        slot: usize,
    ) -> Result<(), StoreError> {
        for e in &req.events {
            self.rows.push(Row::encode(&mut self.bytes, e)?);
        }
        self.planned.push(Planned { req, stream_id, first_version, first_position, slot });
        Ok(())
    }
}

/// Records what `stream` is now. Past [`MAX_KNOWN_STREAMS`] the writer
/// forgets them all: forgetting costs two queries per stream later, and keeps
/// the memory bounded however many streams there are.
fn remember(streams: &mut HashMap<String, KnownStream>, stream: &str, now: KnownStream) {
    if let Some(s) = streams.get_mut(stream) {
        *s = now;
        return;
    }
    if streams.len() >= MAX_KNOWN_STREAMS {
        streams.clear();
    }
    streams.insert(stream.to_owned(), now);
}

impl EventWriter for SqliteWriter {
    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        let timestamp = Timestamp::now().max(self.last_timestamp);
        // Cached statements, not `Connection::transaction`, which parses
        // BEGIN and COMMIT anew for every batch.
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let committed = Self::write_batch(&self.conn, &mut self.known, batch, timestamp).and_then(|results| {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(results)
        });
        match committed {
            Ok(_) => self.last_timestamp = timestamp,
            Err(_) => {
                // Some errors (a full disk) have rolled it back already.
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                // The rollback undid what the batch taught the writer.
                self.known = Known::default();
            }
        }
        committed
    }

    fn save_snapshot(&mut self, s: &Snapshot) -> Result<(), StoreError> {
        let state = serde_json::to_vec(&s.state)?;
        self.conn
            .prepare_cached(
                "INSERT INTO snapshots (stream, version, timestamp, state) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (stream, version) DO UPDATE SET timestamp = excluded.timestamp, state = excluded.state",
            )?
            .execute(params![s.stream, to_i64(s.version, "version")?, to_i64(s.timestamp.0, "timestamp")?, state])?;
        Ok(())
    }

    fn save_checkpoint(&mut self, c: &Checkpoint) -> Result<(), StoreError> {
        let state = serde_json::to_vec(&c.state)?;
        self.conn
            .prepare_cached(
                "INSERT INTO checkpoints (name, position, state, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, state = excluded.state,
                 updated_at = excluded.updated_at",
            )?
            .execute(params![
                c.name,
                to_i64(c.position, "position")?,
                state,
                to_i64(Timestamp::now().0, "timestamp")?
            ])?;
        Ok(())
    }
}

impl EventReader for SqliteReader {
    fn read_stream(
        &mut self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = match direction {
            // CROSS JOIN fixes the loop order: the stream by name, then its
            // events along the (stream_id, version) index.
            Direction::Forward => format!(
                "SELECT {EVENT_COLUMNS} FROM streams s CROSS JOIN events e ON e.stream_id = s.id
                 WHERE s.name = ?1 AND e.version >= ?2 ORDER BY e.version ASC LIMIT ?3"
            ),
            Direction::Backward => format!(
                "SELECT {EVENT_COLUMNS} FROM streams s CROSS JOIN events e ON e.stream_id = s.id
                 WHERE s.name = ?1 AND e.version <= ?2 ORDER BY e.version DESC LIMIT ?3"
            ),
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        query_events(&mut stmt, params![stream, bound(from), limit(max)])
    }

    fn read_all(&mut self, from: u64, direction: Direction, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = match direction {
            // CROSS JOIN fixes the loop order: events along positions, each
            // one's stream name by its id.
            Direction::Forward => format!(
                "SELECT {EVENT_COLUMNS} FROM events e CROSS JOIN streams s ON s.id = e.stream_id
                 WHERE e.position >= ?1 ORDER BY e.position ASC LIMIT ?2"
            ),
            Direction::Backward => format!(
                "SELECT {EVENT_COLUMNS} FROM events e CROSS JOIN streams s ON s.id = e.stream_id
                 WHERE e.position <= ?1 ORDER BY e.position DESC LIMIT ?2"
            ),
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        query_events(&mut stmt, params![bound(from), limit(max)])
    }

    fn stream_version(&mut self, stream: &str) -> Result<Option<u64>, StoreError> {
        stream_version(&self.conn, stream)
    }

    fn end_position(&mut self) -> Result<u64, StoreError> {
        let end: i64 = self.conn.query_row("SELECT COALESCE(MAX(position) + 1, 0) FROM events", [], |r| r.get(0))?;
        to_u64(end, "position")
    }

    fn load_snapshot(
        &mut self,
        stream: &str,
        max_version: Option<u64>,
        max_timestamp: Option<Timestamp>,
    ) -> Result<Option<Snapshot>, StoreError> {
        let row: Option<(i64, i64, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT version, timestamp, state FROM snapshots
                 WHERE stream = ?1 AND version <= ?2 AND timestamp <= ?3
                 ORDER BY version DESC LIMIT 1",
            )?
            .query_row(
                params![stream, bound(max_version.unwrap_or(u64::MAX)), bound(max_timestamp.map_or(u64::MAX, |t| t.0))],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(version, timestamp, state)| {
            Ok(Snapshot {
                stream: stream.to_owned(),
                version: to_u64(version, "version")?,
                timestamp: Timestamp(to_u64(timestamp, "timestamp")?),
                state: serde_json::from_slice(&state)?,
            })
        })
        .transpose()
    }

    fn load_checkpoint(&mut self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT position, state FROM checkpoints WHERE name = ?1")?
            .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        row.map(|(position, state)| {
            Ok(Checkpoint {
                name: name.to_owned(),
                position: to_u64(position, "position")?,
                state: serde_json::from_slice(&state)?,
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Direction;
    use crate::store::{ExpectedVersion, NewEvent};

    fn ev(n: u64) -> NewEvent {
        NewEvent::new("e", serde_json::json!(n))
    }

    fn only(results: Vec<Result<AppendOutcome, AppendError>>) -> Result<AppendResult, AppendError> {
        results.into_iter().next().expect("one result").map(|o| o.result)
    }

    #[test]
    fn a_stored_id_after_the_first_event_refuses_the_append_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteEventLog::open(&DataDir::new(dir.path())).unwrap();
        let mut w = log.writer().unwrap();
        let first = AppendRequest::new("a", ExpectedVersion::NoStream, vec![ev(0)]);
        only(w.append_batch(vec![first.clone()]).unwrap()).unwrap();
        // The new event goes in before the insert of the stored id fails.
        let late = AppendRequest::new("a", ExpectedVersion::Any, vec![ev(1), first.events[0].clone()]);
        let other = AppendRequest::new("b", ExpectedVersion::NoStream, vec![ev(2)]);
        let results = w.append_batch(vec![late, other]).unwrap();
        assert!(matches!(results[0], Err(AppendError::DuplicateEventId { version: 0, .. })), "{results:?}");
        assert_eq!(results[1].as_ref().unwrap().result.positions, Some(1..=1));
        let mut r = log.reader().unwrap();
        assert_eq!(r.end_position().unwrap(), 2);
        assert_eq!(r.stream_version("a").unwrap(), Some(0));
    }

    #[test]
    fn a_storage_error_part_way_takes_back_the_whole_batch_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteEventLog::open(&DataDir::new(dir.path())).unwrap();
        // A runtime error (integer overflow) for one kind of event, as a
        // failing disk would give: not a refusal of one request.
        Connection::open(log.path())
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.event_type = 'Boom'
                 BEGIN SELECT abs(-9223372036854775808); END;",
            )
            .unwrap();
        let mut w = log.writer().unwrap();
        let a = AppendRequest::new("a", ExpectedVersion::NoStream, vec![ev(0)]);
        let boom =
            AppendRequest::new("b", ExpectedVersion::NoStream, vec![NewEvent::new("Boom", serde_json::json!(1))]);
        let c = AppendRequest::new("c", ExpectedVersion::NoStream, vec![ev(2)]);
        assert!(w.append_batch(vec![a.clone(), boom, c]).is_err());
        let mut r = log.reader().unwrap();
        assert_eq!(r.end_position().unwrap(), 0);
        // The transaction is over (the next one can begin), and the writer
        // forgot what the rolled back requests taught it.
        assert_eq!(only(w.append_batch(vec![a]).unwrap()).unwrap().positions, Some(0..=0));
    }

    #[test]
    fn an_event_without_an_id_is_stored_and_recorded_with_the_same_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteEventLog::open(&DataDir::new(dir.path())).unwrap();
        let mut w = log.writer().unwrap();
        let bare = AppendRequest { stream: "s".into(), expected: ExpectedVersion::Any, events: vec![ev(0)] };
        assert_eq!(bare.events[0].id, None);
        let outcome = w.append_batch(vec![bare]).unwrap().remove(0).unwrap();
        let stored = log.reader().unwrap().read_all(0, crate::store::Direction::Forward, 10).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].id, outcome.recorded[0].id);
    }

    #[test]
    fn a_file_of_the_first_schema_reads_back_the_same_after_migration() {
        use crate::store::migrate::{migrate, schema_version};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        // Write a file as the first schema did: stream names in each row,
        // streams interleaved along `$all`, with metadata and a snapshot.
        let mut expected = Vec::new();
        {
            let mut conn = Connection::open(&path).unwrap();
            assert_eq!(migrate(&mut conn, &EVENT_MIGRATIONS[..1]).unwrap(), 1);
            let streams = ["order-1", "order-2", "$$order-1", "cart"];
            let mut versions = [0u64; 4];
            for position in 0..40u64 {
                let i = (position * 7 % 4) as usize;
                let event = RecordedEvent {
                    id: MessageId::new(),
                    stream: streams[i].to_owned(),
                    version: versions[i],
                    position,
                    event_type: format!("E{position}"),
                    data: serde_json::json!({ "n": position }),
                    metadata: EventMetadata { correlation_id: Some(MessageId::new()), ..EventMetadata::default() },
                    timestamp: Timestamp(1_000 + position),
                };
                versions[i] += 1;
                conn.execute(
                    "INSERT INTO events (position, id, stream, version, event_type, data, metadata, timestamp)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        position as i64,
                        event.id.0.as_bytes().as_slice(),
                        event.stream,
                        event.version as i64,
                        event.event_type,
                        serde_json::to_vec(&event.data).unwrap(),
                        serde_json::to_vec(&event.metadata).unwrap(),
                        event.timestamp.0 as i64,
                    ],
                )
                .unwrap();
                expected.push(event);
            }
            conn.execute("INSERT INTO snapshots VALUES ('cart', 3, 5, x'7b7d')", []).unwrap();
        }
        let log = SqliteEventLog::open_file(&path).unwrap();
        assert_eq!(schema_version(&Connection::open(&path).unwrap()).unwrap(), 2);
        let mut r = log.reader().unwrap();
        assert_eq!(r.read_all(0, Direction::Forward, 100).unwrap(), expected);
        assert_eq!(r.end_position().unwrap(), 40);
        for stream in ["order-1", "order-2", "$$order-1", "cart"] {
            let of_stream: Vec<_> = expected.iter().filter(|e| e.stream == stream).cloned().collect();
            assert_eq!(r.read_stream(stream, 0, Direction::Forward, 100).unwrap(), of_stream, "{stream}");
            let last = of_stream.last().unwrap().version;
            assert_eq!(r.stream_version(stream).unwrap(), Some(last));
            let mut backward = of_stream.clone();
            backward.reverse();
            assert_eq!(r.read_stream(stream, u64::MAX, Direction::Backward, 100).unwrap(), backward);
        }
        assert_eq!(r.load_snapshot("cart", None, None).unwrap().map(|s| s.version), Some(3));
        // The writer goes on where the old file stopped, and still knows the
        // old event ids.
        let mut w = log.writer().unwrap();
        let next = AppendRequest::new("cart", ExpectedVersion::Exact(9), vec![ev(40)]);
        assert_eq!(only(w.append_batch(vec![next]).unwrap()).unwrap().positions, Some(40..=40));
        let repeat = AppendRequest {
            stream: expected[0].stream.clone(),
            expected: ExpectedVersion::Any,
            events: vec![ev(0).with_id(expected[0].id)],
        };
        let repeated = only(w.append_batch(vec![repeat]).unwrap()).unwrap();
        assert!(!repeated.written && repeated.positions == Some(0..=0), "{repeated:?}");
    }

    #[test]
    fn a_refused_first_append_leaves_no_stream() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteEventLog::open(&DataDir::new(dir.path())).unwrap();
        let mut w = log.writer().unwrap();
        let first = AppendRequest::new("a", ExpectedVersion::NoStream, vec![ev(0)]);
        only(w.append_batch(vec![first.clone()]).unwrap()).unwrap();
        // `b` gets its id, then its append is refused on the stored event id.
        let refused = AppendRequest::new("b", ExpectedVersion::NoStream, vec![ev(1), first.events[0].clone()]);
        assert!(only(w.append_batch(vec![refused]).unwrap()).is_err());
        let mut r = log.reader().unwrap();
        assert_eq!(r.stream_version("b").unwrap(), None);
        assert!(r.read_stream("b", 0, Direction::Forward, 10).unwrap().is_empty());
        // A later append to `b` (this writer or a fresh one) starts at 0.
        let again = AppendRequest::new("b", ExpectedVersion::NoStream, vec![ev(2)]);
        assert_eq!(only(w.append_batch(vec![again]).unwrap()).unwrap().version, Some(0));
        let mut fresh = log.writer().unwrap();
        let more = AppendRequest::new("b", ExpectedVersion::Exact(0), vec![ev(3)]);
        assert_eq!(only(fresh.append_batch(vec![more]).unwrap()).unwrap().version, Some(1));
    }

    #[test]
    fn a_stream_the_writer_does_not_remember_goes_on_and_a_refused_new_one_gets_no_id() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteEventLog::open(&DataDir::new(dir.path())).unwrap();
        let first = AppendRequest::new("a", ExpectedVersion::Any, vec![ev(0)]);
        only(log.writer().unwrap().append_batch(vec![first]).unwrap()).unwrap();
        // A fresh writer remembers no stream: it tries `a` as a new one and
        // finds its name taken.
        let mut w = log.writer().unwrap();
        let next = only(w.append_batch(vec![AppendRequest::new("a", ExpectedVersion::Any, vec![ev(1)])]).unwrap());
        assert_eq!(next.unwrap().version, Some(1));
        let refused =
            only(w.append_batch(vec![AppendRequest::new("b", ExpectedVersion::StreamExists, vec![ev(2)])]).unwrap());
        assert!(matches!(refused, Err(AppendError::WrongExpectedVersion { actual: None, .. })), "{refused:?}");
        let conn = Connection::open(log.path()).unwrap();
        let names: Vec<String> = conn
            .prepare("SELECT name FROM streams")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(names, ["a"]);
        assert_eq!(log.reader().unwrap().read_stream("a", 0, Direction::Forward, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_writer_follows_what_another_connection_committed() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteEventLog::open(&DataDir::new(dir.path())).unwrap();
        let (mut w1, mut w2) = (log.writer().unwrap(), log.writer().unwrap());
        only(w1.append_batch(vec![AppendRequest::new("s", ExpectedVersion::NoStream, vec![ev(0)])]).unwrap()).unwrap();
        only(w2.append_batch(vec![AppendRequest::new("s", ExpectedVersion::Exact(0), vec![ev(1)])]).unwrap()).unwrap();
        // w1 last saw version 0 at position 0; both moved on.
        let stale =
            only(w1.append_batch(vec![AppendRequest::new("s", ExpectedVersion::Exact(0), vec![ev(2)])]).unwrap());
        assert!(matches!(stale, Err(AppendError::WrongExpectedVersion { actual: Some(1), .. })), "{stale:?}");
        let next =
            only(w1.append_batch(vec![AppendRequest::new("s", ExpectedVersion::Exact(1), vec![ev(3)])]).unwrap());
        assert_eq!(next.unwrap().positions, Some(2..=2));
    }

    #[test]
    fn a_long_run_is_written_in_statements_of_every_size() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteEventLog::open(&DataDir::new(dir.path())).unwrap();
        let mut w = log.writer().unwrap();
        // 64 + 16 + 4 + 4 + 1 + 1 + 1 rows over 3 streams, one request with
        // several events; then a second batch that goes on from there.
        let mut batch = Vec::new();
        for i in 0..88u64 {
            // Some with metadata, most without (stored as `{}`).
            let e = if i % 5 == 0 { ev(i).with_header("n", i.to_string()) } else { ev(i) };
            batch.push(AppendRequest::new(format!("s{}", i % 3), ExpectedVersion::Any, vec![e]));
        }
        batch.push(AppendRequest::new("s0", ExpectedVersion::Exact(29), vec![ev(88), ev(89), ev(90)]));
        let results: Vec<_> = w.append_batch(batch).unwrap().into_iter().map(|r| r.unwrap().result).collect();
        for (i, r) in results.iter().enumerate().take(88) {
            assert_eq!(r.positions, Some(i as u64..=i as u64));
            assert_eq!(r.version, Some(i as u64 / 3));
        }
        assert_eq!(results[88].positions, Some(88..=90));
        assert_eq!(results[88].version, Some(32));
        let next = AppendRequest::new("s1", ExpectedVersion::Exact(28), vec![ev(91)]);
        assert_eq!(only(w.append_batch(vec![next]).unwrap()).unwrap().positions, Some(91..=91));
        let mut r = log.reader().unwrap();
        let all = r.read_all(0, Direction::Forward, 200).unwrap();
        assert_eq!(all.len(), 92);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.position, i as u64);
            assert_eq!(e.data, serde_json::json!(i));
            let header = (i % 5 == 0 && i < 88).then(|| i.to_string());
            assert_eq!(e.metadata.headers.get("n"), header.as_ref(), "{i}");
        }
        assert_eq!(r.stream_version("s0").unwrap(), Some(32));
        assert_eq!(r.read_stream("s2", 0, Direction::Forward, 100).unwrap().len(), 29);
    }

    #[test]
    fn a_repeat_inside_a_run_is_answered_as_such_and_the_others_are_written_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteEventLog::open(&DataDir::new(dir.path())).unwrap();
        let mut w = log.writer().unwrap();
        let first = AppendRequest::new("a", ExpectedVersion::Any, vec![ev(0), ev(1)]);
        only(w.append_batch(vec![first.clone()]).unwrap()).unwrap();
        // The retry expects `Any`, so the writer plans it as a write and the
        // run's insert meets the stored ids; an id given twice in one batch
        // (in `c` and `d`) refuses the second.
        let shared = NewEvent::new("e", serde_json::json!("shared")).with_id(MessageId::new());
        let batch = vec![
            AppendRequest::new("b", ExpectedVersion::NoStream, vec![ev(2)]),
            first.clone(),
            AppendRequest::new("c", ExpectedVersion::Any, vec![shared.clone()]),
            AppendRequest::new("d", ExpectedVersion::Any, vec![ev(3), shared]),
            AppendRequest::new("b", ExpectedVersion::Exact(0), vec![ev(4)]),
        ];
        let results = w.append_batch(batch).unwrap();
        let ok = |i: usize| results[i].as_ref().unwrap().result.clone();
        assert_eq!(ok(0).positions, Some(2..=2));
        assert_eq!(ok(1), AppendResult { version: Some(1), positions: Some(0..=1), written: false });
        assert_eq!(ok(2).positions, Some(3..=3));
        assert!(matches!(results[3], Err(AppendError::DuplicateEventId { version: 0, .. })), "{results:?}");
        assert_eq!(ok(4), AppendResult { version: Some(1), positions: Some(4..=4), written: true });
        let all = log.reader().unwrap().read_all(0, Direction::Forward, 10).unwrap();
        let streams: Vec<_> = all.iter().map(|e| (e.stream.as_str(), e.version, e.position)).collect();
        assert_eq!(streams, [("a", 0, 0), ("a", 1, 1), ("b", 0, 2), ("c", 0, 3), ("b", 1, 4)]);
        // The writer goes on with what it learned.
        let next = AppendRequest::new("d", ExpectedVersion::NoStream, vec![ev(5)]);
        assert_eq!(only(w.append_batch(vec![next]).unwrap()).unwrap().positions, Some(5..=5));
    }

    #[test]
    fn a_conflict_on_the_last_row_of_a_full_statement_leaves_none_of_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteEventLog::open(&DataDir::new(dir.path())).unwrap();
        let mut w = log.writer().unwrap();
        let stored = AppendRequest::new("a", ExpectedVersion::Any, vec![ev(0)]);
        only(w.append_batch(vec![stored.clone()]).unwrap()).unwrap();
        // 63 new appends, then the stored one again: one 64-row statement
        // that fails on its last row after writing the 63 before it.
        let mut batch: Vec<_> =
            (1..64u64).map(|i| AppendRequest::new(format!("s{i}"), ExpectedVersion::Any, vec![ev(i)])).collect();
        batch.push(stored);
        let results = w.append_batch(batch).unwrap();
        for (i, r) in results.iter().take(63).enumerate() {
            let r = &r.as_ref().unwrap().result;
            assert!(r.written);
            assert_eq!(r.positions, Some(i as u64 + 1..=i as u64 + 1));
        }
        assert_eq!(
            results[63].as_ref().unwrap().result,
            AppendResult { version: Some(0), positions: Some(0..=0), written: false }
        );
        let all = log.reader().unwrap().read_all(0, Direction::Forward, 100).unwrap();
        let got: Vec<_> = all.iter().map(|e| (e.position, e.data.clone())).collect();
        assert_eq!(got, (0..64u64).map(|i| (i, serde_json::json!(i))).collect::<Vec<_>>());
    }

    #[test]
    fn events_redone_one_by_one_keep_their_payload_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteEventLog::open(&DataDir::new(dir.path())).unwrap();
        let mut w = log.writer().unwrap();
        let first = AppendRequest::new("a", ExpectedVersion::Any, vec![ev(0)]);
        only(w.append_batch(vec![first.clone()]).unwrap()).unwrap();
        // The retry's stored id sends the run back through the one-by-one
        // path, with an event that has metadata and one that has none.
        let batch =
            vec![AppendRequest::new("b", ExpectedVersion::Any, vec![ev(1).with_header("k", "v"), ev(2)]), first];
        let results = w.append_batch(batch).unwrap();
        assert_eq!(results[0].as_ref().unwrap().result.positions, Some(1..=2));
        assert!(!results[1].as_ref().unwrap().result.written);
        let all = log.reader().unwrap().read_all(1, Direction::Forward, 10).unwrap();
        let got: Vec<_> = all.iter().map(|e| (e.data.clone(), e.metadata.headers.get("k").cloned())).collect();
        assert_eq!(got, [(serde_json::json!(1), Some("v".to_owned())), (serde_json::json!(2), None)]);
        assert_eq!(all[1].metadata, EventMetadata::default());
    }

    #[test]
    fn requests_the_writer_cannot_plan_keep_their_place_between_runs() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteEventLog::open(&DataDir::new(dir.path())).unwrap();
        let mut w = log.writer().unwrap();
        // A conflict, an empty append and a bad name between writes: each
        // sees the writes before it in the batch.
        let batch = vec![
            AppendRequest::new("a", ExpectedVersion::NoStream, vec![ev(0)]),
            AppendRequest::new("a", ExpectedVersion::NoStream, vec![ev(1)]),
            AppendRequest::new("a", ExpectedVersion::Exact(0), vec![]),
            AppendRequest::new("$bad", ExpectedVersion::Any, vec![ev(2)]),
            AppendRequest::new("a", ExpectedVersion::Exact(0), vec![ev(3)]),
        ];
        let results = w.append_batch(batch).unwrap();
        assert_eq!(results[0].as_ref().unwrap().result.positions, Some(0..=0));
        assert!(matches!(results[1], Err(AppendError::WrongExpectedVersion { actual: Some(0), .. })), "{results:?}");
        assert_eq!(
            results[2].as_ref().unwrap().result,
            AppendResult { version: Some(0), positions: None, written: false }
        );
        assert!(matches!(results[3], Err(AppendError::InvalidRequest(_))), "{results:?}");
        assert_eq!(results[4].as_ref().unwrap().result.positions, Some(1..=1));
        assert_eq!(log.reader().unwrap().end_position().unwrap(), 2);
    }
}
