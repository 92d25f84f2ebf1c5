//! The `EventStore` actor and its handle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use actix::prelude::*;
use metrics::{Counter, Gauge, Histogram};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::metadata::{self, StreamMetadata};
use super::subscription::{self, Subscription, SubscriptionTarget};
use super::workers::{start_workers, ReadOp, ReaderWorker, Writer};
use crate::envelope::Timestamp;
use crate::metrics as m;
use crate::signal::Signal;
use crate::store::{
    AppendError, AppendOutcome, AppendRequest, AppendResult, Checkpoint, DataDir, Direction, EventLog, EventReader,
    ExpectedVersion, GroupCommit, MemoryEventLog, NewEvent, RecordedEvent, Snapshot, SqliteEventLog, StoreError,
};

/// Settings of an event store.
#[derive(Clone, Debug)]
pub struct EventStoreConfig {
    /// The store's name, used as the `name` label of its metrics.
    pub name: String,
    /// Reader threads (reads and catch-up subscriptions). Default 2.
    pub readers: usize,
    /// Most appends committed together in one transaction. Default 4096.
    /// Twice as many (at least 32) may be queued or committing at once;
    /// further appenders wait for room.
    pub max_batch: usize,
    /// Events a catch-up subscription reads per round trip. Default 512.
    pub read_batch: usize,
    /// Commits a live subscriber may have waiting before it is switched back
    /// to catch-up reads. Default 64.
    pub live_buffer: usize,
    /// Events buffered between a subscription and its consumer. Default 256.
    pub subscription_buffer: usize,
}

impl Default for EventStoreConfig {
    fn default() -> Self {
        EventStoreConfig {
            name: "events".into(),
            readers: 2,
            max_batch: 4096,
            read_batch: 512,
            live_buffer: 64,
            subscription_buffer: 256,
        }
    }
}

impl EventStoreConfig {
    /// The defaults with another store name.
    pub fn named(name: impl Into<String>) -> Self {
        EventStoreConfig { name: name.into(), ..Self::default() }
    }
}

/// Appends events to a stream (answered after the durable commit).
#[derive(Debug)]
pub struct Append(pub AppendRequest);

impl Message for Append {
    type Result = Result<AppendResult, AppendError>;
}

/// The appends on their way to the writer, shared by the handles and the
/// actor. Appenders put their request here themselves instead of sending it
/// through the actor's mailbox (a boxed envelope, a queue node and a poll of
/// the actor per append): while a commit is in flight the actor is not
/// woken at all, and when the commit completes it takes everything queued
/// meanwhile as the next batch.
struct AppendQueue {
    state: Mutex<QueueState>,
    /// One permit per append from the moment it is queued until it is
    /// answered: appenders beyond [`queue_capacity`] wait for room.
    room: Arc<Semaphore>,
    /// Tells the actor the queue has appends and nobody is due to take
    /// them: raised by the first append after the actor found it empty.
    queued: Signal,
}

struct QueueState {
    appends: Vec<(AppendRequest, Pending)>,
    /// The actor will look at the queue without being told: `queued` was
    /// raised, or a commit is in flight (its completion takes the next
    /// batch). Cleared when the actor finds the queue empty.
    due: bool,
    /// The actor is gone: appends are refused.
    closed: bool,
}

impl AppendQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while holding the lock; the state is a list.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How many appends may be queued or committing at once: a full batch at
/// the writer and another one waiting.
fn queue_capacity(config: &EventStoreConfig) -> usize {
    config.max_batch.max(16).saturating_mul(2).min(Semaphore::MAX_PERMITS)
}

/// Queues `request` (waiting for room if the queue is full) and waits for
/// its answer. The actor is told only if nobody is due to look at the queue.
async fn enqueue(queue: &AppendQueue, request: AppendRequest) -> Result<AppendResult, AppendError> {
    let stopped = || AppendError::Store(StoreError::Unavailable("the event store stopped".into()));
    let room = match Arc::clone(&queue.room).try_acquire_owned() {
        Ok(room) => room,
        Err(_) => Arc::clone(&queue.room).acquire_owned().await.map_err(|_| stopped())?,
    };
    let (reply, answer) = oneshot::channel();
    let pending = Pending { reply, received: Instant::now(), _room: room };
    let tell = {
        let mut q = queue.lock();
        if q.closed {
            return Err(stopped());
        }
        q.appends.push((request, pending));
        !std::mem::replace(&mut q.due, true)
    };
    if tell {
        queue.queued.raise();
    }
    answered(answer).await
}

/// Registers a live subscriber: from now on, every committed event of the
/// target is sent to it, one batch per commit, until the channel is full or
/// closed.
pub(crate) struct RegisterLive {
    pub(crate) target: SubscriptionTarget,
    pub(crate) sender: mpsc::Sender<Arc<[RecordedEvent]>>,
}

impl Message for RegisterLive {
    type Result = ();
}

struct Pending {
    reply: oneshot::Sender<Result<AppendResult, AppendError>>,
    received: Instant,
    /// The append's place in the queue, given back once it is answered.
    _room: OwnedSemaphorePermit,
}

struct Metrics {
    written: Counter,
    idempotent: Counter,
    conflict: Counter,
    duplicate: Counter,
    invalid: Counter,
    error: Counter,
    events: Counter,
    conflicts: Counter,
    latency: Histogram,
    commits: Counter,
    commit_latency: Histogram,
    batch_size: Histogram,
    live: Gauge,
    fallbacks: Counter,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let outcome = |o: &'static str| metrics::counter!(m::EVENT_STORE_APPENDS, m::LABEL_NAME => name.to_owned(), m::LABEL_OUTCOME => o);
        let labels = [(m::LABEL_NAME, name.to_owned())];
        Metrics {
            written: outcome("written"),
            idempotent: outcome("idempotent"),
            conflict: outcome("conflict"),
            duplicate: outcome("duplicate"),
            invalid: outcome("invalid"),
            error: outcome("error"),
            events: metrics::counter!(m::EVENT_STORE_EVENTS_APPENDED, &labels),
            conflicts: metrics::counter!(m::EVENT_STORE_CONFLICTS, &labels),
            latency: metrics::histogram!(m::EVENT_STORE_APPEND_LATENCY, &labels),
            commits: metrics::counter!(m::EVENT_STORE_COMMITS, &labels),
            commit_latency: metrics::histogram!(m::EVENT_STORE_COMMIT_LATENCY, &labels),
            batch_size: metrics::histogram!(m::EVENT_STORE_BATCH_SIZE, &labels),
            live: metrics::gauge!(m::EVENT_STORE_LIVE_SUBSCRIPTIONS, &labels),
            fallbacks: metrics::counter!(m::EVENT_STORE_SUBSCRIPTION_FALLBACKS, &labels),
        }
    }

    fn record(&self, result: &Result<AppendOutcome, AppendError>) {
        match result {
            Ok(o) if o.result.written => {
                self.written.increment(1);
                self.events.increment(o.recorded.len() as u64);
            }
            Ok(_) => self.idempotent.increment(1),
            Err(AppendError::WrongExpectedVersion { .. }) => {
                self.conflict.increment(1);
                self.conflicts.increment(1);
            }
            Err(AppendError::DuplicateEventId { .. }) => self.duplicate.increment(1),
            Err(AppendError::InvalidRequest(_)) => self.invalid.increment(1),
            Err(AppendError::Store(_)) => self.error.increment(1),
        }
    }
}

/// The event store actor: takes appends, commits them in groups on the
/// writer thread, answers each, and feeds live subscribers.
///
/// Start it with [`EventStore::start`] (any backend), [`EventStore::open`]
/// (SQLite in a data directory) or [`EventStore::in_memory`]; talk to it
/// through the returned [`EventStoreHandle`].
pub struct EventStore {
    config: Arc<EventStoreConfig>,
    writer: Writer,
    queue: Arc<AppendQueue>,
    committing: bool,
    flush_scheduled: bool,
    /// The events of the last commit when no live subscriber wanted them.
    /// Freeing them is left until the next batch is on its way to the
    /// writer: between a commit and the next batch, this thread's time is
    /// what the appenders wait for (a 64-event batch's events are a few
    /// hundred allocations). At most one batch's worth stays.
    spent: Vec<Vec<RecordedEvent>>,
    live_all: Vec<mpsc::Sender<Arc<[RecordedEvent]>>>,
    live_streams: HashMap<String, Vec<mpsc::Sender<Arc<[RecordedEvent]>>>>,
    end: Arc<AtomicU64>,
    fallbacks: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl EventStore {
    /// Starts an event store over `log` in the current actix system: opens
    /// the writer and the readers (so that an unusable backend fails here),
    /// starts their threads and the actor.
    pub fn start(log: impl EventLog, config: EventStoreConfig) -> Result<EventStoreHandle, StoreError> {
        let log: Arc<dyn EventLog> = Arc::new(log);
        let writer = log.writer()?;
        let mut readers = Vec::with_capacity(config.readers.max(1));
        for _ in 0..config.readers.max(1) {
            readers.push(log.reader()?);
        }
        let end = readers.first_mut().map(|r| r.end_position()).transpose()?.unwrap_or(0);
        let (writer, readers) = start_workers(log, writer, readers)?;
        let config = Arc::new(config);
        let end = Arc::new(AtomicU64::new(end));
        let fallbacks = Arc::new(AtomicU64::new(0));
        let queue = Arc::new(AppendQueue {
            state: Mutex::new(QueueState { appends: Vec::new(), due: false, closed: false }),
            room: Arc::new(Semaphore::new(queue_capacity(&config))),
            queued: Signal::default(),
        });
        let actor = EventStore {
            config: Arc::clone(&config),
            writer: writer.clone(),
            queue: Arc::clone(&queue),
            committing: false,
            flush_scheduled: false,
            spent: Vec::new(),
            live_all: Vec::new(),
            live_streams: HashMap::new(),
            end: Arc::clone(&end),
            fallbacks: Arc::clone(&fallbacks),
            metrics: Arc::new(Metrics::new(&config.name)),
        };
        let queued = queue.queued.stream();
        let store = EventStore::create(|ctx| {
            ctx.add_stream(queued);
            actor
        });
        Ok(EventStoreHandle { store, queue, writer, readers, config, end, fallbacks })
    }

    /// Starts an event store on the SQLite log of `dir`
    /// (`<dir>/events.sqlite3`).
    pub fn open(dir: &DataDir, config: EventStoreConfig) -> Result<EventStoreHandle, StoreError> {
        Self::start(SqliteEventLog::open(dir)?, config)
    }

    /// Starts an event store in memory (tests, examples).
    pub fn in_memory(config: EventStoreConfig) -> Result<EventStoreHandle, StoreError> {
        Self::start(MemoryEventLog::new(), config)
    }

    /// Sends the queued appends to the writer as one batch, unless a commit
    /// is already in flight (its completion calls this again).
    ///
    /// The writer thread answers the appenders itself, right after the
    /// commit (see [`answer`]), and hands the actor only what it keeps doing:
    /// the committed events, for live subscribers. Answering from here took
    /// a thread hop and this thread's time per answer before any appender
    /// could go on. The batching rarely suffers: the commit's completion
    /// reaches this actor after the last answer, and this thread usually
    /// wakes up after the writer has sent them all, so every answered task
    /// runs (and sends its next append) before the actor flushes again. If
    /// this thread is already awake, the actor may see the completion while
    /// some tasks have yet to run and send a smaller batch (64-writer bench:
    /// 988 to 1,000 of each 1,000 batches still had all 64).
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.committing {
            return;
        }
        let (requests, waiting): (Vec<_>, Vec<_>) = {
            let mut q = self.queue.lock();
            if q.appends.is_empty() {
                // The next append tells the actor.
                q.due = false;
                return;
            }
            // `due` stays set: this commit's completion takes what queues
            // up meanwhile.
            let n = q.appends.len().min(self.config.max_batch.max(1));
            q.appends.drain(..n).unzip()
        };
        self.committing = true;
        let started = Instant::now();
        let (metrics, end) = (Arc::clone(&self.metrics), Arc::clone(&self.end));
        let commit = self.writer.call(move |w| answer(w.append_batch(requests), waiting, started, &metrics, &end));
        ctx.spawn(commit.into_actor(self).map(move |res, act, ctx| {
            act.committing = false;
            match res {
                Ok(recorded) => act.committed(recorded),
                // The appenders were answered with the error (or, if the
                // writer's job panicked, told that the store stopped).
                Err(e) => tracing::error!(store = %act.config.name, error = %e, "event store commit failed"),
            }
            act.flush(ctx);
        }));
        // The writer has its batch: now this thread has time to free the
        // last one's events.
        self.spent.clear();
    }

    /// Takes a commit's events (one list per written append, in commit
    /// order): publishes them to live subscribers, or keeps them to be freed
    /// later when there is none.
    fn committed(&mut self, recorded: Vec<Vec<RecordedEvent>>) {
        if self.live_all.is_empty() && self.live_streams.is_empty() {
            self.spent.extend(recorded);
            return;
        }
        let committed: Vec<RecordedEvent> = recorded.into_iter().flatten().collect();
        if !committed.is_empty() {
            self.publish(committed);
        }
    }

    /// Hands a commit's events to live subscribers; a subscriber whose buffer
    /// is full is dropped from the live set and goes back to catch-up reads.
    fn publish(&mut self, committed: Vec<RecordedEvent>) {
        let mut by_stream: HashMap<&str, Vec<RecordedEvent>> = HashMap::new();
        if !self.live_streams.is_empty() {
            for e in &committed {
                if self.live_streams.contains_key(e.stream.as_str()) {
                    by_stream.entry(e.stream.as_str()).or_default().push(e.clone());
                }
            }
        }
        let mut dropped = 0u64;
        for (stream, events) in by_stream {
            let batch: Arc<[RecordedEvent]> = events.into();
            if let Some(subs) = self.live_streams.get_mut(stream) {
                dropped += send_live(subs, &batch);
                if subs.is_empty() {
                    self.live_streams.remove(stream);
                }
            }
        }
        if !self.live_all.is_empty() {
            let batch: Arc<[RecordedEvent]> = committed.into();
            dropped += send_live(&mut self.live_all, &batch);
        }
        if dropped > 0 {
            self.metrics.fallbacks.increment(dropped);
            self.fallbacks.fetch_add(dropped, Ordering::Relaxed);
        }
        self.update_live_gauge();
    }

    fn update_live_gauge(&self) {
        let n = self.live_all.len() + self.live_streams.values().map(Vec::len).sum::<usize>();
        self.metrics.live.set(n as f64);
    }
}

/// On the writer thread, right after a batch's commit (or its failure):
/// answers each appender, records the metrics, moves the end of `$all`
/// (before the answers, so an appender that was answered sees it there), and
/// returns the written appends' events for the actor to publish. A failed
/// batch answers every appender with the error.
#[allow(clippy::type_complexity)]
fn answer(
    res: Result<Vec<Result<AppendOutcome, AppendError>>, StoreError>,
    waiting: Vec<Pending>,
    started: Instant,
    metrics: &Metrics,
    end: &AtomicU64,
) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
    let results = match res {
        Ok(results) if results.len() == waiting.len() => results,
        Ok(results) => {
            let e =
                StoreError::Corrupt(format!("writer answered {} results for {} appends", results.len(), waiting.len()));
            return Err(fail_all(waiting, e, metrics));
        }
        Err(e) => return Err(fail_all(waiting, e, metrics)),
    };
    // One clock reading for the whole batch.
    let now = Instant::now();
    metrics.commits.increment(1);
    metrics.commit_latency.record(now.saturating_duration_since(started).as_secs_f64());
    let last = results.iter().rev().find_map(|r| r.as_ref().ok()?.recorded.last().map(|e| e.position + 1));
    if let Some(last) = last {
        end.fetch_max(last, Ordering::AcqRel);
    }
    let (mut recorded, mut events) = (Vec::with_capacity(results.len()), 0);
    for (result, pending) in results.into_iter().zip(waiting) {
        metrics.record(&result);
        metrics.latency.record(now.saturating_duration_since(pending.received).as_secs_f64());
        let answer = result.map(|o| {
            events += o.recorded.len();
            if !o.recorded.is_empty() {
                recorded.push(o.recorded);
            }
            o.result
        });
        // The caller may have gone away; the append stands regardless.
        let _ = pending.reply.send(answer);
    }
    metrics.batch_size.record(events as f64);
    Ok(recorded)
}

/// Answers every appender of a failed batch with `e`, and returns it.
fn fail_all(waiting: Vec<Pending>, e: StoreError, metrics: &Metrics) -> StoreError {
    for p in waiting {
        metrics.error.increment(1);
        let _ = p.reply.send(Err(AppendError::Store(e.clone())));
    }
    e
}

/// Sends `batch` to each subscriber; removes the full or closed ones and
/// returns how many were full.
fn send_live(subs: &mut Vec<mpsc::Sender<Arc<[RecordedEvent]>>>, batch: &Arc<[RecordedEvent]>) -> u64 {
    let mut full = 0;
    subs.retain(|s| match s.try_send(Arc::clone(batch)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            full += 1;
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
    full
}

impl GroupCommit for EventStore {
    fn write_scheduled(&mut self) -> &mut bool {
        &mut self.flush_scheduled
    }

    fn write_batch(&mut self, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}

impl Actor for EventStore {
    type Context = Context<Self>;
}

impl Drop for EventStore {
    fn drop(&mut self) {
        // Appends still queued would wait forever: answer them, and refuse
        // the next ones.
        let appends = {
            let mut q = self.queue.lock();
            q.closed = true;
            std::mem::take(&mut q.appends)
        };
        let (_, waiting): (Vec<_>, Vec<_>) = appends.into_iter().unzip();
        fail_all(waiting, StoreError::Unavailable("the event store stopped".into()), &self.metrics);
        self.queue.room.close();
    }
}

impl Handler<Append> for EventStore {
    type Result = ResponseFuture<Result<AppendResult, AppendError>>;

    fn handle(&mut self, Append(request): Append, _: &mut Context<Self>) -> Self::Result {
        let queue = Arc::clone(&self.queue);
        Box::pin(async move { enqueue(&queue, request).await })
    }
}

/// The append queue's signal: appends wait and nobody was due to look.
impl StreamHandler<()> for EventStore {
    fn handle(&mut self, (): (), ctx: &mut Context<Self>) {
        self.write_soon(ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The signal's stream never ends.
    }
}

async fn answered(answer: oneshot::Receiver<Result<AppendResult, AppendError>>) -> Result<AppendResult, AppendError> {
    answer.await.unwrap_or_else(|_| Err(StoreError::Unavailable("the event store stopped".into()).into()))
}

impl Handler<RegisterLive> for EventStore {
    type Result = ();

    fn handle(&mut self, msg: RegisterLive, _: &mut Context<Self>) {
        match msg.target {
            SubscriptionTarget::All => self.live_all.push(msg.sender),
            SubscriptionTarget::Stream(s) => self.live_streams.entry(s).or_default().push(msg.sender),
        }
        self.update_live_gauge();
    }
}

/// A cloneable handle on a running event store: appends go to the
/// [`EventStore`] actor, reads straight to the reader threads.
///
/// Every method must be called inside an actix system (the one the store was
/// started in, or any other: addresses work across arbiters).
#[derive(Clone)]
pub struct EventStoreHandle {
    store: Addr<EventStore>,
    queue: Arc<AppendQueue>,
    writer: Writer,
    readers: Addr<ReaderWorker>,
    config: Arc<EventStoreConfig>,
    end: Arc<AtomicU64>,
    fallbacks: Arc<AtomicU64>,
}

impl std::fmt::Debug for EventStoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStoreHandle").field("name", &self.config.name).finish_non_exhaustive()
    }
}

impl EventStoreHandle {
    /// The store's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The store's settings.
    pub fn config(&self) -> &EventStoreConfig {
        &self.config
    }

    /// The actor's address, to send [`Append`] directly.
    pub fn addr(&self) -> &Addr<EventStore> {
        &self.store
    }

    /// Appends `events` to `stream` if its version matches `expected`, and
    /// answers once they are durable. Events without an id get one.
    pub async fn append(
        &self,
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        self.append_request(AppendRequest::new(stream, expected, events)).await
    }

    /// Appends a prepared request (keep it to retry idempotently).
    pub async fn append_request(&self, request: AppendRequest) -> Result<AppendResult, AppendError> {
        enqueue(&self.queue, request).await
    }

    pub(crate) async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn EventReader) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.readers.send(ReadOp(Box::new(f))).await?
    }

    pub(crate) async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn crate::store::EventWriter) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.writer.call(f).await
    }

    /// Up to `max` events of `stream`, forward from version `from` or
    /// backward from it (`u64::MAX`: from the last event).
    pub async fn read_stream(
        &self,
        stream: impl Into<String>,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.into();
        self.read(move |r| metadata::read_visible(r, &stream, from, direction, max)).await
    }

    /// Sets `stream`'s metadata (appends a `$metadata` event to
    /// `$$<stream>`; the last one is in force). See [`metadata`].
    pub async fn set_stream_metadata(
        &self,
        stream: impl Into<String>,
        meta: StreamMetadata,
    ) -> Result<AppendResult, AppendError> {
        let data = serde_json::to_value(meta).map_err(|e| AppendError::InvalidRequest(e.to_string()))?;
        let stream = metadata::metadata_stream(&stream.into());
        self.append(stream, ExpectedVersion::Any, vec![NewEvent::new(metadata::METADATA_EVENT, data)]).await
    }

    /// The metadata in force for `stream` (unbounded when none was set).
    pub async fn stream_metadata(&self, stream: impl Into<String>) -> Result<StreamMetadata, StoreError> {
        let stream = stream.into();
        self.read(move |r| metadata::load(r, &stream)).await
    }

    /// Up to `max` events of `$all`, forward or backward from position
    /// `from`.
    pub async fn read_all(
        &self,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(move |r| r.read_all(from, direction, max)).await
    }

    /// The version of the stream's last event (`None`: no such stream).
    pub async fn stream_version(&self, stream: impl Into<String>) -> Result<Option<u64>, StoreError> {
        let stream = stream.into();
        self.read(move |r| r.stream_version(&stream)).await
    }

    /// The position the next committed event will get, as read from storage.
    pub async fn end_position(&self) -> Result<u64, StoreError> {
        self.read(|r| r.end_position()).await
    }

    /// The end of `$all` as last published by the store actor (no I/O).
    pub fn published_end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// How many times a live subscriber fell behind and was sent back to
    /// catch-up reads (also the metric
    /// `actorbus_event_store_subscription_fallbacks_total`).
    pub fn live_fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Saves an aggregate snapshot.
    pub async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.write(move |w| w.save_snapshot(&snapshot)).await
    }

    /// The latest snapshot of `stream` at or before a version and a time.
    pub async fn load_snapshot(
        &self,
        stream: impl Into<String>,
        max_version: Option<u64>,
        max_timestamp: Option<Timestamp>,
    ) -> Result<Option<Snapshot>, StoreError> {
        let stream = stream.into();
        self.read(move |r| r.load_snapshot(&stream, max_version, max_timestamp)).await
    }

    /// Saves a projection checkpoint.
    pub async fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError> {
        self.write(move |w| w.save_checkpoint(&checkpoint)).await
    }

    /// The checkpoint of projection `name`.
    pub async fn load_checkpoint(&self, name: impl Into<String>) -> Result<Option<Checkpoint>, StoreError> {
        let name = name.into();
        self.read(move |r| r.load_checkpoint(&name)).await
    }

    /// A catch-up subscription to `$all` from global position `from`: every
    /// event from there on, exactly once and in order, first from storage and
    /// then live as they are committed.
    pub fn subscribe_all(&self, from: u64) -> Subscription {
        subscription::start(self.clone(), SubscriptionTarget::All, from, None)
    }

    /// Like [`subscribe_all`](Self::subscribe_all), reporting its lag as the
    /// gauge `actorbus_event_store_subscription_lag_events{subscription=name}`.
    pub fn subscribe_all_named(&self, name: impl Into<String>, from: u64) -> Subscription {
        subscription::start(self.clone(), SubscriptionTarget::All, from, Some(name.into()))
    }

    /// A catch-up subscription to one stream from version `from`.
    pub fn subscribe_stream(&self, stream: impl Into<String>, from: u64) -> Subscription {
        subscription::start(self.clone(), SubscriptionTarget::Stream(stream.into()), from, None)
    }

    pub(crate) async fn register_live(
        &self,
        target: SubscriptionTarget,
        sender: mpsc::Sender<Arc<[RecordedEvent]>>,
    ) -> Result<(), StoreError> {
        Ok(self.store.send(RegisterLive { target, sender }).await?)
    }
}
