//! The `Queue` actor.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{mpsc, Semaphore};

use super::handle::{
    Batch, Body, ClaimSide, Cmd, Codec, Committed, Handed, Incoming, Link, QueueHandle, Settle, Shared, Stats, Typed,
};
use super::inbox;
use super::ready::{Entry, Key, Ready};
use super::store::{QueueBatch, QueueStore, StoredBody, StoredMessage};
use super::{QueueConfig, QueueError, QueueMessage};
use crate::backpressure::OverflowPolicy;
use crate::claim_check::{ticket_in, ClaimCheck, Ticket};
use crate::dlq::{DeadLetter, DlqHandle, DlqSource, FailureRecord, RedriveFuture};
use crate::envelope::{Envelope, MessageId, Timestamp};
use crate::error::FailureReason;
use crate::metrics as m;
use crate::store::{GroupCommit, StoreError};

/// Histogram samples a queue records per tick, at most (counters are exact).
const SAMPLES_PER_TICK: u32 = 256;

/// Most new messages a durable queue writes in one transaction.
const MAX_BATCH: usize = 4096;

/// Most settles the actor takes from their channel per handler call (it
/// takes its command inbox whole): the fixed costs of a call (an actix
/// stream item, the dispatch, the clock read, the shared counters) are paid
/// once per burst, not per message.
const BURST: usize = 256;

/// A durable queue's change to a stored row, not written yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowOp {
    /// Deliveries handed out (the attempt of the latest).
    Delivered(u32),
    Delete,
}

/// A durable send waiting for its commit.
struct Pending<T> {
    entry: Box<Entry<Body<T>>>,
    body: StoredBody,
    reply: Committed,
}

/// A message read back from the store at start.
enum Loaded<T> {
    Ok(Box<Entry<Body<T>>>),
    /// Delivered `max_deliveries` times already (the last in flight at the
    /// stop or crash).
    Exhausted(Box<Entry<Body<T>>>),
    /// The payload does not decode as `T` any more.
    Undecodable(u64, DeadLetter),
}

/// Not boxed: an entry is copied into the table once, which costs less
/// than a box per delivery.
struct InFlight<T> {
    entry: Entry<T>,
    consumer: u64,
    due_us: u64,
    delivered_us: u64,
    key: Option<Key>,
}

struct Delayed<T> {
    entry: Box<Entry<T>>,
    key: Option<Key>,
}

struct Slot<T> {
    id: u64,
    tx: mpsc::UnboundedSender<Batch<T>>,
    /// Deliveries made for it by the dispatch in progress, sent together
    /// at its end.
    batch: Batch<T>,
    prefetch: usize,
    outstanding: usize,
    link: Arc<Link>,
}

struct Metrics {
    enqueued: metrics::Counter,
    delivered: metrics::Counter,
    acked: metrics::Counter,
    nacked: metrics::Counter,
    redelivered: metrics::Counter,
    timeouts: metrics::Counter,
    expired: metrics::Counter,
    dropped_oldest: metrics::Counter,
    stale: metrics::Counter,
    dlq_failures: metrics::Counter,
    claim_failures: metrics::Counter,
    store_errors: metrics::Counter,
    depth: metrics::Gauge,
    in_flight: metrics::Gauge,
    time_in_queue: metrics::Histogram,
    latency: metrics::Histogram,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let labels = [(m::LABEL_NAME, name.to_owned())];
        Metrics {
            enqueued: metrics::counter!(m::QUEUE_ENQUEUED, &labels),
            delivered: metrics::counter!(m::QUEUE_DELIVERED, &labels),
            acked: metrics::counter!(m::QUEUE_ACKED, &labels),
            nacked: metrics::counter!(m::QUEUE_NACKED, &labels),
            redelivered: metrics::counter!(m::QUEUE_REDELIVERED, &labels),
            timeouts: metrics::counter!(m::QUEUE_VISIBILITY_TIMEOUTS, &labels),
            expired: metrics::counter!(m::QUEUE_EXPIRED, &labels),
            dropped_oldest: metrics::counter!(m::QUEUE_DROPPED, m::LABEL_NAME => name.to_owned(), m::LABEL_POLICY => "drop_oldest"),
            stale: metrics::counter!(m::QUEUE_STALE_SETTLES, &labels),
            dlq_failures: metrics::counter!(m::QUEUE_DLQ_FAILURES, &labels),
            claim_failures: metrics::counter!(m::QUEUE_CLAIM_FAILURES, &labels),
            store_errors: metrics::counter!(m::QUEUE_STORE_ERRORS, &labels),
            depth: metrics::gauge!(m::QUEUE_DEPTH, &labels),
            in_flight: metrics::gauge!(m::QUEUE_IN_FLIGHT, &labels),
            time_in_queue: metrics::histogram!(m::QUEUE_TIME_IN_QUEUE, &labels),
            latency: metrics::histogram!(m::QUEUE_HANDLER_LATENCY, &labels),
        }
    }
}

fn bump(counter: &metrics::Counter, stat: &AtomicU64) {
    counter.increment(1);
    stat.fetch_add(1, Ordering::Relaxed);
}

/// The counters of every message, kept in the actor during a burst and
/// added to the metrics and stats at its end (see `Queue::publish`): two
/// atomic adds per counter per burst instead of per message.
#[derive(Default)]
struct Counts {
    enqueued: u64,
    delivered: u64,
    acked: u64,
    /// Capacity permits to give back.
    permits: usize,
}

/// A burst's vector, handed back by the handler once it took the items
/// out: the next burst reuses it. A vector of up to 256 commands is a
/// large allocation, and glibc consolidates its small free chunks before
/// each one (then the next small allocations take its slow path).
type Spare<T> = Rc<Cell<Vec<T>>>;

/// Up to `BURST` items waiting in a channel or inbox (`waiting` of them, as
/// far as its length said), in the `spare` vector: `None` once it is closed
/// and empty.
fn burst<T>(
    cx: &mut std::task::Context<'_>,
    spare: &Spare<T>,
    waiting: usize,
    poll: impl FnOnce(&mut std::task::Context<'_>, &mut Vec<T>, usize) -> std::task::Poll<usize>,
) -> std::task::Poll<Option<Vec<T>>> {
    let mut items = spare.take();
    // Room for what waits: a vector grown item by item would copy the
    // burst about once more.
    items.reserve(waiting.min(BURST));
    match poll(cx, &mut items, BURST) {
        std::task::Poll::Ready(0) => std::task::Poll::Ready(None),
        std::task::Poll::Ready(_) => std::task::Poll::Ready(Some(items)),
        std::task::Poll::Pending => {
            spare.set(items);
            std::task::Poll::Pending
        }
    }
}

/// The deliveries in flight, by receipt: a slab (slots and a list of free
/// ones) instead of a hash map, so a delivery and its settle each cost an
/// index, not a hash and a probe. A receipt is the slot's index in its low 32
/// bits and the queue's delivery number (its low 32 bits) in the high ones:
/// a slot keeps the receipt of the delivery it holds, so a settle that
/// comes after its slot was reused (a stale one) finds another receipt there
/// and touches nothing.
struct InFlightTable<T> {
    slots: Vec<Option<(u64, InFlight<T>)>>,
    free: Vec<u32>,
    len: usize,
    delivered: u64,
}

impl<T> InFlightTable<T> {
    fn new() -> Self {
        InFlightTable { slots: Vec::new(), free: Vec::new(), len: 0, delivered: 0 }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Adds a delivery; gives its receipt and where it now lies.
    #[inline(always)]
    fn insert(&mut self, delivery: InFlight<T>) -> (u64, &InFlight<T>) {
        self.delivered += 1;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                // Past 2^32 deliveries in flight at once (a credit no queue
                // gives) the index would not fit the receipt.
                let i = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(None);
                i
            }
        };
        let receipt = (self.delivered << 32) | u64::from(index);
        self.len += 1;
        let (_, delivery) = self.slots[index as usize].insert((receipt, delivery));
        (receipt, delivery)
    }

    fn slot(receipt: u64) -> usize {
        (receipt & u64::from(u32::MAX)) as usize
    }

    fn get(&self, receipt: u64) -> Option<&InFlight<T>> {
        match self.slots.get(Self::slot(receipt))? {
            Some((r, f)) if *r == receipt => Some(f),
            _ => None,
        }
    }

    fn contains(&self, receipt: u64) -> bool {
        self.get(receipt).is_some()
    }

    /// Takes the delivery of `receipt` out; `None` when it is not in flight
    /// any more (settled, timed out: its slot may hold a newer one).
    #[inline(always)]
    fn remove(&mut self, receipt: u64) -> Option<InFlight<T>> {
        let index = Self::slot(receipt);
        let slot = self.slots.get_mut(index)?;
        if !matches!(slot, Some((r, _)) if *r == receipt) {
            return None;
        }
        let (_, delivery) = slot.take()?;
        self.free.push(index as u32);
        self.len -= 1;
        Some(delivery)
    }
}

/// A point-to-point queue (see the [module docs](super)). Start one with
/// [`Queue::start`]; use it through the returned [`QueueHandle`].
pub struct Queue<T> {
    config: QueueConfig,
    shared: Arc<Shared>,
    dlq: DlqHandle,
    source: DlqSource,
    ready: Ready<Body<T>>,
    in_flight: InFlightTable<Body<T>>,
    /// Receipts in delivery order, which is visibility-timeout order (the
    /// timeout is the same for every delivery). Settled receipts are
    /// skipped when they reach the front, and swept out when they pile up
    /// behind one that is slow to settle.
    deadlines: VecDeque<u64>,
    /// Deliveries that timed out, by receipt, with their consumer: it keeps
    /// the credit until it settles (late), so a stuck consumer is not sent
    /// more work that would only time out in its buffer.
    timed_out: HashMap<u64, u64>,
    delayed: BTreeMap<(u64, u64), Delayed<Body<T>>>,
    histories: HashMap<MessageId, Vec<FailureRecord>>,
    expiry: BinaryHeap<Reverse<(Timestamp, MessageId)>>,
    consumers: Vec<Slot<T>>,
    next_slot: usize,
    credit: usize,
    next_seq: u64,
    epoch: Instant,
    /// The queue's clock (µs since `epoch`), read once when a handler call
    /// starts: every message of a burst is stamped with the same time.
    now: u64,
    counts: Counts,
    visibility_us: u64,
    samples_left: u32,
    metrics: Metrics,
    /// Where tickets are released (on ack, on a drop).
    claims: Option<ClaimCheck>,
    /// Durable queues: the store, sends waiting for their commit, changes
    /// to stored rows not written yet, callers of `flush`.
    store: Option<Arc<dyn QueueStore>>,
    pending: Vec<Pending<T>>,
    ops: BTreeMap<u64, RowOp>,
    writing: bool,
    flush_scheduled: bool,
    flush_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Tickets of messages whose delete is among `ops`.
    release_after_commit: Vec<Ticket>,
    /// The next stored row's sequence (enqueue order).
    next_row: u64,
    /// Messages loaded at start beyond the capacity: permits given back
    /// pay this off first, so the queue never holds more than `capacity`
    /// plus what it found at start.
    permit_debt: u64,
    loaded: Vec<Loaded<T>>,
    /// The burst vectors, for reuse (see `Spare`).
    spare_cmds: Spare<Cmd<T>>,
    spare_settles: Spare<Settle>,
}

impl<T> Queue<T>
where
    T: QueueMessage,
{
    /// Starts a queue on the current arbiter, dead-lettering into `dlq`
    /// (where it also registers itself as the redrive target of
    /// `queue:<name>`).
    pub fn start(config: QueueConfig, dlq: DlqHandle) -> Result<QueueHandle<T>, QueueError> {
        Self::start_in(config, dlq, None)
    }

    /// Starts a queue on `arbiter` (or the current one).
    pub fn start_in(
        config: QueueConfig,
        dlq: DlqHandle,
        arbiter: Option<&ArbiterHandle>,
    ) -> Result<QueueHandle<T>, QueueError> {
        Self::start_inner(config, dlq, None, arbiter)
    }

    /// Starts a durable queue on the current arbiter: its messages live in
    /// `store` (see the [module docs](super#durability)). What the store
    /// holds for this queue's name is loaded first (a blocking read on the
    /// calling thread) and delivered again, in order.
    pub fn start_durable(
        config: QueueConfig,
        dlq: DlqHandle,
        store: Arc<dyn QueueStore>,
    ) -> Result<QueueHandle<T>, QueueError> {
        Self::start_inner(config, dlq, Some(store), None)
    }

    /// [`start_durable`](Self::start_durable) on `arbiter` (or the current
    /// one).
    pub fn start_durable_in(
        config: QueueConfig,
        dlq: DlqHandle,
        store: Arc<dyn QueueStore>,
        arbiter: Option<&ArbiterHandle>,
    ) -> Result<QueueHandle<T>, QueueError> {
        Self::start_inner(config, dlq, Some(store), arbiter)
    }

    fn start_inner(
        config: QueueConfig,
        dlq: DlqHandle,
        store: Option<Arc<dyn QueueStore>>,
        arbiter: Option<&ArbiterHandle>,
    ) -> Result<QueueHandle<T>, QueueError> {
        config.validate()?;
        let name: Arc<str> = config.name.as_str().into();
        let source = DlqSource::queue(config.name.clone());
        let codec = Codec::<T>::new();
        let (loaded, next_row) = match &store {
            Some(store) => load::<T>(store.as_ref(), &config, &source, &codec)?,
            None => (Vec::new(), 1),
        };
        let found = loaded.len();
        let permits = config.capacity.saturating_sub(found).min(Semaphore::MAX_PERMITS);
        let permit_debt = found.saturating_sub(config.capacity) as u64;
        let (tx, mut rx) = inbox::inbox::<Cmd<T>>(config.capacity.clamp(16, 4096));
        let (settle, mut settle_rx) = mpsc::unbounded_channel::<Settle>();
        let shared = Arc::new(Shared {
            name: name.clone(),
            policy: config.overflow,
            permits: Semaphore::new(permits),
            settle,
            next_consumer: AtomicU64::new(0),
            visibility_timeout: config.visibility_timeout,
            stats: Stats::default(),
            rejected: metrics::counter!(m::QUEUE_REJECTED, m::LABEL_NAME => name.to_string()),
            dropped_newest: metrics::counter!(m::QUEUE_DROPPED, m::LABEL_NAME => name.to_string(), m::LABEL_POLICY => "drop_newest"),
        });
        let typed = Arc::new(Typed {
            claim: config.claim_check.as_ref().map(|c| ClaimSide {
                claims: c.claims.clone(),
                threshold: c.threshold_bytes,
                ttl: c.ttl,
                checked: metrics::counter!(m::QUEUE_CLAIM_CHECKED, m::LABEL_NAME => name.to_string()),
            }),
            durable: store.is_some(),
            codec,
        });
        // What was found is visible through the handle at once, before the
        // actor first runs.
        let mut waiting = 0;
        for loaded in &loaded {
            if let Loaded::Ok(e) | Loaded::Exhausted(e) = loaded {
                waiting += u64::from(matches!(loaded, Loaded::Ok(_)));
                if let Body::Claimed(t) = &e.env.payload {
                    shared.stats.ticketed.fetch_add(1, Ordering::Relaxed);
                    shared.stats.ticketed_bytes.fetch_add(t.size, Ordering::Relaxed);
                }
            }
        }
        shared.stats.depth.store(waiting, Ordering::Relaxed);
        let actor_shared = Arc::clone(&shared);
        let actor_dlq = dlq.clone();
        let tick = config.tick;
        let create = move |ctx: &mut Context<Self>| {
            let (spare_cmds, spare_settles) = (Spare::default(), Spare::default());
            let spare = Rc::clone(&spare_cmds);
            ctx.add_stream(futures::stream::poll_fn(move |cx| burst(cx, &spare, 0, |cx, b, _| rx.poll_take(cx, b))));
            let spare = Rc::clone(&spare_settles);
            ctx.add_stream(futures::stream::poll_fn(move |cx| {
                burst(cx, &spare, settle_rx.len(), |cx, b, n| settle_rx.poll_recv_many(cx, b, n))
            }));
            ctx.run_interval(tick, |act, ctx| act.tick(ctx));
            let aging_us = config.aging.map(|a| u64::try_from(a.as_micros()).unwrap_or(u64::MAX));
            Queue {
                ready: Ready::new(config.priority, aging_us, config.partition_header.clone()),
                visibility_us: u64::try_from(config.visibility_timeout.as_micros()).unwrap_or(u64::MAX),
                metrics: Metrics::new(&config.name),
                claims: config.claim_check.as_ref().map(|c| c.claims.clone()),
                config,
                shared: actor_shared,
                dlq: actor_dlq,
                source,
                in_flight: InFlightTable::new(),
                deadlines: VecDeque::new(),
                timed_out: HashMap::new(),
                delayed: BTreeMap::new(),
                histories: HashMap::new(),
                expiry: BinaryHeap::new(),
                consumers: Vec::new(),
                next_slot: 0,
                credit: 0,
                next_seq: 0,
                epoch: Instant::now(),
                now: 0,
                counts: Counts::default(),
                samples_left: SAMPLES_PER_TICK,
                store,
                pending: Vec::new(),
                ops: BTreeMap::new(),
                writing: false,
                flush_scheduled: false,
                flush_waiters: Vec::new(),
                release_after_commit: Vec::new(),
                next_row,
                permit_debt,
                loaded,
                spare_cmds,
                spare_settles,
            }
        };
        match arbiter {
            Some(a) => {
                Queue::start_in_arbiter(a, create);
            }
            None => {
                Queue::create(create);
            }
        }
        let handle = QueueHandle { tx, shared, typed };
        let target = handle.clone();
        dlq.register_redrive(DlqSource::queue(name.to_string()), move |letter: DeadLetter| -> RedriveFuture {
            let target = target.clone();
            Box::pin(async move { redrive_into(&target, letter).await })
        });
        Ok(handle)
    }
}

/// Reads what `store` holds for the queue: entries in enqueue order and the
/// next row sequence.
fn load<T: QueueMessage>(
    store: &dyn QueueStore,
    config: &QueueConfig,
    source: &DlqSource,
    codec: &Codec<T>,
) -> Result<(Vec<Loaded<T>>, u64), QueueError> {
    let rows = store.load(&config.name)?;
    let next_row = rows.iter().map(|r| r.seq).max().map_or(1, |s| s + 1);
    let loaded = rows
        .into_iter()
        .map(|row| {
            let StoredMessage { seq, delivered, envelope, body } = row;
            let body = match body {
                StoredBody::Ticket(ticket) => Body::Claimed(Box::new(ticket)),
                StoredBody::Inline(bytes) => match codec.decode(&bytes) {
                    Ok(payload) => Body::Inline(payload),
                    Err(e) => {
                        // Kept whole (as bytes) in the DLQ rather than lost.
                        let raw = envelope.with_payload(serde_json::json!({ "stored": bytes }));
                        let reason = FailureReason::Failed(format!("stored payload does not decode: {e}"));
                        let letter = DeadLetter::new(source.clone(), reason, &raw, Vec::new()).with_attempts(delivered);
                        return Loaded::Undecodable(seq, letter);
                    }
                },
            };
            let mut env = envelope.with_payload(body);
            env.attempt = delivered.saturating_add(1);
            let entry = Box::new(Entry { env, enqueued_us: 0, seq });
            if delivered >= config.max_deliveries {
                Loaded::Exhausted(entry)
            } else {
                Loaded::Ok(entry)
            }
        })
        .collect();
    Ok((loaded, next_row))
}

/// Puts a dead letter back into `queue`: its envelope decoded, attempt reset
/// to 1 and a deadline that already passed removed (it would expire again at
/// once). A dead letter that kept a claim-check ticket goes back as that
/// ticket (no copy of the payload), to a queue with a claim check only.
async fn redrive_into<T>(queue: &QueueHandle<T>, letter: DeadLetter) -> Result<(), String>
where
    T: QueueMessage,
{
    let undecodable = |e: serde_json::Error| format!("the envelope does not decode for queue `{}`: {e}", queue.name());
    let mut env: Envelope<Body<T>> = match ticket_in(&letter.envelope) {
        Some(ticket) => {
            let mut meta = letter.envelope;
            meta["payload"] = serde_json::Value::Null;
            let meta: Envelope<()> = serde_json::from_value(meta).map_err(undecodable)?;
            meta.with_payload(Body::Claimed(Box::new(ticket)))
        }
        None => serde_json::from_value::<Envelope<T>>(letter.envelope).map_err(undecodable)?.map(Body::Inline),
    };
    env.attempt = 1;
    if env.is_expired() {
        env.deadline = None;
    }
    queue.enqueue(env).await.map(|_| ()).map_err(|e| e.to_string())
}

impl<T> Queue<T>
where
    T: QueueMessage,
{
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Reads the clock for what this handler call does (see `now`).
    fn stamp(&mut self) {
        self.now = self.now_us();
    }

    fn sample(&mut self) -> bool {
        if self.samples_left > 0 {
            self.samples_left -= 1;
            true
        } else {
            false
        }
    }

    /// Makes what the last handler call did visible: counters, permits
    /// given back, sizes. Every handler call ends with it.
    fn publish(&mut self) {
        let counts = std::mem::take(&mut self.counts);
        let stats = &self.shared.stats;
        for (n, counter, stat) in [
            (counts.enqueued, &self.metrics.enqueued, &stats.enqueued),
            (counts.delivered, &self.metrics.delivered, &stats.delivered),
            (counts.acked, &self.metrics.acked, &stats.acked),
        ] {
            if n > 0 {
                counter.increment(n);
                stat.fetch_add(n, Ordering::Relaxed);
            }
        }
        if counts.permits > 0 {
            self.shared.permits.add_permits(counts.permits);
        }
        stats.depth.store((self.ready.len() + self.delayed.len()) as u64, Ordering::Relaxed);
        stats.in_flight.store(self.in_flight.len() as u64, Ordering::Relaxed);
    }

    /// Counts a ticket coming into (`in_ = true`) or leaving the queue.
    fn count_ticket(&self, body: &Body<T>, in_: bool) {
        if let Body::Claimed(t) = body {
            let stats = &self.shared.stats;
            if in_ {
                stats.ticketed.fetch_add(1, Ordering::Relaxed);
                stats.ticketed_bytes.fetch_add(t.size, Ordering::Relaxed);
            } else {
                stats.ticketed.fetch_sub(1, Ordering::Relaxed);
                stats.ticketed_bytes.fetch_sub(t.size, Ordering::Relaxed);
            }
        }
    }

    /// A message leaves for good (acked, dropped): its payload goes too.
    fn release_ticket(&self, body: &Body<T>) {
        self.count_ticket(body, false);
        if let (Body::Claimed(ticket), Some(claims)) = (body, &self.claims) {
            claims.release_detached(**ticket, 1);
        }
    }

    /// A message leaves for good (acked, dropped). On a durable queue its
    /// payload is released only once the row's delete is committed: a crash
    /// in between brings the message back, and it must still be claimable.
    fn leave(&mut self, seq: u64, body: &Body<T>, ctx: &mut Context<Self>) {
        if self.store.is_none() || seq == 0 {
            return self.release_ticket(body);
        }
        self.count_ticket(body, false);
        if let Body::Claimed(ticket) = body {
            self.release_after_commit.push(**ticket);
        }
        self.note(seq, RowOp::Delete, ctx);
    }

    /// Gives a place back (to senders at the end of the handler call:
    /// `publish`).
    fn give_permit(&mut self) {
        if self.permit_debt > 0 {
            self.permit_debt -= 1;
        } else {
            self.counts.permits += 1;
        }
    }

    /// A durable queue's change to the row of `seq` (0: not stored).
    /// Delivery counts are written at once (a handler that crashes the
    /// process must find its attempt counted); deletes ride along with the
    /// next commit or go at the next tick (a lost one is one more delivery).
    fn note(&mut self, seq: u64, op: RowOp, ctx: &mut Context<Self>) {
        if self.store.is_some() && seq > 0 {
            self.ops.insert(seq, op);
            if op != RowOp::Delete {
                self.schedule_flush(ctx);
            }
        }
    }

    /// Takes a message that holds a place: ready at once, or once
    /// committed on a durable queue. Inlined, like `store` and
    /// `Ready::push_back`, so that an entry is not copied once per call on
    /// its way from the burst to the ready set.
    #[inline(always)]
    fn accept(&mut self, incoming: Incoming<T>, ctx: &mut Context<Self>) {
        let Incoming { mut entry, stored } = incoming;
        self.count_ticket(&entry.env.payload, true);
        // `store` stamps the time it becomes ready (after the commit, when
        // durable).
        match (stored.map(|s| *s), &self.store) {
            (Some((body, reply)), Some(_)) => {
                entry.seq = self.next_row;
                self.next_row += 1;
                self.pending.push(Pending { entry: Box::new(entry), body, reply });
                self.schedule_flush(ctx);
            }
            _ => self.store(entry, ctx),
        }
    }

    /// Makes an accepted (and, when durable, committed) message ready.
    #[inline(always)]
    fn store(&mut self, mut entry: Entry<Body<T>>, ctx: &mut Context<Self>) {
        self.counts.enqueued += 1;
        entry.enqueued_us = self.now;
        if let Some(deadline) = entry.env.deadline {
            if entry.env.is_expired_at(Timestamp::now()) {
                bump(&self.metrics.expired, &self.shared.stats.expired);
                self.dead_letter(Box::new(entry), FailureReason::Expired, true, ctx);
                return;
            }
            self.expiry.push(Reverse((deadline, entry.env.id)));
        }
        self.ready.push_back(entry);
    }

    /// A message that found the queue full under `drop_oldest` or
    /// `dead_letter`.
    fn overflow(&mut self, incoming: Incoming<T>, ctx: &mut Context<Self>) {
        // Room may have been made since the sender looked (in this burst
        // too: places given back and messages the consumers can take now).
        self.dispatch(ctx);
        self.publish();
        if self.shared.permits.try_acquire().map(|p| p.forget()).is_ok() {
            return self.accept(incoming, ctx);
        }
        let policy = self.config.overflow;
        // The victim gives its place (and its permit) to the newcomer.
        let victim = if policy == OverflowPolicy::DropOldest || self.config.priority {
            self.ready.evict_for(&incoming.entry.env).map(Box::new)
        } else {
            None
        };
        let reason = FailureReason::Overflow(policy.as_str().to_owned());
        let (out, keep, reply) = match victim {
            Some(old) => (old, Some(incoming), None),
            None => {
                let Incoming { mut entry, stored } = incoming;
                self.count_ticket(&entry.env.payload, true);
                entry.enqueued_us = self.now;
                (Box::new(entry), None, stored.map(|s| s.1))
            }
        };
        if policy == OverflowPolicy::DropOldest {
            self.histories.remove(&out.env.id);
            bump(&self.metrics.dropped_oldest, &self.shared.stats.dropped);
            tracing::debug!(queue = %self.config.name, id = %out.env.id, "queue full: message dropped (drop_oldest)");
            self.leave(out.seq, &out.env.payload, ctx);
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
        } else {
            self.dead_letter_then(out, reason, false, reply, ctx);
        }
        if let Some(incoming) = keep {
            // Counted as enqueued by `store`; its permit is the victim's.
            self.accept(incoming, ctx);
        }
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        // A write in progress writes what piled up when it completes.
        if !self.writing {
            self.write_soon(ctx);
        }
    }

    /// Writes what is pending in one transaction, unless a write is in
    /// progress (its completion writes what piled up meanwhile).
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let Some(store) = self.store.clone() else { return };
        if self.writing {
            return;
        }
        if self.pending.is_empty() && self.ops.is_empty() {
            for w in self.flush_waiters.drain(..) {
                let _ = w.send(());
            }
            return;
        }
        let n = self.pending.len().min(MAX_BATCH);
        let mut pending: Vec<Pending<T>> = self.pending.drain(..n).collect();
        let inserts = pending
            .iter_mut()
            .map(|p| StoredMessage {
                seq: p.entry.seq,
                delivered: p.entry.env.attempt.saturating_sub(1),
                envelope: p.entry.env.meta(),
                // Moved, not copied: the batch is the only one to need it.
                body: std::mem::replace(&mut p.body, StoredBody::Inline(Vec::new())),
            })
            .collect();
        let mut batch = QueueBatch { inserts, ..QueueBatch::default() };
        for (seq, op) in std::mem::take(&mut self.ops) {
            match op {
                RowOp::Delivered(n) => batch.delivered.push((seq, n)),
                RowOp::Delete => batch.deletes.push(seq),
            }
        }
        let waiters = if self.pending.is_empty() { std::mem::take(&mut self.flush_waiters) } else { Vec::new() };
        let releases = std::mem::take(&mut self.release_after_commit);
        self.writing = true;
        let name = self.shared.name.clone();
        let write = async move {
            if !store.blocking() {
                return store.commit(&name, &batch);
            }
            actix_rt::task::spawn_blocking(move || store.commit(&name, &batch))
                .await
                .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("queue store worker: {e}"))))
        };
        ctx.spawn(write.into_actor(self).map(move |res, act, ctx| {
            act.writing = false;
            act.stamp();
            match res {
                Ok(()) => {
                    for p in pending {
                        act.store(*p.entry, ctx);
                        let _ = p.reply.send(Ok(()));
                    }
                    if let Some(claims) = &act.claims {
                        for ticket in releases {
                            claims.release_detached(ticket, 1);
                        }
                    }
                }
                Err(e) => {
                    act.metrics.store_errors.increment(1);
                    act.shared.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    // The rows whose delete failed come back at the next
                    // start: their payloads stay (freed at expiry otherwise).
                    tracing::error!(queue = %act.config.name, error = %e, releases_kept = releases.len(), "queue store commit failed");
                    for p in pending {
                        act.release_ticket(&p.entry.env.payload);
                        act.give_permit();
                        let _ = p.reply.send(Err(QueueError::Storage(e.clone())));
                    }
                }
            }
            for w in waiters {
                let _ = w.send(());
            }
            act.flush(ctx);
            act.dispatch(ctx);
            act.publish();
        }));
    }

    /// Delivers or dead-letters what the store held at start.
    fn take_loaded(&mut self, ctx: &mut Context<Self>) {
        let found = std::mem::take(&mut self.loaded);
        if !found.is_empty() {
            tracing::info!(queue = %self.config.name, messages = found.len(), "durable queue: messages loaded");
        }
        for loaded in found {
            match loaded {
                // Tickets were counted in by `start_inner`.
                Loaded::Ok(entry) => self.store(*entry, ctx),
                Loaded::Exhausted(entry) => {
                    let attempt = entry.env.attempt.saturating_sub(1);
                    let failure = FailureReason::Failed("delivery in flight at a stop or crash".into());
                    self.histories.entry(entry.env.id).or_default().push(FailureRecord::now(attempt, &failure));
                    self.dead_letter(entry, FailureReason::MaxDeliveries, true, ctx);
                }
                Loaded::Undecodable(seq, letter) => self.send_letter(letter, seq, true, None, ctx),
            }
        }
    }

    fn next_consumer(&mut self) -> Option<usize> {
        let n = self.consumers.len();
        for i in 0..n {
            let idx = (self.next_slot + i) % n;
            let slot = &self.consumers[idx];
            if slot.outstanding < slot.prefetch {
                self.next_slot = idx + 1;
                return Some(idx);
            }
        }
        None
    }

    fn remove_consumer(&mut self, id: u64, ctx: &mut Context<Self>) {
        self.timed_out.retain(|_, c| *c != id);
        if let Some(idx) = self.consumers.iter().position(|s| s.id == id) {
            // Its acks held back count first (they give its credit back);
            // later ones come one by one.
            for receipt in self.consumers[idx].link.take(true) {
                self.ack(receipt, ctx);
            }
            let slot = self.consumers.remove(idx);
            self.credit -= slot.prefetch.saturating_sub(slot.outstanding);
        }
    }

    fn credit_back(&mut self, consumer: u64) {
        if let Some(slot) = self.consumers.iter_mut().find(|s| s.id == consumer) {
            slot.outstanding -= 1;
            self.credit += 1;
        }
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.credit == 0 || self.ready.len() == 0 {
            return;
        }
        let now = self.now;
        while self.credit > 0 {
            let Some((entry, key)) = self.ready.pop(now) else { break };
            if entry.env.deadline.is_some() && entry.env.is_expired() {
                bump(&self.metrics.expired, &self.shared.stats.expired);
                self.dead_letter(Box::new(entry), FailureReason::Expired, true, ctx);
                self.release(key);
                continue;
            }
            let Some(idx) = self.next_consumer() else {
                self.requeue_front(entry, key);
                break;
            };
            if self.sample() {
                let waited = now.saturating_sub(entry.enqueued_us);
                self.metrics.time_in_queue.record(Duration::from_micros(waited).as_secs_f64());
            }
            let (seq, attempt) = (entry.seq, entry.env.attempt);
            let waiting = self.ready.len();
            let slot = &mut self.consumers[idx];
            let due_us = now.saturating_add(self.visibility_us);
            let delivery = InFlight { entry, consumer: slot.id, due_us, delivered_us: now, key };
            let (receipt, delivery) = self.in_flight.insert(delivery);
            if slot.batch.is_empty() {
                // Room for what it can take of what waits: no regrowth.
                slot.batch.reserve((slot.prefetch - slot.outstanding).min(waiting + 1));
            }
            slot.batch.push(Handed::of(&delivery.entry.env, receipt, &slot.link));
            slot.outstanding += 1;
            self.credit -= 1;
            self.counts.delivered += 1;
            self.deadlines.push_back(receipt);
            // Recorded before the handler can crash the process, so
            // max_deliveries holds across restarts.
            self.note(seq, RowOp::Delivered(attempt), ctx);
        }
        self.hand_over(ctx);
    }

    /// Sends each consumer the batch the dispatch made for it. A consumer
    /// that went away meanwhile is removed, and its batch goes back to the
    /// front, in order, without counting an attempt; the others get it.
    fn hand_over(&mut self, ctx: &mut Context<Self>) {
        let mut gone = Vec::new();
        for slot in &mut self.consumers {
            if slot.batch.is_empty() {
                continue;
            }
            if let Err(e) = slot.tx.send(std::mem::take(&mut slot.batch)) {
                gone.push((slot.id, e.0));
            }
        }
        if gone.is_empty() {
            return;
        }
        for (id, batch) in gone {
            self.remove_consumer(id, ctx);
            let receipts = batch.into_iter().filter_map(|mut h| h.settler().take_receipt()).collect();
            self.settle(Settle::Releases(receipts), ctx);
        }
        self.dispatch(ctx);
    }

    fn requeue_front(&mut self, entry: Entry<Body<T>>, key: Option<Key>) {
        self.ready.push_front(entry);
        self.release(key);
    }

    fn release(&mut self, key: Option<Key>) {
        if let Some(k) = key {
            self.ready.release(&k);
        }
    }

    /// A delivery failed: retry it or, out of attempts, dead-letter it.
    fn fail(
        &mut self,
        mut entry: Box<Entry<Body<T>>>,
        key: Option<Key>,
        reason: FailureReason,
        delay: Option<Duration>,
        ctx: &mut Context<Self>,
    ) {
        let attempt = entry.env.attempt;
        self.histories.entry(entry.env.id).or_default().push(FailureRecord::now(attempt, &reason));
        if attempt >= self.config.max_deliveries {
            self.dead_letter(entry, FailureReason::MaxDeliveries, true, ctx);
            return self.release(key);
        }
        if entry.env.deadline.is_some() && entry.env.is_expired() {
            bump(&self.metrics.expired, &self.shared.stats.expired);
            self.dead_letter(entry, FailureReason::Expired, true, ctx);
            return self.release(key);
        }
        entry.env.attempt += 1;
        bump(&self.metrics.redelivered, &self.shared.stats.redelivered);
        let delay = delay.unwrap_or_else(|| self.config.retry.delay(attempt, rand::random::<f64>()));
        if delay.is_zero() {
            return self.requeue_front(*entry, key);
        }
        self.next_seq += 1;
        let due = self.now.saturating_add(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX));
        // A keyed message stays its key's turn while it waits: order holds.
        self.delayed.insert((due, self.next_seq), Delayed { entry, key });
    }

    /// Sends `entry` to the DLQ; its capacity is given back (when it holds
    /// some) once the DLQ has stored it. A claim-checked message keeps its
    /// ticket: the DLQ entry holds the ticket, not the payload.
    fn dead_letter(
        &mut self,
        entry: Box<Entry<Body<T>>>,
        reason: FailureReason,
        holds_permit: bool,
        ctx: &mut Context<Self>,
    ) {
        self.dead_letter_then(entry, reason, holds_permit, None, ctx);
    }

    /// [`dead_letter`](Self::dead_letter), answering `reply` (a durable
    /// send dead-lettered at once) once the DLQ has it.
    fn dead_letter_then(
        &mut self,
        entry: Box<Entry<Body<T>>>,
        reason: FailureReason,
        holds_permit: bool,
        reply: Option<Committed>,
        ctx: &mut Context<Self>,
    ) {
        let history = self.histories.remove(&entry.env.id).unwrap_or_default();
        tracing::debug!(queue = %self.config.name, id = %entry.env.id, %reason, "dead-lettering");
        let letter = DeadLetter::new(self.source.clone(), reason, &entry.env, history);
        self.count_ticket(&entry.env.payload, false);
        let seq = entry.seq;
        drop(entry);
        self.send_letter(letter, seq, holds_permit, reply, ctx);
    }

    /// Stores `letter` in the DLQ; then the stored row `seq` (if any) is
    /// deleted, so a message is always in the queue store or the DLQ.
    fn send_letter(
        &mut self,
        letter: DeadLetter,
        seq: u64,
        holds_permit: bool,
        reply: Option<Committed>,
        ctx: &mut Context<Self>,
    ) {
        let code = letter.reason.code();
        self.shared.stats.pending_dead_letters.fetch_add(1, Ordering::Relaxed);
        let dlq = self.dlq.clone();
        let stored = async move { dlq.dead_letter(letter).await };
        ctx.spawn(stored.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(()) => {
                    metrics::counter!(m::QUEUE_DEAD_LETTERED, m::LABEL_NAME => act.config.name.clone(), m::LABEL_REASON => code)
                        .increment(1);
                    act.shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    act.note(seq, RowOp::Delete, ctx);
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(e) => {
                    act.metrics.dlq_failures.increment(1);
                    tracing::error!(queue = %act.config.name, error = %e, "could not store a dead letter");
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(QueueError::Storage(StoreError::Unavailable(format!(
                            "the DLQ refused the message: {e}"
                        )))));
                    }
                }
            }
            if holds_permit {
                act.give_permit();
            }
            act.shared.stats.pending_dead_letters.fetch_sub(1, Ordering::Relaxed);
            act.publish();
        }));
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.stamp();
        let now = self.now;
        // Acks held back by consumers first: they may settle deliveries
        // that would time out below.
        self.take_held_acks(ctx);
        // Visibility timeouts: the timeout is the same for every delivery, so
        // deliveries (keyed by receipt) time out in receipt order.
        while let Some(&receipt) = self.deadlines.front() {
            if self.in_flight.get(receipt).is_some_and(|f| f.due_us > now) {
                break;
            }
            self.deadlines.pop_front();
            let Some(f) = self.in_flight.remove(receipt) else { continue };
            self.timed_out.insert(receipt, f.consumer);
            bump(&self.metrics.timeouts, &self.shared.stats.timeouts);
            self.fail(Box::new(f.entry), f.key, FailureReason::Timeout, None, ctx);
        }
        if self.deadlines.len() > 2 * self.in_flight.len() + 1024 {
            let live = &self.in_flight;
            self.deadlines.retain(|&r| live.contains(r));
        }
        // Retries whose delay is over go back to the front.
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let d = entry.remove();
            self.requeue_front(*d.entry, d.key);
        }
        self.expire(ctx);
        if !self.ops.is_empty() {
            self.schedule_flush(ctx);
        }
        self.samples_left = SAMPLES_PER_TICK;
        self.metrics.depth.set((self.ready.len() + self.delayed.len()) as f64);
        self.metrics.in_flight.set(self.in_flight.len() as f64);
        self.dispatch(ctx);
        self.publish();
    }

    /// Dead-letters every waiting message whose deadline passed, wherever it
    /// waits.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        if self.expiry.is_empty() {
            return;
        }
        let now = Timestamp::now();
        while let Some(Reverse((deadline, id))) = self.expiry.peek().copied() {
            if deadline > now {
                break;
            }
            self.expiry.pop();
            let found = match self.ready.remove(id) {
                Some((entry, _)) => Some((Box::new(entry), None)),
                None => {
                    let at = self.delayed.iter().find(|(_, d)| d.entry.env.id == id).map(|(k, _)| *k);
                    at.and_then(|k| self.delayed.remove(&k)).map(|d| (d.entry, d.key))
                }
            };
            // Not waiting: delivered (its consumer checks), or gone.
            if let Some((entry, key)) = found {
                bump(&self.metrics.expired, &self.shared.stats.expired);
                self.dead_letter(entry, FailureReason::Expired, true, ctx);
                self.release(key);
            }
        }
        // Entries of delivered messages linger until their deadline; rebuild
        // when they dominate.
        let waiting = self.ready.len() + self.delayed.len();
        if self.expiry.len() > 2 * waiting + 1024 {
            let live = self.ready.iter().chain(self.delayed.values().map(|d| &*d.entry));
            self.expiry = live.filter_map(|e| e.env.deadline.map(|d| Reverse((d, e.env.id)))).collect();
        }
    }

    fn settle(&mut self, settle: Settle, ctx: &mut Context<Self>) {
        let settle = match settle {
            Settle::Close(id) => {
                self.remove_consumer(id, ctx);
                return;
            }
            Settle::Ack(receipt) => return self.ack(receipt, ctx),
            Settle::Acks(receipts) => {
                for receipt in receipts {
                    self.ack(receipt, ctx);
                }
                return;
            }
            Settle::Releases(receipts) => {
                // Each goes to the front: the last first, so that they end
                // up in the order they were delivered.
                for receipt in receipts.into_iter().rev() {
                    self.settle(Settle::Release(receipt), ctx);
                }
                return;
            }
            Settle::Flush(waiter) => {
                // "Everything done so far" includes acks held back.
                self.take_held_acks(ctx);
                if self.store.is_some() {
                    self.flush_waiters.push(waiter);
                    self.schedule_flush(ctx);
                } else {
                    let _ = waiter.send(());
                }
                return;
            }
            other => other,
        };
        let receipt = match &settle {
            Settle::Expired(r) | Settle::Release(r) => *r,
            Settle::Nack { receipt, .. } | Settle::Reject { receipt, .. } | Settle::Unclaimable { receipt, .. } => {
                *receipt
            }
            Settle::Ack(_) | Settle::Close(_) | Settle::Acks(_) | Settle::Releases(_) | Settle::Flush(_) => return,
        };
        let Some(f) = self.in_flight.remove(receipt) else {
            return self.stale(receipt);
        };
        self.credit_back(f.consumer);
        match settle {
            Settle::Nack { reason, delay, .. } => {
                bump(&self.metrics.nacked, &self.shared.stats.nacked);
                self.fail(Box::new(f.entry), f.key, reason, delay, ctx);
            }
            Settle::Reject { reason, .. } => {
                let attempt = f.entry.env.attempt;
                self.histories.entry(f.entry.env.id).or_default().push(FailureRecord::now(attempt, &reason));
                self.dead_letter(Box::new(f.entry), reason, true, ctx);
                self.release(f.key);
            }
            Settle::Expired(_) => {
                bump(&self.metrics.expired, &self.shared.stats.expired);
                self.dead_letter(Box::new(f.entry), FailureReason::Expired, true, ctx);
                self.release(f.key);
            }
            Settle::Unclaimable { reason, .. } => {
                bump(&self.metrics.claim_failures, &self.shared.stats.claim_failures);
                let attempt = f.entry.env.attempt;
                self.histories.entry(f.entry.env.id).or_default().push(FailureRecord::now(attempt, &reason));
                self.dead_letter(Box::new(f.entry), reason, true, ctx);
                self.release(f.key);
            }
            Settle::Release(_) => {
                // Never seen by a handler: the attempt does not count.
                let (seq, attempt) = (f.entry.seq, f.entry.env.attempt);
                self.note(seq, RowOp::Delivered(attempt.saturating_sub(1)), ctx);
                self.requeue_front(f.entry, f.key);
            }
            Settle::Ack(_) | Settle::Close(_) | Settle::Acks(_) | Settle::Releases(_) | Settle::Flush(_) => {}
        }
    }

    /// An ack: the settle of nearly every delivery, on its own path (not
    /// through the matching of a whole `Settle` that the others need).
    fn ack(&mut self, receipt: u64, ctx: &mut Context<Self>) {
        let Some(f) = self.in_flight.remove(receipt) else {
            return self.stale(receipt);
        };
        self.credit_back(f.consumer);
        self.counts.acked += 1;
        if self.sample() {
            let took = self.now.saturating_sub(f.delivered_us);
            self.metrics.latency.record(Duration::from_micros(took).as_secs_f64());
        }
        if !self.histories.is_empty() {
            self.histories.remove(&f.entry.env.id);
        }
        self.leave(f.entry.seq, &f.entry.env.payload, ctx);
        self.give_permit();
        self.release(f.key);
    }

    /// A settle of `receipt` after its visibility timeout: the message was
    /// already given to someone else (or dead-lettered). The consumer gets
    /// its credit back now.
    fn stale(&mut self, receipt: u64) {
        if let Some(consumer) = self.timed_out.remove(&receipt) {
            self.credit_back(consumer);
        }
        bump(&self.metrics.stale, &self.shared.stats.stale);
    }

    /// Applies the acks every consumer holds back (see `Link`).
    fn take_held_acks(&mut self, ctx: &mut Context<Self>) {
        for idx in 0..self.consumers.len() {
            for receipt in self.consumers[idx].link.take(false) {
                self.ack(receipt, ctx);
            }
        }
    }
}

impl<T: QueueMessage> GroupCommit for Queue<T> {
    fn write_scheduled(&mut self) -> &mut bool {
        &mut self.flush_scheduled
    }

    fn write_batch(&mut self, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}

impl<T> Actor for Queue<T>
where
    T: QueueMessage,
{
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stamp();
        self.take_loaded(ctx);
        self.publish();
    }
}

impl<T> StreamHandler<Vec<Cmd<T>>> for Queue<T>
where
    T: QueueMessage,
{
    fn handle(&mut self, mut cmds: Vec<Cmd<T>>, ctx: &mut Context<Self>) {
        self.stamp();
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Enqueue(incoming) => self.accept(incoming, ctx),
                Cmd::Overflow(incoming) => self.overflow(incoming, ctx),
                // Closed before the queue saw it subscribe (its close came
                // first, on the settle channel, and found nothing to
                // remove): dropping `tx` ends its `recv`.
                Cmd::Subscribe { link, .. } if link.consumer_closed() => {}
                Cmd::Subscribe { tx, prefetch, link } => {
                    self.consumers.push(Slot {
                        id: link.consumer,
                        tx,
                        batch: Vec::new(),
                        prefetch,
                        outstanding: 0,
                        link,
                    });
                    self.credit += prefetch;
                }
            }
        }
        self.spare_cmds.set(cmds);
        self.dispatch(ctx);
        self.publish();
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // Every handle is gone: no more sends, but what is queued is still
        // delivered to the consumers.
    }
}

impl<T> StreamHandler<Vec<Settle>> for Queue<T>
where
    T: QueueMessage,
{
    fn handle(&mut self, mut settles: Vec<Settle>, ctx: &mut Context<Self>) {
        self.stamp();
        for settle in settles.drain(..) {
            self.settle(settle, ctx);
        }
        self.spare_settles.set(settles);
        self.dispatch(ctx);
        self.publish();
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::DlqSink;

    async fn until(what: impl Fn() -> bool) {
        let start = Instant::now();
        while !what() {
            assert!(start.elapsed() < Duration::from_secs(10), "condition not reached");
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn config(name: &str, tick: Duration) -> QueueConfig {
        QueueConfig { tick, ..QueueConfig::named(name) }
    }

    #[test]
    fn acks_held_by_a_dropped_consumer_still_count() {
        actix_rt::System::new().block_on(async {
            // No tick for an hour: only the drop can hand the ack over.
            let q = Queue::<u32>::start(config("held-drop", Duration::from_secs(3600)), DlqSink::in_memory()).unwrap();
            let mut c = q.consumer(8).await.unwrap();
            for i in 0..4 {
                q.send(i).await.unwrap();
            }
            let d = c.recv().await.unwrap();
            assert_eq!(*d.payload(), 0);
            // Three more wait in the consumer: the ack is held back.
            d.ack();
            actix_rt::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(q.stats().acked, 0);
            drop(c);
            until(|| q.stats().acked == 1 && q.depth() == 3 && q.in_flight() == 0).await;
            let s = q.stats();
            assert_eq!((s.nacked, s.redelivered, s.stale_settles), (0, 0, 0));
        });
    }

    #[test]
    fn acks_held_back_are_applied_at_the_next_tick() {
        actix_rt::System::new().block_on(async {
            let q = Queue::<u32>::start(config("held-tick", Duration::from_millis(5)), DlqSink::in_memory()).unwrap();
            let mut c = q.consumer(8).await.unwrap();
            q.send(1).await.unwrap();
            q.send(2).await.unwrap();
            c.recv().await.unwrap().ack();
            // The consumer never asks for the second one.
            until(|| q.stats().acked == 1).await;
            assert_eq!(q.in_flight(), 1);
            drop(c);
        });
    }

    /// The payloads `c` receives until `n` came, each acked and first
    /// delivered (a release is not an attempt).
    async fn take_acked(c: &mut super::super::Consumer<u32>, n: usize) -> Vec<u32> {
        let mut got = Vec::new();
        while got.len() < n {
            let d = tokio::time::timeout(Duration::from_secs(10), c.recv()).await.unwrap().unwrap();
            assert_eq!(d.attempt(), 1);
            got.push(*d.payload());
            d.ack();
        }
        got
    }

    #[test]
    fn a_dropped_consumer_gives_back_its_partly_taken_batches_in_order() {
        actix_rt::System::new().block_on(async {
            let q = Queue::<u32>::start(config("batch-drop", Duration::from_secs(3600)), DlqSink::in_memory()).unwrap();
            let mut c = q.consumer(8).await.unwrap();
            // Two batches: 0..4, then 4..8 once the first was handed over.
            for i in 0..4 {
                q.send(i).await.unwrap();
            }
            until(|| q.stats().delivered == 4).await;
            for i in 4..10 {
                q.send(i).await.unwrap();
            }
            until(|| q.stats().delivered == 8).await;
            // Three taken from the first batch: one left in it, the second
            // batch untouched in the channel, two not delivered (credit).
            assert_eq!(take_acked(&mut c, 3).await, [0, 1, 2]);
            drop(c);
            until(|| q.in_flight() == 0 && q.depth() == 7).await;
            let s = q.stats();
            assert_eq!((s.acked, s.delivered, s.nacked, s.redelivered, s.stale_settles), (3, 8, 0, 0, 0));
            let mut again = q.consumer(16).await.unwrap();
            assert_eq!(take_acked(&mut again, 7).await, [3, 4, 5, 6, 7, 8, 9]);
            assert!(again.try_recv().is_none());
            drop(again);
            until(|| q.stats().acked == 10).await;
            let s = q.stats();
            assert_eq!((s.enqueued, s.delivered, s.depth, s.in_flight, s.nacked), (10, 15, 0, 0, 0));
        });
    }

    #[test]
    fn a_batch_for_a_consumer_gone_before_the_queue_saw_it_go_comes_back_in_order() {
        actix_rt::System::new().block_on(async {
            let q = Queue::<u32>::start(config("batch-gone", Duration::from_secs(3600)), DlqSink::in_memory()).unwrap();
            let c = q.consumer(8).await.unwrap();
            // Sent before the queue runs again: it may dispatch them to the
            // consumer before it takes the close (the batch then cannot be
            // handed over) or after. Either way they all wait, in order.
            drop(c);
            for i in 0..6 {
                q.send(i).await.unwrap();
            }
            until(|| q.depth() == 6 && q.in_flight() == 0).await;
            let mut again = q.consumer(8).await.unwrap();
            assert_eq!(take_acked(&mut again, 6).await, [0, 1, 2, 3, 4, 5]);
            drop(again);
            until(|| q.stats().acked == 6).await;
            let s = q.stats();
            assert_eq!((s.nacked, s.redelivered, s.depth, s.in_flight), (0, 0, 0, 0));
        });
    }

    #[test]
    fn a_consumer_closed_at_once_from_another_arbiter_ends() {
        actix_rt::System::new().block_on(async {
            let q = Queue::<u32>::start(config("close-race", Duration::from_millis(5)), DlqSink::in_memory()).unwrap();
            // The close may reach the queue before the subscription (two
            // channels, two threads): the consumer must end either way.
            let arbiter = actix_rt::Arbiter::new();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let target = q.clone();
            arbiter.spawn(async move {
                for _ in 0..500 {
                    let mut c = target.consumer(4).await.unwrap();
                    c.close();
                    let end = tokio::time::timeout(Duration::from_secs(5), c.recv()).await;
                    if !matches!(end, Ok(None)) {
                        let _ = tx.send(false);
                        return;
                    }
                }
                let _ = tx.send(true);
            });
            assert!(rx.await.unwrap(), "a closed consumer's recv did not end");
            arbiter.stop();
        });
    }

    #[test]
    fn a_stale_receipt_whose_slot_holds_a_newer_delivery_settles_nothing() {
        actix_rt::System::new().block_on(async {
            let config = QueueConfig {
                visibility_timeout: Duration::from_millis(300),
                retry: super::super::RetryPolicy::IMMEDIATE,
                ..config("stale-slot", Duration::from_millis(5))
            };
            let q = Queue::<u32>::start(config, DlqSink::in_memory()).unwrap();
            let mut c = q.consumer(2).await.unwrap();
            q.send(7).await.unwrap();
            let (_, mut first) = c.recv().await.unwrap().into_parts();
            let first = first.take_receipt().unwrap();
            // Timed out: the redelivery takes the slot the first one left.
            let again = c.recv().await.unwrap();
            assert_eq!(again.attempt(), 2);
            assert_eq!(InFlightTable::<()>::slot(first), InFlightTable::<()>::slot(again.receipt()));
            assert_ne!(first, again.receipt());
            assert!(q.shared.settle.send(Settle::Ack(first)).is_ok());
            until(|| q.stats().stale_settles == 1).await;
            let s = q.stats();
            assert_eq!((s.acked, s.in_flight), (0, 1), "the late ack settled the redelivery");
            again.ack();
            drop(c);
            until(|| q.stats().acked == 1).await;
            let s = q.stats();
            assert_eq!((s.stale_settles, s.timeouts, s.depth, s.in_flight), (1, 1, 0, 0));
        });
    }

    #[test]
    fn a_batch_of_acks_with_a_stale_receipt_counts_it_and_settles_the_rest() {
        actix_rt::System::new().block_on(async {
            let config = QueueConfig {
                visibility_timeout: Duration::from_millis(30),
                retry: super::super::RetryPolicy::IMMEDIATE,
                ..config("held-stale", Duration::from_millis(5))
            };
            let q = Queue::<u32>::start(config, DlqSink::in_memory()).unwrap();
            let mut c = q.consumer(2).await.unwrap();
            q.send(7).await.unwrap();
            let (_, mut first) = c.recv().await.unwrap().into_parts();
            let first = first.take_receipt().unwrap();
            // Timed out and delivered again (the consumer kept its credit).
            let (env, mut again) = c.recv().await.unwrap().into_parts();
            let again = again.take_receipt().unwrap();
            assert_eq!(env.attempt, 2);
            let sent = q.shared.settle.send(Settle::Acks(vec![first, again]));
            assert!(sent.is_ok());
            until(|| q.stats().acked == 1).await;
            let s = q.stats();
            assert_eq!((s.stale_settles, s.timeouts, s.depth, s.in_flight), (1, 1, 0, 0));
            drop(c);
        });
    }
}
