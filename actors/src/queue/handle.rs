//! The sending side of a queue, its consumers and their deliveries.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt as _;
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use tokio::sync::{oneshot, Semaphore};

use super::core::Inner;
use super::ready::{Enqueued, Entry};
use super::store::StoredBody;
use super::{QueueError, QueueMessage};
use crate::backpressure::OverflowPolicy;
use crate::claim_check::{ClaimCheck, Ticket, TICKET_FIELD};
use crate::envelope::{Envelope, MessageId, Timestamp};
use crate::error::FailureReason;
use crate::request_reply::inherit_context;

/// What a queue holds of a message: the payload itself, or the claim-check
/// ticket it was checked in under (resolved by the consumer).
#[derive(Clone, Debug)]
pub(crate) enum Body<T> {
    Inline(T),
    /// Boxed: a ticket is larger than most payloads, and every queued
    /// message would otherwise carry its size.
    Claimed(Box<Ticket>),
}

impl<T> Body<T> {
    pub(crate) fn ticket(&self) -> Option<&Ticket> {
        match self {
            Body::Claimed(t) => Some(t),
            Body::Inline(_) => None,
        }
    }
}

/// A dead letter shows the payload as it was sent, or the ticket under
/// [`TICKET_FIELD`] (a large payload stays out of the DLQ).
impl<T: Serialize> Serialize for Body<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Body::Inline(t) => t.serialize(s),
            Body::Claimed(ticket) => {
                use serde::ser::SerializeMap as _;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(TICKET_FIELD, ticket)?;
                map.end()
            }
        }
    }
}

/// The typed side of a queue, shared by its handles and consumers: how to
/// encode payloads (for storage and the claim check) and where tickets go.
pub(crate) struct Typed<T> {
    pub(crate) claim: Option<ClaimSide>,
    pub(crate) durable: bool,
    pub(crate) codec: Codec<T>,
}

/// A queue's claim-check settings.
#[derive(Clone)]
pub(crate) struct ClaimSide {
    pub(crate) claims: ClaimCheck,
    pub(crate) threshold: usize,
    pub(crate) ttl: Option<Duration>,
    pub(crate) checked: metrics::Counter,
}

/// First byte of an encoded payload: how the rest is encoded.
const TAG_POSTCARD: u8 = 0;
const TAG_JSON: u8 = 1;
/// A queue's codec before its first message.
const UNDECIDED: u8 = u8::MAX;

/// How a queue encodes payloads for its store and the claim check: postcard
/// (compact) when the type round-trips through it, JSON otherwise (types
/// whose serde form is not positional: `serde_json::Value`,
/// `skip_serializing_if`, `flatten`, untagged enums). The first message
/// decides, by trying; every encoded payload starts with a tag byte, so
/// what was stored decodes whichever codec wrote it.
pub(crate) struct Codec<T> {
    chosen: AtomicU8,
    to_postcard: fn(&T) -> Result<Vec<u8>, String>,
    from_postcard: fn(&[u8]) -> Result<T, String>,
    to_json: fn(&T) -> Result<Vec<u8>, String>,
    from_json: fn(&[u8]) -> Result<T, String>,
}

impl<T: Serialize + DeserializeOwned> Codec<T> {
    pub(crate) fn new() -> Self {
        Codec {
            chosen: AtomicU8::new(UNDECIDED),
            to_postcard: |p| postcard::to_stdvec(&(TAG_POSTCARD, p)).map_err(|e| e.to_string()),
            from_postcard: |b| postcard::from_bytes(b).map_err(|e| e.to_string()),
            to_json: |p| {
                let mut out = vec![TAG_JSON];
                serde_json::to_writer(&mut out, p).map_err(|e| e.to_string())?;
                Ok(out)
            },
            from_json: |b| serde_json::from_slice(b).map_err(|e| e.to_string()),
        }
    }
}

impl<T> Codec<T> {
    pub(crate) fn encode(&self, payload: &T) -> Result<Vec<u8>, String> {
        match self.chosen.load(Ordering::Relaxed) {
            TAG_POSTCARD => (self.to_postcard)(payload),
            TAG_JSON => (self.to_json)(payload),
            _ => {
                let postcard = (self.to_postcard)(payload).ok().filter(|b| (self.from_postcard)(&b[1..]).is_ok());
                let tag = if postcard.is_some() { TAG_POSTCARD } else { TAG_JSON };
                self.chosen.store(tag, Ordering::Relaxed);
                postcard.map_or_else(|| (self.to_json)(payload), Ok)
            }
        }
    }

    pub(crate) fn decode(&self, bytes: &[u8]) -> Result<T, String> {
        match bytes.split_first() {
            Some((&TAG_POSTCARD, rest)) => (self.from_postcard)(rest),
            Some((&TAG_JSON, rest)) => (self.from_json)(rest),
            Some((tag, _)) => Err(format!("unknown payload encoding {tag}")),
            None => Err("empty payload".into()),
        }
    }
}

/// What a durable send waits for: the commit of its message.
pub(crate) type Committed = oneshot::Sender<Result<(), QueueError>>;

/// A message on its way into the queue; `stored` is set for durable queues.
pub(crate) struct Incoming<T> {
    pub(crate) entry: Entry<Body<T>>,
    /// Boxed: only durable sends have it.
    pub(crate) stored: Option<Box<(StoredBody, Committed)>>,
}

/// How a delivery (or a consumer) ends.
#[derive(Debug)]
pub(crate) enum Settle {
    Ack(u64),
    Nack {
        receipt: u64,
        reason: FailureReason,
        delay: Option<Duration>,
    },
    Reject {
        receipt: u64,
        reason: FailureReason,
    },
    Expired(u64),
    /// Never handled (still buffered in a consumer that went away): back to
    /// the front, not counted as an attempt.
    Release(u64),
    /// [`Release`](Settle::Release) of several, in the order they were
    /// delivered (they go back in that order, ahead of the rest).
    Releases(Vec<u64>),
    /// The consumer takes nothing more (what it holds is still delivered).
    Close(u64),
    /// The payload could not be claimed: dead-letter it.
    Unclaimable {
        receipt: u64,
        reason: FailureReason,
    },
}

/// Where a queue's settles go: its core, behind the type of its messages
/// (a [`Settler`] does not know it).
pub(crate) trait Settles: Send + Sync {
    fn settle(&self, settle: Settle);

    /// Applies the acks `link` holds back (see [`Link`]).
    fn take_held(&self, link: &Link);
}

/// Where a consumer takes its deliveries from: its queue's core, behind a
/// trait so that a `Consumer<T>` needs no bound on `T`.
pub(crate) trait Source<T>: Send + Sync {
    fn pull(&self, link: &Link, out: &mut VecDeque<Handed<T>>, waker: Option<&std::task::Waker>) -> bool;
}

/// Counters and sizes of one queue (see `Core::publish`).
#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub(crate) enqueued: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) nacked: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) depth: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) pending_dead_letters: AtomicU64,
    pub(crate) claim_checked: AtomicU64,
    pub(crate) claim_failures: AtomicU64,
    pub(crate) ticketed: AtomicU64,
    pub(crate) ticketed_bytes: AtomicU64,
    pub(crate) store_errors: AtomicU64,
}

/// A snapshot of a queue's counters (the same figures as its metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages accepted into the queue.
    pub enqueued: u64,
    /// Deliveries made (first deliveries and redeliveries).
    pub delivered: u64,
    /// Messages acked.
    pub acked: u64,
    /// Deliveries nacked by consumers (panics in a pool included).
    pub nacked: u64,
    /// Failures that led to another delivery.
    pub redelivered: u64,
    /// Deliveries that passed their visibility timeout.
    pub timeouts: u64,
    /// Messages whose deadline passed before a handler got them.
    pub expired: u64,
    /// Messages stored in the DLQ (any reason).
    pub dead_lettered: u64,
    /// Messages dropped by `drop_oldest` or `drop_newest`.
    pub dropped: u64,
    /// Sends refused by `reject`.
    pub rejected: u64,
    /// Settles that came after their delivery timed out (ignored).
    pub stale_settles: u64,
    /// Messages waiting (ready or delayed for a retry).
    pub depth: u64,
    /// Deliveries not settled yet.
    pub in_flight: u64,
    /// Messages on their way to the DLQ.
    pub pending_dead_letters: u64,
    /// Sends whose payload was checked in to the claim-check store.
    pub claim_checked: u64,
    /// Deliveries whose payload could not be claimed (dead-lettered).
    pub claim_failures: u64,
    /// Messages the queue holds now as claim-check tickets.
    pub ticketed: u64,
    /// The payload bytes those tickets stand for (kept out of the queue).
    pub ticketed_bytes: u64,
    /// Durable queues: commits to the queue store that failed.
    pub store_errors: u64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> QueueStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueStats {
            enqueued: g(&self.enqueued),
            delivered: g(&self.delivered),
            acked: g(&self.acked),
            nacked: g(&self.nacked),
            redelivered: g(&self.redelivered),
            timeouts: g(&self.timeouts),
            expired: g(&self.expired),
            dead_lettered: g(&self.dead_lettered),
            dropped: g(&self.dropped),
            rejected: g(&self.rejected),
            stale_settles: g(&self.stale),
            depth: g(&self.depth),
            in_flight: g(&self.in_flight),
            pending_dead_letters: g(&self.pending_dead_letters),
            claim_checked: g(&self.claim_checked),
            claim_failures: g(&self.claim_failures),
            ticketed: g(&self.ticketed),
            ticketed_bytes: g(&self.ticketed_bytes),
            store_errors: g(&self.store_errors),
        }
    }
}

/// What every handle of one queue shares.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) policy: OverflowPolicy,
    /// One permit per free place: taken by a send, given back when the
    /// message is acked, dropped or stored in the DLQ.
    pub(crate) permits: Semaphore,
    pub(crate) next_consumer: AtomicU64,
    pub(crate) visibility_timeout: Duration,
    pub(crate) stats: Stats,
    pub(crate) rejected: metrics::Counter,
    pub(crate) dropped_newest: metrics::Counter,
}

/// A send to a queue ([`QueueHandle::send`], [`QueueHandle::send_envelope`]):
/// resolves to the message's id once the queue holds it.
///
/// The send is made when it is called, as actix's `Addr::send` does. When
/// a place is free and the message needs no I/O (an in-memory queue, no
/// claim check), it is in the queue before this future is first polled,
/// and awaiting it only gives its id. Otherwise (a full `block` queue, a
/// durable queue's commit, a claim-check check-in) the waiting is this
/// future's, and dropping it before it resolves leaves the message unsent.
///
/// ```
/// use actorbus_actors::dlq::DlqSink;
/// use actorbus_actors::queue::{Queue, QueueConfig};
///
/// actix_rt::System::new().block_on(async {
///     let orders = Queue::<u32>::start(QueueConfig::named("orders"), DlqSink::in_memory()).unwrap();
///     let sending = orders.send(7);
///     assert_eq!(orders.depth(), 1); // in the queue already
///     let id = sending.await.unwrap();
///     let delivery = orders.consumer(1).await.unwrap().recv().await.unwrap();
///     assert_eq!((delivery.id(), *delivery.payload()), (id, 7));
///     delivery.ack();
/// });
/// ```
#[must_use = "the send's outcome (its id, or why it failed) is only known by awaiting it"]
pub struct Sending<'a>(Outcome<'a>);

enum Outcome<'a> {
    /// In the queue: its id, as two halves. Read back as the 16-byte id
    /// right after being written as two 8-byte halves, it would stall the
    /// CPU's store forwarding (a tenth of a send).
    Sent(u64, u64),
    /// The general path: boxed, so that the common send's future is small.
    Waiting(futures::future::BoxFuture<'a, Result<MessageId, QueueError>>),
    /// Resolved.
    Done,
}

impl std::fmt::Debug for Sending<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.0 {
            Outcome::Sent(..) => "sent",
            Outcome::Waiting(_) => "waiting",
            Outcome::Done => "done",
        };
        f.debug_tuple("Sending").field(&state).finish()
    }
}

impl std::future::Future for Sending<'_> {
    type Output = Result<MessageId, QueueError>;

    // Inlined into the caller's `.await`: called, it returns the 112-byte
    // result through memory, read back at once (a store-forwarding stall).
    #[inline(always)]
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Outcome::Sent(high, low) => {
                let id = MessageId(uuid::Uuid::from_u64_pair(*high, *low));
                self.0 = Outcome::Done;
                Poll::Ready(Ok(id))
            }
            Outcome::Waiting(sending) => {
                let answer = std::task::ready!(sending.poll_unpin(cx));
                self.0 = Outcome::Done;
                Poll::Ready(answer)
            }
            Outcome::Done => panic!("`Sending` polled after it resolved"),
        }
    }
}

/// The sending side of a queue: cheap to clone, usable from any arbiter.
pub struct QueueHandle<T> {
    pub(crate) inner: Arc<Inner<T>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) typed: Arc<Typed<T>>,
}

impl<T> Clone for QueueHandle<T> {
    fn clone(&self) -> Self {
        QueueHandle { inner: Arc::clone(&self.inner), shared: Arc::clone(&self.shared), typed: Arc::clone(&self.typed) }
    }
}

impl<T> std::fmt::Debug for QueueHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandle").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

impl<T: QueueMessage> QueueHandle<T> {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Enqueues `payload` in a new envelope (joining the conversation of the
    /// handler that sends it, if any); the [`Sending`] resolves to the
    /// message id. See [`send_envelope`](Self::send_envelope).
    pub fn send(&self, payload: T) -> Sending<'_> {
        let mut env = Envelope::new(payload);
        inherit_context(&mut env);
        self.send_envelope(env)
    }

    /// Enqueues a prepared envelope (priority, deadline, headers); the
    /// [`Sending`] resolves to the message id.
    ///
    /// A full queue applies its overflow policy: `block` waits for room,
    /// `reject` returns [`QueueError::Full`], the others accept the send
    /// and drop or dead-letter a message (the new one or, for `drop_oldest`,
    /// the oldest), counting it.
    ///
    /// With a claim check, a payload whose encoded size is above the
    /// threshold is checked in first and the queue holds its ticket. On a
    /// durable queue the send resolves once the message is committed to
    /// storage (with other sends of the moment: one transaction, one fsync).
    ///
    /// Made at the call when it can be (see [`Sending`]): an in-memory send
    /// that finds a place is in the queue before the future is polled, and
    /// moves the envelope into its slot once instead of into a future and
    /// out again. What has to wait is cancel-safe: dropping the future
    /// before it resolves (a timeout around it) leaves the message unsent
    /// and the queue's capacity as it was, so a `block` send can be bounded
    /// with `tokio::time::timeout`.
    #[inline(always)]
    pub fn send_envelope(&self, envelope: Envelope<T>) -> Sending<'_> {
        match self.send_now(envelope) {
            Ok(id) => {
                let (high, low) = id.0.as_u64_pair();
                Sending(Outcome::Sent(high, low))
            }
            Err(envelope) => Sending(Outcome::Waiting(Box::pin(self.enqueue(envelope.map(Body::Inline))))),
        }
    }

    /// The common send, done at once: a place is free and the payload goes
    /// as it is (no check-in, not durable). The envelope comes back when the
    /// send needs more (a wait for room, an overflow policy, I/O) or the
    /// queue is closed: the general path takes it then, and says so.
    #[inline(always)]
    fn send_now(&self, envelope: Envelope<T>) -> Result<MessageId, Envelope<T>> {
        if self.typed.claim.is_some() || self.typed.durable {
            return Err(envelope);
        }
        let Ok(permit) = self.shared.permits.try_acquire() else { return Err(envelope) };
        let id = envelope.id;
        self.inner.with(|core| {
            if core.is_closed() {
                return Err(envelope);
            }
            // Most sends stamp nothing (see `Core::wants_stamp`): no clock
            // read for them.
            if core.wants_stamp() {
                core.stamp();
            }
            // Made here, in the lock section, from the envelope the call
            // took: written into its slot without a stop on the way. Inline
            // and not durable: ready at once, no ticket to count.
            core.store(Entry { env: envelope.map(Body::Inline), enqueued: Enqueued::UNSTAMPED, seq: 0 });
            Ok(())
        })?;
        permit.forget();
        Ok(id)
    }

    pub(crate) async fn enqueue(&self, envelope: Envelope<Body<T>>) -> Result<MessageId, QueueError> {
        let id = envelope.id;
        let shared = &self.shared;
        // The permit is held, not forgotten, until the message is in the
        // queue: a caller that gives up waiting (a timeout around this
        // future, an HTTP client that went away) or a send that fails before
        // that gives the place back instead of leaking it. The queue gives
        // it back once the message leaves.
        let (overflow, permit) = if shared.policy == OverflowPolicy::Block {
            // The wait (and its waiter node) only when the queue is full.
            let permit = match shared.permits.try_acquire() {
                Ok(p) => Ok(p),
                Err(_) => shared.permits.acquire().await,
            };
            match permit {
                Ok(p) => (false, Some(p)),
                Err(_) => return Err(self.closed()),
            }
        } else {
            match shared.permits.try_acquire() {
                Ok(p) => (false, Some(p)),
                Err(tokio::sync::TryAcquireError::Closed) => return Err(self.closed()),
                Err(tokio::sync::TryAcquireError::NoPermits) => match shared.policy {
                    OverflowPolicy::Reject | OverflowPolicy::Block => {
                        shared.rejected.increment(1);
                        shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        return Err(QueueError::Full(shared.name.to_string()));
                    }
                    OverflowPolicy::DropNewest => {
                        shared.dropped_newest.increment(1);
                        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(queue = %shared.name, %id, "queue full: message dropped (drop_newest)");
                        return Ok(id);
                    }
                    OverflowPolicy::DropOldest | OverflowPolicy::DeadLetter => (true, None),
                },
            }
        };
        // Boxed, and only when there is work: the check-in's state would
        // otherwise be part of every send future, moved on every call.
        let plain = self.typed.claim.is_none() && !self.typed.durable;
        let (env, stored) = if plain && matches!(envelope.payload, Body::Inline(_)) {
            (envelope, None)
        } else {
            Box::pin(self.prepare(envelope)).await?
        };
        let ticket = env.payload.ticket().copied();
        let (stored, committed) = match stored {
            Some(body) => {
                let (tx, rx) = oneshot::channel();
                (Some(Box::new((body, tx))), Some(rx))
            }
            None => (None, None),
        };
        let incoming = Incoming { entry: Entry { env, enqueued: Enqueued::UNSTAMPED, seq: 0 }, stored };
        let sent = self.inner.with(|core| {
            if core.is_closed() {
                return false;
            }
            core.stamp();
            if overflow {
                core.overflow(incoming);
            } else {
                core.accept(incoming);
            }
            true
        });
        if !sent {
            self.release_ticket(ticket);
            return Err(self.closed());
        }
        if let Some(permit) = permit {
            permit.forget();
        }
        match committed {
            // The queue gives back the permit and the ticket when the
            // commit fails; a queue that stopped before answering may have
            // committed or not: the caller must treat it as unknown.
            Some(rx) => rx.await.unwrap_or_else(|_| Err(self.closed())).map(|()| id),
            None => Ok(id),
        }
    }

    /// Checks a large payload in; encodes it for a durable queue.
    async fn prepare(&self, mut env: Envelope<Body<T>>) -> Result<(Envelope<Body<T>>, Option<StoredBody>), QueueError> {
        let typed = &self.typed;
        let payload = match &env.payload {
            Body::Claimed(ticket) => {
                if typed.claim.is_none() {
                    return Err(QueueError::Invalid(format!(
                        "queue `{}` has no claim check: it cannot take a claim-check ticket",
                        self.shared.name
                    )));
                }
                let stored = typed.durable.then_some(StoredBody::Ticket(**ticket));
                return Ok((env, stored));
            }
            Body::Inline(payload) => payload,
        };
        let bytes = typed.codec.encode(payload).map_err(QueueError::Codec)?;
        if let Some(claim) = typed.claim.as_ref().filter(|c| bytes.len() > c.threshold) {
            let ticket = claim.claims.check_in_shared(bytes, 1, claim.ttl).await?;
            claim.checked.increment(1);
            self.shared.stats.claim_checked.fetch_add(1, Ordering::Relaxed);
            env.payload = Body::Claimed(Box::new(ticket));
            return Ok((env, typed.durable.then_some(StoredBody::Ticket(ticket))));
        }
        Ok((env, typed.durable.then_some(StoredBody::Inline(bytes))))
    }

    fn release_ticket(&self, ticket: Option<Ticket>) {
        if let (Some(ticket), Some(claim)) = (ticket, &self.typed.claim) {
            claim.claims.release_detached(ticket, 1);
        }
    }

    /// Durable queues: resolves once every change made so far (sends, acks,
    /// dead letters, delivery counts) is committed. Acks are written in the
    /// background (a lost ack means one more delivery, which at-least-once
    /// allows); call this before a planned stop to keep redeliveries to a
    /// minimum. Resolves at once for a queue in memory.
    pub async fn flush(&self) -> Result<(), QueueError> {
        if !self.typed.durable {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.inner.with(|core| {
            // The held acks it applies sample the latency.
            core.stamp();
            core.flush(tx);
        });
        rx.await.map_err(|_| self.closed())
    }

    /// True when the queue keeps its messages in a store (see
    /// [`Queue::start_durable`](super::Queue::start_durable)).
    pub fn is_durable(&self) -> bool {
        self.typed.durable
    }

    fn closed(&self) -> QueueError {
        QueueError::Closed(self.shared.name.to_string())
    }

    /// A new consumer that holds at most `prefetch` unsettled deliveries
    /// (at least 1).
    pub async fn consumer(&self, prefetch: usize) -> Result<Consumer<T>, QueueError> {
        let prefetch = prefetch.max(1);
        let id = self.shared.next_consumer.fetch_add(1, Ordering::Relaxed);
        let sink: Weak<dyn Settles> = Arc::downgrade(&self.inner) as Weak<dyn Settles>;
        // Half the prefetch: the consumer takes more before it runs dry.
        let batch = (prefetch / 2).clamp(1, MAX_HELD_ACKS);
        let link = Arc::new(Link {
            consumer: id,
            sink,
            held: (0..batch).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            more: AtomicBool::new(false),
        });
        let subscribed = self.inner.with(|core| {
            if core.is_closed() {
                return false;
            }
            core.subscribe(Arc::clone(&link), prefetch);
            true
        });
        if !subscribed {
            return Err(self.closed());
        }
        Ok(Consumer {
            id,
            inner: Arc::clone(&self.inner) as Arc<dyn Source<T>>,
            buf: VecDeque::with_capacity(prefetch.min(1024)),
            link,
            closed: false,
            typed: Arc::clone(&self.typed),
            stash: None,
        })
    }

    /// The queue's counters and sizes.
    pub fn stats(&self) -> QueueStats {
        self.inner.with(|core| core.publish());
        self.shared.stats.snapshot()
    }

    /// How long a delivery may stay unsettled before the queue delivers it
    /// again ([`QueueConfig::visibility_timeout`](super::QueueConfig::visibility_timeout)).
    pub fn visibility_timeout(&self) -> Duration {
        self.shared.visibility_timeout
    }

    /// What the queue does when it is full.
    pub fn overflow(&self) -> OverflowPolicy {
        self.shared.policy
    }

    /// Messages waiting (ready or delayed).
    pub fn depth(&self) -> u64 {
        self.stats().depth
    }

    /// Deliveries not settled yet.
    pub fn in_flight(&self) -> u64 {
        self.stats().in_flight
    }
}

/// Receives deliveries from one queue, at most `prefetch` unsettled at a
/// time. Dropping it: it takes nothing more, and deliveries it had
/// buffered but not returned go back to the front of the queue, in the
/// order they were delivered, without counting an attempt (deliveries
/// already returned settle through their own drop).
///
/// A message that travelled as a claim-check ticket is claimed (verified)
/// before [`recv`](Self::recv) returns it, so callers only see payloads; one
/// that cannot be claimed (expired, missing, tampered) is dead-lettered with
/// reason `claim_check` and skipped.
pub struct Consumer<T> {
    id: u64,
    inner: Arc<dyn Source<T>>,
    /// Deliveries taken from the queue, not returned yet: `recv` takes
    /// what the consumer's credit allows in one go and returns them one by
    /// one.
    buf: VecDeque<Handed<T>>,
    link: Arc<Link>,
    closed: bool,
    typed: Arc<Typed<T>>,
    /// A delivery being claimed: kept here across the claim's await, so a
    /// `recv` cancelled mid-claim (in a `select!`) loses nothing.
    stash: Option<Handed<T>>,
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<T> Consumer<T> {
    /// The next delivery; `None` once the consumer is closed and drained
    /// (or the queue is gone). Expired deliveries and payloads that cannot
    /// be claimed are dead-lettered here, never returned.
    ///
    /// Cancel-safe: a [`Recv`] dropped before it resolves (in a `select!`)
    /// loses nothing; a delivery it was claiming is returned by the next one.
    pub fn recv(&mut self) -> Recv<'_, T> {
        Recv { consumer: self, claiming: None }
    }

    /// A delivery if one is waiting, without waiting. A ticket whose claim
    /// needs the storage thread (the SQLite claim store) is not claimed
    /// here: it stays first in line for the next [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Option<Delivery<T>> {
        loop {
            let claiming = match self.fresh()? {
                Handed::Ready(d) => return Some(d),
                Handed::Ticket(claiming) => claiming,
            };
            let blocking = self.typed.claim.as_ref().is_some_and(|c| c.claims.backend().blocking());
            let claimed = if blocking { None } else { claim(&self.typed, &claiming.1).now_or_never() };
            let Some(claimed) = claimed else {
                self.stash = Some(Handed::Ticket(claiming));
                return None;
            };
            if let Some(d) = Self::claimed(claiming.0, claimed) {
                return Some(d);
            }
        }
    }

    /// The next waiting delivery that has not expired (those are settled as
    /// expired on the way), telling the queue whether more wait behind it:
    /// the stashed one, or the next one buffered or in the queue (taken
    /// without waiting; the acks held back go with the take).
    ///
    /// Looked at where it lies and moved out once, straight to the caller's
    /// match: a delivery popped into a temporary and copied on from there
    /// is read back right after it was written, which stalls the CPU's
    /// store forwarding (an eighth of a delivery's time in the queue bench).
    #[inline(always)]
    fn fresh(&mut self) -> Option<Handed<T>> {
        if let Some(stashed) = &mut self.stash {
            if !Self::expired(stashed) {
                return self.stash.take();
            }
            self.stash = None;
        }
        loop {
            if self.buf.is_empty() && !self.closed {
                self.inner.pull(&self.link, &mut self.buf, None);
            }
            if Self::expired(self.buf.front_mut()?) {
                self.buf.pop_front();
                continue;
            }
            self.link.more.store(self.buf.len() > 1, Ordering::Relaxed);
            return self.buf.pop_front();
        }
    }

    /// True when `h` expired: it is then settled as such (dead-lettered).
    /// By reference: a delivery is moved as little as it can be. Inlined:
    /// for most deliveries it is a test of their deadline's tag.
    #[inline(always)]
    fn expired(h: &mut Handed<T>) -> bool {
        let deadline = match h {
            Handed::Ready(d) => d.envelope.deadline,
            Handed::Ticket(claiming) => claiming.0.envelope.deadline,
        };
        deadline.is_some_and(|deadline| Self::expire(h, deadline))
    }

    /// [`expired`](Self::expired) for a delivery that has a deadline.
    #[cold]
    fn expire(h: &mut Handed<T>, deadline: Timestamp) -> bool {
        let expired = Timestamp::now() >= deadline;
        if expired {
            h.settler().send(Settle::Expired);
        }
        expired
    }

    fn claimed(d: Delivery<()>, claimed: Result<T, FailureReason>) -> Option<Delivery<T>> {
        match claimed {
            Ok(payload) => Some(d.with_payload(payload)),
            Err(reason) => {
                let Delivery { envelope, mut settler } = d;
                tracing::warn!(message_id = %envelope.id, %reason, "claim check failed; dead-lettering");
                settler.send(|receipt| Settle::Unclaimable { receipt, reason });
                None
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// Stops taking new deliveries; those already taken by this consumer
    /// are still returned by [`recv`](Self::recv), which then answers `None`.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.link.send(Settle::Close(self.id));
        }
    }
}

/// The next delivery of a [`Consumer`] ([`Consumer::recv`]).
///
/// Written by hand rather than as an `async fn`: a delivery already
/// buffered is moved once, from the consumer's buffer to the caller,
/// instead of through the state of a generated future (112 bytes copied
/// and read back at once, a store-forwarding stall per delivery).
#[must_use = "futures do nothing unless polled"]
pub struct Recv<'a, T> {
    consumer: &'a mut Consumer<T>,
    /// The claim of the stashed delivery's payload, under way.
    claiming: Option<futures::future::BoxFuture<'a, Result<T, FailureReason>>>,
}

impl<T> std::fmt::Debug for Recv<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recv").field("consumer", &self.consumer.id).finish_non_exhaustive()
    }
}

impl<T> std::future::Future for Recv<'_, T> {
    type Output = Option<Delivery<T>>;

    #[inline]
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            if let Some(claiming) = &mut this.claiming {
                let claimed = std::task::ready!(claiming.poll_unpin(cx));
                this.claiming = None;
                // Taken back from the stash only now: a `Recv` dropped
                // during the claim leaves the delivery to the next one.
                let Some(Handed::Ticket(stashed)) = this.consumer.stash.take() else { continue };
                match Consumer::claimed(stashed.0, claimed) {
                    Some(d) => return Poll::Ready(Some(d)),
                    None => continue,
                }
            }
            let consumer = &mut *this.consumer;
            match consumer.fresh() {
                Some(Handed::Ready(d)) => return Poll::Ready(Some(d)),
                Some(Handed::Ticket(stashed)) => {
                    let ticket = stashed.1;
                    consumer.stash = Some(Handed::Ticket(stashed));
                    let typed = Arc::clone(&consumer.typed);
                    this.claiming = Some(Box::pin(async move { claim(&typed, &ticket).await }));
                }
                None => {
                    if consumer.closed {
                        return Poll::Ready(None);
                    }
                    if !consumer.inner.pull(&consumer.link, &mut consumer.buf, Some(cx.waker())) {
                        return Poll::Pending;
                    }
                    if consumer.buf.is_empty() {
                        // The queue is gone.
                        return Poll::Ready(None);
                    }
                }
            }
        }
    }
}

/// The payload behind `ticket`, verified and decoded. The payload stays in
/// the store until the ack.
async fn claim<T>(typed: &Typed<T>, ticket: &Ticket) -> Result<T, FailureReason> {
    let Some(side) = &typed.claim else {
        return Err(FailureReason::ClaimCheck(format!("ticket {}: the queue has no claim-check store", ticket.id)));
    };
    let bytes = side.claims.claim(ticket).await.map_err(|e| FailureReason::ClaimCheck(e.to_string()))?;
    typed
        .codec
        .decode(&bytes)
        .map_err(|e| FailureReason::ClaimCheck(format!("payload of ticket {} does not decode: {e}", ticket.id)))
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        // The queue hands this consumer nothing more; deliveries still
        // buffered were never seen by a handler and go back as they were.
        self.close();
        // In the order they were delivered (the stash came first), as one
        // settle: the queue puts them back ahead of the rest in that order.
        let mut receipts = Vec::new();
        let mut give_back = |mut h: Handed<T>| receipts.extend(h.settler().take_receipt());
        self.stash.take().into_iter().for_each(&mut give_back);
        std::mem::take(&mut self.buf).into_iter().for_each(&mut give_back);
        if !receipts.is_empty() {
            self.link.send(Settle::Releases(receipts));
        }
    }
}

/// Settles one delivery: what a [`Delivery`] does, kept apart from the
/// payload once [`Delivery::into_parts`] split them.
///
/// Dropped without being used, it gives the delivery back as a failed attempt
/// (reason `failed: delivery dropped without ack`), so a consumer that loses
/// a delivery cannot make a message vanish.
#[derive(Debug)]
pub struct Settler {
    receipt: u64,
    /// Taken once it settled (or gave its receipt back): `None` is done.
    /// No flag beside it, so a settler (and every delivery) is 8 bytes
    /// smaller.
    link: Option<Arc<Link>>,
}

/// Most acks a consumer holds back before sending them together.
const MAX_HELD_ACKS: usize = 64;

/// How the deliveries of one consumer settle: shared by their settlers,
/// the consumer and the queue's core.
///
/// Acks are held back while the consumer has more deliveries buffered, and
/// go to the queue together (one lock of its core) when a batch of them
/// (half the prefetch, at most 64) piled up, when the consumer takes more
/// from the queue (about to wait), is closed, or at the queue's next tick,
/// whichever comes first. So an ack is never lost and reaches the queue
/// within a tick (before that tick looks at visibility timeouts). Once the
/// consumer is gone, acks go straight to the queue. Other settles always go
/// at once.
///
/// Holding an ack back costs no lock: it takes a free slot of `held` with
/// one compare-and-swap (an ack that finds its slot taken goes straight to
/// the queue). Only the core empties the slots, under its own lock, so it
/// reads and clears them without a read-modify-write, and a receipt is
/// taken once. When the consumer closes, the core marks the link closed
/// before it empties the slots, and an ack that took a slot looks at the
/// mark after (both sequentially consistent): either the core's emptying
/// finds the receipt, or the ack sees the mark and has the core take it at
/// once.
pub(crate) struct Link {
    pub(crate) consumer: u64,
    /// Weak: the queue's core holds the link; a settle after the queue is
    /// gone needs no answer.
    sink: Weak<dyn Settles>,
    /// The acks held back: a receipt a slot, 0 in a free one (no receipt
    /// is 0).
    held: Box<[AtomicU64]>,
    /// The slot the next ack tries first: a hint, reset when the core
    /// empties the slots.
    next: AtomicUsize,
    /// The consumer is gone: acks are not held back any more.
    closed: AtomicBool,
    /// The consumer had more deliveries buffered when it last took one.
    more: AtomicBool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("consumer", &self.consumer).finish_non_exhaustive()
    }
}

#[cfg(test)]
impl Link {
    /// Holds `receipt` back in a free slot, as an ack does.
    pub(crate) fn hold(&self, receipt: u64) {
        let free = self.held.iter().find(|slot| slot.load(Ordering::SeqCst) == 0);
        free.expect("a free slot").store(receipt, Ordering::SeqCst);
    }
}

/// The acks a link held back, taken by the queue's core.
pub(crate) struct HeldAcks {
    receipts: [u64; MAX_HELD_ACKS],
    len: usize,
}

impl HeldAcks {
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.receipts[..self.len].iter().copied()
    }
}

impl Link {
    /// Applies `settle` in the queue's core.
    fn send(&self, settle: Settle) {
        if let Some(sink) = self.sink.upgrade() {
            sink.settle(settle);
        }
    }

    fn ack(&self, receipt: u64) {
        if !self.closed.load(Ordering::SeqCst) {
            let i = self.next.load(Ordering::Relaxed);
            let held = self
                .held
                .get(i)
                .is_some_and(|slot| slot.compare_exchange(0, receipt, Ordering::SeqCst, Ordering::Relaxed).is_ok());
            if held {
                self.next.store(i + 1, Ordering::Relaxed);
                // Held back while the batch has room and the consumer has
                // more buffered, unless it closed meanwhile (the core may
                // have emptied the slots already).
                if i + 1 < self.held.len() && self.more.load(Ordering::Relaxed) && !self.closed.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(sink) = self.sink.upgrade() {
                    sink.take_held(self);
                }
                return;
            }
        }
        self.send(Settle::Ack(receipt));
    }

    /// The queue's core takes the acks held back (under its lock: see the
    /// [type's docs](Link)); with `close`, later acks come to it one by one.
    pub(crate) fn take(&self, close: bool) -> HeldAcks {
        if close {
            self.closed.store(true, Ordering::SeqCst);
        }
        let mut taken = HeldAcks { receipts: [0; MAX_HELD_ACKS], len: 0 };
        for slot in self.held.iter() {
            let receipt = slot.load(Ordering::SeqCst);
            if receipt != 0 {
                // Nobody else writes a slot that holds a receipt.
                slot.store(0, Ordering::Relaxed);
                taken.receipts[taken.len] = receipt;
                taken.len += 1;
            }
        }
        self.next.store(0, Ordering::Relaxed);
        taken
    }
}

impl Settler {
    fn send(&mut self, f: impl FnOnce(u64) -> Settle) {
        if let Some(link) = self.link.take() {
            link.send(f(self.receipt));
        }
    }

    /// Disarms it and gives its receipt, unless it was settled already:
    /// for deliveries that go back to the queue as they were.
    pub(crate) fn take_receipt(&mut self) -> Option<u64> {
        self.link.take().map(|_| self.receipt)
    }

    /// The delivery's receipt: no other delivery of the queue within
    /// 2^32 − 1 of it (in delivery order) has the same.
    pub fn receipt(&self) -> u64 {
        self.receipt
    }

    /// Done: the message leaves the queue.
    pub fn ack(mut self) {
        if let Some(link) = self.link.take() {
            link.ack(self.receipt);
        }
    }

    /// Failed: retried by the queue's retry policy, dead-lettered after
    /// `max_deliveries`.
    pub fn nack(self) {
        self.nack_with(FailureReason::Failed("nacked".into()));
    }

    /// Failed for `reason` (recorded in the message's history).
    pub fn nack_with(mut self, reason: FailureReason) {
        self.send(|receipt| Settle::Nack { receipt, reason, delay: None });
    }

    /// Failed: redeliver after `delay` (instead of the retry policy's).
    pub fn retry_after(mut self, delay: Duration) {
        self.send(|receipt| Settle::Nack {
            receipt,
            reason: FailureReason::Failed("nacked".into()),
            delay: Some(delay),
        });
    }

    /// Will never work: dead-letter it now with reason `failed: <reason>`.
    pub fn reject(mut self, reason: impl Into<String>) {
        let reason = FailureReason::Failed(reason.into());
        self.send(|receipt| Settle::Reject { receipt, reason });
    }
}

impl Drop for Settler {
    /// Inlined: after a settle (the link taken) the compiler sees there is
    /// nothing to do, and an ack pays no call for its drop.
    #[inline]
    fn drop(&mut self) {
        if self.link.is_some() {
            self.dropped();
        }
    }
}

impl Settler {
    #[cold]
    fn dropped(&mut self) {
        self.send(|receipt| Settle::Nack {
            receipt,
            reason: FailureReason::Failed("delivery dropped without ack".into()),
            delay: None,
        });
    }
}

/// A message delivered to a consumer, to be settled once: [`ack`](Self::ack),
/// [`nack`](Self::nack), [`retry_after`](Self::retry_after) or
/// [`reject`](Self::reject). Dropping it unsettled counts as a failed
/// attempt.
#[derive(Debug)]
pub struct Delivery<T> {
    /// Not boxed: a box per delivery (allocated by the queue's thread, freed
    /// by the consumer's) costs more than the few copies of the envelope
    /// between the batch and the caller.
    envelope: Envelope<T>,
    settler: Settler,
}

/// What the queue hands a consumer: a delivery as it will be returned, or
/// the envelope and ticket of one whose payload the consumer claims first.
///
/// The claim's variant is one box, so that a ready delivery lies at the
/// start of a `Handed` (no tag before it): moved from the consumer's
/// buffer into an `Option<Delivery>`, it is then copied in the same
/// 16-byte pieces it was written in, which the CPU forwards from its store
/// buffer instead of stalling on.
#[derive(Debug)]
pub(crate) enum Handed<T> {
    Ready(Delivery<T>),
    Ticket(Box<(Delivery<()>, Ticket)>),
}

impl<T: Clone> Handed<T> {
    /// A delivery of a copy of `env` (the queue keeps the original until
    /// the delivery is settled). Inlined: built where the queue's pull
    /// pushes it, not in a frame of its own and copied there.
    #[inline(always)]
    pub(crate) fn of(env: &Envelope<Body<T>>, receipt: u64, link: &Arc<Link>) -> Self {
        let link = Arc::clone(link);
        match &env.payload {
            Body::Inline(t) => Handed::Ready(Delivery::new(env.copy_with(t.clone()), receipt, link)),
            Body::Claimed(ticket) => Handed::Ticket(Box::new((Delivery::new(env.meta(), receipt, link), **ticket))),
        }
    }
}

impl<T> Handed<T> {
    pub(crate) fn settler(&mut self) -> &mut Settler {
        match self {
            Handed::Ready(d) => &mut d.settler,
            Handed::Ticket(claiming) => &mut claiming.0.settler,
        }
    }
}

impl<T> Delivery<T> {
    fn new(envelope: Envelope<T>, receipt: u64, link: Arc<Link>) -> Self {
        Delivery { envelope, settler: Settler { receipt, link: Some(link) } }
    }

    fn with_payload<U>(self, payload: U) -> Delivery<U> {
        let Delivery { envelope, settler } = self;
        Delivery { envelope: envelope.map(|_| payload), settler }
    }

    /// The envelope (its `attempt` is this delivery's attempt).
    pub fn envelope(&self) -> &Envelope<T> {
        &self.envelope
    }

    /// The message.
    pub fn payload(&self) -> &T {
        &self.envelope.payload
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.envelope.id
    }

    /// Delivery attempt, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt
    }

    /// The delivery's receipt.
    pub fn receipt(&self) -> u64 {
        self.settler.receipt
    }

    /// The envelope and the settler, apart (to move the payload into a
    /// handler and settle after).
    pub fn into_parts(self) -> (Envelope<T>, Settler) {
        (self.envelope, self.settler)
    }

    /// Done: the message leaves the queue.
    pub fn ack(self) {
        self.settler.ack();
    }

    /// Failed: retried by the queue's retry policy.
    pub fn nack(self) {
        self.settler.nack();
    }

    /// Failed for `reason`.
    pub fn nack_with(self, reason: FailureReason) {
        self.settler.nack_with(reason);
    }

    /// Failed: redeliver after `delay`.
    pub fn retry_after(self, delay: Duration) {
        self.settler.retry_after(delay);
    }

    /// Will never work: dead-letter it now.
    pub fn reject(self, reason: impl Into<String>) {
        self.settler.reject(reason);
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;
    use crate::dlq::DlqSink;
    use crate::queue::{Queue, QueueConfig};

    /// A send and a `recv` can be awaited in a task that moves between
    /// threads (a multi-threaded runtime's).
    #[test]
    fn the_send_and_recv_futures_are_send() {
        fn send<F: Send>(_: &F) {}
        actix_rt::System::new().block_on(async {
            let q = Queue::<u32>::start(QueueConfig::named("send-futures"), DlqSink::in_memory()).unwrap();
            let sending = q.send(1);
            send(&sending);
            sending.await.unwrap();
            let mut c = q.consumer(1).await.unwrap();
            let recv = c.recv();
            send(&recv);
            recv.await.unwrap().ack();
        });
    }

    /// What the layout note on `Handed` relies on: a ready delivery needs no
    /// tag in front of it, in the consumer's buffer or on its way out.
    #[test]
    fn a_ready_delivery_is_laid_out_as_the_delivery_returned() {
        let delivery = size_of::<Delivery<u64>>();
        assert_eq!(size_of::<Handed<u64>>(), delivery);
        assert_eq!(size_of::<Option<Handed<u64>>>(), delivery);
        assert_eq!(size_of::<Option<Delivery<u64>>>(), delivery);
    }
}
