//! The `Queue` actor.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, Semaphore};

use super::handle::{Cmd, Delivery, QueueHandle, Settle, Shared, Stats};
use super::ready::{Entry, Key, Ready};
use super::{QueueConfig, QueueError, QueueMessage};
use crate::backpressure::OverflowPolicy;
use crate::dlq::{DeadLetter, DlqHandle, DlqSource, FailureRecord, RedriveFuture};
use crate::envelope::{Envelope, MessageId, Timestamp};
use crate::error::FailureReason;
use crate::metrics as m;

/// Histogram samples a queue records per tick, at most (counters are exact).
const SAMPLES_PER_TICK: u32 = 256;

struct InFlight<T> {
    entry: Entry<T>,
    consumer: u64,
    due_us: u64,
    delivered_us: u64,
    key: Option<Key>,
}

struct Delayed<T> {
    entry: Entry<T>,
    key: Option<Key>,
}

struct Slot<T> {
    id: u64,
    tx: mpsc::Sender<Delivery<T>>,
    prefetch: usize,
    outstanding: usize,
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

/// A point-to-point queue (see the [module docs](super)). Start one with
/// [`Queue::start`]; use it through the returned [`QueueHandle`].
pub struct Queue<T> {
    config: QueueConfig,
    shared: Arc<Shared>,
    dlq: DlqHandle,
    source: DlqSource,
    ready: Ready<T>,
    in_flight: BTreeMap<u64, InFlight<T>>,
    /// Deliveries that timed out, by receipt, with their consumer: it keeps
    /// the credit until it settles (late), so a stuck consumer is not sent
    /// more work that would only time out in its buffer.
    timed_out: HashMap<u64, u64>,
    delayed: BTreeMap<(u64, u64), Delayed<T>>,
    histories: HashMap<MessageId, Vec<FailureRecord>>,
    expiry: BinaryHeap<Reverse<(Timestamp, MessageId)>>,
    consumers: Vec<Slot<T>>,
    next_slot: usize,
    credit: usize,
    next_receipt: u64,
    next_seq: u64,
    epoch: Instant,
    visibility_us: u64,
    samples_left: u32,
    metrics: Metrics,
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
        config.validate()?;
        let name: Arc<str> = config.name.as_str().into();
        let (tx, mut rx) = mpsc::channel::<Cmd<T>>(config.capacity.clamp(16, 4096));
        let (settle, mut settle_rx) = mpsc::unbounded_channel::<Settle>();
        let shared = Arc::new(Shared {
            name: name.clone(),
            policy: config.overflow,
            permits: Semaphore::new(config.capacity.min(Semaphore::MAX_PERMITS)),
            settle,
            next_consumer: AtomicU64::new(0),
            visibility_timeout: config.visibility_timeout,
            stats: Stats::default(),
            rejected: metrics::counter!(m::QUEUE_REJECTED, m::LABEL_NAME => name.to_string()),
            dropped_newest: metrics::counter!(m::QUEUE_DROPPED, m::LABEL_NAME => name.to_string(), m::LABEL_POLICY => "drop_newest"),
        });
        let source = DlqSource::queue(config.name.clone());
        let actor_shared = Arc::clone(&shared);
        let actor_dlq = dlq.clone();
        let tick = config.tick;
        let create = move |ctx: &mut Context<Self>| {
            ctx.add_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
            ctx.add_stream(futures::stream::poll_fn(move |cx| settle_rx.poll_recv(cx)));
            ctx.run_interval(tick, |act, ctx| act.tick(ctx));
            let aging_us = config.aging.map(|a| u64::try_from(a.as_micros()).unwrap_or(u64::MAX));
            Queue {
                ready: Ready::new(config.priority, aging_us, config.partition_header.clone()),
                visibility_us: u64::try_from(config.visibility_timeout.as_micros()).unwrap_or(u64::MAX),
                metrics: Metrics::new(&config.name),
                config,
                shared: actor_shared,
                dlq: actor_dlq,
                source,
                in_flight: BTreeMap::new(),
                timed_out: HashMap::new(),
                delayed: BTreeMap::new(),
                histories: HashMap::new(),
                expiry: BinaryHeap::new(),
                consumers: Vec::new(),
                next_slot: 0,
                credit: 0,
                next_receipt: 0,
                next_seq: 0,
                epoch: Instant::now(),
                samples_left: SAMPLES_PER_TICK,
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
        let handle = QueueHandle { tx, shared };
        let target = handle.clone();
        dlq.register_redrive(DlqSource::queue(name.to_string()), move |letter: DeadLetter| -> RedriveFuture {
            let target = target.clone();
            Box::pin(async move { redrive_into(&target, letter).await })
        });
        Ok(handle)
    }
}

/// Puts a dead letter back into `queue`: its envelope decoded, attempt reset
/// to 1 and a deadline that already passed removed (it would expire again at
/// once).
async fn redrive_into<T>(queue: &QueueHandle<T>, letter: DeadLetter) -> Result<(), String>
where
    T: DeserializeOwned + Send + 'static,
{
    let mut env: Envelope<T> = serde_json::from_value(letter.envelope)
        .map_err(|e| format!("the envelope does not decode for queue `{}`: {e}", queue.name()))?;
    env.attempt = 1;
    if env.is_expired() {
        env.deadline = None;
    }
    queue.send_envelope(env).await.map(|_| ()).map_err(|e| e.to_string())
}

impl<T> Queue<T>
where
    T: QueueMessage,
{
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn sample(&mut self) -> bool {
        if self.samples_left > 0 {
            self.samples_left -= 1;
            true
        } else {
            false
        }
    }

    fn publish_sizes(&self) {
        let stats = &self.shared.stats;
        stats.depth.store((self.ready.len() + self.delayed.len()) as u64, Ordering::Relaxed);
        stats.in_flight.store(self.in_flight.len() as u64, Ordering::Relaxed);
    }

    fn store(&mut self, env: Envelope<T>, ctx: &mut Context<Self>) {
        bump(&self.metrics.enqueued, &self.shared.stats.enqueued);
        let entry = Entry { env, enqueued_us: self.now_us() };
        if let Some(deadline) = entry.env.deadline {
            if entry.env.is_expired_at(Timestamp::now()) {
                bump(&self.metrics.expired, &self.shared.stats.expired);
                self.dead_letter(entry, FailureReason::Expired, true, ctx);
                return;
            }
            self.expiry.push(Reverse((deadline, entry.env.id)));
        }
        self.ready.push_back(entry);
    }

    /// A message that found the queue full under `drop_oldest` or
    /// `dead_letter`.
    fn overflow(&mut self, env: Envelope<T>, ctx: &mut Context<Self>) {
        // Room may have been made since the sender looked.
        if self.shared.permits.try_acquire().map(|p| p.forget()).is_ok() {
            return self.store(env, ctx);
        }
        let policy = self.config.overflow;
        // The victim gives its place (and its permit) to the newcomer.
        let victim = if policy == OverflowPolicy::DropOldest || self.config.priority {
            self.ready.evict_for(&env)
        } else {
            None
        };
        let reason = FailureReason::Overflow(policy.as_str().to_owned());
        let (out, keep) = match victim {
            Some(old) => (old, Some(env)),
            None => (Entry { env, enqueued_us: self.now_us() }, None),
        };
        if policy == OverflowPolicy::DropOldest {
            self.histories.remove(&out.env.id);
            bump(&self.metrics.dropped_oldest, &self.shared.stats.dropped);
            tracing::debug!(queue = %self.config.name, id = %out.env.id, "queue full: message dropped (drop_oldest)");
        } else {
            self.dead_letter(out, reason, false, ctx);
        }
        if let Some(env) = keep {
            // Counted as enqueued by `store`; its permit is the victim's.
            self.store(env, ctx);
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

    fn remove_consumer(&mut self, id: u64) {
        self.timed_out.retain(|_, c| *c != id);
        if let Some(idx) = self.consumers.iter().position(|s| s.id == id) {
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
        let now = self.now_us();
        while self.credit > 0 {
            let Some((entry, key)) = self.ready.pop(now) else { break };
            if entry.env.deadline.is_some() && entry.env.is_expired() {
                bump(&self.metrics.expired, &self.shared.stats.expired);
                self.dead_letter(entry, FailureReason::Expired, true, ctx);
                self.release(key);
                continue;
            }
            let Some(idx) = self.next_consumer() else {
                self.requeue_front(entry, key);
                break;
            };
            self.next_receipt += 1;
            let receipt = self.next_receipt;
            let delivery = Delivery::new(entry.env.clone(), receipt, self.shared.settle.clone());
            let slot = &mut self.consumers[idx];
            match slot.tx.try_send(delivery) {
                Ok(()) => {
                    slot.outstanding += 1;
                    let consumer = slot.id;
                    self.credit -= 1;
                    bump(&self.metrics.delivered, &self.shared.stats.delivered);
                    if self.sample() {
                        let waited = now.saturating_sub(entry.enqueued_us);
                        self.metrics.time_in_queue.record(Duration::from_micros(waited).as_secs_f64());
                    }
                    let due_us = now.saturating_add(self.visibility_us);
                    self.in_flight.insert(receipt, InFlight { entry, consumer, due_us, delivered_us: now, key });
                }
                Err(e) => {
                    // The consumer is gone (or out of step): take the
                    // delivery back without counting a failure.
                    let _ = e.into_inner().disarm();
                    let id = slot.id;
                    self.remove_consumer(id);
                    self.requeue_front(entry, key);
                }
            }
        }
        self.publish_sizes();
    }

    fn requeue_front(&mut self, entry: Entry<T>, key: Option<Key>) {
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
        mut entry: Entry<T>,
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
            return self.requeue_front(entry, key);
        }
        self.next_seq += 1;
        let due = self.now_us().saturating_add(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX));
        // A keyed message stays its key's turn while it waits: order holds.
        self.delayed.insert((due, self.next_seq), Delayed { entry, key });
    }

    /// Sends `entry` to the DLQ; its capacity is given back (when it holds
    /// some) once the DLQ has stored it.
    fn dead_letter(&mut self, entry: Entry<T>, reason: FailureReason, holds_permit: bool, ctx: &mut Context<Self>) {
        let history = self.histories.remove(&entry.env.id).unwrap_or_default();
        let code = reason.code();
        tracing::debug!(queue = %self.config.name, id = %entry.env.id, %reason, "dead-lettering");
        let letter = DeadLetter::new(self.source.clone(), reason, &entry.env, history);
        drop(entry);
        self.shared.stats.pending_dead_letters.fetch_add(1, Ordering::Relaxed);
        let dlq = self.dlq.clone();
        let stored = async move { dlq.dead_letter(letter).await };
        ctx.spawn(stored.into_actor(self).map(move |res, act, _| {
            match res {
                Ok(()) => {
                    metrics::counter!(m::QUEUE_DEAD_LETTERED, m::LABEL_NAME => act.config.name.clone(), m::LABEL_REASON => code)
                        .increment(1);
                    act.shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    act.metrics.dlq_failures.increment(1);
                    tracing::error!(queue = %act.config.name, error = %e, "could not store a dead letter");
                }
            }
            if holds_permit {
                act.shared.permits.add_permits(1);
            }
            act.shared.stats.pending_dead_letters.fetch_sub(1, Ordering::Relaxed);
        }));
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = self.now_us();
        // Visibility timeouts: the timeout is the same for every delivery, so
        // deliveries (keyed by receipt) time out in receipt order.
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.get().due_us > now {
                break;
            }
            let receipt = *entry.key();
            let f = entry.remove();
            self.timed_out.insert(receipt, f.consumer);
            bump(&self.metrics.timeouts, &self.shared.stats.timeouts);
            self.fail(f.entry, f.key, FailureReason::Timeout, None, ctx);
        }
        // Retries whose delay is over go back to the front.
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let d = entry.remove();
            self.requeue_front(d.entry, d.key);
        }
        self.expire(ctx);
        self.samples_left = SAMPLES_PER_TICK;
        self.metrics.depth.set((self.ready.len() + self.delayed.len()) as f64);
        self.metrics.in_flight.set(self.in_flight.len() as f64);
        self.dispatch(ctx);
        self.publish_sizes();
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
                Some((entry, _)) => Some((entry, None)),
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
            let live = self.ready.iter().chain(self.delayed.values().map(|d| &d.entry));
            self.expiry = live.filter_map(|e| e.env.deadline.map(|d| Reverse((d, e.env.id)))).collect();
        }
    }

    fn settle(&mut self, settle: Settle, ctx: &mut Context<Self>) {
        let receipt = match &settle {
            Settle::Close(id) => {
                self.remove_consumer(*id);
                return;
            }
            Settle::Ack(r) | Settle::Expired(r) | Settle::Release(r) => *r,
            Settle::Nack { receipt, .. } | Settle::Reject { receipt, .. } => *receipt,
        };
        let Some(f) = self.in_flight.remove(&receipt) else {
            // Settled after its visibility timeout: the message was already
            // given to someone else (or dead-lettered). The consumer gets its
            // credit back now.
            if let Some(consumer) = self.timed_out.remove(&receipt) {
                self.credit_back(consumer);
            }
            bump(&self.metrics.stale, &self.shared.stats.stale);
            return;
        };
        self.credit_back(f.consumer);
        match settle {
            Settle::Ack(_) => {
                bump(&self.metrics.acked, &self.shared.stats.acked);
                if self.sample() {
                    let took = self.now_us().saturating_sub(f.delivered_us);
                    self.metrics.latency.record(Duration::from_micros(took).as_secs_f64());
                }
                if !self.histories.is_empty() {
                    self.histories.remove(&f.entry.env.id);
                }
                self.shared.permits.add_permits(1);
                self.release(f.key);
            }
            Settle::Nack { reason, delay, .. } => {
                bump(&self.metrics.nacked, &self.shared.stats.nacked);
                self.fail(f.entry, f.key, reason, delay, ctx);
            }
            Settle::Reject { reason, .. } => {
                let attempt = f.entry.env.attempt;
                self.histories.entry(f.entry.env.id).or_default().push(FailureRecord::now(attempt, &reason));
                self.dead_letter(f.entry, reason, true, ctx);
                self.release(f.key);
            }
            Settle::Expired(_) => {
                bump(&self.metrics.expired, &self.shared.stats.expired);
                self.dead_letter(f.entry, FailureReason::Expired, true, ctx);
                self.release(f.key);
            }
            Settle::Release(_) => self.requeue_front(f.entry, f.key),
            Settle::Close(_) => {}
        }
    }
}

impl<T> Actor for Queue<T>
where
    T: QueueMessage,
{
    type Context = Context<Self>;
}

impl<T> StreamHandler<Cmd<T>> for Queue<T>
where
    T: QueueMessage,
{
    fn handle(&mut self, cmd: Cmd<T>, ctx: &mut Context<Self>) {
        match cmd {
            Cmd::Enqueue(env) => self.store(env, ctx),
            Cmd::Overflow(env) => self.overflow(env, ctx),
            Cmd::Subscribe { id, tx, prefetch } => {
                self.consumers.push(Slot { id, tx, prefetch, outstanding: 0 });
                self.credit += prefetch;
            }
        }
        self.dispatch(ctx);
        self.publish_sizes();
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // Every handle is gone: no more sends, but what is queued is still
        // delivered to the consumers.
    }
}

impl<T> StreamHandler<Settle> for Queue<T>
where
    T: QueueMessage,
{
    fn handle(&mut self, settle: Settle, ctx: &mut Context<Self>) {
        self.settle(settle, ctx);
        self.dispatch(ctx);
        self.publish_sizes();
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}
