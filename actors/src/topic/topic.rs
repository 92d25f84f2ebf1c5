//! The topic actor and its handle: fan-out of published messages to the
//! subscriptions that match.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use actix::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::durable::{DurableError, DurableSink};
use super::subject::{validate_subject, InvalidSubject};
use super::subscription::{
    counter, decode_postcard, CheckedSource, CloseReason, Item, Offer, SubCore, Subscription, SubscriptionConfig,
};
use super::Pattern;
use crate::claim_check::{ClaimCheck, ClaimError};
use crate::dead_letter::{SharedHook, Undeliverable};
use crate::envelope::{Envelope, MessageId};
use crate::error::FailureReason;
use crate::metrics as m;

type Encode<T> = fn(&T) -> Result<Vec<u8>, String>;
type ToJson<T> = fn(&Envelope<T>) -> Value;

fn encode_postcard<T: Serialize>(payload: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(payload).map_err(|e| e.to_string())
}

fn to_json<T: Serialize>(env: &Envelope<T>) -> Value {
    serde_json::to_value(env).unwrap_or_else(|e| serde_json::json!({ "unserializable": e.to_string() }))
}

struct ClaimConfig<T> {
    claims: ClaimCheck,
    threshold: usize,
    ttl: Option<Duration>,
    encode: Encode<T>,
    decode: fn(&[u8]) -> Result<T, String>,
}

/// How a topic behaves beyond its subscriptions' own settings.
pub struct TopicConfig<T> {
    claim: Option<ClaimConfig<T>>,
    dead_letter: Option<(SharedHook, ToJson<T>)>,
    sweep_every: Duration,
}

impl<T> Default for TopicConfig<T> {
    fn default() -> Self {
        TopicConfig { claim: None, dead_letter: None, sweep_every: Duration::from_secs(1) }
    }
}

impl<T> fmt::Debug for TopicConfig<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicConfig")
            .field("claim_check_threshold", &self.claim.as_ref().map(|c| c.threshold))
            .field("dead_letter", &self.dead_letter.is_some())
            .field("sweep_every", &self.sweep_every)
            .finish()
    }
}

impl<T> TopicConfig<T> {
    /// The defaults: no claim check, no dead letter hook, dead subscribers
    /// swept every second.
    pub fn new() -> Self {
        Self::default()
    }

    /// How often the topic checks for subscribers that died without
    /// unsubscribing (default 1 s). Subscribers found dead while publishing
    /// are removed at once.
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_every = every.max(Duration::from_millis(1));
        self
    }
}

impl<T: Serialize + DeserializeOwned> TopicConfig<T> {
    /// Payloads whose encoded size (postcard) is above `threshold_bytes`
    /// travel as claim-check tickets: checked in to `claims` once per
    /// publish, with one reference per matching subscription, and claimed
    /// (verified, released) when each subscriber takes the message.
    /// Subscribers only ever see the payload.
    ///
    /// For byte payloads prefer `bytes::Bytes` (or `serde_bytes`) over
    /// `Vec<u8>`: serde encodes a `Vec<u8>` element by element, which
    /// costs more than the claim itself for multi-megabyte payloads.
    pub fn claim_check(mut self, claims: ClaimCheck, threshold_bytes: usize) -> Self {
        self.claim = Some(ClaimConfig {
            claims,
            threshold: threshold_bytes,
            ttl: None,
            encode: encode_postcard::<T>,
            decode: decode_postcard::<T>,
        });
        self
    }

    /// Tickets issued by this topic expire after `ttl` (default: the store's).
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        if let Some(c) = self.claim.as_mut() {
            c.ttl = Some(ttl);
        }
        self
    }
}

impl<T: Serialize> TopicConfig<T> {
    /// Where messages go that a subscription drops under the `dead_letter`
    /// policy, or that cannot be claimed. Without a hook they are counted
    /// (`actorbus_topic_dropped_total{reason="dead_letter"}`) and logged.
    /// Topics made through the `Bus` get the bus's DLQ unless they set one.
    pub fn dead_letter(mut self, hook: SharedHook) -> Self {
        self.dead_letter = Some((hook, to_json::<T>));
        self
    }

    /// Sets `hook` unless a hook is set already.
    pub fn dead_letter_or(self, hook: SharedHook) -> Self {
        if self.dead_letter.is_some() {
            self
        } else {
            self.dead_letter(hook)
        }
    }
}

/// What one publish did so far.
struct Tally {
    receipt: PublishReceipt,
    /// Subscriptions that refused it (`reject`).
    rejected: usize,
    /// A subscription was found closed or dead: sweep.
    stale: bool,
}

/// What a publish did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The message id.
    pub id: MessageId,
    /// Subscriptions attached to the topic when it was published.
    pub subscriptions: usize,
    /// Subscriptions that buffered it.
    pub delivered: usize,
    /// Subscriptions whose filter turned it away.
    pub filtered: usize,
    /// Subscriptions that lost it or an older message to their overflow
    /// policy (`drop_oldest` evicting, `drop_newest`, `dead_letter`).
    pub dropped: usize,
    /// Durable sinks that stored it.
    pub durable: usize,
    /// True when it travelled as a claim-check ticket.
    pub claim_checked: bool,
}

impl PublishReceipt {
    /// Spelled out rather than `..Default::default()`: a default id reads
    /// the clock, once per publish for nothing.
    fn new(id: MessageId, subscriptions: usize) -> Self {
        PublishReceipt { id, subscriptions, delivered: 0, filtered: 0, dropped: 0, durable: 0, claim_checked: false }
    }
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishError {
    /// The subject is not one can publish to.
    #[error(transparent)]
    InvalidSubject(#[from] InvalidSubject),
    /// Some subscriptions under the `reject` policy were full. The others
    /// got the message (`receipt`); publishing again may duplicate it for
    /// them, as with RabbitMQ's `reject-publish`.
    #[error("{rejected} subscription(s) rejected the message: their buffers are full")]
    Rejected {
        /// How many refused it.
        rejected: usize,
        /// What happened otherwise.
        receipt: PublishReceipt,
    },
    /// A durable sink did not store the message; no plain subscription got it.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// The payload could not be checked in (or encoded for it).
    #[error("claim check: {0}")]
    ClaimCheck(String),
}

impl From<ClaimError> for PublishError {
    fn from(e: ClaimError) -> Self {
        PublishError::ClaimCheck(e.to_string())
    }
}

/// What publishers read: the subscriptions and durable sinks, replaced
/// whole when they change.
pub(crate) struct Routes<T> {
    pub(crate) subs: Vec<Arc<SubCore<T>>>,
    pub(crate) durable: Vec<Arc<dyn DurableSink<T>>>,
}

struct TopicMetrics {
    published: metrics::Counter,
    deliveries: metrics::Counter,
    filtered: metrics::Counter,
    unrouted: metrics::Counter,
    durable: metrics::Counter,
    claim_checked: metrics::Counter,
    drop_oldest: metrics::Counter,
    drop_newest: metrics::Counter,
    dead_letter: metrics::Counter,
    reject: metrics::Counter,
    closed: metrics::Counter,
    subscriptions: metrics::Gauge,
}

impl TopicMetrics {
    fn new(name: &str) -> Self {
        let c = |metric: &'static str| metrics::counter!(metric, m::LABEL_NAME => name.to_owned());
        let dropped = |reason| counter(m::TOPIC_DROPPED, name, reason);
        TopicMetrics {
            published: c(m::TOPIC_PUBLISHED),
            deliveries: c(m::TOPIC_DELIVERIES),
            filtered: c(m::TOPIC_FILTERED),
            unrouted: c(m::TOPIC_UNROUTED),
            durable: c(m::TOPIC_DURABLE_FORWARDED),
            claim_checked: c(m::TOPIC_CLAIM_CHECKED),
            drop_oldest: dropped("drop_oldest"),
            drop_newest: dropped("drop_newest"),
            dead_letter: dropped("dead_letter"),
            reject: dropped("reject"),
            closed: dropped("closed"),
            subscriptions: metrics::gauge!(m::TOPIC_SUBSCRIPTIONS, m::LABEL_NAME => name.to_owned()),
        }
    }
}

pub(crate) struct TopicShared<T: Clone + Send + Sync + 'static> {
    name: Arc<str>,
    routes: RwLock<Arc<Routes<T>>>,
    config: TopicConfig<T>,
    checked_source: Option<Arc<CheckedSource<T>>>,
    metrics: TopicMetrics,
    addr: OnceLock<Addr<TopicActor<T>>>,
    sweep_requested: AtomicBool,
}

impl<T: Clone + Send + Sync + 'static> TopicShared<T> {
    pub(crate) fn routes(&self) -> Arc<Routes<T>> {
        self.routes.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn update(&self, f: impl FnOnce(&Routes<T>) -> Routes<T>) {
        let mut guard = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let next = f(&guard);
        self.metrics.subscriptions.set(next.subs.len() as f64);
        *guard = Arc::new(next);
    }

    pub(crate) fn attach(&self, core: Arc<SubCore<T>>) {
        self.update(|r| {
            let mut subs = r.subs.clone();
            subs.push(core);
            Routes { subs, durable: r.durable.clone() }
        });
    }

    /// Forgets subscriptions that are closed or whose subscriber died.
    fn sweep(&self) -> usize {
        self.sweep_requested.store(false, Ordering::Release);
        let routes = self.routes();
        if routes.subs.iter().all(|s| s.is_live()) {
            return 0;
        }
        let mut removed = Vec::new();
        self.update(|r| {
            let (live, dead): (Vec<_>, Vec<_>) = r.subs.iter().cloned().partition(|s| s.is_live());
            removed = dead;
            Routes { subs: live, durable: r.durable.clone() }
        });
        for sub in &removed {
            if !sub.is_closed() {
                sub.close(CloseReason::SubscriberDead);
            }
            let reason = sub.close_reason().label();
            metrics::counter!(m::TOPIC_SUBSCRIPTIONS_REMOVED, m::LABEL_NAME => self.name.to_string(), m::LABEL_REASON => reason)
                .increment(1);
            tracing::debug!(topic = %self.name, subscription = %sub.id, reason, "subscription removed");
        }
        removed.len()
    }

    fn request_sweep(&self) {
        if !self.sweep_requested.swap(true, Ordering::AcqRel) {
            if let Some(addr) = self.addr.get() {
                // `try_send` respects the mailbox bound; if it is full the
                // periodic sweep does the work.
                let _ = addr.try_send(Sweep);
            }
        }
    }
}

/// Asks a topic to forget closed and dead subscriptions now.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "usize")]
pub struct Sweep;

/// The actor behind a topic: owns its membership. It removes subscriptions
/// whose subscriber unsubscribed or died (checked on a timer, and at once
/// when a publisher finds one) and keeps the subscription gauge.
///
/// Publishing and subscribing do not pass through its mailbox: a publisher
/// reads the current routes and fans out itself, which keeps a publish at a
/// few hundred nanoseconds instead of an actor round trip per message.
pub struct TopicActor<T: Clone + Send + Sync + 'static> {
    shared: Arc<TopicShared<T>>,
}

impl<T: Clone + Send + Sync + 'static> Actor for TopicActor<T> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(64);
        ctx.run_interval(self.shared.config.sweep_every, |act, _| {
            act.shared.sweep();
        });
    }
}

impl<T: Clone + Send + Sync + 'static> Handler<Sweep> for TopicActor<T> {
    type Result = usize;
    fn handle(&mut self, _: Sweep, _: &mut Context<Self>) -> usize {
        self.shared.sweep()
    }
}

/// A topic: publish to it, subscribe to it, bind durable sinks to it. Cheap
/// to clone; every clone is the same topic.
pub struct TopicHandle<T: Clone + Send + Sync + 'static> {
    shared: Arc<TopicShared<T>>,
}

impl<T: Clone + Send + Sync + 'static> Clone for TopicHandle<T> {
    fn clone(&self) -> Self {
        TopicHandle { shared: self.shared.clone() }
    }
}

impl<T: Clone + Send + Sync + 'static> fmt::Debug for TopicHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicHandle").field("name", &self.shared.name).finish()
    }
}

impl<T: Clone + Send + Sync + 'static> TopicHandle<T> {
    /// Starts the topic `name` (a subject without wildcards) on the current
    /// arbiter, with no subscriptions. Applications normally go through
    /// [`Topics`](super::Topics), which also attaches matching wildcard
    /// subscriptions.
    pub fn start(name: &str, config: TopicConfig<T>) -> Result<Self, InvalidSubject> {
        Self::start_with(name, config, Vec::new())
    }

    pub(crate) fn start_with(
        name: &str,
        config: TopicConfig<T>,
        subs: Vec<Arc<SubCore<T>>>,
    ) -> Result<Self, InvalidSubject> {
        validate_subject(name)?;
        let name: Arc<str> = name.into();
        let checked_source = config.claim.as_ref().map(|c| {
            Arc::new(CheckedSource {
                topic: name.clone(),
                claims: c.claims.clone(),
                decode: c.decode,
                dead_letter: config.dead_letter.as_ref().map(|(h, _)| h.clone()),
                dropped_claim: counter(m::TOPIC_DROPPED, &name, "claim_check"),
            })
        });
        let metrics = TopicMetrics::new(&name);
        metrics.subscriptions.set(subs.len() as f64);
        let shared = Arc::new(TopicShared {
            routes: RwLock::new(Arc::new(Routes { subs, durable: Vec::new() })),
            config,
            checked_source,
            metrics,
            addr: OnceLock::new(),
            sweep_requested: AtomicBool::new(false),
            name,
        });
        let addr = TopicActor { shared: shared.clone() }.start();
        let _ = shared.addr.set(addr);
        Ok(TopicHandle { shared })
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Subscriptions attached now (closed ones are counted until swept).
    pub fn subscription_count(&self) -> usize {
        self.shared.routes().subs.len()
    }

    /// Forgets closed and dead subscriptions now; how many it removed.
    pub async fn sweep(&self) -> usize {
        match self.shared.addr.get() {
            Some(addr) => addr.send(Sweep).await.unwrap_or_else(|_| self.shared.sweep()),
            None => self.shared.sweep(),
        }
    }

    /// Subscribes to this topic alone.
    pub fn subscribe(&self, config: SubscriptionConfig<T>) -> Subscription<T> {
        let pattern = Pattern::new(&self.shared.name).unwrap_or_else(|_| unreachable!("topic names are validated"));
        let core = Arc::new(SubCore::new(pattern, config));
        self.shared.attach(core.clone());
        Subscription::new(core)
    }

    pub(crate) fn attach(&self, core: Arc<SubCore<T>>) {
        self.shared.attach(core);
    }

    pub(crate) fn routes(&self) -> Arc<Routes<T>> {
        self.shared.routes()
    }

    pub(crate) fn request_sweep(&self) {
        self.shared.request_sweep();
    }

    /// Binds a durable sink (normally a queue; see [`durable`](super::durable)):
    /// from now on every message published here is stored by it before the
    /// publish returns.
    pub fn bind_durable(&self, sink: Arc<dyn DurableSink<T>>) {
        self.shared.update(|r| {
            let mut durable = r.durable.clone();
            durable.push(sink);
            Routes { subs: r.subs.clone(), durable }
        });
    }

    /// Removes the durable sink named `name`; true when it was bound.
    pub fn unbind_durable(&self, name: &str) -> bool {
        let mut found = false;
        self.shared.update(|r| {
            let durable: Vec<_> = r.durable.iter().filter(|d| d.name() != name).cloned().collect();
            found = durable.len() != r.durable.len();
            Routes { subs: r.subs.clone(), durable }
        });
        found
    }

    /// Publishes `payload` in a new envelope.
    pub async fn publish(&self, payload: T) -> Result<PublishReceipt, PublishError> {
        self.publish_envelope(Envelope::new(payload)).await
    }

    /// Publishes a message.
    ///
    /// Durable sinks store it first (an error fails the publish before any
    /// plain subscription sees it). Then every open subscription whose
    /// filter accepts it buffers it under its overflow policy: under
    /// `block` this waits for room; `reject` makes the publish an error
    /// once the others have it; the drop policies count what they drop; a
    /// message past its deadline is not published at all (it is counted as
    /// dead-lettered, reason `expired`).
    pub async fn publish_envelope(&self, envelope: Envelope<T>) -> Result<PublishReceipt, PublishError> {
        let sh = &self.shared;
        sh.metrics.published.increment(1);
        let routes = sh.routes();
        let receipt = PublishReceipt::new(envelope.id, routes.subs.len());
        let mut tally = Tally { receipt, rejected: 0, stale: false };
        if envelope.is_expired() || !routes.durable.is_empty() || sh.config.claim.is_some() {
            return Box::pin(self.publish_slow(envelope, routes, tally)).await;
        }
        // The common case never waits: fan out synchronously, and box the
        // rest only when a subscription makes the publisher wait, so a
        // publish future stays a few words instead of every awaited state.
        // Subscriptions share one envelope: a buffer slot is a pointer, not
        // a copy of the envelope, which keeps eight buffers in cache.
        let envelope = Arc::new(envelope);
        for (i, sub) in routes.subs.iter().enumerate() {
            if let Some(offer) = self.offer_now(sub, &envelope, &mut tally) {
                return Box::pin(self.fan_out(envelope, &routes, i, Some(offer), tally)).await;
            }
        }
        self.finish(tally)
    }

    /// Publishing through an expired deadline, durable sinks or the claim
    /// check.
    async fn publish_slow(
        &self,
        envelope: Envelope<T>,
        routes: Arc<Routes<T>>,
        mut tally: Tally,
    ) -> Result<PublishReceipt, PublishError> {
        let sh = &self.shared;
        if envelope.is_expired() {
            self.dead_letter(Item::Inline(Arc::new(envelope)), FailureReason::Expired).await;
            return Ok(tally.receipt);
        }
        for sink in &routes.durable {
            sink.forward(envelope.clone()).await?;
            tally.receipt.durable += 1;
        }
        sh.metrics.durable.increment(tally.receipt.durable as u64);
        if let Some(claim) = &sh.config.claim {
            let bytes = (claim.encode)(&envelope.payload).map_err(PublishError::ClaimCheck)?;
            if bytes.len() > claim.threshold {
                return self.publish_checked(envelope, bytes, claim, &routes, tally).await;
            }
        }
        self.fan_out(Arc::new(envelope), &routes, 0, None, tally).await
    }

    /// Offers `envelope` to `sub` without waiting and counts the outcome;
    /// gives back an offer that needs waiting (a full `block` buffer) or a
    /// dead letter to store, uncounted.
    #[inline]
    fn offer_now(&self, sub: &SubCore<T>, envelope: &Arc<Envelope<T>>, tally: &mut Tally) -> Option<Offer<T>> {
        if !sub.is_live() {
            tally.stale = true;
            return None;
        }
        if !sub.accepts(envelope) {
            tally.receipt.filtered += 1;
            return None;
        }
        let Some(offer) = sub.offer_shared(envelope) else {
            tally.receipt.delivered += 1;
            return None;
        };
        match offer {
            offer @ (Offer::Full(_) | Offer::DeadLetter(_)) => Some(offer),
            offer => {
                let none = self.account(sub, offer, tally);
                debug_assert!(none.is_none(), "only dead letters come back");
                None
            }
        }
    }

    /// Fans out to the subscriptions from index `from` on, starting with
    /// the `pending` offer made to that one, waiting where needed.
    async fn fan_out(
        &self,
        envelope: Arc<Envelope<T>>,
        routes: &Routes<T>,
        from: usize,
        mut pending: Option<Offer<T>>,
        mut tally: Tally,
    ) -> Result<PublishReceipt, PublishError> {
        for sub in &routes.subs[from..] {
            let offer = match pending.take() {
                Some(offer) => offer,
                None => match self.offer_now(sub, &envelope, &mut tally) {
                    Some(offer) => offer,
                    None => continue,
                },
            };
            let offer = match offer {
                Offer::Full(item) => sub.offer_waiting(item).await,
                offer => offer,
            };
            if let Some(item) = self.account(sub, offer, &mut tally) {
                self.dead_letter(item, FailureReason::Overflow(sub.policy().to_string())).await;
            }
        }
        self.finish(tally)
    }

    async fn publish_checked(
        &self,
        envelope: Envelope<T>,
        bytes: Vec<u8>,
        claim: &ClaimConfig<T>,
        routes: &Routes<T>,
        mut tally: Tally,
    ) -> Result<PublishReceipt, PublishError> {
        let sh = &self.shared;
        let targets: Vec<&Arc<SubCore<T>>> = routes
            .subs
            .iter()
            .filter(|s| {
                if !s.is_live() {
                    tally.stale = true;
                    return false;
                }
                let ok = s.accepts(&envelope);
                tally.receipt.filtered += usize::from(!ok);
                ok
            })
            .collect();
        if targets.is_empty() {
            return self.finish(tally);
        }
        let refs = u32::try_from(targets.len()).unwrap_or(u32::MAX);
        let ticket = claim.claims.check_in_shared(bytes, refs, claim.ttl).await?;
        sh.metrics.claim_checked.increment(1);
        tally.receipt.claim_checked = true;
        let (meta, _payload) = envelope.split();
        let checked = meta.with_payload(ticket);
        let src = sh.checked_source.clone().unwrap_or_else(|| unreachable!("set with the claim config"));
        for sub in targets {
            let offer = sub.offer_waiting(Item::Checked(Box::new(checked.clone()), src.clone())).await;
            if let Some(item) = self.account(sub, offer, &mut tally) {
                self.dead_letter(item, FailureReason::Overflow(sub.policy().to_string())).await;
            }
        }
        self.finish(tally)
    }

    /// Counts what an offer did; gives back an item to dead-letter.
    fn account(&self, sub: &SubCore<T>, offer: Offer<T>, tally: &mut Tally) -> Option<Item<T>> {
        let m = &self.shared.metrics;
        let receipt = &mut tally.receipt;
        match offer {
            Offer::Accepted => receipt.delivered += 1,
            Offer::Evicted(old) => {
                receipt.delivered += 1;
                receipt.dropped += 1;
                sub.count_lost(1);
                m.drop_oldest.increment(1);
                old.release();
            }
            Offer::Dropped(item) => {
                receipt.dropped += 1;
                sub.count_lost(1);
                m.drop_newest.increment(1);
                item.release();
            }
            Offer::DeadLetter(item) => {
                receipt.dropped += 1;
                sub.count_lost(1);
                return Some(item);
            }
            Offer::Rejected(item) => {
                tally.rejected += 1;
                sub.count_lost(1);
                m.reject.increment(1);
                item.release();
            }
            Offer::Closed(item) | Offer::Full(item) => {
                tally.stale = true;
                m.closed.increment(1);
                item.release();
            }
        }
        None
    }

    fn finish(&self, tally: Tally) -> Result<PublishReceipt, PublishError> {
        let Tally { receipt, rejected, stale } = tally;
        let m = &self.shared.metrics;
        m.deliveries.increment(receipt.delivered as u64);
        if receipt.filtered > 0 {
            m.filtered.increment(receipt.filtered as u64);
        }
        if receipt.delivered + receipt.filtered + receipt.dropped + rejected == 0 {
            m.unrouted.increment(1);
        }
        if stale {
            self.shared.request_sweep();
        }
        if rejected > 0 {
            return Err(PublishError::Rejected { rejected, receipt });
        }
        Ok(receipt)
    }

    async fn dead_letter(&self, item: Item<T>, reason: FailureReason) {
        let sh = &self.shared;
        sh.metrics.dead_letter.increment(1);
        let Some((hook, to_json)) = &sh.config.dead_letter else {
            tracing::warn!(topic = %sh.name, %reason, "no dead letter hook installed: the message is only counted");
            item.release();
            return;
        };
        let envelope = match &item {
            Item::Inline(env) => to_json(&**env),
            Item::Checked(env, _) => serde_json::to_value(&**env).unwrap_or(Value::Null),
        };
        if let Err(e) = hook.dead_letter(Undeliverable::new("topic", sh.name.to_string(), reason, envelope)).await {
            tracing::error!(topic = %sh.name, error = %e, "dead letter hook failed");
        }
        // The dead letter keeps the ticket; its payload stays until the
        // letter is purged (the DLQ deletes it) or the ticket expires.
    }
}
