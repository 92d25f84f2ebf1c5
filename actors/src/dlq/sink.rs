//! The `DlqSink` actor, its storage thread and its handle.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use dashmap::DashMap;
use tokio::sync::oneshot;

use super::storage::{DlqStore, MemoryDlqStore, SqliteDlqStore};
use super::{
    DeadLetter, DlqError, DlqFilter, DlqSelector, DlqSource, FailureRecord, RedriveOptions, RedriveReport,
    RedriveTarget, RedriveTo,
};
use crate::claim_check::{ticket_in, ClaimCheck, Ticket};
use crate::dead_letter::{DeadLetterHook, HookFuture, Undeliverable};
use crate::envelope::MessageId;
use crate::metrics as m;
use crate::store::{DataDir, GroupCommit, StoreError};

/// Settings of a [`DlqSink`].
#[derive(Clone, Debug)]
pub struct DlqSinkConfig {
    /// Most dead letters written in one transaction. Default 1024.
    pub max_batch: usize,
    /// Mailbox capacity: senders wait (never drop) when it is full.
    /// Default 4096.
    pub mailbox: usize,
}

impl Default for DlqSinkConfig {
    fn default() -> Self {
        DlqSinkConfig { max_batch: 1024, mailbox: 4096 }
    }
}

type StoreFn<R> = Box<dyn FnOnce(&mut dyn DlqStore) -> Result<R, StoreError> + Send>;

/// A closure run on the storage thread.
struct StoreOp<R>(StoreFn<R>);

impl<R: Send + 'static> Message for StoreOp<R> {
    type Result = Result<R, StoreError>;
}

/// Owns the store on a thread of its own (a one-thread `SyncArbiter`).
struct StoreWorker {
    store: Box<dyn DlqStore>,
}

impl Actor for StoreWorker {
    type Context = SyncContext<Self>;
}

impl<R: Send + 'static> Handler<StoreOp<R>> for StoreWorker {
    type Result = Result<R, StoreError>;

    fn handle(&mut self, op: StoreOp<R>, _: &mut SyncContext<Self>) -> Self::Result {
        (op.0)(self.store.as_mut())
    }
}

/// Stores one dead letter; answered once it is durable.
struct Store(DeadLetter);

impl Message for Store {
    type Result = Result<(), DlqError>;
}

/// Takes dead letters from every pattern and writes them to its
/// [`DlqStore`] in groups (see the [module docs](super)). Start it with
/// [`DlqSink::start`], [`DlqSink::open`] or [`DlqSink::in_memory`] and use
/// the returned [`DlqHandle`].
pub struct DlqSink {
    config: DlqSinkConfig,
    worker: Addr<StoreWorker>,
    queue: VecDeque<(DeadLetter, oneshot::Sender<Result<(), DlqError>>)>,
    writing: bool,
    flush_scheduled: bool,
    depth: metrics::Gauge,
    evicted: metrics::Counter,
    watchers: Watchers,
}

/// Called with each stored dead letter of a source; see [`DlqHandle::watch`].
pub type DlqWatcher = Arc<dyn Fn(&DeadLetter) + Send + Sync>;

type Watchers = Arc<DashMap<DlqSource, DlqWatcher>>;

impl DlqSink {
    /// Starts a sink over `store` in the current actix system.
    pub fn start(store: impl DlqStore, config: DlqSinkConfig) -> Result<DlqHandle, StoreError> {
        let mut store: Box<dyn DlqStore> = Box::new(store);
        let depth = store.count()?;
        let cell = Mutex::new(Some(store));
        let worker = SyncArbiter::start(1, move || {
            // The store is opened once, by the caller; a replacement thread
            // (after a panic in a store call) has no store to take and
            // answers every call with an error.
            let store = cell.lock().unwrap_or_else(PoisonError::into_inner).take();
            StoreWorker { store: store.unwrap_or_else(|| Box::new(Unavailable)) }
        });
        let gauge = metrics::gauge!(m::DLQ_DEPTH);
        gauge.set(depth as f64);
        let watchers: Watchers = Arc::new(DashMap::new());
        let sink = DlqSink {
            watchers: watchers.clone(),
            config: config.clone(),
            worker: worker.clone(),
            queue: VecDeque::new(),
            writing: false,
            flush_scheduled: false,
            depth: gauge,
            evicted: metrics::counter!(m::DLQ_EVICTED),
        };
        let mailbox = config.mailbox.max(16);
        let addr = Actor::create(move |ctx: &mut Context<DlqSink>| {
            ctx.set_mailbox_capacity(mailbox);
            sink
        });
        Ok(DlqHandle {
            sink: addr,
            worker,
            targets: Arc::new(DashMap::new()),
            watchers,
            claims: Arc::new(OnceLock::new()),
        })
    }

    /// Starts a durable sink on `dlq.sqlite3` in `dir`.
    pub fn open(dir: &DataDir) -> Result<DlqHandle, StoreError> {
        Self::start(SqliteDlqStore::open(dir)?, DlqSinkConfig::default())
    }

    /// Starts a sink in memory (tests, buses without a data directory).
    pub fn in_memory() -> DlqHandle {
        match Self::start(MemoryDlqStore::default(), DlqSinkConfig::default()) {
            Ok(handle) => handle,
            // Counting an empty memory store cannot fail.
            Err(e) => unreachable!("memory DLQ store failed: {e}"),
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.queue.is_empty() {
            return;
        }
        let n = self.queue.len().min(self.config.max_batch.max(1));
        let (letters, replies): (Vec<_>, Vec<_>) = self.queue.drain(..n).unzip();
        self.writing = true;
        let op = StoreOp(Box::new(move |s: &mut dyn DlqStore| {
            let evicted = s.insert(&letters)?;
            let depth = s.count()?;
            Ok((letters, evicted, depth))
        }));
        ctx.spawn(self.worker.send(op).into_actor(self).map(move |res, act, ctx| {
            act.writing = false;
            match res {
                Ok(Ok((letters, evicted, depth))) => {
                    for l in &letters {
                        metrics::counter!(m::DLQ_DEAD_LETTERED,
                            m::LABEL_PATTERN => l.source.pattern.clone(),
                            m::LABEL_NAME => l.source.name.clone(),
                            m::LABEL_REASON => l.reason.code())
                        .increment(1);
                    }
                    act.evicted.increment(evicted as u64);
                    act.depth.set(depth as f64);
                    for l in &letters {
                        let watcher = act.watchers.get(&l.source).map(|w| Arc::clone(w.value()));
                        if let Some(watcher) = watcher {
                            watcher(l);
                        }
                    }
                    for reply in replies {
                        let _ = reply.send(Ok(()));
                    }
                }
                Ok(Err(e)) => fail(replies, e),
                Err(e) => fail(replies, e.into()),
            }
            act.flush(ctx);
        }));
    }
}

fn fail(replies: Vec<oneshot::Sender<Result<(), DlqError>>>, e: StoreError) {
    tracing::error!(error = %e, "dead letter queue write failed");
    for reply in replies {
        let _ = reply.send(Err(DlqError::Store(e.clone())));
    }
}

impl Actor for DlqSink {
    type Context = Context<Self>;
}

impl GroupCommit for DlqSink {
    fn write_scheduled(&mut self) -> &mut bool {
        &mut self.flush_scheduled
    }

    fn write_batch(&mut self, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}

impl Handler<Store> for DlqSink {
    type Result = ResponseFuture<Result<(), DlqError>>;

    fn handle(&mut self, Store(letter): Store, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.queue.push_back((letter, reply));
        self.write_soon(ctx);
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| Err(StoreError::Unavailable("the DLQ sink stopped".into()).into()))
        })
    }
}

/// A store that refuses everything (a storage thread whose store was lost).
struct Unavailable;

impl DlqStore for Unavailable {
    fn insert(&mut self, _: &[DeadLetter]) -> Result<usize, StoreError> {
        Err(StoreError::Unavailable("the DLQ store was lost after a panic".into()))
    }
    fn get(&mut self, _: MessageId) -> Result<Option<DeadLetter>, StoreError> {
        self.insert(&[]).map(|_| None)
    }
    fn list(&mut self, _: &DlqFilter) -> Result<Vec<DeadLetter>, StoreError> {
        self.insert(&[]).map(|_| Vec::new())
    }
    fn delete(&mut self, _: &[MessageId]) -> Result<usize, StoreError> {
        self.insert(&[])
    }
    fn delete_matching(&mut self, _: &DlqFilter) -> Result<usize, StoreError> {
        self.insert(&[])
    }
    fn count(&mut self) -> Result<u64, StoreError> {
        self.insert(&[]).map(|n| n as u64)
    }
}

/// The cloneable handle on a [`DlqSink`]: every pattern dead-letters
/// through it, operators list, inspect, purge and redrive through it.
#[derive(Clone)]
pub struct DlqHandle {
    sink: Addr<DlqSink>,
    worker: Addr<StoreWorker>,
    targets: Arc<DashMap<DlqSource, Arc<dyn RedriveTarget>>>,
    watchers: Watchers,
    /// Where the claim-check payloads of dead letters live (freed on purge).
    claims: Arc<OnceLock<ClaimCheck>>,
}

impl std::fmt::Debug for DlqHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlqHandle").field("redrive_targets", &self.targets.len()).finish_non_exhaustive()
    }
}

impl DlqHandle {
    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn DlqStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, DlqError> {
        match self.worker.send(StoreOp(Box::new(f))).await {
            Ok(r) => r.map_err(DlqError::from),
            Err(e) => Err(DlqError::Store(e.into())),
        }
    }

    /// Stores `letter`; resolves once it is durable (on SQLite: committed).
    /// Waits (never drops) while the sink's mailbox is full.
    pub async fn dead_letter(&self, letter: DeadLetter) -> Result<(), DlqError> {
        match self.sink.send(Store(letter)).await {
            Ok(r) => r,
            Err(e) => Err(DlqError::Store(e.into())),
        }
    }

    /// Entries `filter` matches, oldest first, at most `filter.limit`.
    pub async fn list(&self, filter: DlqFilter) -> Result<Vec<DeadLetter>, DlqError> {
        self.run(move |s| s.list(&filter)).await
    }

    /// The entry `id`, with its envelope and history.
    pub async fn get(&self, id: MessageId) -> Result<Option<DeadLetter>, DlqError> {
        self.run(move |s| s.get(id)).await
    }

    /// Entries stored.
    pub async fn len(&self) -> Result<u64, DlqError> {
        self.run(|s| s.count()).await
    }

    /// True when no entry is stored.
    pub async fn is_empty(&self) -> Result<bool, DlqError> {
        Ok(self.len().await? == 0)
    }

    /// Gives this DLQ the claim-check store its dead letters' tickets point
    /// into (the bus does it): [`purge`](Self::purge) then deletes the
    /// payload of every purged entry that kept a ticket. Set once; later
    /// calls are ignored (false).
    pub fn attach_claim_check(&self, claims: ClaimCheck) -> bool {
        self.claims.set(claims).is_ok()
    }

    /// Deletes one entry (`MessageId`) or every entry a filter matches
    /// (`DlqFilter`); how many were deleted. With a claim-check store
    /// attached, the payloads of purged entries that kept a ticket are
    /// deleted too.
    pub async fn purge(&self, what: impl Into<DlqSelector>) -> Result<usize, DlqError> {
        let what = what.into();
        if let Some(claims) = self.claims.get() {
            return self.purge_with_tickets(what, claims).await;
        }
        let n = self
            .run(move |s| {
                let n = match &what {
                    DlqSelector::One(id) => s.delete(&[*id])?,
                    DlqSelector::Matching(filter) => s.delete_matching(filter)?,
                };
                Ok((n, s.count()?))
            })
            .await?;
        metrics::counter!(m::DLQ_PURGED).increment(n.0 as u64);
        metrics::gauge!(m::DLQ_DEPTH).set(n.1 as f64);
        Ok(n.0)
    }

    async fn purge_with_tickets(&self, what: DlqSelector, claims: &ClaimCheck) -> Result<usize, DlqError> {
        // Read and delete on the storage thread in one call, page by page,
        // so an entry added meanwhile is neither deleted unread nor missed.
        let (n, depth, tickets) = self
            .run(move |s| {
                let mut tickets: Vec<Ticket> = Vec::new();
                let n = match &what {
                    DlqSelector::One(id) => {
                        let found = s.get(*id)?;
                        tickets.extend(found.and_then(|l| ticket_in(&l.envelope)));
                        s.delete(&[*id])?
                    }
                    DlqSelector::Matching(filter) => {
                        let page = filter.clone().limit(1024);
                        let mut n = 0;
                        loop {
                            let letters = s.list(&page)?;
                            if letters.is_empty() {
                                break;
                            }
                            tickets.extend(letters.iter().filter_map(|l| ticket_in(&l.envelope)));
                            let ids: Vec<MessageId> = letters.iter().map(|l| l.id).collect();
                            let deleted = s.delete(&ids)?;
                            n += deleted;
                            if deleted == 0 {
                                break;
                            }
                        }
                        n
                    }
                };
                Ok((n, s.count()?, tickets))
            })
            .await?;
        for ticket in &tickets {
            if let Err(e) = claims.delete(ticket).await {
                tracing::warn!(ticket = %ticket.id, error = %e, "DLQ purge: payload not deleted; it goes at its expiry");
            }
        }
        metrics::counter!(m::DLQ_PURGED).increment(n as u64);
        metrics::gauge!(m::DLQ_DEPTH).set(depth as f64);
        Ok(n)
    }

    /// Registers where dead letters from `source` go back to on redrive (a
    /// queue registers itself when it starts). Replaces a previous target.
    pub fn register_redrive(&self, source: DlqSource, target: impl RedriveTarget) {
        self.targets.insert(source, Arc::new(target));
    }

    /// Calls `watcher` with every dead letter from `source` once it is
    /// stored (replacing a previous watcher of that source). The owner of a
    /// message that a pattern dead-letters on its behalf learns of it this
    /// way: the job tracker fails the job whose queue message was
    /// dead-lettered. It runs on the sink's thread: keep it short (send a
    /// message, do not block).
    pub fn watch(&self, source: DlqSource, watcher: impl Fn(&DeadLetter) + Send + Sync + 'static) {
        self.watchers.insert(source, Arc::new(watcher));
    }

    /// True when a redrive target is registered for `source`.
    pub fn has_redrive_target(&self, source: &DlqSource) -> bool {
        self.targets.contains_key(source)
    }

    /// Removes the redrive target of `source`.
    pub fn unregister_redrive(&self, source: &DlqSource) {
        self.targets.remove(source);
    }

    /// Sends one entry (`MessageId`) or every entry a filter matches back to
    /// its source, or to another registered target, at most
    /// `options.per_second` per second. Each entry is deleted once its target
    /// accepted it; entries without a target or refused by it stay, listed in
    /// the report.
    pub async fn redrive(
        &self,
        what: impl Into<DlqSelector>,
        options: RedriveOptions,
    ) -> Result<RedriveReport, DlqError> {
        let letters = match what.into() {
            DlqSelector::One(id) => vec![self.get(id).await?.ok_or(DlqError::NotFound(id))?],
            DlqSelector::Matching(mut filter) => {
                filter.limit = None;
                self.list(filter).await?
            }
        };
        let gap = options.per_second.filter(|n| *n > 0).map(|n| Duration::from_secs(1) / n);
        let mut report = RedriveReport::default();
        for (i, letter) in letters.into_iter().enumerate() {
            if let (Some(gap), true) = (gap, i > 0) {
                actix_rt::time::sleep(gap).await;
            }
            let key = match &options.to {
                RedriveTo::Source => letter.source.clone(),
                RedriveTo::Target(t) => t.clone(),
            };
            let Some(target) = self.targets.get(&key).map(|t| Arc::clone(t.value())) else {
                report.failed.push((letter.id, format!("no redrive target registered for {key}")));
                continue;
            };
            let id = letter.id;
            match target.redrive(letter).await {
                Ok(()) => {
                    self.run(move |s| s.delete(&[id])).await?;
                    metrics::counter!(m::DLQ_REDRIVEN, m::LABEL_PATTERN => key.pattern.clone(), m::LABEL_NAME => key.name.clone())
                        .increment(1);
                    report.redriven.push(id);
                }
                Err(e) => report.failed.push((id, e)),
            }
        }
        let depth = self.len().await?;
        metrics::gauge!(m::DLQ_DEPTH).set(depth as f64);
        Ok(report)
    }
}

/// The bus's DLQ is the hook every topic and scatter-gather hands its dead
/// letters to: source `(pattern, name)`, one failure record carrying the
/// reason at the last attempt.
impl DeadLetterHook for DlqHandle {
    fn dead_letter(&self, letter: Undeliverable) -> HookFuture {
        let Undeliverable { pattern, name, reason, envelope, attempts } = letter;
        let errors = vec![FailureRecord::now(attempts, &reason)];
        let letter = DeadLetter::new(DlqSource::new(pattern, name), reason, &envelope, errors).with_attempts(attempts);
        let dlq = self.clone();
        Box::pin(async move { dlq.dead_letter(letter).await.map_err(|e| e.to_string()) })
    }
}
