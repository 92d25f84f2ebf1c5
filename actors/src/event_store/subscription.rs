//! Catch-up subscriptions: read history, then switch to live delivery
//! without gaps or duplicates, with bounded memory.
//!
//! A subscription is a task that tracks one number, `next`: the sequence
//! number (global position for `$all`, version for a stream) of the next
//! event to deliver. Both sequences have no gaps, which makes the switch from
//! history to live simple to get right:
//!
//! 1. **Catch up**: read from `next` in batches until a read comes back
//!    short (the end of what is stored).
//! 2. **Register** a live buffer with the store actor; every commit after
//!    this point is pushed into it.
//! 3. **Catch up again**, to pick up what was committed between step 1 and
//!    step 2.
//! 4. **Live**: take batches from the buffer, skip what was already
//!    delivered (sequence below `next`, read in step 3 *and* pushed live),
//!    deliver the rest. A sequence above `next` would be a gap: go back to 1.
//!
//! The live buffer holds at most `live_buffer` commits. A subscriber that
//! falls behind does not make it grow: the store drops it from the live set,
//! the buffer drains, and the task goes back to step 1, reading from storage
//! at its own pace. Towards the consumer, at most `subscription_buffer`
//! events wait; when the consumer is slow, the task waits.

use std::pin::Pin;
use std::task::{Context, Poll};

use metrics::Gauge;
use tokio::sync::mpsc;

use super::store::EventStoreHandle;
use crate::metrics as m;
use crate::store::{Direction, RecordedEvent, StoreError};

/// What a subscription follows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionTarget {
    /// Every stream, by global position.
    All,
    /// One stream, by version.
    Stream(String),
}

impl SubscriptionTarget {
    fn seq(&self, e: &RecordedEvent) -> u64 {
        match self {
            SubscriptionTarget::All => e.position,
            SubscriptionTarget::Stream(_) => e.version,
        }
    }
}

/// The receiving end of a catch-up subscription: a stream of events in
/// order, each exactly once. Ends with an `Err` if storage fails; dropping it
/// ends the subscription.
///
/// ```no_run
/// # async fn demo(store: actorbus_actors::event_store::EventStoreHandle) {
/// let mut sub = store.subscribe_all(0);
/// while let Some(event) = sub.next().await {
///     let event = event.expect("storage failed");
///     println!("{} {} v{}", event.position, event.stream, event.version);
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Result<RecordedEvent, StoreError>>,
}

impl Subscription {
    /// The next event; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<RecordedEvent, StoreError>> {
        self.rx.recv().await
    }
}

impl futures::Stream for Subscription {
    type Item = Result<RecordedEvent, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

pub(crate) fn start(
    store: EventStoreHandle,
    target: SubscriptionTarget,
    from: u64,
    name: Option<String>,
) -> Subscription {
    let (tx, rx) = mpsc::channel(store.config().subscription_buffer.max(1));
    let lag = name.map(|n| {
        metrics::gauge!(m::EVENT_STORE_SUBSCRIPTION_LAG,
            m::LABEL_NAME => store.name().to_owned(), m::LABEL_SUBSCRIPTION => n)
    });
    let task = Task { store, target, next: from, tx, lag };
    actix_rt::spawn(task.run());
    Subscription { rx }
}

struct Task {
    store: EventStoreHandle,
    target: SubscriptionTarget,
    next: u64,
    tx: mpsc::Sender<Result<RecordedEvent, StoreError>>,
    lag: Option<Gauge>,
}

/// Why a subscription task stops.
enum Stop {
    /// The consumer dropped the subscription.
    Closed,
    /// Storage failed; the error was sent to the consumer.
    Failed,
}

impl Task {
    async fn run(mut self) {
        loop {
            if self.catch_up().await.is_err() {
                return;
            }
            let (live_tx, mut live_rx) = mpsc::channel(self.store.config().live_buffer.max(1));
            if let Err(e) = self.store.register_live(self.target.clone(), live_tx).await {
                let _ = self.tx.send(Err(e)).await;
                return;
            }
            if self.catch_up().await.is_err() {
                return;
            }
            // Live until the store drops us (buffer full) or a gap shows up.
            loop {
                let batch = tokio::select! {
                    batch = live_rx.recv() => batch,
                    () = self.tx.closed() => return,
                };
                let Some(batch) = batch else { break };
                match self.deliver_live(&batch).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(_) => return,
                }
            }
        }
    }

    /// Delivers a live batch; `Ok(false)` when it shows a gap.
    async fn deliver_live(&mut self, batch: &[RecordedEvent]) -> Result<bool, Stop> {
        for e in batch {
            let seq = self.target.seq(e);
            if seq < self.next {
                continue;
            }
            if seq > self.next {
                return Ok(false);
            }
            self.deliver(e.clone()).await?;
        }
        self.report_lag();
        Ok(true)
    }

    async fn deliver(&mut self, e: RecordedEvent) -> Result<(), Stop> {
        let seq = self.target.seq(&e);
        self.tx.send(Ok(e)).await.map_err(|_| Stop::Closed)?;
        self.next = seq + 1;
        Ok(())
    }

    fn report_lag(&self) {
        if let (Some(lag), SubscriptionTarget::All) = (&self.lag, &self.target) {
            lag.set(self.store.published_end().saturating_sub(self.next) as f64);
        }
    }

    /// Reads and delivers from `next` until a read comes back short.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let max = self.store.config().read_batch.max(1);
        loop {
            let from = self.next;
            let read = match &self.target {
                SubscriptionTarget::All => self.store.read_all(from, Direction::Forward, max).await,
                SubscriptionTarget::Stream(s) => self.store.read_stream(s.clone(), from, Direction::Forward, max).await,
            };
            let events = match read {
                Ok(events) => events,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return Err(Stop::Failed);
                }
            };
            let count = events.len();
            for e in events {
                if self.target.seq(&e) >= self.next {
                    self.deliver(e).await?;
                }
            }
            self.report_lag();
            if count < max {
                return Ok(());
            }
        }
    }
}
