//! The blocking side of the event store: one writer thread and a pool of
//! reader threads, each a sync actor on a `SyncArbiter`.
//!
//! Work is sent as closures over the backend handle ([`WriteOp`],
//! [`ReadOp`]), so one message type covers every operation and the async
//! side decides what to run.

use std::sync::{Arc, Mutex, PoisonError};

use actix::{Actor, Handler, Message, SyncArbiter, SyncContext};

use crate::store::{EventLog, EventReader, EventWriter, StoreError};

type WriteFn<R> = Box<dyn FnOnce(&mut dyn EventWriter) -> Result<R, StoreError> + Send>;
type ReadFn<R> = Box<dyn FnOnce(&mut dyn EventReader) -> Result<R, StoreError> + Send>;

/// Runs a closure on the writer thread with the backend's writer.
pub(crate) struct WriteOp<R>(pub(crate) WriteFn<R>);

impl<R: Send + 'static> Message for WriteOp<R> {
    type Result = Result<R, StoreError>;
}

/// Runs a closure on a reader thread with a backend reader.
pub(crate) struct ReadOp<R>(pub(crate) ReadFn<R>);

impl<R: Send + 'static> Message for ReadOp<R> {
    type Result = Result<R, StoreError>;
}

/// Owns the backend's one writer.
pub(crate) struct WriterWorker {
    writer: Result<Box<dyn EventWriter>, StoreError>,
}

impl Actor for WriterWorker {
    type Context = SyncContext<Self>;
}

impl<R: Send + 'static> Handler<WriteOp<R>> for WriterWorker {
    type Result = Result<R, StoreError>;

    fn handle(&mut self, op: WriteOp<R>, _: &mut SyncContext<Self>) -> Self::Result {
        match &mut self.writer {
            Ok(w) => (op.0)(w.as_mut()),
            Err(e) => Err(e.clone()),
        }
    }
}

/// Owns one backend reader.
pub(crate) struct ReaderWorker {
    reader: Result<Box<dyn EventReader>, StoreError>,
}

impl Actor for ReaderWorker {
    type Context = SyncContext<Self>;
}

impl<R: Send + 'static> Handler<ReadOp<R>> for ReaderWorker {
    type Result = Result<R, StoreError>;

    fn handle(&mut self, op: ReadOp<R>, _: &mut SyncContext<Self>) -> Self::Result {
        match &mut self.reader {
            Ok(r) => (op.0)(r.as_mut()),
            Err(e) => Err(e.clone()),
        }
    }
}

/// Starts the writer thread with an already opened writer (so that opening
/// errors reach the caller) and `readers` reader threads.
pub(crate) fn start_workers(
    log: Arc<dyn EventLog>,
    writer: Box<dyn EventWriter>,
    readers: Vec<Box<dyn EventReader>>,
) -> (actix::Addr<WriterWorker>, actix::Addr<ReaderWorker>) {
    let threads = readers.len().max(1);
    let first_writer = Mutex::new(Some(writer));
    let writer_log = Arc::clone(&log);
    let writer = SyncArbiter::start(1, move || {
        let opened = first_writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        // A replacement thread (after a panic) opens a fresh writer.
        let writer = opened.map_or_else(|| writer_log.writer(), Ok);
        WriterWorker { writer }
    });
    let opened_readers = Mutex::new(readers);
    let readers = SyncArbiter::start(threads, move || {
        let opened = opened_readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let reader = opened.map_or_else(|| log.reader(), Ok);
        ReaderWorker { reader }
    });
    (writer, readers)
}
