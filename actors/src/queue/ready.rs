//! The messages a queue holds, and the order the ready ones go in: FIFO, by
//! priority level with aging, or by partition key.
//!
//! A message is written once, into a slot, when it becomes ready, and stays
//! in that slot until it leaves the queue (acked, dead-lettered, dropped):
//! the ready order and the deliveries in flight refer to it by its slot's
//! index. A delivery therefore copies nothing out of the ready set and an
//! ack drops the message where it lies; the order lists stay small (an
//! index a message) and cache-friendly however large the messages.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::envelope::{Envelope, MessageId};

/// A stored message and when it was enqueued.
pub(crate) struct Entry<T> {
    pub(crate) env: Envelope<T>,
    pub(crate) enqueued: Enqueued,
    /// Its row in a durable queue's store (enqueue order); 0 when not stored.
    pub(crate) seq: u64,
}

/// When a message was made ready, in microseconds on the queue's monotonic
/// clock, and whether it is a time-in-queue sample (the top bit, which a
/// time since the queue started never reaches).
///
/// Only the messages that need it are stamped: every one when the ready
/// order depends on it (partitions, priority with aging), otherwise the
/// samples only (nothing else reads it), so that most sends read no clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Enqueued(u64);

impl Enqueued {
    const SAMPLE: u64 = 1 << 63;

    /// Not stamped: a plain queue's message that is not a sample.
    pub(crate) const UNSTAMPED: Enqueued = Enqueued(0);

    /// Stamped at `micros`; a time-in-queue sample when `sample`.
    pub(crate) fn at(micros: u64, sample: bool) -> Self {
        let micros = micros & !Self::SAMPLE;
        Enqueued(if sample { micros | Self::SAMPLE } else { micros })
    }

    /// The time it was stamped at (0 when not stamped).
    pub(crate) fn micros(self) -> u64 {
        self.0 & !Self::SAMPLE
    }

    /// The time, when the message is a time-in-queue sample.
    pub(crate) fn sample(self) -> Option<u64> {
        (self.0 & Self::SAMPLE != 0).then_some(self.micros())
    }
}

/// Partition key of a message.
pub(crate) type Key = Arc<str>;

/// A message's slot in [`Ready`].
pub(crate) type Slot = u32;

struct Partitions {
    header: String,
    groups: HashMap<Key, VecDeque<Slot>>,
    /// Keys with waiting messages and nothing in flight, in turn order.
    /// May hold keys that became busy or empty since; they are skipped.
    runnable: VecDeque<Key>,
    busy: HashSet<Key>,
}

/// The messages held and the ready set's order (see the [module docs](self)).
pub(crate) struct Ready<T> {
    /// Every message held, ready or taken (in flight); `None` is free.
    slots: Vec<Option<Entry<T>>>,
    free: Vec<Slot>,
    /// Plain and partitioned queues use level 0 only.
    levels: [VecDeque<Slot>; 10],
    priority: bool,
    aging_us: Option<u64>,
    partitions: Option<Partitions>,
    /// Messages ready (queued in `levels` or `partitions`).
    len: usize,
}

impl<T> Ready<T> {
    pub(crate) fn new(priority: bool, aging_us: Option<u64>, partition_header: Option<String>) -> Self {
        Ready {
            slots: Vec::new(),
            free: Vec::new(),
            levels: Default::default(),
            priority,
            aging_us: aging_us.filter(|a| *a > 0),
            partitions: partition_header.map(|header| Partitions {
                header,
                groups: HashMap::new(),
                runnable: VecDeque::new(),
                busy: HashSet::new(),
            }),
            len: 0,
        }
    }

    /// True when the order depends on when messages were enqueued (aging,
    /// keyed against unkeyed messages): every message must be stamped.
    pub(crate) fn needs_stamps(&self) -> bool {
        self.partitions.is_some() || (self.priority && self.aging_us.is_some())
    }

    /// Messages ready for delivery.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The message in `slot`, ready or taken.
    #[inline(always)]
    pub(crate) fn get(&self, slot: Slot) -> Option<&Entry<T>> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// Removes a taken message (see [`pop`](Self::pop)) for good: it
    /// leaves the queue, or moves on (a delayed retry, the DLQ).
    #[inline(always)]
    pub(crate) fn take(&mut self, slot: Slot) -> Option<Entry<T>> {
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        Some(entry)
    }

    /// Drops a taken message where it lies (an ack: nothing of it is
    /// needed but what `read` gives, and moving it out first would read all
    /// of it).
    #[inline(always)]
    pub(crate) fn discard<R>(&mut self, slot: Slot, read: impl FnOnce(&Entry<T>) -> R) -> Option<R> {
        let held = self.slots.get_mut(slot as usize)?;
        let r = read(held.as_ref()?);
        *held = None;
        self.free.push(slot);
        Some(r)
    }

    /// Writes `entry` into a free slot.
    #[inline(always)]
    fn hold(&mut self, entry: Entry<T>) -> Slot {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                // More than 2^32 messages held at once is beyond any
                // queue's capacity (every message holds a place).
                let slot = Slot::try_from(self.slots.len()).unwrap_or(Slot::MAX);
                self.slots.push(Some(entry));
                slot
            }
        }
    }

    fn level(&self, env: &Envelope<T>) -> usize {
        if self.priority {
            usize::from(env.priority.get()).min(9)
        } else {
            0
        }
    }

    /// The partition key of `env`, when partitioned and it has one.
    #[inline]
    pub(crate) fn key_of(&self, env: &Envelope<T>) -> Option<Key> {
        let p = self.partitions.as_ref()?;
        env.headers.get(&p.header).map(|v| Key::from(v.as_str()))
    }

    /// Adds a new message at the back.
    #[inline(always)]
    pub(crate) fn push_back(&mut self, entry: Entry<T>) {
        let (level, key) = (self.level(&entry.env), self.key_of(&entry.env));
        let slot = self.hold(entry);
        self.len += 1;
        if let (Some(key), Some(p)) = (key, self.partitions.as_mut()) {
            let group = p.groups.entry(key.clone()).or_default();
            let was_empty = group.is_empty();
            group.push_back(slot);
            if was_empty && !p.busy.contains(&key) {
                p.runnable.push_back(key);
            }
            return;
        }
        self.levels[level].push_back(slot);
    }

    /// Puts a message back at the front (a redelivery). For a keyed message,
    /// the caller then releases the key.
    pub(crate) fn push_front(&mut self, entry: Entry<T>) {
        let slot = self.hold(entry);
        self.requeue(slot);
    }

    /// Puts a taken message back at the front, where it lies (a delivery
    /// given back unseen). For a keyed message, the caller then releases
    /// the key.
    pub(crate) fn requeue(&mut self, slot: Slot) {
        let Some(entry) = self.get(slot) else { return };
        let (level, key) = (self.level(&entry.env), self.key_of(&entry.env));
        self.len += 1;
        if let (Some(key), Some(p)) = (key, self.partitions.as_mut()) {
            p.groups.entry(key).or_default().push_front(slot);
            return;
        }
        self.levels[level].push_front(slot);
    }

    /// The key's message in flight is settled: its next message may go.
    pub(crate) fn release(&mut self, key: &Key) {
        if let Some(p) = self.partitions.as_mut() {
            p.busy.remove(key);
            if p.groups.get(key).is_some_and(|g| !g.is_empty()) {
                p.runnable.push_back(key.clone());
            }
        }
    }

    /// When the message at the head of `queue` was enqueued.
    fn enqueued(&self, queue: &VecDeque<Slot>) -> Option<u64> {
        queue.front().and_then(|&s| self.get(s)).map(|e| e.enqueued.micros())
    }

    /// The level whose head goes next at `now_us`, with aging.
    fn next_level(&self, now_us: u64) -> Option<usize> {
        if !self.priority {
            return (!self.levels[0].is_empty()).then_some(0);
        }
        let Some(aging) = self.aging_us else {
            return (0..10).rev().find(|&l| !self.levels[l].is_empty());
        };
        let mut best: Option<(u64, std::cmp::Reverse<u64>, usize)> = None;
        for (level, q) in self.levels.iter().enumerate() {
            let Some(enqueued) = self.enqueued(q) else { continue };
            let lifted = now_us.saturating_sub(enqueued) / aging;
            let effective = (level as u64).saturating_add(lifted).min(9);
            let rank = (effective, std::cmp::Reverse(enqueued), level);
            if best.is_none_or(|b| rank > b) {
                best = Some(rank);
            }
        }
        best.map(|(_, _, level)| level)
    }

    /// Takes the next message to deliver out of the ready order, with its
    /// key (now busy). It stays in its slot until [`take`](Self::take)n or
    /// [`requeue`](Self::requeue)d.
    #[inline]
    pub(crate) fn pop(&mut self, now_us: u64) -> Option<(Slot, Option<Key>)> {
        if !self.priority && self.partitions.is_none() {
            let slot = self.levels[0].pop_front()?;
            self.len -= 1;
            return Some((slot, None));
        }
        if self.partitions.is_some() {
            if let Some(keyed) = self.pop_keyed() {
                return Some(keyed);
            }
        }
        let level = self.next_level(now_us)?;
        let slot = self.levels[level].pop_front()?;
        self.len -= 1;
        Some((slot, None))
    }

    /// The head of the next runnable key, when it is older than the head of
    /// the unkeyed messages.
    fn pop_keyed(&mut self) -> Option<(Slot, Option<Key>)> {
        let p = self.partitions.as_mut()?;
        // Skip keys that became busy or empty since they were queued.
        while let Some(k) = p.runnable.front() {
            if p.busy.contains(k) || p.groups.get(k).is_none_or(|g| g.is_empty()) {
                p.runnable.pop_front();
            } else {
                break;
            }
        }
        let p = self.partitions.as_ref()?;
        let keyed = p.runnable.front().and_then(|k| p.groups.get(k)).and_then(|g| self.enqueued(g))?;
        if self.enqueued(&self.levels[0]).is_some_and(|plain| plain < keyed) {
            return None;
        }
        let p = self.partitions.as_mut()?;
        let key = p.runnable.pop_front()?;
        let group = p.groups.get_mut(&key)?;
        let slot = group.pop_front()?;
        if group.is_empty() {
            p.groups.remove(&key);
        }
        p.busy.insert(key.clone());
        self.len -= 1;
        Some((slot, Some(key)))
    }

    /// Removes the message `id` wherever it waits (expiry of a message not
    /// at the head).
    pub(crate) fn remove(&mut self, id: MessageId) -> Option<(Entry<T>, Option<Key>)> {
        let slots = &self.slots;
        let is = |s: &Slot| slots.get(*s as usize).and_then(Option::as_ref).is_some_and(|e| e.env.id == id);
        let found = self.levels.iter_mut().find_map(|q| {
            let i = q.iter().position(is)?;
            q.remove(i)
        });
        let (slot, key) = match found {
            Some(slot) => (slot, None),
            None => {
                let p = self.partitions.as_mut()?;
                let (key, i) = p.groups.iter().find_map(|(k, g)| g.iter().position(is).map(|i| (k.clone(), i)))?;
                let group = p.groups.get_mut(&key)?;
                let slot = group.remove(i)?;
                if group.is_empty() {
                    p.groups.remove(&key);
                }
                (slot, Some(key))
            }
        };
        self.len -= 1;
        Some((self.take(slot)?, key))
    }

    /// Makes room for `incoming` by removing the message that should go
    /// first: the oldest, or in priority mode the oldest of the lowest
    /// level. `None` when the incoming message is itself the one to drop
    /// (its level is below every stored one) or nothing is stored.
    pub(crate) fn evict_for(&mut self, incoming: &Envelope<T>) -> Option<Entry<T>> {
        let slot = if self.priority {
            let new_level = self.level(incoming);
            let lowest = (0..10).find(|&l| !self.levels[l].is_empty())?;
            if new_level < lowest {
                return None;
            }
            self.levels[lowest].pop_front()?
        } else {
            let plain = self.enqueued(&self.levels[0]);
            let oldest_group = self.partitions.as_ref().and_then(|p| {
                p.groups.iter().filter_map(|(k, g)| self.enqueued(g).map(|t| (t, k.clone()))).min_by_key(|(t, _)| *t)
            });
            match (plain, oldest_group) {
                (Some(u), Some((k, _))) if u <= k => self.levels[0].pop_front()?,
                (Some(_), None) => self.levels[0].pop_front()?,
                (_, Some((_, key))) => {
                    let p = self.partitions.as_mut()?;
                    let group = p.groups.get_mut(&key)?;
                    let slot = group.pop_front()?;
                    if group.is_empty() {
                        p.groups.remove(&key);
                    }
                    slot
                }
                (None, None) => return None,
            }
        };
        self.len -= 1;
        self.take(slot)
    }

    /// Every ready message (for rebuilding the expiry index).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry<T>> {
        let groups = self.partitions.iter().flat_map(|p| p.groups.values().flatten());
        self.levels.iter().flatten().chain(groups).filter_map(|&s| self.get(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Priority;

    fn entry(p: u8, t: u64) -> Entry<u64> {
        Entry {
            env: Envelope::new(t).with_priority(Priority::new(p).unwrap()),
            enqueued: Enqueued::at(t, false),
            seq: 0,
        }
    }

    fn drain(r: &mut Ready<u64>, now: u64) -> Vec<u64> {
        std::iter::from_fn(|| r.pop(now).and_then(|(s, _)| r.take(s)).map(|e| e.env.payload)).collect()
    }

    #[test]
    fn priority_then_fifo_and_aging() {
        let mut r = Ready::new(true, None, None);
        for (p, t) in [(1, 1), (9, 2), (1, 3), (5, 4), (9, 5)] {
            r.push_back(entry(p, t));
        }
        assert_eq!(drain(&mut r, 10), vec![2, 5, 4, 1, 3]);
        // With aging 10 µs per level, a level-0 message enqueued at 0 is at
        // level 9 by 90 and, older, goes before a fresh level-9 one.
        let mut r = Ready::new(true, Some(10), None);
        r.push_back(entry(0, 0));
        r.push_back(entry(9, 85));
        assert_eq!(drain(&mut r, 95), vec![0, 85]);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn eviction_takes_the_lowest_level_first() {
        let mut r = Ready::new(true, None, None);
        for (p, t) in [(5, 1), (2, 2), (2, 3)] {
            r.push_back(entry(p, t));
        }
        assert_eq!(r.evict_for(&entry(1, 9).env).map(|e| e.env.payload), None, "the newcomer is lowest");
        assert_eq!(r.evict_for(&entry(7, 9).env).map(|e| e.env.payload), Some(2));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn partitions_deliver_one_at_a_time_per_key() {
        let mut r = Ready::new(false, None, Some("k".into()));
        let keyed = |k: &str, t: u64| Entry {
            env: Envelope::new(t).with_header("k", k),
            enqueued: Enqueued::at(t, false),
            seq: 0,
        };
        r.push_back(keyed("a", 1));
        r.push_back(keyed("a", 2));
        r.push_back(keyed("b", 3));
        r.push_back(entry(4, 4));
        let (first, key) = r.pop(10).unwrap();
        assert_eq!((r.get(first).unwrap().env.payload, key.as_deref()), (1, Some("a")));
        // `a` is busy: b, then the unkeyed message, then nothing.
        assert_eq!(r.pop(10).and_then(|(s, _)| r.take(s)).map(|e| e.env.payload), Some(3));
        assert_eq!(r.pop(10).and_then(|(s, _)| r.take(s)).map(|e| e.env.payload), Some(4));
        assert!(r.pop(10).is_none());
        r.release(&Key::from("a"));
        assert_eq!(r.pop(10).and_then(|(s, _)| r.take(s)).map(|e| e.env.payload), Some(2));
    }

    #[test]
    fn a_taken_message_stays_in_its_slot_until_taken_or_requeued() {
        let mut r = Ready::new(false, None, None);
        r.push_back(entry(0, 1));
        r.push_back(entry(0, 2));
        let (first, _) = r.pop(10).unwrap();
        assert_eq!((r.len(), r.get(first).map(|e| e.env.payload)), (1, Some(1)));
        // Given back unseen: first again, from the same slot.
        r.requeue(first);
        assert_eq!(r.pop(10).map(|(s, _)| s), Some(first));
        assert_eq!(r.take(first).map(|e| e.env.payload), Some(1));
        assert!(r.get(first).is_none() && r.take(first).is_none(), "taken once");
        // The freed slot holds the next message.
        r.push_back(entry(0, 3));
        assert_eq!(r.iter().map(|e| e.env.payload).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(drain(&mut r, 10), vec![2, 3]);
    }
}
