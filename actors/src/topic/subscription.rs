//! Subscriptions: a bounded buffer per subscriber, filled by topics and
//! drained by the subscriber.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{ready, Context, Poll, Waker};

use actix::prelude::*;
use serde::de::DeserializeOwned;

use super::subject::Pattern;
use crate::backpressure::{BoundedBuffer, OverflowPolicy, Push};
use crate::claim_check::{ClaimCheck, Ticket};
use crate::dead_letter::{SharedHook, Undeliverable};
use crate::envelope::Envelope;
use crate::error::FailureReason;
use crate::metrics as m;

/// A subscription's id, unique in the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

impl SubscriptionId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SubscriptionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sub-{}", self.0)
    }
}

/// A predicate on messages: a subscription only receives what it accepts.
pub type Filter<T> = Arc<dyn Fn(&Envelope<T>) -> bool + Send + Sync>;

/// How a subscription buffers and filters.
pub struct SubscriptionConfig<T> {
    /// Messages buffered for the subscriber, at most (default 1024). The
    /// subscriber takes what is buffered in batches, so up to twice this
    /// many can be in memory for one subscription.
    pub capacity: usize,
    /// What a full buffer does (default `block`: publishers wait).
    pub overflow: OverflowPolicy,
    /// Only messages it accepts are buffered (default: all).
    pub filter: Option<Filter<T>>,
}

impl<T> Clone for SubscriptionConfig<T> {
    fn clone(&self) -> Self {
        SubscriptionConfig { capacity: self.capacity, overflow: self.overflow, filter: self.filter.clone() }
    }
}

impl<T> Default for SubscriptionConfig<T> {
    fn default() -> Self {
        SubscriptionConfig { capacity: 1024, overflow: OverflowPolicy::Block, filter: None }
    }
}

impl<T> SubscriptionConfig<T> {
    /// The defaults: 1024 messages, `block`, no filter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the buffer capacity (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Sets the overflow policy.
    pub fn overflow(mut self, overflow: OverflowPolicy) -> Self {
        self.overflow = overflow;
        self
    }

    /// Sets the filter.
    pub fn filter(mut self, filter: impl Fn(&Envelope<T>) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }
}

impl<T> fmt::Debug for SubscriptionConfig<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionConfig")
            .field("capacity", &self.capacity)
            .field("overflow", &self.overflow)
            .field("filter", &self.filter.is_some())
            .finish()
    }
}

/// Where a claim-checked payload came from, and how to turn it back into `T`.
pub(crate) struct CheckedSource<T> {
    pub(crate) topic: Arc<str>,
    pub(crate) claims: ClaimCheck,
    pub(crate) decode: fn(&[u8]) -> Result<T, String>,
    pub(crate) dead_letter: Option<SharedHook>,
    pub(crate) dropped_claim: metrics::Counter,
}

pub(crate) fn decode_postcard<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

/// What a subscription buffers: the message, or a ticket for it. The rare
/// ticket is boxed so that it does not make every inline message larger to
/// move.
pub(crate) enum Item<T> {
    /// Shared by every subscription the publish reached.
    Inline(Arc<Envelope<T>>),
    Checked(Box<Envelope<Ticket>>, Arc<CheckedSource<T>>),
}

impl<T> Item<T> {
    /// Gives back the claim-check reference this item holds, if any.
    pub(crate) fn release(self) {
        if let Item::Checked(env, src) = self {
            src.claims.release_detached(env.payload, 1);
        }
    }
}

/// Why a subscription closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CloseReason {
    Open = 0,
    Unsubscribed = 1,
    SubscriberDead = 2,
}

impl CloseReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            CloseReason::Open => "open",
            CloseReason::Unsubscribed => "unsubscribed",
            CloseReason::SubscriberDead => "subscriber_dead",
        }
    }
}

struct State<T> {
    buf: BoundedBuffer<Item<T>>,
    /// The subscriber, when it waits for a message.
    rx: Option<Waker>,
    /// Publishers waiting for room (`block`).
    blocked: Vec<Waker>,
}

/// The outcome of offering a message to a subscription.
pub(crate) enum Offer<T> {
    /// Buffered.
    Accepted,
    /// Buffered; this older message was evicted (`drop_oldest`).
    Evicted(Item<T>),
    /// Not buffered (`drop_newest`).
    Dropped(Item<T>),
    /// Not buffered (`dead_letter`).
    DeadLetter(Item<T>),
    /// Not buffered (`reject`).
    Rejected(Item<T>),
    /// Not buffered: full under `block`; wait and offer again.
    Full(Item<T>),
    /// The subscription is closed.
    Closed(Item<T>),
}

/// The shared part of a subscription: what topics push into.
pub(crate) struct SubCore<T> {
    pub(crate) id: SubscriptionId,
    pub(crate) pattern: Pattern,
    filter: Option<Filter<T>>,
    policy: OverflowPolicy,
    state: Mutex<State<T>>,
    closed: AtomicBool,
    reason: AtomicU8,
    /// For subscribers that can die without closing (actors): false once dead.
    alive: OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
    lost: AtomicU64,
}

impl<T> SubCore<T> {
    pub(crate) fn new(pattern: Pattern, config: SubscriptionConfig<T>) -> Self {
        SubCore {
            id: SubscriptionId::next(),
            pattern,
            filter: config.filter,
            policy: config.overflow,
            state: Mutex::new(State {
                buf: BoundedBuffer::new(config.capacity, config.overflow),
                rx: None,
                blocked: Vec::new(),
            }),
            closed: AtomicBool::new(false),
            reason: AtomicU8::new(CloseReason::Open as u8),
            alive: OnceLock::new(),
            lost: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_liveness(&self, alive: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.alive.set(Box::new(alive));
    }

    pub(crate) fn policy(&self) -> OverflowPolicy {
        self.policy
    }

    /// True when the subscription takes `env` (its filter accepts it).
    pub(crate) fn accepts(&self, env: &Envelope<T>) -> bool {
        self.filter.as_ref().is_none_or(|f| f(env))
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// True while the subscription is open and its subscriber alive.
    pub(crate) fn is_live(&self) -> bool {
        !self.is_closed() && self.alive.get().is_none_or(|alive| alive())
    }

    pub(crate) fn close_reason(&self) -> CloseReason {
        match self.reason.load(Ordering::Acquire) {
            1 => CloseReason::Unsubscribed,
            2 => CloseReason::SubscriberDead,
            _ => CloseReason::Open,
        }
    }

    /// Closes the subscription: nothing more is buffered, buffered tickets
    /// are released, the subscriber and blocked publishers are woken.
    pub(crate) fn close(&self, reason: CloseReason) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.reason.store(reason as u8, Ordering::Release);
        let (items, rx, blocked) = {
            let mut st = self.lock();
            let items: Vec<Item<T>> = st.buf.drain().collect();
            (items, st.rx.take(), std::mem::take(&mut st.blocked))
        };
        self.lost.fetch_add(items.len() as u64, Ordering::Relaxed);
        items.into_iter().for_each(Item::release);
        rx.into_iter().chain(blocked).for_each(Waker::wake);
    }

    /// Offers `item` without waiting.
    pub(crate) fn offer(&self, item: Item<T>) -> Offer<T> {
        let mut st = self.lock();
        if self.is_closed() {
            return Offer::Closed(item);
        }
        let out = match st.buf.push(item) {
            Push::Accepted => Offer::Accepted,
            Push::Evicted(old) => Offer::Evicted(old),
            Push::Dropped(item) => return Offer::Dropped(item),
            Push::DeadLetter(item) => return Offer::DeadLetter(item),
            Push::Full(item) if self.policy == OverflowPolicy::Block => return Offer::Full(item),
            Push::Full(item) => return Offer::Rejected(item),
        };
        let rx = st.rx.take();
        drop(st);
        if let Some(rx) = rx {
            rx.wake();
        }
        out
    }

    /// Buffers `env` when there is room: the publish fast path, kept apart
    /// from [`offer`](Self::offer) so that nothing but a pointer moves
    /// (returning the item through `Offer` cost a stalled copy per
    /// subscription). `None` when buffered, else what `offer` made of it.
    #[inline]
    pub(crate) fn offer_shared(&self, env: &Arc<Envelope<T>>) -> Option<Offer<T>> {
        let mut st = self.lock();
        if self.is_closed() || st.buf.is_full() {
            drop(st);
            return Some(self.offer(Item::Inline(env.clone())));
        }
        st.buf.push_back(Item::Inline(env.clone()));
        let rx = st.rx.take();
        drop(st);
        if let Some(rx) = rx {
            rx.wake();
        }
        None
    }

    /// Offers `item`, waiting for room when the buffer is full under `block`.
    pub(crate) async fn offer_waiting(&self, item: Item<T>) -> Offer<T> {
        let mut slot = Some(item);
        poll_fn(|cx| {
            let Some(item) = slot.take() else {
                return Poll::Ready(Offer::Accepted);
            };
            match self.offer(item) {
                Offer::Full(item) => {
                    let mut st = self.lock();
                    if self.is_closed() {
                        return Poll::Ready(Offer::Closed(item));
                    }
                    // Room may have appeared since `offer` looked.
                    if !st.buf.is_full() {
                        drop(st);
                        slot = Some(item);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    st.blocked.push(cx.waker().clone());
                    slot = Some(item);
                    Poll::Pending
                }
                other => Poll::Ready(other),
            }
        })
        .await
    }

    /// Moves everything buffered into `local`, or registers the subscriber's
    /// waker. Ready(false) once closed and empty.
    fn poll_take(&self, local: &mut VecDeque<Item<T>>, cx: &mut Context<'_>) -> Poll<bool> {
        let mut st = self.lock();
        if !st.buf.is_empty() {
            st.buf.take_all(local);
            let blocked = std::mem::take(&mut st.blocked);
            drop(st);
            blocked.into_iter().for_each(Waker::wake);
            return Poll::Ready(true);
        }
        if self.is_closed() {
            return Poll::Ready(false);
        }
        st.rx = Some(cx.waker().clone());
        Poll::Pending
    }

    fn buffered(&self) -> (usize, usize) {
        let st = self.lock();
        (st.buf.len(), st.buf.iter().filter(|i| matches!(i, Item::Checked(..))).count())
    }

    pub(crate) fn count_lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }
}

/// Counters of one subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Messages handed to the subscriber.
    pub received: u64,
    /// Messages this subscription lost: evicted or dropped by its overflow
    /// policy, refused under `reject`, dead-lettered, unclaimable, or left in
    /// its buffer when it closed.
    pub lost: u64,
    /// Messages waiting in its buffer.
    pub buffered: usize,
    /// Of those, how many wait as claim-check tickets.
    pub buffered_tickets: usize,
}

/// The subscriber's end of a subscription: messages in publish order (per
/// topic), each at most once.
///
/// Dropping it unsubscribes: topics stop buffering for it and forget it, and
/// claim-check payloads it held are released. It is also a
/// `futures::Stream` of envelopes, for `StreamExt` combinators.
///
/// ```no_run
/// # async fn f(mut sub: actorbus_actors::topic::Subscription<String>) {
/// while let Some(envelope) = sub.next().await {
///     println!("{}: {}", envelope.id, envelope.payload);
/// }
/// # }
/// ```
pub struct Subscription<T> {
    core: Arc<SubCore<T>>,
    local: VecDeque<Item<T>>,
    /// Only this end counts what it hands out: no shared write per message.
    received: u64,
    /// A ticket being claimed. Kept here, not in the `next` future, so that
    /// a dropped `next` loses nothing and the common inline path carries no
    /// claim state.
    claiming: Option<Claiming<T>>,
}

type Claiming<T> = Pin<Box<dyn Future<Output = Option<Envelope<T>>> + Send>>;

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").field("id", &self.core.id).field("pattern", &self.core.pattern).finish()
    }
}

impl<T: Clone + Send + 'static> Subscription<T> {
    pub(crate) fn new(core: Arc<SubCore<T>>) -> Self {
        Subscription { core, local: VecDeque::new(), received: 0, claiming: None }
    }

    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.core.id
    }

    /// The subject pattern it was made with.
    pub fn pattern(&self) -> &str {
        self.core.pattern.as_str()
    }

    /// The next message; `None` once the subscription is closed.
    ///
    /// A message that travelled as a claim-check ticket is claimed here
    /// (verified and released); one that cannot be claimed is
    /// dead-lettered, counted, and skipped. Cancel-safe: dropping the
    /// future loses no message (a claim in progress goes on at the next
    /// call).
    pub async fn next(&mut self) -> Option<Envelope<T>> {
        poll_fn(|cx| self.poll_next_message(cx)).await
    }

    /// The next message, polled: what [`next`](Self::next) and the
    /// `Stream` impl are made of.
    pub fn poll_next_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Envelope<T>>> {
        loop {
            if let Some(claim) = &mut self.claiming {
                let claimed = ready!(claim.as_mut().poll(cx));
                self.claiming = None;
                match claimed {
                    Some(env) => {
                        self.received += 1;
                        return Poll::Ready(Some(env));
                    }
                    None => {
                        self.core.count_lost(1);
                        continue;
                    }
                }
            }
            match self.local.pop_front() {
                Some(Item::Inline(env)) => {
                    self.received += 1;
                    // The last subscription to take it takes it whole. The
                    // others clone without first trying to take it (a failed
                    // compare-and-swap per delivery): a count above one read
                    // here can only fall, which costs a needless clone at worst.
                    let env = if Arc::strong_count(&env) == 1 { Arc::unwrap_or_clone(env) } else { (*env).clone() };
                    return Poll::Ready(Some(env));
                }
                Some(Item::Checked(env, src)) => self.claiming = Some(Box::pin(resolve(*env, src))),
                None => {
                    if !ready!(self.core.poll_take(&mut self.local, cx)) {
                        return Poll::Ready(None);
                    }
                }
            }
        }
    }

    /// Counters and buffer occupancy.
    pub fn stats(&self) -> SubscriptionStats {
        let (buffered, tickets) = self.core.buffered();
        let local_tickets = self.local.iter().filter(|i| matches!(i, Item::Checked(..))).count();
        let claiming = usize::from(self.claiming.is_some());
        SubscriptionStats {
            received: self.received,
            lost: self.core.lost.load(Ordering::Relaxed),
            buffered: buffered + self.local.len() + claiming,
            buffered_tickets: tickets + local_tickets + claiming,
        }
    }

    /// Unsubscribes (the same as dropping it).
    pub fn close(self) {}

    /// The messages as a `futures::Stream` (a subscription is one already;
    /// this names the type away).
    pub fn into_stream(self) -> impl futures::Stream<Item = Envelope<T>> {
        self
    }
}

impl<T: Clone + Send + 'static> futures::Stream for Subscription<T> {
    type Item = Envelope<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Envelope<T>>> {
        self.get_mut().poll_next_message(cx)
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.core.close(CloseReason::Unsubscribed);
        let claiming = u64::from(self.claiming.is_some());
        self.core.count_lost(self.local.len() as u64 + claiming);
        self.local.drain(..).for_each(Item::release);
    }
}

async fn resolve<T>(env: Envelope<Ticket>, src: Arc<CheckedSource<T>>) -> Option<Envelope<T>> {
    let ticket = env.payload;
    let failure = match src.claims.claim(&ticket).await {
        Ok(bytes) => {
            let decoded = (src.decode)(&bytes);
            drop(bytes);
            if let Err(e) = src.claims.release(&ticket).await {
                tracing::warn!(ticket = %ticket.id, error = %e, "claim check: release failed; the sweep will free it");
            }
            match decoded {
                Ok(payload) => return Some(env.map(|_| payload)),
                Err(e) => FailureReason::ClaimCheck(format!("payload of ticket {} does not decode: {e}", ticket.id)),
            }
        }
        Err(e) => {
            // Give back this subscriber's reference; what is left (a
            // tampered payload others hold) goes at its expiry.
            let _ = src.claims.release(&ticket).await;
            FailureReason::ClaimCheck(e.to_string())
        }
    };
    src.dropped_claim.increment(1);
    tracing::warn!(topic = %src.topic, message_id = %env.id, reason = %failure, "claim check failed; dead-lettering");
    let letter = serde_json::to_value(&env).unwrap_or_else(|e| serde_json::json!({ "unserializable": e.to_string() }));
    match &src.dead_letter {
        Some(hook) => {
            if let Err(e) = hook.dead_letter(Undeliverable::new("topic", src.topic.to_string(), failure, letter)).await
            {
                tracing::error!(topic = %src.topic, error = %e, "dead letter hook failed");
            }
        }
        None => tracing::warn!(topic = %src.topic, "no dead letter hook installed: the message is only counted"),
    }
    None
}

/// What an actor subscribed with [`Topics::subscribe_recipient`](super::Topics::subscribe_recipient)
/// receives.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Published<T: 'static> {
    /// The subscription that delivered it.
    pub subscription: SubscriptionId,
    /// The message.
    pub envelope: Envelope<T>,
}

/// Delivers a subscription to an actor, one message at a time: the next
/// message is sent once the actor handled the previous one, so the actor's
/// mailbox never holds more than one and the subscription's buffer (with its
/// overflow policy) is where a slow actor's backlog waits. An actor that
/// stopped ends the subscription.
pub(crate) fn pump<T: Clone + Send + 'static>(mut sub: Subscription<T>, recipient: Recipient<Published<T>>) {
    let watch = recipient.clone();
    sub.core.set_liveness(move || watch.connected());
    actix_rt::spawn(async move {
        while let Some(envelope) = sub.next().await {
            let id = sub.id();
            if recipient.send(Published { subscription: id, envelope }).await.is_err() {
                // The message was lost with the actor (at-most-once).
                sub.core.count_lost(1);
                sub.core.close(CloseReason::SubscriberDead);
                break;
            }
        }
    });
}

pub(crate) fn counter(name: &'static str, topic: &str, reason: &'static str) -> metrics::Counter {
    metrics::counter!(name, m::LABEL_NAME => topic.to_owned(), m::LABEL_REASON => reason)
}
