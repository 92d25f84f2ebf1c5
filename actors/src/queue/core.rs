//! The state of one queue and every rule applied to it.
//!
//! A queue's state lives in a [`Core`] behind one mutex that its handles,
//! its consumers, their settlers and its actor share. The hot path takes
//! the lock and does its work there, without a hop through the actor:
//!
//! - a send pushes its message into the ready set and wakes a consumer that
//!   waits with credit;
//! - a consumer pulls what its credit allows in one go (hands over the acks
//!   it held back, takes messages, records them in flight), or its fair
//!   share of what waits when other consumers have credit too;
//! - a settle (a batch of acks, a nack, a reject) applies at once.
//!
//! What needs time or I/O is left to the [`Queue`](super::Queue) actor as
//! [`Effects`]: dead letters to store, claim-check tickets to release,
//! durable writes to run. Whoever leaves effects behind pokes the actor;
//! its tick applies visibility timeouts, due retries and expiry.
//!
//! Nothing here blocks or awaits, so the lock is held for a few hundred
//! nanoseconds at most, and a waker is woken only after it is released.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use tokio::sync::oneshot;

use super::handle::{Body, Committed, Handed, HeldAcks, Incoming, Link, Settle, Settles, Shared, Source};
use super::ready::{Enqueued, Entry, Key, Ready, Slot as Held};
use super::store::{QueueBatch, StoredBody, StoredMessage};
use super::{QueueConfig, QueueError, QueueMessage};
use crate::backpressure::OverflowPolicy;
use crate::claim_check::Ticket;
use crate::clock;
use crate::dlq::{DeadLetter, DlqSource, FailureRecord};
use crate::envelope::{MessageId, Timestamp};
use crate::error::FailureReason;
use crate::metrics as m;
use crate::signal::Signal;
use crate::store::StoreError;

/// Histogram samples a queue takes per tick, at most, for each of its two
/// histograms (counters are exact): time in queue (messages picked as they
/// are enqueued, recorded at their deliveries) and handler latency (acks).
const SAMPLES_PER_TICK: u32 = 128;

/// Counted messages after which a lock section publishes its counters (see
/// `Core::finish`).
const PUBLISH_EVERY: u64 = 256;

/// Most new messages a durable queue writes in one transaction.
const MAX_BATCH: usize = 4096;

/// A durable queue's change to a stored row, not written yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowOp {
    /// Deliveries handed out (the attempt of the latest).
    Delivered(u32),
    Delete,
}

/// A durable send waiting for its commit.
pub(crate) struct Pending<T> {
    entry: Box<Entry<Body<T>>>,
    body: StoredBody,
    reply: Committed,
}

/// A message read back from the store at start.
pub(crate) enum Loaded<T> {
    Ok(Box<Entry<Body<T>>>),
    /// Delivered `max_deliveries` times already (the last in flight at the
    /// stop or crash).
    Exhausted(Box<Entry<Body<T>>>),
    /// The payload does not decode as `T` any more.
    Undecodable(u64, DeadLetter),
}

/// A delivery: its message stays where it lies in the ready set's slots.
/// Plain data (its partition key, if any, is kept apart: see
/// `InFlightTable`), so a slot is written and cleared without a drop. It
/// times out `visibility_us` after `delivered_us`.
#[derive(Clone, Copy, Default)]
struct InFlight {
    held: Held,
    consumer: u64,
    delivered_us: u64,
}

struct Delayed<T> {
    entry: Box<Entry<T>>,
    key: Option<Key>,
}

/// A consumer as the queue sees it.
struct Slot {
    id: u64,
    prefetch: usize,
    outstanding: usize,
    /// Set while the consumer waits for a delivery.
    waker: Option<Waker>,
    link: Arc<Link>,
}

impl Slot {
    fn credit(&self) -> usize {
        self.prefetch.saturating_sub(self.outstanding)
    }
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

/// The counters of the messages one lock section handled, added to the
/// metrics and stats when it ends (see `Core::publish`): a pull of 256
/// deliveries costs two atomic adds, not 512.
#[derive(Default)]
struct Counts {
    enqueued: u64,
    delivered: u64,
    acked: u64,
    /// Capacity permits to give back.
    permits: usize,
}

/// A dead letter on its way to the DLQ; its stored row (`seq`) is deleted
/// and its place given back once the DLQ has it.
pub(crate) struct Letter {
    pub(crate) letter: DeadLetter,
    pub(crate) seq: u64,
    pub(crate) holds_permit: bool,
    /// A durable send dead-lettered at once, answered when it is stored.
    pub(crate) reply: Option<Committed>,
}

/// What the actor does for the core: everything that awaits.
#[derive(Default)]
pub(crate) struct Effects {
    pub(crate) letters: Vec<Letter>,
    /// Tickets of messages gone for good: their payloads are freed.
    pub(crate) releases: Vec<Ticket>,
    /// A durable write is wanted (sends waiting, delivery counts).
    pub(crate) write: bool,
}

impl Effects {
    fn is_empty(&self) -> bool {
        self.letters.is_empty() && self.releases.is_empty() && !self.write
    }
}

/// One durable transaction: what it writes and who waits for it.
pub(crate) struct Write<T> {
    pub(crate) batch: QueueBatch,
    pending: Vec<Pending<T>>,
    waiters: Vec<oneshot::Sender<()>>,
    releases: Vec<Ticket>,
}

/// The deliveries in flight, by receipt: a slab (slots and a list of free
/// ones) instead of a hash map, so a delivery and its settle each cost an
/// index, not a hash and a probe. A receipt is the slot's index in its low 32
/// bits and the queue's delivery number (its low 32 bits, never 0) in the
/// high ones: a slot keeps the receipt of the delivery it holds (0 when
/// free), so a settle that comes after its slot was reused (a stale one)
/// finds another receipt there and touches nothing.
struct InFlightTable {
    slots: Vec<(u64, InFlight)>,
    /// The partition keys of deliveries, by slot: only a partitioned
    /// queue's keyed deliveries have one, and it stays empty otherwise.
    keys: Vec<Option<Key>>,
    free: Vec<u32>,
    len: usize,
    delivered: u64,
}

impl InFlightTable {
    fn new() -> Self {
        InFlightTable { slots: Vec::new(), keys: Vec::new(), free: Vec::new(), len: 0, delivered: 0 }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Adds a delivery; gives its receipt.
    #[inline(always)]
    fn insert(&mut self, delivery: InFlight, key: Option<Key>) -> u64 {
        self.delivered += 1;
        if self.delivered as u32 == 0 {
            // A receipt is never 0, the mark of a free slot.
            self.delivered += 1;
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                // Past 2^32 deliveries in flight at once (a credit no queue
                // gives) the index would not fit the receipt.
                let i = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push((0, InFlight::default()));
                i
            }
        };
        let receipt = (self.delivered << 32) | u64::from(index);
        self.len += 1;
        self.slots[index as usize] = (receipt, delivery);
        if let Some(key) = key {
            let index = index as usize;
            if self.keys.len() <= index {
                self.keys.resize(index + 1, None);
            }
            self.keys[index] = Some(key);
        }
        receipt
    }

    pub(crate) fn slot(receipt: u64) -> usize {
        (receipt & u64::from(u32::MAX)) as usize
    }

    fn get(&self, receipt: u64) -> Option<&InFlight> {
        match self.slots.get(Self::slot(receipt))? {
            (r, f) if *r == receipt && receipt != 0 => Some(f),
            _ => None,
        }
    }

    fn contains(&self, receipt: u64) -> bool {
        self.get(receipt).is_some()
    }

    /// Takes the delivery of `receipt` out, with its key; `None` when it is
    /// not in flight any more (settled, timed out: its slot may hold a
    /// newer one).
    #[inline(always)]
    fn remove(&mut self, receipt: u64) -> Option<(InFlight, Option<Key>)> {
        let index = Self::slot(receipt);
        let slot = self.slots.get_mut(index)?;
        if slot.0 != receipt || receipt == 0 {
            return None;
        }
        slot.0 = 0;
        let delivery = slot.1;
        self.free.push(index as u32);
        self.len -= 1;
        Some((delivery, self.keys.get_mut(index).and_then(Option::take)))
    }
}

/// What every handle, consumer and settler of one queue shares with its
/// actor: the counters, and the core behind its lock.
pub(crate) struct Inner<T> {
    pub(crate) shared: Arc<Shared>,
    core: Mutex<Core<T>>,
    /// Wakes the actor to run the core's effects.
    poke: Signal,
}

/// What to do once the lock is released.
struct After {
    wake: Vec<Waker>,
    poke: bool,
}

impl<T: QueueMessage> Inner<T> {
    pub(crate) fn new(shared: Arc<Shared>, core: Core<T>, poke: Signal) -> Self {
        Inner { shared, core: Mutex::new(core), poke }
    }

    fn lock(&self) -> MutexGuard<'_, Core<T>> {
        // Nothing in the core panics on input; a poisoned lock (a bug) still
        // holds a consistent enough state to keep every message counted.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the core, then publishes its counters, wakes the
    /// consumers it made work for and pokes the actor for its effects.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Core<T>) -> R) -> R {
        let (r, after) = {
            let mut core = self.lock();
            let r = f(&mut core);
            (r, core.finish())
        };
        if let Some(after) = after {
            self.after(after);
        }
        r
    }

    #[cold]
    fn after(&self, after: After) {
        for w in after.wake {
            w.wake();
        }
        if after.poke {
            self.poke.raise();
        }
    }
}

impl<T: QueueMessage> Source<T> for Inner<T> {
    /// Takes deliveries for the consumer of `link` into `out`, as many as
    /// its credit allows (handing over the acks it held back first). With
    /// `waker` and nothing to take, the consumer waits: `false` then; `true`
    /// once something was taken or the consumer or queue is closed.
    fn pull(&self, link: &Link, out: &mut VecDeque<Handed<T>>, waker: Option<&Waker>) -> bool {
        self.with(|core| {
            core.stamp();
            core.ack_held(link.take(false));
            core.pull(link.consumer, out, waker)
        })
    }
}

impl<T: QueueMessage> Settles for Inner<T> {
    fn settle(&self, settle: Settle) {
        self.with(|core| {
            core.stamp();
            core.settle(settle);
        });
    }

    fn take_held(&self, link: &Link) {
        self.with(|core| {
            core.stamp();
            core.ack_held(link.take(false));
        });
    }
}

/// A queue's state (see the [module docs](self)).
pub(crate) struct Core<T> {
    config: QueueConfig,
    shared: Arc<Shared>,
    source: DlqSource,
    ready: Ready<Body<T>>,
    in_flight: InFlightTable,
    /// Receipts in delivery order, which is visibility-timeout order (the
    /// timeout is the same for every delivery). Settled receipts are
    /// skipped when they reach the front, and swept out when they pile up
    /// behind one that is slow to settle.
    deadlines: VecDeque<u64>,
    /// Deliveries that timed out, by receipt, with their consumer: it keeps
    /// the credit until it settles (late), so a stuck consumer is not handed
    /// more work that would only time out in its buffer.
    timed_out: HashMap<u64, u64>,
    delayed: BTreeMap<(u64, u64), Delayed<Body<T>>>,
    histories: HashMap<MessageId, Vec<FailureRecord>>,
    expiry: BinaryHeap<Reverse<(Timestamp, MessageId)>>,
    consumers: Vec<Slot>,
    /// Consumers with a waker set.
    waiting: usize,
    next_seq: u64,
    epoch: clock::Instant,
    /// The queue's clock (µs since `epoch`), read once per lock section;
    /// a send reads it only when it stamps its message (see `wants_stamp`).
    now: u64,
    counts: Counts,
    visibility_us: u64,
    /// Messages still to pick as time-in-queue samples this tick.
    queue_samples_left: u32,
    /// Every message is stamped when enqueued: `Ready::needs_stamps`, kept
    /// here because every send reads it (asking the ready set each time
    /// cost 8 instructions a message).
    stamp_all: bool,
    /// Acks still to sample for the handler latency this tick.
    latency_samples_left: u32,
    metrics: Metrics,
    durable: bool,
    /// Durable queues: sends waiting for their commit, changes to stored
    /// rows not written yet, callers of `flush`.
    pending: Vec<Pending<T>>,
    ops: BTreeMap<u64, RowOp>,
    writing: bool,
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// Tickets of messages whose delete is among `ops`.
    release_after_commit: Vec<Ticket>,
    /// The next stored row's sequence (enqueue order).
    next_row: u64,
    /// Messages loaded at start beyond the capacity: permits given back
    /// pay this off first, so the queue never holds more than `capacity`
    /// plus what it found at start.
    permit_debt: u64,
    effects: Effects,
    /// The actor stopped: no more sends or deliveries.
    closed: bool,
}

impl<T: QueueMessage> Core<T> {
    pub(crate) fn new(
        config: QueueConfig,
        shared: Arc<Shared>,
        durable: bool,
        next_row: u64,
        permit_debt: u64,
    ) -> Self {
        let aging_us = config.aging.map(|a| u64::try_from(a.as_micros()).unwrap_or(u64::MAX));
        let ready = Ready::new(config.priority, aging_us, config.partition_header.clone());
        Core {
            stamp_all: ready.needs_stamps(),
            ready,
            visibility_us: u64::try_from(config.visibility_timeout.as_micros()).unwrap_or(u64::MAX),
            metrics: Metrics::new(&config.name),
            source: DlqSource::queue(config.name.clone()),
            config,
            shared,
            in_flight: InFlightTable::new(),
            deadlines: VecDeque::new(),
            timed_out: HashMap::new(),
            delayed: BTreeMap::new(),
            histories: HashMap::new(),
            expiry: BinaryHeap::new(),
            consumers: Vec::new(),
            waiting: 0,
            next_seq: 0,
            epoch: clock::now(),
            now: 0,
            counts: Counts::default(),
            queue_samples_left: SAMPLES_PER_TICK,
            latency_samples_left: SAMPLES_PER_TICK,
            durable,
            pending: Vec::new(),
            ops: BTreeMap::new(),
            writing: false,
            flush_waiters: Vec::new(),
            release_after_commit: Vec::new(),
            next_row,
            permit_debt,
            effects: Effects::default(),
            closed: false,
        }
    }

    /// Reads the clock for what this lock section does.
    pub(crate) fn stamp(&mut self) {
        let elapsed = clock::now().saturating_duration_since(self.epoch);
        self.now = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    }

    /// True when a send must read the clock (`stamp`) before its message
    /// is made ready: the message will be stamped (see `enqueued_now`).
    /// Otherwise the send reads no clock at all.
    #[inline(always)]
    pub(crate) fn wants_stamp(&self) -> bool {
        self.queue_samples_left > 0 || self.stamp_all
    }

    /// The stamp of a message made ready now: the first messages of each
    /// tick are the time-in-queue samples (picked when enqueued, so that a
    /// sample's wait is known however long it waits); the others are
    /// stamped only when the ready order needs it.
    #[inline(always)]
    fn enqueued_now(&mut self) -> Enqueued {
        let sample = self.queue_samples_left > 0;
        if sample {
            self.queue_samples_left -= 1;
        } else if !self.stamp_all {
            return Enqueued::UNSTAMPED;
        }
        Enqueued::at(self.now, sample)
    }

    fn sample_latency(&mut self) -> bool {
        if self.latency_samples_left > 0 {
            self.latency_samples_left -= 1;
            true
        } else {
            false
        }
    }

    /// Ends a lock section: places given back to senders; the consumers
    /// that can now take something and the actor (when effects wait) to be
    /// woken. Counters are published once `PUBLISH_EVERY` piled up, when
    /// nothing is left to deliver, at the tick and whenever a handle reads
    /// them (`QueueHandle::stats`): a few atomic adds per burst, not per
    /// message, and exact once the queue is idle.
    #[inline(always)]
    fn finish(&mut self) -> Option<After> {
        if self.counts.permits > 0 {
            self.shared.permits.add_permits(std::mem::take(&mut self.counts.permits));
        }
        let counted = self.counts.enqueued + self.counts.delivered + self.counts.acked;
        if counted >= PUBLISH_EVERY || (counted > 0 && self.ready.len() == 0) {
            self.publish();
        }
        let closed = self.closed;
        let wake_some = self.waiting > 0 && (self.ready.len() > 0 || closed);
        // Raised while effects wait; the signal keeps one wake-up however
        // often.
        let poke = !self.effects.is_empty();
        if !wake_some && !poke {
            return None;
        }
        let mut wake = Vec::new();
        if wake_some {
            for slot in &mut self.consumers {
                if slot.credit() > 0 || closed {
                    wake.extend(slot.waker.take());
                }
            }
            self.waiting -= wake.len();
        }
        Some(After { wake, poke })
    }

    /// Makes the counters and sizes visible to the handles and metrics.
    pub(crate) fn publish(&mut self) {
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

    /// The actor takes what it has to do.
    pub(crate) fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.effects)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// The actor stopped: consumers end once their buffers are drained,
    /// sends fail.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Counts a ticket coming into (`in_ = true`) or leaving the queue.
    fn count_ticket(&self, body: &Body<T>, in_: bool) {
        if let Some(t) = body.ticket() {
            self.count(t, in_);
        }
    }

    fn count(&self, t: &Ticket, in_: bool) {
        let stats = &self.shared.stats;
        if in_ {
            stats.ticketed.fetch_add(1, Ordering::Relaxed);
            stats.ticketed_bytes.fetch_add(t.size, Ordering::Relaxed);
        } else {
            stats.ticketed.fetch_sub(1, Ordering::Relaxed);
            stats.ticketed_bytes.fetch_sub(t.size, Ordering::Relaxed);
        }
    }

    /// A message leaves for good (acked, dropped): its payload goes too.
    fn release_ticket(&mut self, body: &Body<T>) {
        self.count_ticket(body, false);
        if let Body::Claimed(ticket) = body {
            self.effects.releases.push(**ticket);
        }
    }

    /// A message leaves for good (acked, dropped). On a durable queue its
    /// payload is released only once the row's delete is committed: a crash
    /// in between brings the message back, and it must still be claimable.
    fn leave(&mut self, seq: u64, ticket: Option<Ticket>) {
        if let Some(ticket) = ticket {
            self.count(&ticket, false);
            if self.durable && seq > 0 {
                self.release_after_commit.push(ticket);
            } else {
                self.effects.releases.push(ticket);
            }
        }
        self.note(seq, RowOp::Delete);
    }

    /// Gives a place back (to senders when the lock section ends).
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
    fn note(&mut self, seq: u64, op: RowOp) {
        if self.durable && seq > 0 {
            self.ops.insert(seq, op);
            if op != RowOp::Delete {
                self.effects.write = true;
            }
        }
    }

    /// Takes a message that holds a place: ready at once, or once
    /// committed on a durable queue. Inlined, like `store` and
    /// `Ready::push_back`, so that an entry is not copied once per call on
    /// its way to the ready set.
    #[inline(always)]
    pub(crate) fn accept(&mut self, incoming: Incoming<T>) {
        let Incoming { mut entry, stored } = incoming;
        self.count_ticket(&entry.env.payload, true);
        // `store` stamps the time it becomes ready (after the commit, when
        // durable).
        match stored.map(|s| *s) {
            Some((body, reply)) if self.durable => {
                entry.seq = self.next_row;
                self.next_row += 1;
                self.pending.push(Pending { entry: Box::new(entry), body, reply });
                self.effects.write = true;
            }
            _ => self.store(entry),
        }
    }

    /// Makes an accepted (and, when durable, committed) message ready.
    #[inline(always)]
    pub(crate) fn store(&mut self, mut entry: Entry<Body<T>>) {
        self.counts.enqueued += 1;
        entry.enqueued = self.enqueued_now();
        if let Some(deadline) = entry.env.deadline {
            if entry.env.is_expired_at(Timestamp::now()) {
                bump(&self.metrics.expired, &self.shared.stats.expired);
                self.dead_letter(Box::new(entry), FailureReason::Expired, true);
                return;
            }
            self.expiry.push(Reverse((deadline, entry.env.id)));
        }
        self.ready.push_back(entry);
    }

    /// A message that found the queue full under `drop_oldest` or
    /// `dead_letter`.
    pub(crate) fn overflow(&mut self, incoming: Incoming<T>) {
        // Room may have been made since the sender looked (in this lock
        // section too).
        self.publish();
        if self.shared.permits.try_acquire().map(|p| p.forget()).is_ok() {
            return self.accept(incoming);
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
                entry.enqueued = Enqueued::at(self.now, false);
                (Box::new(entry), None, stored.map(|s| s.1))
            }
        };
        if policy == OverflowPolicy::DropOldest {
            self.histories.remove(&out.env.id);
            bump(&self.metrics.dropped_oldest, &self.shared.stats.dropped);
            tracing::debug!(queue = %self.config.name, id = %out.env.id, "queue full: message dropped (drop_oldest)");
            self.leave(out.seq, out.env.payload.ticket().copied());
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
        } else {
            self.dead_letter_then(out, reason, false, reply);
        }
        if let Some(incoming) = keep {
            // Counted as enqueued by `store`; its permit is the victim's.
            self.accept(incoming);
        }
    }

    /// What a durable queue writes next, unless a write is in progress (its
    /// completion asks again) or nothing waits (callers of `flush` are then
    /// answered).
    pub(crate) fn take_write(&mut self) -> Option<Write<T>> {
        if self.writing {
            return None;
        }
        if self.pending.is_empty() && self.ops.is_empty() {
            for w in self.flush_waiters.drain(..) {
                let _ = w.send(());
            }
            return None;
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
        Some(Write { batch, pending, waiters, releases })
    }

    /// A durable write ended: its sends become ready (or fail), its
    /// waiters are answered.
    pub(crate) fn written(&mut self, write: Write<T>, res: Result<(), StoreError>) {
        let Write { pending, waiters, releases, .. } = write;
        self.writing = false;
        match res {
            Ok(()) => {
                for p in pending {
                    self.store(*p.entry);
                    let _ = p.reply.send(Ok(()));
                }
                self.effects.releases.extend(releases);
            }
            Err(e) => {
                self.metrics.store_errors.increment(1);
                self.shared.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                // The rows whose delete failed come back at the next
                // start: their payloads stay (freed at expiry otherwise).
                tracing::error!(queue = %self.config.name, error = %e, releases_kept = releases.len(), "queue store commit failed");
                for p in pending {
                    self.release_ticket(&p.entry.env.payload);
                    self.give_permit();
                    let _ = p.reply.send(Err(QueueError::Storage(e.clone())));
                }
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
        // What piled up meanwhile goes next.
        self.effects.write = true;
    }

    /// Calls `waiter` once everything done so far is written (durable
    /// queues; at once otherwise).
    pub(crate) fn flush(&mut self, waiter: oneshot::Sender<()>) {
        // "Everything done so far" includes acks held back.
        self.take_held_acks();
        if self.durable {
            self.flush_waiters.push(waiter);
            self.effects.write = true;
        } else {
            let _ = waiter.send(());
        }
    }

    /// Delivers or dead-letters what the store held at start.
    pub(crate) fn take_loaded(&mut self, found: Vec<Loaded<T>>) {
        if !found.is_empty() {
            tracing::info!(queue = %self.config.name, messages = found.len(), "durable queue: messages loaded");
        }
        for loaded in found {
            match loaded {
                // Tickets were counted in when the queue started.
                Loaded::Ok(entry) => self.store(*entry),
                Loaded::Exhausted(entry) => {
                    let attempt = entry.env.attempt.saturating_sub(1);
                    let failure = FailureReason::Failed("delivery in flight at a stop or crash".into());
                    self.histories.entry(entry.env.id).or_default().push(FailureRecord::now(attempt, &failure));
                    self.dead_letter(entry, FailureReason::MaxDeliveries, true);
                }
                Loaded::Undecodable(seq, letter) => self.send_letter(letter, seq, true, None),
            }
        }
    }

    pub(crate) fn subscribe(&mut self, link: Arc<Link>, prefetch: usize) {
        self.consumers.push(Slot { id: link.consumer, prefetch, outstanding: 0, waker: None, link });
    }

    /// The consumer takes nothing more; the acks it held back count first
    /// (they give its credit back), later ones come one by one.
    pub(crate) fn remove_consumer(&mut self, id: u64) {
        self.timed_out.retain(|_, c| *c != id);
        if let Some(idx) = self.consumers.iter().position(|s| s.id == id) {
            self.ack_held(self.consumers[idx].link.take(true));
            let slot = self.consumers.remove(idx);
            if slot.waker.is_some() {
                self.waiting -= 1;
            }
        }
    }

    fn credit_back(&mut self, consumer: u64) {
        if let Some(slot) = self.consumers.iter_mut().find(|s| s.id == consumer) {
            slot.outstanding -= 1;
        }
    }

    /// Takes deliveries for `consumer` into `out` (see [`Source::pull`]).
    fn pull(&mut self, consumer: u64, out: &mut VecDeque<Handed<T>>, waker: Option<&Waker>) -> bool {
        let Some(idx) = self.consumers.iter().position(|s| s.id == consumer) else {
            // Closed: it ends with what it holds.
            return true;
        };
        let now = self.now;
        let before = out.len();
        // A fair share when others could take some too: one consumer that
        // wakes first does not take all of a small burst while the rest idle.
        let mut limit = self.consumers[idx].credit();
        let others = self.consumers.iter().filter(|s| s.id != consumer && s.credit() > 0).count();
        if others > 0 {
            limit = limit.min(self.ready.len().div_ceil(others + 1).max(1));
        }
        while out.len() - before < limit {
            let Some((held, key)) = self.ready.pop(now) else { break };
            let Some(entry) = self.ready.get(held) else {
                self.release(key);
                continue;
            };
            if entry.env.deadline.is_some() && entry.env.is_expired() {
                if let Some(entry) = self.ready.take(held) {
                    bump(&self.metrics.expired, &self.shared.stats.expired);
                    self.dead_letter(Box::new(entry), FailureReason::Expired, true);
                }
                self.release(key);
                continue;
            }
            let (seq, attempt, enqueued) = (entry.seq, entry.env.attempt, entry.enqueued);
            let receipt = self.in_flight.insert(InFlight { held, consumer, delivered_us: now }, key);
            let slot = &mut self.consumers[idx];
            out.push_back(Handed::of(&entry.env, receipt, &slot.link));
            slot.outstanding += 1;
            if let Some(enqueued_us) = enqueued.sample() {
                let waited = now.saturating_sub(enqueued_us);
                self.metrics.time_in_queue.record(Duration::from_micros(waited).as_secs_f64());
            }
            self.counts.delivered += 1;
            self.deadlines.push_back(receipt);
            // Recorded before the handler can crash the process, so
            // max_deliveries holds across restarts.
            self.note(seq, RowOp::Delivered(attempt));
        }
        if out.len() > before || self.closed {
            return true;
        }
        if let Some(waker) = waker {
            let slot = &mut self.consumers[idx];
            match &slot.waker {
                Some(w) if w.will_wake(waker) => {}
                Some(_) => slot.waker = Some(waker.clone()),
                None => {
                    slot.waker = Some(waker.clone());
                    self.waiting += 1;
                }
            }
        }
        false
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
    ) {
        let attempt = entry.env.attempt;
        self.histories.entry(entry.env.id).or_default().push(FailureRecord::now(attempt, &reason));
        if attempt >= self.config.max_deliveries {
            self.dead_letter(entry, FailureReason::MaxDeliveries, true);
            return self.release(key);
        }
        if entry.env.deadline.is_some() && entry.env.is_expired() {
            bump(&self.metrics.expired, &self.shared.stats.expired);
            self.dead_letter(entry, FailureReason::Expired, true);
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
    fn dead_letter(&mut self, entry: Box<Entry<Body<T>>>, reason: FailureReason, holds_permit: bool) {
        self.dead_letter_then(entry, reason, holds_permit, None);
    }

    /// [`dead_letter`](Self::dead_letter), answering `reply` (a durable
    /// send dead-lettered at once) once the DLQ has it.
    fn dead_letter_then(
        &mut self,
        entry: Box<Entry<Body<T>>>,
        reason: FailureReason,
        holds_permit: bool,
        reply: Option<Committed>,
    ) {
        let history = self.histories.remove(&entry.env.id).unwrap_or_default();
        tracing::debug!(queue = %self.config.name, id = %entry.env.id, %reason, "dead-lettering");
        let letter = DeadLetter::new(self.source.clone(), reason, &entry.env, history);
        self.count_ticket(&entry.env.payload, false);
        let seq = entry.seq;
        drop(entry);
        self.send_letter(letter, seq, holds_permit, reply);
    }

    /// Hands `letter` to the actor, which stores it in the DLQ; then the
    /// stored row `seq` (if any) is deleted (see `letter_stored`), so a
    /// message is always in the queue store or the DLQ.
    fn send_letter(&mut self, letter: DeadLetter, seq: u64, holds_permit: bool, reply: Option<Committed>) {
        self.shared.stats.pending_dead_letters.fetch_add(1, Ordering::Relaxed);
        self.effects.letters.push(Letter { letter, seq, holds_permit, reply });
    }

    /// The DLQ answered for a letter (see `send_letter`).
    pub(crate) fn letter_stored(
        &mut self,
        res: Result<(), String>,
        code: &'static str,
        seq: u64,
        holds_permit: bool,
        reply: Option<Committed>,
    ) {
        match res {
            Ok(()) => {
                metrics::counter!(m::QUEUE_DEAD_LETTERED, m::LABEL_NAME => self.config.name.clone(), m::LABEL_REASON => code)
                    .increment(1);
                self.shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.note(seq, RowOp::Delete);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                self.metrics.dlq_failures.increment(1);
                tracing::error!(queue = %self.config.name, error = %e, "could not store a dead letter");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(QueueError::Storage(StoreError::Unavailable(format!(
                        "the DLQ refused the message: {e}"
                    )))));
                }
            }
        }
        if holds_permit {
            self.give_permit();
        }
        self.shared.stats.pending_dead_letters.fetch_sub(1, Ordering::Relaxed);
    }

    /// Visibility timeouts, due retries, expiry, lazy deletes (durable
    /// queues) and gauges: the actor's tick.
    pub(crate) fn tick(&mut self) {
        let now = self.now;
        // Acks held back by consumers first: they may settle deliveries
        // that would time out below.
        self.take_held_acks();
        // Visibility timeouts: the timeout is the same for every delivery, so
        // deliveries (keyed by receipt) time out in receipt order.
        let visibility_us = self.visibility_us;
        while let Some(receipt) = self.deadlines.pop_front() {
            let due_us = match self.in_flight.get(receipt) {
                Some(f) => f.delivered_us.saturating_add(visibility_us),
                // Settled (most receipts): dropped after one look-up.
                None => continue,
            };
            if due_us > now {
                // Not due, nor anything behind it: it stays first.
                self.deadlines.push_front(receipt);
                break;
            }
            let Some((f, key)) = self.in_flight.remove(receipt) else { continue };
            self.timed_out.insert(receipt, f.consumer);
            bump(&self.metrics.timeouts, &self.shared.stats.timeouts);
            if let Some(entry) = self.ready.take(f.held) {
                self.fail(Box::new(entry), key, FailureReason::Timeout, None);
            }
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
        self.expire();
        if !self.ops.is_empty() {
            self.effects.write = true;
        }
        self.queue_samples_left = SAMPLES_PER_TICK;
        self.latency_samples_left = SAMPLES_PER_TICK;
        self.publish();
        self.metrics.depth.set((self.ready.len() + self.delayed.len()) as f64);
        self.metrics.in_flight.set(self.in_flight.len() as f64);
    }

    /// Dead-letters every waiting message whose deadline passed, wherever it
    /// waits.
    fn expire(&mut self) {
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
                self.dead_letter(entry, FailureReason::Expired, true);
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

    pub(crate) fn settle(&mut self, settle: Settle) {
        let settle = match settle {
            Settle::Close(id) => return self.remove_consumer(id),
            Settle::Ack(receipt) => return self.ack(receipt),
            Settle::Releases(receipts) => {
                // Each goes to the front: the last first, so that they end
                // up in the order they were delivered.
                for receipt in receipts.into_iter().rev() {
                    self.settle(Settle::Release(receipt));
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
            Settle::Ack(_) | Settle::Close(_) | Settle::Releases(_) => return,
        };
        let Some((f, key)) = self.in_flight.remove(receipt) else {
            return self.stale(receipt);
        };
        self.credit_back(f.consumer);
        if let Settle::Release(_) = settle {
            // Never seen by a handler: the attempt does not count. It goes
            // back where it lies.
            if let Some(entry) = self.ready.get(f.held) {
                let (seq, attempt) = (entry.seq, entry.env.attempt);
                self.note(seq, RowOp::Delivered(attempt.saturating_sub(1)));
                self.ready.requeue(f.held);
            }
            return self.release(key);
        }
        let Some(entry) = self.ready.take(f.held).map(Box::new) else {
            return self.release(key);
        };
        match settle {
            Settle::Nack { reason, delay, .. } => {
                bump(&self.metrics.nacked, &self.shared.stats.nacked);
                return self.fail(entry, key, reason, delay);
            }
            Settle::Reject { reason, .. } => {
                self.histories.entry(entry.env.id).or_default().push(FailureRecord::now(entry.env.attempt, &reason));
                self.dead_letter(entry, reason, true);
            }
            Settle::Expired(_) => {
                bump(&self.metrics.expired, &self.shared.stats.expired);
                self.dead_letter(entry, FailureReason::Expired, true);
            }
            Settle::Unclaimable { reason, .. } => {
                bump(&self.metrics.claim_failures, &self.shared.stats.claim_failures);
                self.histories.entry(entry.env.id).or_default().push(FailureRecord::now(entry.env.attempt, &reason));
                self.dead_letter(entry, reason, true);
            }
            Settle::Release(_) | Settle::Ack(_) | Settle::Close(_) | Settle::Releases(_) => {}
        }
        self.release(key);
    }

    /// An ack: the settle of nearly every delivery, on its own path (not
    /// through the matching of a whole `Settle` that the others need); the
    /// message is dropped in the slot it has held since its send.
    pub(crate) fn ack(&mut self, receipt: u64) {
        let Some((InFlight { held, consumer, delivered_us }, key)) = self.in_flight.remove(receipt) else {
            return self.stale(receipt);
        };
        // A claim-checked message takes its ticket along, on a path of its
        // own: the common ack carries no ticket (48 bytes) around.
        if self.ready.get(held).is_some_and(|entry| entry.env.payload.ticket().is_some()) {
            return self.ack_ticketed(held, consumer, delivered_us, key);
        }
        let histories = &mut self.histories;
        let seq = self.ready.discard(held, |entry| {
            if !histories.is_empty() {
                histories.remove(&entry.env.id);
            }
            entry.seq
        });
        self.acked(seq.unwrap_or_default(), None, consumer, delivered_us, key);
    }

    /// [`ack`](Self::ack) of a message held as a claim-check ticket.
    #[cold]
    fn ack_ticketed(&mut self, held: Held, consumer: u64, delivered_us: u64, key: Option<Key>) {
        let read = self.ready.take(held).map(|entry| {
            self.histories.remove(&entry.env.id);
            (entry.seq, entry.env.payload.ticket().copied())
        });
        let (seq, ticket) = read.unwrap_or_default();
        self.acked(seq, ticket, consumer, delivered_us, key);
    }

    /// What an ack does once its message is dropped.
    #[inline(always)]
    fn acked(&mut self, seq: u64, ticket: Option<Ticket>, consumer: u64, delivered_us: u64, key: Option<Key>) {
        self.credit_back(consumer);
        self.counts.acked += 1;
        if self.sample_latency() {
            let took = self.now.saturating_sub(delivered_us);
            self.metrics.latency.record(Duration::from_micros(took).as_secs_f64());
        }
        self.leave(seq, ticket);
        self.give_permit();
        self.release(key);
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

    /// Applies the acks a link held back (taken with `Link::take`).
    fn ack_held(&mut self, held: HeldAcks) {
        for receipt in held.iter() {
            self.ack(receipt);
        }
    }

    /// Applies the acks every consumer holds back (see `Link`).
    fn take_held_acks(&mut self) {
        for idx in 0..self.consumers.len() {
            self.ack_held(self.consumers[idx].link.take(false));
        }
    }
}

#[cfg(test)]
pub(crate) fn slot_of(receipt: u64) -> usize {
    InFlightTable::slot(receipt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_are_never_0_and_keys_leave_with_their_delivery() {
        let mut table = InFlightTable::new();
        let delivery = InFlight { held: 3, consumer: 1, delivered_us: 7 };
        // The next delivery numbers end the low 32 bits' cycle.
        table.delivered = u64::from(u32::MAX) - 1;
        let a = table.insert(delivery, None);
        assert!(table.remove(a).is_some_and(|(f, key)| f.held == 3 && key.is_none()));
        // Delivery number 2^32 would make slot 0's receipt 0, a free slot's.
        let b = table.insert(delivery, Some(Key::from("k")));
        assert_eq!(slot_of(b), 0);
        assert_ne!(b, 0);
        assert!(table.remove(0).is_none() && table.get(0).is_none());
        let (f, key) = table.remove(b).unwrap();
        assert_eq!((f.consumer, f.delivered_us, key.as_deref()), (1, 7, Some("k")));
        assert!(table.remove(b).is_none(), "removed once");
        // The slot's next delivery has no key of its own.
        let c = table.insert(delivery, None);
        assert_eq!(slot_of(c), 0);
        assert!(table.remove(c).is_some_and(|(_, key)| key.is_none()));
        assert_eq!(table.len(), 0);
    }
}
