//! The envelope every message travels in.
//!
//! An [`Envelope`] wraps a payload with the metadata the runtime needs to route,
//! expire, prioritise, retry and trace it (DESIGN §2). Ids are UUID v7, so they
//! sort by creation time. Timestamps are wall-clock microseconds since the Unix
//! epoch so that they survive serialization and mean the same thing in every
//! process that reads a stored envelope.
//!
//! ```
//! use actorbus_actors::envelope::{Envelope, Priority};
//! use std::time::Duration;
//!
//! let order = Envelope::new("order-42")
//!     .with_priority(Priority::new(7).unwrap())
//!     .with_timeout(Duration::from_secs(30))
//!     .with_header("tenant", "acme");
//! // A message sent while handling `order` joins its conversation.
//! let invoice = order.caused("invoice-42");
//! assert_eq!(invoice.correlation_id, order.correlation_id);
//! assert_eq!(invoice.causation_id, Some(order.id));
//! assert_eq!(invoice.deadline, order.deadline);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A unique, time-ordered message id (UUID v7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A fresh id; ids made later sort after ids made earlier.
    pub fn new() -> Self {
        Self::at(Timestamp::now())
    }

    /// A fresh id stamped with `time` (UUID v7: 48 bits of Unix milliseconds,
    /// then 74 bits that count up from a random start per thread).
    ///
    /// Ids from one thread are strictly increasing; ids from different
    /// threads are ordered by millisecond. Generating one costs a
    /// thread-local increment, not a random draw: ids are made for every
    /// message, so this is on every hot path.
    #[inline]
    pub fn at(time: Timestamp) -> Self {
        use std::cell::Cell;
        thread_local! {
            static SEQ: Cell<u128> = Cell::new(rand::random::<u128>() >> 56);
        }
        let seq = SEQ.with(|s| {
            let v = s.get().wrapping_add(1);
            s.set(v);
            v
        });
        let ms = u128::from(time.as_millis() & 0xFFFF_FFFF_FFFF);
        let rand_a = (seq >> 62) & 0xFFF;
        let rand_b = seq & 0x3FFF_FFFF_FFFF_FFFF;
        let bits = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b;
        MessageId(Uuid::from_u128(bits))
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(MessageId)
    }
}

/// Wall-clock time in microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time, from the runtime's [clock](crate::clock)
    /// (the system clock as of at most 100 ms ago, advanced by the CPU's
    /// counter since).
    #[inline]
    pub fn now() -> Self {
        crate::clock::wall_now()
    }

    /// Microseconds since the Unix epoch.
    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0 / 1_000
    }

    /// This time moved forward by `d` (saturating).
    pub fn after(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)))
    }

    /// How long from `self` until `later`; zero when `later` is not later.
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_micros(later.0.saturating_sub(self.0))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let micros = t.duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        Timestamp(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_micros(t.0)
    }
}

/// Message priority, `0..=9`, 9 highest. The default is 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

impl Priority {
    /// The lowest priority.
    pub const MIN: Priority = Priority(0);
    /// The highest priority.
    pub const MAX: Priority = Priority(9);
    /// The priority of a message that does not ask for one.
    pub const DEFAULT: Priority = Priority(4);

    /// A priority, or an error when `level` is above 9.
    pub fn new(level: u8) -> Result<Self, InvalidPriority> {
        if level <= 9 {
            Ok(Priority(level))
        } else {
            Err(InvalidPriority(level))
        }
    }

    /// The level, `0..=9`.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::DEFAULT
    }
}

impl TryFrom<u8> for Priority {
    type Error = InvalidPriority;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        Priority::new(v)
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p.0
    }
}

/// A priority outside `0..=9`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("priority {0} is out of range 0..=9")]
pub struct InvalidPriority(pub u8);

/// Application headers: a sorted string map, read and written through
/// [`Deref`](std::ops::Deref) to a [`BTreeMap`].
///
/// Most messages carry none, so an empty map is a null pointer: 8 bytes in
/// every envelope instead of 24, and nothing to do when one is copied or
/// dropped (dropping even an empty `BTreeMap` walks an iterator, about 50
/// instructions on every message). Serialized as a plain map.
///
/// ```
/// use actorbus_actors::envelope::Headers;
///
/// let mut headers = Headers::new();
/// assert!(headers.is_empty());
/// headers.insert("tenant".into(), "acme".into());
/// assert_eq!(headers.get("tenant").map(String::as_str), Some("acme"));
/// assert_eq!(serde_json::to_string(&headers).unwrap(), r#"{"tenant":"acme"}"#);
/// ```
#[derive(Clone, Default)]
#[allow(clippy::box_collection)] // the box is what makes an empty map one null pointer
pub struct Headers(Option<Box<BTreeMap<String, String>>>);

/// What an empty [`Headers`] derefs to.
static NO_HEADERS: BTreeMap<String, String> = BTreeMap::new();

impl Headers {
    /// No headers (allocates nothing).
    pub const fn new() -> Self {
        Headers(None)
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }
}

impl std::ops::Deref for Headers {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&NO_HEADERS)
    }
}

impl std::ops::DerefMut for Headers {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.get_or_insert_with(Box::default)
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl From<BTreeMap<String, String>> for Headers {
    fn from(map: BTreeMap<String, String>) -> Self {
        Headers((!map.is_empty()).then(|| Box::new(map)))
    }
}

impl FromIterator<(String, String)> for Headers {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Headers::from(BTreeMap::from_iter(iter))
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        (**self).iter()
    }
}

impl Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(Headers::from)
    }
}

/// A message and its metadata (DESIGN §2).
///
/// In memory the payload is moved, never serialized; `T: Serialize +
/// DeserializeOwned` is only needed where an envelope may be persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Unique, time-ordered id of this message.
    pub id: MessageId,
    /// The conversation this message belongs to; a new conversation uses the
    /// message's own id.
    pub correlation_id: MessageId,
    /// The message whose handling produced this one, if any.
    pub causation_id: Option<MessageId>,
    /// When the message was created.
    pub created_at: Timestamp,
    /// Past this time the message is expired and never handed to a handler.
    pub deadline: Option<Timestamp>,
    /// Delivery priority.
    pub priority: Priority,
    /// Delivery attempt, 1 for the first delivery.
    pub attempt: u32,
    /// Application data.
    pub headers: Headers,
    /// The message itself.
    pub payload: T,
}

impl<T> Envelope<T> {
    /// A new message that starts its own conversation.
    // Inlined with the clock read and the id (`#[inline]` across crates):
    // the fields are written where the caller keeps the envelope, not into
    // a returned copy that is read back at once (a store-forwarding stall
    // per field group; 3-7 % of a queued message's cost).
    #[inline(always)]
    pub fn new(payload: T) -> Self {
        Self::new_at(payload, Timestamp::now())
    }

    /// A new message that starts its own conversation, stamped as created
    /// at `created_at` (a time the caller has just read, for instance with
    /// [`clock::wall_at`](crate::clock::wall_at)).
    #[inline(always)]
    pub fn new_at(payload: T, created_at: Timestamp) -> Self {
        let id = MessageId::at(created_at);
        Envelope {
            id,
            correlation_id: id,
            causation_id: None,
            created_at,
            deadline: None,
            priority: Priority::DEFAULT,
            attempt: 1,
            headers: Headers::new(),
            payload,
        }
    }

    /// A new message caused by this one: same conversation, same deadline,
    /// `causation_id` pointing here, headers not copied.
    pub fn caused<U>(&self, payload: U) -> Envelope<U> {
        let mut next = Envelope::new(payload);
        next.correlation_id = self.correlation_id;
        next.causation_id = Some(self.id);
        next.deadline = self.deadline;
        next
    }

    /// Sets an absolute deadline.
    pub fn with_deadline(mut self, deadline: Timestamp) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets the deadline to `timeout` after creation.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        let at = self.created_at.after(timeout);
        self.with_deadline(at)
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// True when the deadline has passed at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// True when the deadline has passed.
    pub fn is_expired(&self) -> bool {
        self.deadline.is_some() && self.is_expired_at(Timestamp::now())
    }

    /// Time left before the deadline: `None` without a deadline, zero once past.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| Timestamp::now().until(d))
    }

    /// The same metadata around another payload.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U> {
        let Envelope { id, correlation_id, causation_id, created_at, deadline, priority, attempt, headers, payload } =
            self;
        let payload = f(payload);
        Envelope { id, correlation_id, causation_id, created_at, deadline, priority, attempt, headers, payload }
    }

    /// A copy of the metadata, without the payload (which need not be
    /// `Clone`): `envelope.meta().with_payload(other)` puts another payload
    /// in the same envelope.
    pub fn meta(&self) -> Envelope<()> {
        self.copy_with(())
    }

    /// A copy of the metadata around `payload`.
    #[inline]
    pub(crate) fn copy_with<U>(&self, payload: U) -> Envelope<U> {
        Envelope {
            id: self.id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            created_at: self.created_at,
            deadline: self.deadline,
            priority: self.priority,
            attempt: self.attempt,
            headers: self.headers.clone(),
            payload,
        }
    }

    /// Separates the metadata from the payload.
    pub fn split(self) -> (Envelope<()>, T) {
        let Envelope { id, correlation_id, causation_id, created_at, deadline, priority, attempt, headers, payload } =
            self;
        let meta = Envelope {
            id,
            correlation_id,
            causation_id,
            created_at,
            deadline,
            priority,
            attempt,
            headers,
            payload: (),
        };
        (meta, payload)
    }
}

impl Envelope<()> {
    /// Puts a payload back into split-off metadata.
    pub fn with_payload<U>(self, payload: U) -> Envelope<U> {
        let Envelope { id, correlation_id, causation_id, created_at, deadline, priority, attempt, headers, .. } = self;
        Envelope { id, correlation_id, causation_id, created_at, deadline, priority, attempt, headers, payload }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_v7_uuids() {
        let ids: Vec<MessageId> = (0..10_000).map(|_| MessageId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing on one thread");
        assert!(ids.iter().all(|id| id.0.get_version_num() == 7 && id.0.get_variant() == uuid::Variant::RFC4122));
        let t = Timestamp(1_700_000_000_123_456);
        let (secs, nanos) = MessageId::at(t).0.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos), (1_700_000_000, 123_000_000));
        let other = std::thread::spawn(MessageId::new).join().unwrap();
        assert!(!ids.contains(&other));
    }

    #[test]
    fn priority_is_bounded() {
        assert_eq!(Priority::new(10), Err(InvalidPriority(10)));
        assert_eq!(Priority::default().get(), 4);
        assert!(serde_json::from_str::<Priority>("12").is_err());
        assert_eq!(serde_json::from_str::<Priority>("9").unwrap(), Priority::MAX);
    }

    #[test]
    fn expiry_and_remaining() {
        let env = Envelope::new(1).with_deadline(Timestamp::now());
        assert!(env.is_expired());
        assert_eq!(env.remaining(), Some(Duration::ZERO));
        let env = Envelope::new(1).with_timeout(Duration::from_secs(60));
        assert!(!env.is_expired());
        assert!(env.remaining().unwrap() > Duration::from_secs(59));
        assert_eq!(Envelope::new(1).remaining(), None);
    }

    #[test]
    fn headers_compare_serialize_and_emptied_like_a_map() {
        assert_eq!(std::mem::size_of::<Headers>(), 8);
        let mut h = Headers::new();
        assert_eq!(serde_json::to_string(&h).unwrap(), "{}");
        h.insert("a".into(), "1".into());
        assert!(!h.is_empty());
        assert_ne!(h, Headers::new());
        h.remove("a");
        // An emptied map equals one that never held anything.
        assert!(h.is_empty());
        assert_eq!(h, Headers::new());
        let h: Headers = [("b".to_owned(), "2".to_owned()), ("a".to_owned(), "1".to_owned())].into_iter().collect();
        assert_eq!(h.into_iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, r#"{"a":"1","b":"2"}"#);
        assert_eq!(serde_json::from_str::<Headers>(&json).unwrap(), h);
        assert_eq!(format!("{h:?}"), r#"{"a": "1", "b": "2"}"#);
    }

    #[test]
    fn round_trips_through_serde_and_split() {
        let env = Envelope::new(vec![1u8, 2, 3]).with_header("k", "v").with_priority(Priority::MAX);
        let json = serde_json::to_string(&env).unwrap();
        let back: Envelope<Vec<u8>> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, env);
        let bytes = postcard::to_stdvec(&env).unwrap();
        assert_eq!(postcard::from_bytes::<Envelope<Vec<u8>>>(&bytes).unwrap(), env);
        let (meta, payload) = env.clone().split();
        assert_eq!(meta.with_payload(payload), env);
    }
}
