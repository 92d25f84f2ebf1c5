//! The messages ready for delivery: FIFO, by priority level with aging, or
//! by partition key.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::envelope::{Envelope, MessageId};

/// A stored message and when it was enqueued (microseconds on the queue's
/// monotonic clock).
pub(crate) struct Entry<T> {
    pub(crate) env: Envelope<T>,
    pub(crate) enqueued_us: u64,
    /// Its row in a durable queue's store (enqueue order); 0 when not stored.
    pub(crate) seq: u64,
}

/// Partition key of a message.
pub(crate) type Key = Arc<str>;

struct Partitions<T> {
    header: String,
    groups: HashMap<Key, VecDeque<Entry<T>>>,
    /// Keys with waiting messages and nothing in flight, in turn order.
    /// May hold keys that became busy or empty since; they are skipped.
    runnable: VecDeque<Key>,
    busy: HashSet<Key>,
}

/// The ready set.
pub(crate) struct Ready<T> {
    /// Plain and partitioned queues use level 0 only.
    levels: [VecDeque<Entry<T>>; 10],
    priority: bool,
    aging_us: Option<u64>,
    partitions: Option<Partitions<T>>,
    len: usize,
}

impl<T> Ready<T> {
    pub(crate) fn new(priority: bool, aging_us: Option<u64>, partition_header: Option<String>) -> Self {
        Ready {
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

    pub(crate) fn len(&self) -> usize {
        self.len
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
        self.len += 1;
        if let Some(key) = self.key_of(&entry.env) {
            if let Some(p) = self.partitions.as_mut() {
                let group = p.groups.entry(key.clone()).or_default();
                let was_empty = group.is_empty();
                group.push_back(entry);
                if was_empty && !p.busy.contains(&key) {
                    p.runnable.push_back(key);
                }
                return;
            }
        }
        let level = self.level(&entry.env);
        self.levels[level].push_back(entry);
    }

    /// Puts a message back at the front (a redelivery). For a keyed message,
    /// the caller then releases the key.
    pub(crate) fn push_front(&mut self, entry: Entry<T>) {
        self.len += 1;
        if let Some(key) = self.key_of(&entry.env) {
            if let Some(p) = self.partitions.as_mut() {
                p.groups.entry(key).or_default().push_front(entry);
                return;
            }
        }
        let level = self.level(&entry.env);
        self.levels[level].push_front(entry);
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
            let Some(head) = q.front() else { continue };
            let lifted = now_us.saturating_sub(head.enqueued_us) / aging;
            let effective = (level as u64).saturating_add(lifted).min(9);
            let rank = (effective, std::cmp::Reverse(head.enqueued_us), level);
            if best.is_none_or(|b| rank > b) {
                best = Some(rank);
            }
        }
        best.map(|(_, _, level)| level)
    }

    /// Takes the next message to deliver, with its key (now busy).
    pub(crate) fn pop(&mut self, now_us: u64) -> Option<(Entry<T>, Option<Key>)> {
        if let Some(p) = self.partitions.as_mut() {
            // Skip keys that became busy or empty since they were queued.
            while let Some(k) = p.runnable.front() {
                if p.busy.contains(k) || p.groups.get(k).is_none_or(|g| g.is_empty()) {
                    p.runnable.pop_front();
                } else {
                    break;
                }
            }
            let keyed_head = p.runnable.front().and_then(|k| p.groups.get(k)).and_then(|g| g.front());
            let plain_head = self.levels[0].front();
            let take_keyed = match (keyed_head, plain_head) {
                (Some(k), Some(u)) => k.enqueued_us <= u.enqueued_us,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if take_keyed {
                let key = p.runnable.pop_front()?;
                let group = p.groups.get_mut(&key)?;
                let entry = group.pop_front()?;
                if group.is_empty() {
                    p.groups.remove(&key);
                }
                p.busy.insert(key.clone());
                self.len -= 1;
                return Some((entry, Some(key)));
            }
        }
        let level = self.next_level(now_us)?;
        let entry = self.levels[level].pop_front()?;
        self.len -= 1;
        Some((entry, None))
    }

    /// Removes the message `id` wherever it waits (expiry of a message not
    /// at the head).
    pub(crate) fn remove(&mut self, id: MessageId) -> Option<(Entry<T>, Option<Key>)> {
        for q in self.levels.iter_mut() {
            if let Some(i) = q.iter().position(|e| e.env.id == id) {
                self.len -= 1;
                return q.remove(i).map(|e| (e, None));
            }
        }
        let p = self.partitions.as_mut()?;
        let (key, i) =
            p.groups.iter().find_map(|(k, g)| g.iter().position(|e| e.env.id == id).map(|i| (k.clone(), i)))?;
        let group = p.groups.get_mut(&key)?;
        let entry = group.remove(i)?;
        if group.is_empty() {
            p.groups.remove(&key);
        }
        self.len -= 1;
        Some((entry, Some(key)))
    }

    /// Makes room for `incoming` (level `incoming_level`) by removing the
    /// message that should go first: the oldest, or in priority mode the
    /// oldest of the lowest level. `None` when the incoming message is itself
    /// the one to drop (its level is below every stored one) or nothing is
    /// stored.
    pub(crate) fn evict_for(&mut self, incoming: &Envelope<T>) -> Option<Entry<T>> {
        if self.priority {
            let new_level = self.level(incoming);
            let lowest = (0..10).find(|&l| !self.levels[l].is_empty())?;
            if new_level < lowest {
                return None;
            }
            self.len -= 1;
            return self.levels[lowest].pop_front();
        }
        let plain_head = self.levels[0].front().map(|e| e.enqueued_us);
        let oldest_group = self.partitions.as_ref().and_then(|p| {
            p.groups.iter().filter_map(|(k, g)| g.front().map(|e| (e.enqueued_us, k.clone()))).min_by_key(|(t, _)| *t)
        });
        let entry = match (plain_head, oldest_group) {
            (Some(u), Some((k, _))) if u <= k => self.levels[0].pop_front(),
            (Some(_), None) => self.levels[0].pop_front(),
            (_, Some((_, key))) => {
                let p = self.partitions.as_mut()?;
                let group = p.groups.get_mut(&key)?;
                let e = group.pop_front();
                if group.is_empty() {
                    p.groups.remove(&key);
                }
                e
            }
            (None, None) => None,
        };
        if entry.is_some() {
            self.len -= 1;
        }
        entry
    }

    /// Every stored message (for rebuilding the expiry index).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry<T>> {
        let groups = self.partitions.iter().flat_map(|p| p.groups.values().flatten());
        self.levels.iter().flatten().chain(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Priority;

    fn entry(p: u8, t: u64) -> Entry<u64> {
        Entry { env: Envelope::new(t).with_priority(Priority::new(p).unwrap()), enqueued_us: t, seq: 0 }
    }

    fn drain(r: &mut Ready<u64>, now: u64) -> Vec<u64> {
        std::iter::from_fn(|| r.pop(now).map(|(e, _)| e.env.payload)).collect()
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
        let keyed = |k: &str, t: u64| Entry { env: Envelope::new(t).with_header("k", k), enqueued_us: t, seq: 0 };
        r.push_back(keyed("a", 1));
        r.push_back(keyed("a", 2));
        r.push_back(keyed("b", 3));
        r.push_back(entry(4, 4));
        let (first, key) = r.pop(10).unwrap();
        assert_eq!((first.env.payload, key.as_deref()), (1, Some("a")));
        // `a` is busy: b, then the unkeyed message, then nothing.
        assert_eq!(r.pop(10).map(|(e, _)| e.env.payload), Some(3));
        assert_eq!(r.pop(10).map(|(e, _)| e.env.payload), Some(4));
        assert!(r.pop(10).is_none());
        r.release(&Key::from("a"));
        assert_eq!(r.pop(10).map(|(e, _)| e.env.payload), Some(2));
    }
}
