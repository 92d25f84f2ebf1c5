//! The `Queue` actor: what a queue does that awaits.
//!
//! The queue's state and rules live in its [core](super::core), which
//! handles, consumers and settlers use directly under its lock. The actor
//! owns the rest: it loads a durable queue's messages at start, runs the
//! tick (visibility timeouts, due retries, expiry, lazy deletes), stores
//! dead letters in the DLQ, frees claim-check payloads and runs durable
//! writes (group commit: sends that arrive while a write runs go in the
//! next one). Whoever leaves such work in the core pokes the actor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::Semaphore;

use super::core::{Core, Effects, Inner, Letter, Loaded};
use super::handle::{Body, ClaimSide, Codec, QueueHandle, Shared, Stats, Typed};
use super::ready::{Enqueued, Entry};
use super::store::{QueueStore, StoredBody, StoredMessage};
use super::{QueueConfig, QueueError, QueueMessage};
use crate::claim_check::{ticket_in, ClaimCheck};
use crate::dlq::{DeadLetter, DlqHandle, DlqSource, RedriveFuture};
use crate::envelope::Envelope;
use crate::error::FailureReason;
use crate::metrics as m;
use crate::signal::Signal;
use crate::store::{GroupCommit, StoreError};

/// A point-to-point queue (see the [module docs](super)). Start one with
/// [`Queue::start`]; use it through the returned [`QueueHandle`].
pub struct Queue<T> {
    inner: Arc<Inner<T>>,
    dlq: DlqHandle,
    /// Where tickets are released (on ack, on a drop).
    claims: Option<ClaimCheck>,
    store: Option<Arc<dyn QueueStore>>,
    write_scheduled: bool,
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
        let redrive_dlq = dlq.clone();
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
        let shared = Arc::new(Shared {
            name: name.clone(),
            policy: config.overflow,
            permits: Semaphore::new(permits),
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
        for loaded in &loaded {
            if let Loaded::Ok(e) | Loaded::Exhausted(e) = loaded {
                if let Body::Claimed(t) = &e.env.payload {
                    shared.stats.ticketed.fetch_add(1, Ordering::Relaxed);
                    shared.stats.ticketed_bytes.fetch_add(t.size, Ordering::Relaxed);
                }
            }
        }
        let poke = Signal::default();
        let pokes = poke.stream();
        let core = Core::new(config.clone(), Arc::clone(&shared), store.is_some(), next_row, permit_debt);
        let inner = Arc::new(Inner::new(Arc::clone(&shared), core, poke));
        // What was found is in the queue at once, before the actor first
        // runs (which stores what it dead-letters).
        inner.with(|core| {
            core.stamp();
            core.take_loaded(loaded);
        });
        let actor_inner = Arc::clone(&inner);
        let tick = config.tick;
        let create = move |ctx: &mut Context<Self>| {
            ctx.add_stream(pokes);
            ctx.run_interval(tick, |act, ctx| {
                act.inner.with(|core| {
                    core.stamp();
                    core.tick();
                });
                act.run_effects(ctx);
            });
            Queue {
                inner: actor_inner,
                dlq,
                claims: config.claim_check.as_ref().map(|c| c.claims.clone()),
                store,
                write_scheduled: false,
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
        let handle = QueueHandle { inner, shared, typed };
        let target = handle.clone();
        redrive_dlq.register_redrive(DlqSource::queue(name.to_string()), move |letter: DeadLetter| -> RedriveFuture {
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
            let entry = Box::new(Entry { env, enqueued: Enqueued::UNSTAMPED, seq });
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
    /// Does what the core left for the actor.
    fn run_effects(&mut self, ctx: &mut Context<Self>) {
        let Effects { letters, releases, write } = self.inner.with(|core| core.take_effects());
        for letter in letters {
            self.send_letter(letter, ctx);
        }
        if let Some(claims) = &self.claims {
            for ticket in releases {
                claims.release_detached(ticket, 1);
            }
        }
        if write && self.store.is_some() {
            self.write_soon(ctx);
        }
    }

    /// Stores a letter in the DLQ, then tells the core.
    fn send_letter(&mut self, letter: Letter, ctx: &mut Context<Self>) {
        let Letter { letter, seq, holds_permit, reply } = letter;
        let code = letter.reason.code();
        let dlq = self.dlq.clone();
        let stored = async move { dlq.dead_letter(letter).await.map_err(|e| e.to_string()) };
        ctx.spawn(stored.into_actor(self).map(move |res, act, ctx| {
            act.inner.with(|core| core.letter_stored(res, code, seq, holds_permit, reply));
            act.run_effects(ctx);
        }));
    }

    /// Writes what is pending in one transaction, unless a write is in
    /// progress (its completion writes what piled up meanwhile).
    fn write(&mut self, ctx: &mut Context<Self>) {
        let Some(store) = self.store.clone() else { return };
        let Some(mut write) = self.inner.with(|core| core.take_write()) else { return };
        let batch = std::mem::take(&mut write.batch);
        let name = Arc::clone(&self.inner.shared.name);
        let commit = async move {
            if !store.blocking() {
                return store.commit(&name, &batch);
            }
            actix_rt::task::spawn_blocking(move || store.commit(&name, &batch))
                .await
                .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("queue store worker: {e}"))))
        };
        ctx.spawn(commit.into_actor(self).map(move |res, act, ctx| {
            act.inner.with(|core| {
                core.stamp();
                core.written(write, res);
            });
            act.run_effects(ctx);
        }));
    }
}

impl<T: QueueMessage> GroupCommit for Queue<T> {
    fn write_scheduled(&mut self) -> &mut bool {
        &mut self.write_scheduled
    }

    fn write_batch(&mut self, ctx: &mut Context<Self>) {
        self.write(ctx);
    }
}

impl<T> Actor for Queue<T>
where
    T: QueueMessage,
{
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.run_effects(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.inner.with(|core| core.close());
    }
}

/// A poke: the core has effects for the actor.
impl<T> StreamHandler<()> for Queue<T>
where
    T: QueueMessage,
{
    fn handle(&mut self, (): (), ctx: &mut Context<Self>) {
        self.run_effects(ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The signal's stream never ends.
    }
}

#[cfg(test)]
mod tests {
    use super::super::core::slot_of;
    use super::super::handle::{Settle, Settles};
    use super::*;
    use crate::dlq::DlqSink;
    use std::time::{Duration, Instant};

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

    /// Acks held back without a lock race the consumer's close from other
    /// threads: each is applied once, none is lost or stale.
    #[test]
    fn acks_from_other_threads_racing_the_close_are_each_applied_once() {
        actix_rt::System::new().block_on(async {
            for round in 0..200 {
                // No tick: nothing but the acks and the close hands them over.
                let name = format!("held-race-{round}");
                let q = Queue::<u32>::start(config(&name, Duration::from_secs(3600)), DlqSink::in_memory()).unwrap();
                let mut c = q.consumer(128).await.unwrap();
                for i in 0..128 {
                    q.send(i).await.unwrap();
                }
                // 100 returned, 28 still buffered: acks are held back.
                let mut settlers = Vec::new();
                for _ in 0..100 {
                    settlers.push(c.recv().await.unwrap().into_parts().1);
                }
                let start = Arc::new(std::sync::Barrier::new(5));
                let threads: Vec<_> = (0..4)
                    .map(|t| {
                        let mine: Vec<_> = settlers.drain(..if t == 3 { settlers.len() } else { 25 }).collect();
                        let start = Arc::clone(&start);
                        std::thread::spawn(move || {
                            start.wait();
                            for s in mine {
                                s.ack();
                            }
                        })
                    })
                    .collect();
                start.wait();
                drop(c);
                for t in threads {
                    t.join().unwrap();
                }
                until(|| {
                    let s = q.stats();
                    s.acked == 100 && s.in_flight == 0 && s.depth == 28
                })
                .await;
                let s = q.stats();
                assert_eq!((s.stale_settles, s.nacked, s.redelivered), (0, 0, 0), "round {round}");
            }
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
    fn a_dropped_consumer_gives_back_what_it_took_and_did_not_return_in_order() {
        actix_rt::System::new().block_on(async {
            let q = Queue::<u32>::start(config("batch-drop", Duration::from_secs(3600)), DlqSink::in_memory()).unwrap();
            let mut c = q.consumer(8).await.unwrap();
            for i in 0..10 {
                q.send(i).await.unwrap();
            }
            // Nothing is delivered before the consumer asks.
            assert_eq!(q.stats().delivered, 0);
            // Its first take is what its credit allows: 0..8; three come
            // back from `recv`, five stay in its buffer, two in the queue.
            assert_eq!(take_acked(&mut c, 3).await, [0, 1, 2]);
            assert_eq!((q.stats().delivered, q.depth()), (8, 2));
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
    fn consumers_with_credit_share_what_waits() {
        actix_rt::System::new().block_on(async {
            let q = Queue::<u32>::start(config("fair", Duration::from_secs(3600)), DlqSink::in_memory()).unwrap();
            let mut a = q.consumer(8).await.unwrap();
            let mut b = q.consumer(8).await.unwrap();
            for i in 0..8 {
                q.send(i).await.unwrap();
            }
            // `a` asks first: half of what waits, not its whole credit.
            assert_eq!(take_acked(&mut a, 1).await, [0]);
            assert_eq!(q.stats().delivered, 4);
            assert_eq!(take_acked(&mut b, 4).await, [4, 5, 6, 7]);
            assert_eq!(take_acked(&mut a, 3).await, [1, 2, 3]);
            // Once alone, `a` takes all that waits (within its credit).
            for i in 8..14 {
                q.send(i).await.unwrap();
            }
            drop(b);
            assert_eq!(take_acked(&mut a, 1).await, [8]);
            assert_eq!(q.stats().delivered, 14);
            drop(a);
            until(|| q.stats().acked == 9 && q.depth() == 5).await;
        });
    }

    #[test]
    fn messages_sent_after_a_consumer_went_away_wait_in_order() {
        actix_rt::System::new().block_on(async {
            let q = Queue::<u32>::start(config("batch-gone", Duration::from_secs(3600)), DlqSink::in_memory()).unwrap();
            let c = q.consumer(8).await.unwrap();
            // A consumer that went away takes nothing: they all wait.
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
            // Closed before it ever asked, on another thread than the queue's
            // actor: its `recv` ends at once.
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

    /// Keeps what is recorded into the queue's histograms, by name.
    #[derive(Default)]
    struct Histograms(std::sync::Mutex<std::collections::HashMap<String, Arc<Recorded>>>);

    #[derive(Default)]
    struct Recorded(std::sync::Mutex<Vec<f64>>);

    impl metrics::HistogramFn for Recorded {
        fn record(&self, value: f64) {
            self.0.lock().unwrap().push(value);
        }
    }

    impl Histograms {
        fn values(&self, name: &str) -> Vec<f64> {
            self.0.lock().unwrap().get(name).map(|r| r.0.lock().unwrap().clone()).unwrap_or_default()
        }
    }

    impl metrics::Recorder for Histograms {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
            let recorded = Arc::clone(self.0.lock().unwrap().entry(key.name().to_owned()).or_default());
            metrics::Histogram::from_arc(recorded)
        }
    }

    /// The time-in-queue samples are picked when enqueued: a backlog far
    /// larger than a tick's samples still gives them all, each with its
    /// own wait (not the queue's age), and at most a tick's worth.
    #[test]
    fn time_in_queue_samples_are_picked_at_enqueue_and_record_their_wait() {
        for (name, partitioned) in [("sampled-plain", false), ("sampled-keyed", true)] {
            let histograms = Histograms::default();
            metrics::with_local_recorder(&histograms, || {
                actix_rt::System::new().block_on(async {
                    let config = QueueConfig {
                        partition_header: partitioned.then(|| "k".to_owned()),
                        capacity: 10_000,
                        ..config(name, Duration::from_secs(3600))
                    };
                    let q = Queue::<u32>::start(config, DlqSink::in_memory()).unwrap();
                    // The queue's age is then well above any message's wait.
                    actix_rt::time::sleep(Duration::from_millis(300)).await;
                    for i in 0..1_000 {
                        let env = crate::envelope::Envelope::new(i).with_header("k", (i % 7).to_string());
                        q.send_envelope(env).await.unwrap();
                    }
                    actix_rt::time::sleep(Duration::from_millis(20)).await;
                    let mut c = q.consumer(64).await.unwrap();
                    for _ in 0..1_000 {
                        c.recv().await.unwrap().ack();
                    }
                    drop(c);
                    until(|| q.stats().acked == 1_000).await;
                });
            });
            let waits = histograms.values(m::QUEUE_TIME_IN_QUEUE);
            assert_eq!(waits.len(), 128, "{name}: one tick's samples");
            assert!(waits.iter().all(|w| (0.02..0.3).contains(w)), "{name}: {waits:?}");
            let latencies = histograms.values(m::QUEUE_HANDLER_LATENCY);
            assert_eq!(latencies.len(), 128, "{name}");
        }
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
            assert_eq!(slot_of(first), slot_of(again.receipt()));
            assert_ne!(first, again.receipt());
            q.inner.settle(Settle::Ack(first));
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
            let mut c = q.consumer(4).await.unwrap();
            q.send(7).await.unwrap();
            let (_, mut first) = c.recv().await.unwrap().into_parts();
            let first = first.take_receipt().unwrap();
            // Timed out and delivered again (the consumer kept its credit).
            let (env, mut again) = c.recv().await.unwrap().into_parts();
            let again = again.take_receipt().unwrap();
            assert_eq!(env.attempt, 2);
            // Both held back by the consumer, taken together.
            c.link().hold(first);
            c.link().hold(again);
            q.inner.take_held(c.link());
            until(|| q.stats().acked == 1).await;
            let s = q.stats();
            assert_eq!((s.stale_settles, s.timeouts, s.depth, s.in_flight), (1, 1, 0, 0));
            drop(c);
        });
    }
}
