//! Bounded buffers and what happens when they are full (DESIGN §4).
//!
//! Every mailbox, queue and subscription buffer in actorbus has a capacity and
//! an [`OverflowPolicy`]. [`BoundedBuffer`] is the one implementation of that
//! decision: it never grows past its capacity, and it hands back every message
//! it refuses or evicts, so the caller can reject, wait, count or dead-letter
//! it. Nothing is dropped inside the buffer itself.
//!
//! ```
//! use actorbus_actors::backpressure::{BoundedBuffer, OverflowPolicy, Push};
//!
//! let mut buf = BoundedBuffer::new(2, OverflowPolicy::DropOldest);
//! assert!(matches!(buf.push(1), Push::Accepted));
//! assert!(matches!(buf.push(2), Push::Accepted));
//! // Full: 3 goes in and the oldest, 1, comes back to the caller.
//! assert!(matches!(buf.push(3), Push::Evicted(1)));
//! assert_eq!(buf.iter().copied().collect::<Vec<_>>(), vec![2, 3]);
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a full buffer does with one more message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// The asynchronous send waits for room.
    #[default]
    Block,
    /// The send fails at once with an overflow error.
    Reject,
    /// The oldest buffered message is evicted (and dead-lettered or counted) to
    /// make room.
    DropOldest,
    /// The new message is dropped (and counted); the send still succeeds.
    DropNewest,
    /// The new message goes to the dead letter queue with reason `overflow`.
    DeadLetter,
}

impl OverflowPolicy {
    /// All policies, in the order the docs list them.
    pub const ALL: [OverflowPolicy; 5] = [
        OverflowPolicy::Block,
        OverflowPolicy::Reject,
        OverflowPolicy::DropOldest,
        OverflowPolicy::DropNewest,
        OverflowPolicy::DeadLetter,
    ];

    /// The config-file name: `block`, `reject`, `drop_oldest`, `drop_newest`,
    /// `dead_letter`.
    pub fn as_str(self) -> &'static str {
        match self {
            OverflowPolicy::Block => "block",
            OverflowPolicy::Reject => "reject",
            OverflowPolicy::DropOldest => "drop_oldest",
            OverflowPolicy::DropNewest => "drop_newest",
            OverflowPolicy::DeadLetter => "dead_letter",
        }
    }
}

impl fmt::Display for OverflowPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an overflow policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown overflow policy `{0}` (expected block, reject, drop_oldest, drop_newest or dead_letter)")]
pub struct UnknownPolicy(pub String);

impl FromStr for OverflowPolicy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OverflowPolicy::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// The outcome of [`BoundedBuffer::push`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a refused or evicted message must be rejected, retried or dead-lettered"]
pub enum Push<T> {
    /// Stored.
    Accepted,
    /// Not stored: the buffer is full and the policy is `block` (the caller
    /// waits and tries again) or `reject` (the caller returns an error).
    Full(T),
    /// The new message was stored and this older one was evicted (`drop_oldest`).
    Evicted(T),
    /// The new message was not stored (`drop_newest`): count it.
    Dropped(T),
    /// The new message was not stored (`dead_letter`): dead-letter it.
    DeadLetter(T),
}

/// A FIFO buffer that never holds more than its capacity.
#[derive(Debug)]
pub struct BoundedBuffer<T> {
    items: VecDeque<T>,
    capacity: usize,
    policy: OverflowPolicy,
}

impl<T> BoundedBuffer<T> {
    /// An empty buffer; a capacity of 0 is raised to 1.
    pub fn new(capacity: usize, policy: OverflowPolicy) -> Self {
        BoundedBuffer { items: VecDeque::new(), capacity: capacity.max(1), policy }
    }

    /// Adds `item` at the back, applying the overflow policy when full.
    pub fn push(&mut self, item: T) -> Push<T> {
        if self.items.len() < self.capacity {
            self.items.push_back(item);
            return Push::Accepted;
        }
        match self.policy {
            OverflowPolicy::Block | OverflowPolicy::Reject => Push::Full(item),
            OverflowPolicy::DropNewest => Push::Dropped(item),
            OverflowPolicy::DeadLetter => Push::DeadLetter(item),
            OverflowPolicy::DropOldest => match self.items.pop_front() {
                Some(oldest) => {
                    self.items.push_back(item);
                    Push::Evicted(oldest)
                }
                None => Push::Full(item),
            },
        }
    }

    /// Adds `item` at the back when there is room, as
    /// [`push`](Self::push) would, without handing it back.
    ///
    /// # Panics
    /// In debug builds, when the buffer is full: check
    /// [`is_full`](Self::is_full) first.
    pub fn push_back(&mut self, item: T) {
        debug_assert!(!self.is_full(), "push_back on a full buffer");
        self.items.push_back(item);
    }

    /// Takes the oldest item.
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// Puts an item back at the front (a message taken but not delivered).
    /// May exceed the capacity by the items taken out and returned, never more.
    pub fn push_front(&mut self, item: T) {
        self.items.push_front(item);
    }

    /// Items buffered.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// True when one more push would overflow.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The overflow policy.
    pub fn policy(&self) -> OverflowPolicy {
        self.policy
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// Removes and returns everything, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.items.drain(..)
    }

    /// Moves everything, oldest first, to the back of `into`: by swapping
    /// the two queues when `into` is empty, so a consumer taking a whole
    /// burst moves no item.
    pub fn take_all(&mut self, into: &mut VecDeque<T>) {
        if into.is_empty() {
            std::mem::swap(&mut self.items, into);
        } else {
            into.extend(self.items.drain(..));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(policy: OverflowPolicy) -> BoundedBuffer<u32> {
        let mut b = BoundedBuffer::new(3, policy);
        for i in 0..3 {
            assert_eq!(b.push(i), Push::Accepted);
        }
        b
    }

    #[test]
    fn every_policy_accounts_for_the_overflowing_message() {
        assert_eq!(fill(OverflowPolicy::Block).push(9), Push::Full(9));
        assert_eq!(fill(OverflowPolicy::Reject).push(9), Push::Full(9));
        assert_eq!(fill(OverflowPolicy::DropNewest).push(9), Push::Dropped(9));
        assert_eq!(fill(OverflowPolicy::DeadLetter).push(9), Push::DeadLetter(9));
        let mut b = fill(OverflowPolicy::DropOldest);
        assert_eq!(b.push(9), Push::Evicted(0));
        assert_eq!(b.drain().collect::<Vec<_>>(), vec![1, 2, 9]);
    }

    #[test]
    fn never_exceeds_capacity_under_a_flood() {
        for policy in OverflowPolicy::ALL {
            let mut b = BoundedBuffer::new(100, policy);
            let mut out = 0;
            for i in 0..10_000 {
                if !matches!(b.push(i), Push::Accepted) {
                    out += 1;
                }
                assert!(b.len() <= 100);
            }
            assert_eq!(out + b.len(), 10_000, "{policy}");
        }
    }

    #[test]
    fn policies_parse_from_config_names() {
        for p in OverflowPolicy::ALL {
            assert_eq!(p.as_str().parse::<OverflowPolicy>().unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        assert!("drop_all".parse::<OverflowPolicy>().is_err());
    }
}
