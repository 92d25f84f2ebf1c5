//! The blocking side of the event store: one writer thread and a pool of
//! reader threads (sync actors on a `SyncArbiter`).
//!
//! Work is sent as closures over the backend handle ([`Writer::call`],
//! [`ReadOp`]), so one message type covers every operation and the async
//! side decides what to run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::{Actor, Handler, Message, SyncArbiter, SyncContext};
use tokio::sync::{mpsc, oneshot};

use crate::store::{EventLog, EventReader, EventWriter, StoreError};

type ReadFn<R> = Box<dyn FnOnce(&mut dyn EventReader) -> Result<R, StoreError> + Send>;

/// Runs a closure on a reader thread with a backend reader.
pub(crate) struct ReadOp<R>(pub(crate) ReadFn<R>);

impl<R: Send + 'static> Message for ReadOp<R> {
    type Result = Result<R, StoreError>;
}

/// A closure for the writer thread, answering through a channel of its own.
type Job = Box<dyn FnOnce(&mut Result<Box<dyn EventWriter>, StoreError>) + Send>;

/// Jobs waiting for the writer thread: enough for the actor's batch and
/// the handles' snapshot and checkpoint writes; senders wait beyond that.
const WRITER_JOBS: usize = 16;

/// How long the writer thread stays awake for its next job before it
/// sleeps. Under load the next batch comes within this (the appenders
/// answered by the last commit send their next appends, then the actor
/// sends them): waking a sleeping thread took about 55 µs on the bench
/// machine, a tenth of a 64-append batch's period, which the spin saves.
const WRITER_SPIN: Duration = Duration::from_micros(250);

/// The writer thread's address: runs closures on the backend's one writer,
/// one at a time, in the order they were sent.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Runs `f` on the writer thread and returns its result. The job is
    /// queued now if there is room (the future then only waits for the
    /// result), so that the writer can start before the caller's task is
    /// next polled.
    pub(crate) fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn EventWriter) -> Result<R, StoreError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<R, StoreError>> + 'static {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |writer| {
            let result = match writer {
                Ok(w) => f(w.as_mut()),
                Err(e) => Err(e.clone()),
            };
            let _ = tx.send(result);
        });
        let full = match self.jobs.try_send(job) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(job)) => Some((self.jobs.clone(), job)),
            // The thread is gone: the job is dropped, and `rx` says so.
            Err(mpsc::error::TrySendError::Closed(_)) => None,
        };
        async move {
            if let Some((jobs, job)) = full {
                // Dropped unsent if the thread is gone: `rx` says so.
                let _ = jobs.send(job).await;
            }
            // Dropped unanswered: the thread is gone or the job panicked.
            rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("the event store writer stopped".into())))
        }
    }
}

/// The writer thread: runs jobs until every [`Writer`] is dropped. After a
/// job it spins for [`WRITER_SPIN`] before it sleeps. A job that panics is
/// answered by its dropped channel, and the thread goes on with a freshly
/// opened writer (the old one may be inside a transaction).
fn run_writer(
    log: Arc<dyn EventLog>,
    mut writer: Result<Box<dyn EventWriter>, StoreError>,
    mut jobs: mpsc::Receiver<Job>,
) {
    loop {
        let job = match jobs.try_recv() {
            Ok(job) => job,
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => match spin_recv(&mut jobs) {
                Some(job) => job,
                None => match jobs.blocking_recv() {
                    Some(job) => job,
                    None => return,
                },
            },
        };
        if catch_unwind(AssertUnwindSafe(|| job(&mut writer))).is_err() {
            // Closing the old writer first rolls back what it left open.
            drop(std::mem::replace(&mut writer, Err(StoreError::Unavailable("reopening".into()))));
            writer = log.writer();
        }
    }
}

/// The next job if one comes within [`WRITER_SPIN`].
fn spin_recv(jobs: &mut mpsc::Receiver<Job>) -> Option<Job> {
    let until = Instant::now() + WRITER_SPIN;
    while Instant::now() < until {
        // Not a busy loop: another thread ready to run on this core (the
        // appenders' own, on a busy machine) goes first.
        std::thread::yield_now();
        if let Ok(job) = jobs.try_recv() {
            return Some(job);
        }
    }
    None
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
) -> Result<(Writer, actix::Addr<ReaderWorker>), StoreError> {
    let threads = readers.len().max(1);
    let (jobs, rx) = mpsc::channel(WRITER_JOBS);
    let writer_log = Arc::clone(&log);
    std::thread::Builder::new()
        .name("event-store-writer".into())
        .spawn(move || run_writer(writer_log, Ok(writer), rx))
        .map_err(|e| StoreError::Unavailable(format!("could not start the event store writer thread: {e}")))?;
    let opened_readers = Mutex::new(readers);
    let readers = SyncArbiter::start(threads, move || {
        let opened = opened_readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let reader = opened.map_or_else(|| log.reader(), Ok);
        ReaderWorker { reader }
    });
    Ok((Writer { jobs }, readers))
}
