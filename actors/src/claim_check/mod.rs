//! Claim Check (DESIGN §6.9): park a large payload in a store and send a
//! small ticket in its place.
//!
//! A message bus is a poor place for a 5 MB payload: every buffer it waits
//! in holds it, every subscriber's copy is another 5 MB, and a persistent
//! queue writes it to its log on every redelivery. The claim check pattern
//! (Hohpe & Woolf; Camel's `claimCheck`, MassTransit's message data) stores
//! the payload once and sends a [`Ticket`] instead:
//!
//! ```text
//!  sender ── check_in(bytes) ──► ClaimCheck ──► Ticket {id, size, sha256, expires_at}
//!    │                                                  │
//!    └──────── envelope with the ticket (~100 B) ───────┴──► consumer ── claim(&ticket) ──► bytes
//!                                                                        release(&ticket) on ack
//! ```
//!
//! - **Tickets are unguessable**: the id is 128 random bits from the
//!   operating system's seeded CSPRNG, so holding a ticket is the capability
//!   to claim the payload.
//! - **Claims are verified**: [`ClaimCheck::claim`] hashes what the store
//!   returns and compares it with the ticket's size and SHA-256; a payload
//!   changed at rest is a [`ClaimError::DigestMismatch`], never silently
//!   handed to a handler.
//! - **A missing payload is a typed error** ([`ClaimError::NotFound`],
//!   [`ClaimError::Expired`]); the pattern that holds the message
//!   dead-letters it with reason `claim_check` (see
//!   [`FailureReason::ClaimCheck`](crate::error::FailureReason::ClaimCheck)).
//! - **Payloads are reference counted**: [`ClaimCheck::check_in_shared`]
//!   stores one payload for `n` consumers (the subscriptions of a topic that
//!   matched); each consumer [`release`](ClaimCheck::release)s it when done
//!   (on ack, on delivery to a plain subscriber, on a drop by overflow) and
//!   the last release deletes it. [`delete`](ClaimCheck::delete) removes it
//!   whatever the count (a DLQ purge). Whatever is left behind — a consumer
//!   that crashed, a message nobody acked — is deleted at its expiry by
//!   [`sweep_expired`](ClaimCheck::sweep_expired), which
//!   [`start_sweeper`](ClaimCheck::start_sweeper) runs periodically.
//!
//! ## Backends
//!
//! [`MemoryClaims`] keeps payloads in process memory (claims cost a
//! reference count, no copy); [`SqliteClaims`] keeps them as BLOBs in
//! `claims.sqlite3` of the [`DataDir`], durable once `check_in` returns,
//! and its calls run on tokio's blocking pool so they never stall an
//! arbiter. Any other store (an object store, a file per payload)
//! implements [`ClaimBackend`].
//!
//! ## Transparent use by queues and topics
//!
//! A topic configured with a threshold (see
//! [`TopicConfig::claim_check`](crate::topic::TopicConfig::claim_check))
//! checks in every payload whose encoded size exceeds it, once per publish,
//! with one reference per matching subscription; subscriptions buffer the
//! ticket and claim on delivery, so handlers only ever see the payload.
//! Queues (see [`QueueConfig::claim_check`](crate::queue::QueueConfig::claim_check))
//! follow the same contract: `check_in` on send, `claim` on delivery,
//! `release` on the ack; a dead letter keeps the ticket (under
//! [`TICKET_FIELD`]) and a DLQ purge `delete`s the payload.
//!
//! ```
//! use actorbus_actors::claim_check::{ClaimCheck, ClaimError};
//!
//! actix_rt::System::new().block_on(async {
//!     let claims = ClaimCheck::in_memory();
//!     let ticket = claims.check_in(vec![7u8; 1 << 20]).await?;
//!     assert_eq!(ticket.size, 1 << 20);
//!     assert_eq!(claims.claim(&ticket).await?.len(), 1 << 20);
//!     assert!(claims.release(&ticket).await?, "the last (only) consumer frees it");
//!     assert!(matches!(claims.claim(&ticket).await, Err(ClaimError::NotFound(_))));
//!     Ok::<_, ClaimError>(())
//! })?;
//! # Ok::<_, ClaimError>(())
//! ```

mod backend;

pub use backend::{ClaimBackend, MemoryClaims, Released, SqliteClaims, StoredPayload, CLAIM_MIGRATIONS};

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::envelope::Timestamp;
use crate::metrics as m;
use crate::store::{DataDir, StoreError};

/// A ticket's id: 128 random bits, printed as 32 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TicketId(pub u128);

impl TicketId {
    /// A fresh, unguessable id (thread-local CSPRNG seeded by the OS).
    pub fn random() -> Self {
        TicketId(rand::random())
    }
}

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for TicketId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(TicketId)
    }
}

impl Serialize for TicketId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for TicketId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            u128::deserialize(d).map(TicketId)
        }
    }
}

/// A SHA-256 digest, printed as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let bad = || serde::de::Error::custom("a SHA-256 digest is 64 hex digits");
            if s.len() != 64 || !s.is_ascii() {
                return Err(bad());
            }
            let mut out = [0u8; 32];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
            }
            Ok(Sha256Digest(out))
        } else {
            <[u8; 32]>::deserialize(d).map(Sha256Digest)
        }
    }
}

/// What a consumer needs to claim a payload: small enough to travel in any
/// envelope (JSON: about 170 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ticket {
    /// Where the payload is.
    pub id: TicketId,
    /// Its length in bytes.
    pub size: u64,
    /// Its SHA-256, checked on every claim.
    pub sha256: Sha256Digest,
    /// When the store may delete it whether or not it was released.
    pub expires_at: Timestamp,
}

/// The field under which a serialized envelope carries a claim-check ticket
/// in place of its payload (`{"payload": {"$claim_check": {..ticket..}}}`):
/// how a queue's dead letters keep a large payload out of the DLQ.
pub const TICKET_FIELD: &str = "$claim_check";

/// The ticket a serialized envelope carries in place of its payload (see
/// [`TICKET_FIELD`]), if it carries one.
///
/// ```
/// use actorbus_actors::claim_check::ticket_in;
/// let plain = serde_json::json!({ "payload": { "order": 42 } });
/// assert_eq!(ticket_in(&plain), None);
/// let odd = serde_json::json!({ "payload": { "$claim_check": "not a ticket" } });
/// assert_eq!(ticket_in(&odd), None);
/// ```
pub fn ticket_in(envelope: &serde_json::Value) -> Option<Ticket> {
    let payload = envelope.get("payload")?.as_object()?;
    if payload.len() != 1 {
        return None;
    }
    serde_json::from_value(payload.get(TICKET_FIELD)?.clone()).ok()
}

/// Why a claim-check operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Nothing is stored under the ticket (released, purged, swept, or
    /// never checked in here).
    #[error("no payload for ticket {0}")]
    NotFound(TicketId),
    /// The ticket's expiry passed; the payload is deleted.
    #[error("ticket {0} expired")]
    Expired(TicketId),
    /// What the store returned is not what was checked in.
    #[error("payload of ticket {id} fails verification (expected {expected_size} bytes sha256 {expected}, got {actual_size} bytes sha256 {actual})")]
    DigestMismatch {
        /// The ticket.
        id: TicketId,
        /// The ticket's size.
        expected_size: u64,
        /// The ticket's digest.
        expected: Sha256Digest,
        /// The stored payload's size.
        actual_size: u64,
        /// The stored payload's digest.
        actual: Sha256Digest,
    },
    /// The store failed.
    #[error("claim check: {0}")]
    Store(#[from] StoreError),
}

impl ClaimError {
    /// The metric label for this outcome: `not_found`, `expired`,
    /// `digest_mismatch` or `store_error`.
    pub fn code(&self) -> &'static str {
        match self {
            ClaimError::NotFound(_) => "not_found",
            ClaimError::Expired(_) => "expired",
            ClaimError::DigestMismatch { .. } => "digest_mismatch",
            ClaimError::Store(_) => "store_error",
        }
    }
}

/// How much a claim store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimStats {
    /// Payloads stored.
    pub payloads: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

struct Metrics {
    checked_in: metrics::Counter,
    checked_in_bytes: metrics::Counter,
    claimed_ok: metrics::Counter,
    released: metrics::Counter,
    expired: metrics::Counter,
    stored_bytes: metrics::Gauge,
    stored_payloads: metrics::Gauge,
    name: Arc<str>,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let label = || name.to_owned();
        Metrics {
            checked_in: metrics::counter!(m::CLAIM_CHECK_CHECKED_IN, m::LABEL_NAME => label()),
            checked_in_bytes: metrics::counter!(m::CLAIM_CHECK_CHECKED_IN_BYTES, m::LABEL_NAME => label()),
            claimed_ok: metrics::counter!(m::CLAIM_CHECK_CLAIMS, m::LABEL_NAME => label(), m::LABEL_OUTCOME => "ok"),
            released: metrics::counter!(m::CLAIM_CHECK_FREED, m::LABEL_NAME => label()),
            expired: metrics::counter!(m::CLAIM_CHECK_EXPIRED, m::LABEL_NAME => label()),
            stored_bytes: metrics::gauge!(m::CLAIM_CHECK_STORED_BYTES, m::LABEL_NAME => label()),
            stored_payloads: metrics::gauge!(m::CLAIM_CHECK_STORED_PAYLOADS, m::LABEL_NAME => label()),
            name: name.into(),
        }
    }

    fn claim_failed(&self, e: &ClaimError) {
        metrics::counter!(m::CLAIM_CHECK_CLAIMS, m::LABEL_NAME => self.name.to_string(), m::LABEL_OUTCOME => e.code())
            .increment(1);
    }
}

struct Inner {
    backend: Arc<dyn ClaimBackend>,
    ttl: Duration,
    metrics: Metrics,
    /// Payloads and bytes stored, mirrored for the gauges.
    payloads: AtomicI64,
    bytes: AtomicI64,
}

/// A claim-check store: cheap to clone, every clone the same store.
#[derive(Clone)]
pub struct ClaimCheck {
    inner: Arc<Inner>,
}

impl fmt::Debug for ClaimCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimCheck").field("name", &self.inner.metrics.name).field("ttl", &self.inner.ttl).finish()
    }
}

impl ClaimCheck {
    /// Tickets expire this long after check-in unless told otherwise.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

    /// A store in process memory, named `memory` in metrics.
    pub fn in_memory() -> Self {
        Self::with_backend("memory", Arc::new(MemoryClaims::default()))
            .unwrap_or_else(|_| unreachable!("the memory backend does not fail"))
    }

    /// The durable store of `dir` (`claims.sqlite3`), named `sqlite` in
    /// metrics.
    pub fn open(dir: &DataDir) -> Result<Self, StoreError> {
        Self::with_backend("sqlite", Arc::new(SqliteClaims::open(dir)?))
    }

    /// A store over any backend; `name` labels its metrics. Reads the
    /// backend's current size for the gauges.
    pub fn with_backend(name: &str, backend: Arc<dyn ClaimBackend>) -> Result<Self, StoreError> {
        let stats = backend.stats()?;
        let inner = Inner {
            backend,
            ttl: Self::DEFAULT_TTL,
            metrics: Metrics::new(name),
            payloads: AtomicI64::new(i64::try_from(stats.payloads).unwrap_or(i64::MAX)),
            bytes: AtomicI64::new(i64::try_from(stats.bytes).unwrap_or(i64::MAX)),
        };
        let claims = ClaimCheck { inner: Arc::new(inner) };
        claims.update_gauges(0, 0);
        Ok(claims)
    }

    /// The same store with another default time to live for new tickets.
    /// Must be called before the store is shared (clones made earlier keep
    /// the old value).
    pub fn with_ttl(self, ttl: Duration) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.ttl = ttl;
                ClaimCheck { inner: Arc::new(inner) }
            }
            Err(inner) => {
                tracing::warn!("ClaimCheck::with_ttl on a shared store is ignored");
                ClaimCheck { inner }
            }
        }
    }

    /// The default time to live of new tickets.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The backend, for inspection and tests.
    pub fn backend(&self) -> &Arc<dyn ClaimBackend> {
        &self.inner.backend
    }

    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ClaimBackend) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let backend = self.inner.backend.clone();
        if !backend.blocking() {
            return f(backend.as_ref());
        }
        match actix_rt::task::spawn_blocking(move || f(backend.as_ref())).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Unavailable(format!("claim-check worker: {e}"))),
        }
    }

    fn update_gauges(&self, payloads: i64, bytes: i64) {
        let p = self.inner.payloads.fetch_add(payloads, Ordering::Relaxed) + payloads;
        let b = self.inner.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.inner.metrics.stored_payloads.set(p as f64);
        self.inner.metrics.stored_bytes.set(b as f64);
    }

    fn freed(&self, size: u64) {
        self.inner.metrics.released.increment(1);
        self.update_gauges(-1, -i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// Stores `bytes` for one consumer with the default time to live.
    pub async fn check_in(&self, bytes: impl Into<Bytes>) -> Result<Ticket, ClaimError> {
        self.check_in_shared(bytes, 1, None).await
    }

    /// Stores `bytes` for `consumers` consumers (at least 1), each of which
    /// releases it once; expires after `ttl` (the store's default when
    /// `None`).
    pub async fn check_in_shared(
        &self,
        bytes: impl Into<Bytes>,
        consumers: u32,
        ttl: Option<Duration>,
    ) -> Result<Ticket, ClaimError> {
        let bytes: Bytes = bytes.into();
        let size = bytes.len() as u64;
        let ticket = Ticket {
            id: TicketId::random(),
            size,
            sha256: Sha256Digest::of(&bytes),
            expires_at: Timestamp::now().after(ttl.unwrap_or(self.inner.ttl)),
        };
        let (id, expires_at, refs) = (ticket.id, ticket.expires_at, consumers.max(1));
        self.run(move |b| b.put(id, bytes, expires_at, refs)).await?;
        self.inner.metrics.checked_in.increment(1);
        self.inner.metrics.checked_in_bytes.increment(size);
        self.update_gauges(1, i64::try_from(size).unwrap_or(i64::MAX));
        Ok(ticket)
    }

    /// The payload of `ticket`, verified against its size and digest. Does
    /// not release it. An expired ticket's payload is deleted and the claim
    /// fails with [`ClaimError::Expired`].
    pub async fn claim(&self, ticket: &Ticket) -> Result<Bytes, ClaimError> {
        let out = self.claim_inner(ticket).await;
        match &out {
            Ok(_) => self.inner.metrics.claimed_ok.increment(1),
            Err(e) => self.inner.metrics.claim_failed(e),
        }
        out
    }

    async fn claim_inner(&self, ticket: &Ticket) -> Result<Bytes, ClaimError> {
        let id = ticket.id;
        if ticket.expires_at <= Timestamp::now() {
            self.expire(id).await?;
            return Err(ClaimError::Expired(id));
        }
        let stored = self.run(move |b| b.get(id)).await?.ok_or(ClaimError::NotFound(id))?;
        if stored.expires_at <= Timestamp::now() {
            self.expire(id).await?;
            return Err(ClaimError::Expired(id));
        }
        let bytes = stored.bytes;
        let actual = Sha256Digest::of(&bytes);
        if bytes.len() as u64 != ticket.size || actual != ticket.sha256 {
            return Err(ClaimError::DigestMismatch {
                id,
                expected_size: ticket.size,
                expected: ticket.sha256,
                actual_size: bytes.len() as u64,
                actual,
            });
        }
        Ok(bytes)
    }

    async fn expire(&self, id: TicketId) -> Result<(), ClaimError> {
        if let Some(size) = self.run(move |b| b.delete(id)).await? {
            self.inner.metrics.expired.increment(1);
            self.update_gauges(-1, -i64::try_from(size).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    /// One consumer is done with `ticket`; true when that was the last
    /// reference and the payload is deleted. Releasing a payload that is
    /// already gone is not an error (false).
    pub async fn release(&self, ticket: &Ticket) -> Result<bool, ClaimError> {
        self.release_n(ticket, 1).await
    }

    /// `n` consumers are done with `ticket` at once.
    pub async fn release_n(&self, ticket: &Ticket, n: u32) -> Result<bool, ClaimError> {
        let id = ticket.id;
        match self.run(move |b| b.release(id, n)).await? {
            Released::Freed(size) => {
                self.freed(size);
                Ok(true)
            }
            Released::Remaining(_) | Released::Missing => Ok(false),
        }
    }

    /// Releases `n` references without waiting: on a task of the current
    /// arbiter when there is one, inline otherwise. For paths that cannot
    /// await (a subscription being dropped); a failure is logged, and the
    /// payload is then deleted at its expiry.
    pub fn release_detached(&self, ticket: Ticket, n: u32) {
        if n == 0 {
            return;
        }
        let claims = self.clone();
        let work = async move {
            if let Err(e) = claims.release_n(&ticket, n).await {
                tracing::warn!(ticket = %ticket.id, error = %e, "claim check: release failed; the sweep will free it");
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            actix_rt::spawn(work);
        } else {
            futures::executor::block_on(work);
        }
    }

    /// Deletes the payload whatever its references (a dead letter purged);
    /// true when it existed.
    pub async fn delete(&self, ticket: &Ticket) -> Result<bool, ClaimError> {
        let id = ticket.id;
        match self.run(move |b| b.delete(id)).await? {
            Some(size) => {
                self.freed(size);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Deletes every expired payload; how many.
    pub async fn sweep_expired(&self) -> Result<usize, ClaimError> {
        let now = Timestamp::now();
        let swept = self.run(move |b| b.sweep(now)).await?;
        let bytes: u64 = swept.iter().map(|(_, size)| size).sum();
        self.inner.metrics.expired.increment(swept.len() as u64);
        self.update_gauges(-(swept.len() as i64), -i64::try_from(bytes).unwrap_or(i64::MAX));
        Ok(swept.len())
    }

    /// Runs [`sweep_expired`](Self::sweep_expired) every `every` on the
    /// current arbiter until the returned handle is aborted.
    pub fn start_sweeper(&self, every: Duration) -> actix_rt::task::JoinHandle<()> {
        let claims = self.clone();
        actix_rt::spawn(async move {
            let mut tick = actix_rt::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = claims.sweep_expired().await {
                    tracing::warn!(error = %e, "claim check: expiry sweep failed");
                }
            }
        })
    }

    /// Payloads and bytes stored now (asks the backend).
    pub async fn stats(&self) -> Result<ClaimStats, ClaimError> {
        Ok(self.run(|b| b.stats()).await?)
    }
}
