//! Cheap timeouts for many in-flight requests.
//!
//! Every request must end, reply or not, so every request has a timeout. A
//! tokio timer per request costs about a microsecond to register and cancel,
//! more than the rest of a same-arbiter round trip. Requests almost always
//! finish long before their deadline, so actorbus keeps pending deadlines in
//! one ordered table watched by a single reaper thread: registering and
//! cancelling are a map insert and remove under an uncontended lock, and the
//! reaper wakes only when the earliest deadline in the table is due (or was
//! cancelled, in which case it re-reads the table and sleeps again).
//!
//! On actix arbiter threads, where almost every request is made, there is a
//! cheaper path still: a per-thread slab of pending deadlines with one local
//! reaper task, no lock and no allocation per request. The reaper sleeps until
//! the earliest deadline it knows of; a request that finishes early leaves that
//! sleep in place, and the reaper, woken at a deadline nobody waits for any
//! more, re-reads the slab and sleeps again. Other threads use the shared
//! table.
//!
//! A local registration only promises "this task is woken by then", so one
//! can serve several waiters: when the thread's latest registration wakes
//! the same task no later than a new deadline, the new waiter shares it
//! (a counter, no table write), and a waiter woken before its own deadline
//! registers again. That latest registration stays armed after its last
//! waiter finishes, until its deadline or a newer one replaces it: a task
//! that makes requests one after another registers about once per timeout
//! and is woken once, needlessly, at the end.
//!
//! ```
//! use std::time::Duration;
//! use actorbus_actors::clock;
//! use actorbus_actors::deadline::{within, Elapsed};
//!
//! # futures::executor::block_on(async {
//! let never = futures::future::pending::<()>();
//! let out = within(clock::now() + Duration::from_millis(20), never).await;
//! assert_eq!(out, Err(Elapsed));
//! assert_eq!(within(clock::now() + Duration::from_secs(1), std::future::ready(7)).await, Ok(7));
//! # });
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use crate::clock::{self, Instant};

/// The deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

type GlobalKey = (Instant, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Global(GlobalKey),
    Local { table: u64, idx: u32, gen: u32 },
}

struct Table {
    pending: BTreeMap<GlobalKey, Waker>,
    next_id: u64,
    /// The deadline the reaper sleeps until, if it sleeps.
    reaper_until: Option<Instant>,
}

struct Reaper {
    table: Mutex<Table>,
    wake: Condvar,
}

fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<&'static Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
            table: Mutex::new(Table { pending: BTreeMap::new(), next_id: 0, reaper_until: None }),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new().name("actorbus-deadlines".into()).spawn(move || reaper.run());
        if let Err(e) = spawned {
            // Without the thread nothing would ever time out: that is a hang,
            // which this module exists to prevent.
            panic!("actorbus: cannot start the deadline thread: {e}");
        }
        reaper
    })
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table holds no invariant a panic could break halfway.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        let mut table = self.lock();
        loop {
            let now = clock::now();
            let mut due = Vec::new();
            while let Some(entry) = table.pending.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            let next = table.pending.keys().next().map(|k| k.0);
            table.reaper_until = next;
            if !due.is_empty() {
                drop(table);
                due.into_iter().for_each(Waker::wake);
                table = self.lock();
                continue;
            }
            table = match next {
                Some(at) => {
                    self.wake
                        .wait_timeout(table, at.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.wake.wait(table).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    fn register(&self, deadline: Instant, waker: &Waker) -> GlobalKey {
        let mut table = self.lock();
        let key = (deadline, table.next_id);
        table.next_id += 1;
        table.pending.insert(key, waker.clone());
        if table.reaper_until.is_none_or(|at| deadline < at) {
            table.reaper_until = Some(deadline);
            self.wake.notify_one();
        }
        key
    }

    /// Updates the waker; false when the reaper already fired this entry.
    fn refresh(&self, key: GlobalKey, waker: &Waker) -> bool {
        match self.lock().pending.get_mut(&key) {
            Some(w) => {
                w.clone_from(waker);
                true
            }
            None => false,
        }
    }

    fn cancel(&self, key: GlobalKey) {
        self.lock().pending.remove(&key);
    }
}

/// The per-thread table of an arbiter thread.
struct LocalTable {
    id: u64,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The deadline the local reaper sleeps until; `None` when it sleeps
    /// without one.
    armed: Option<Instant>,
    reaper: Option<Waker>,
    /// The slot of this thread's latest registration. It stays armed after
    /// its last user cancels (until its deadline, or until a newer
    /// registration takes its place): see [`register`].
    last: Option<u32>,
}

struct Slot {
    gen: u32,
    deadline: Instant,
    /// The waker to wake at the deadline. Kept when the slot is freed: the
    /// next registration is most often from the same task (a loop of
    /// requests, an actor's), and a waker that would wake the same task is
    /// not cloned again, which saves an atomic increment and decrement per
    /// request. The reaper drops those left in free slots.
    waker: Option<Waker>,
    /// Registrations sharing the slot that were not cancelled: their keys
    /// are valid while this is above zero.
    users: u32,
    /// Armed: neither fired nor freed.
    pending: bool,
}

enum LocalState {
    Unknown,
    /// Not an actix arbiter thread: use the shared table.
    Shared,
    Table(LocalTable),
}

thread_local! {
    static LOCAL: RefCell<LocalState> = const { RefCell::new(LocalState::Unknown) };
}

/// Whether `a` and `b` wake the same task the same way. `will_wake`
/// compares the vtables' addresses, and a waker and its clone can carry two
/// copies of one vtable (tokio's `block_on` waker does: the vtable is a
/// constant that each codegen unit may copy), so equal contents count too:
/// same data, same four functions.
fn same_waker(a: &Waker, b: &Waker) -> bool {
    a.will_wake(b) || (a.data() == b.data() && a.vtable() == b.vtable())
}

fn new_table_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn register(deadline: Instant, waker: &Waker) -> Key {
    let local = LOCAL.with(|cell| {
        let mut state = cell.borrow_mut();
        if matches!(*state, LocalState::Unknown) {
            *state = if actix_rt::Arbiter::try_current().is_some() {
                // The reaper lives as long as this arbiter's runtime; when it
                // is dropped it resets the state, so a later runtime on the
                // same thread starts a new one.
                actix_rt::spawn(LocalReaper { sleep: None });
                LocalState::Table(LocalTable {
                    id: new_table_id(),
                    slots: Vec::new(),
                    free: Vec::new(),
                    armed: None,
                    reaper: None,
                    last: None,
                })
            } else {
                LocalState::Shared
            };
        }
        let LocalState::Table(t) = &mut *state else { return None };
        // A slot is "wake this task by then". If the thread's latest one
        // wakes the same task no later than this deadline, it serves this
        // registration too: woken early, a waiter finds its own deadline not
        // reached and registers again (see `Within::poll`). A task that
        // makes one request after another (an actor, a loop) so registers
        // once per timeout, not once per request.
        if let Some(i) = t.last {
            if let Some(slot) = t.slots.get_mut(i as usize) {
                if slot.pending
                    && slot.deadline <= deadline
                    && slot.waker.as_ref().is_some_and(|w| same_waker(w, waker))
                {
                    slot.users += 1;
                    return Some(Key::Local { table: t.id, idx: i, gen: slot.gen });
                }
            }
        }
        let idx = match t.free.pop() {
            Some(i) => i,
            None => {
                t.slots.push(Slot { gen: 0, deadline, waker: None, users: 0, pending: false });
                u32::try_from(t.slots.len() - 1).ok()?
            }
        };
        let slot = &mut t.slots[idx as usize];
        slot.gen = slot.gen.wrapping_add(1);
        slot.deadline = deadline;
        if !slot.waker.as_ref().is_some_and(|kept| same_waker(kept, waker)) {
            slot.waker = Some(waker.clone());
        }
        slot.users = 1;
        slot.pending = true;
        let key = Key::Local { table: t.id, idx, gen: slot.gen };
        // The previous latest slot, if nobody uses it any more, is freed.
        if let Some(old) = t.last.replace(idx) {
            t.release_if_unused(old);
        }
        if t.armed.is_none_or(|at| deadline < at) {
            t.armed = Some(deadline);
            if let Some(reaper) = t.reaper.take() {
                reaper.wake();
            }
        }
        Some(key)
    });
    local.unwrap_or_else(|| Key::Global(reaper().register(deadline, waker)))
}

impl LocalTable {
    /// Frees slot `idx` if no registration uses it and it is not the latest.
    fn release_if_unused(&mut self, idx: u32) {
        if self.last == Some(idx) {
            return;
        }
        if let Some(slot) = self.slots.get_mut(idx as usize) {
            if slot.users == 0 {
                slot.pending = false;
                self.free.push(idx);
            }
        }
    }
}

/// Runs `f` on the local slot of `key` if this thread owns it.
fn with_local_slot<R>(table: u64, idx: u32, gen: u32, f: impl FnOnce(&mut LocalTable, usize) -> R) -> Option<R> {
    LOCAL
        .try_with(|cell| {
            let mut state = cell.try_borrow_mut().ok()?;
            let LocalState::Table(t) = &mut *state else { return None };
            let i = idx as usize;
            let owned = t.id == table && t.slots.get(i).is_some_and(|s| s.users > 0 && s.gen == gen);
            owned.then(|| f(t, i))
        })
        .ok()
        .flatten()
}

/// Updates the waker; false when the registration no longer stands for
/// this waiter: it fired (a shared one can fire before this waiter's own
/// deadline), or it is shared and `waker` wakes another task.
fn refresh(key: Key, waker: &Waker) -> bool {
    match key {
        Key::Global(k) => reaper().refresh(k, waker),
        Key::Local { table, idx, gen } => with_local_slot(table, idx, gen, |t, i| {
            let slot = &mut t.slots[i];
            match (slot.pending, &mut slot.waker) {
                (true, Some(w)) if same_waker(w, waker) => true,
                (true, Some(w)) if slot.users == 1 => {
                    *w = waker.clone();
                    true
                }
                _ => false,
            }
        })
        // Polled on another thread than it registered on (a `Send` future
        // moved by a multi-threaded runtime): only the deadline check holds.
        .unwrap_or(true),
    }
}

fn cancel(key: Key) {
    match key {
        Key::Global(k) => reaper().cancel(k),
        Key::Local { table, idx, gen } => {
            // From another thread, or after the runtime went away, there is
            // nothing to free: the slot dies with its table.
            let _ = with_local_slot(table, idx, gen, |t, i| {
                t.slots[i].users -= 1;
                t.release_if_unused(idx);
            });
        }
    }
}

/// The task that fires the deadlines of one arbiter thread.
struct LocalReaper {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for LocalReaper {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut due = Vec::new();
            let next = LOCAL.with(|cell| {
                let mut state = cell.borrow_mut();
                let LocalState::Table(t) = &mut *state else { return None };
                let now = clock::now();
                let mut next: Option<Instant> = None;
                for slot in &mut t.slots {
                    if !slot.pending {
                        // Free: its kept waker has had its chance to be reused.
                        slot.waker = None;
                    } else if slot.deadline <= now {
                        slot.pending = false;
                        due.extend(slot.waker.take());
                    } else {
                        next = Some(next.map_or(slot.deadline, |n| n.min(slot.deadline)));
                    }
                }
                t.armed = next;
                t.reaper = Some(cx.waker().clone());
                next
            });
            due.into_iter().for_each(Waker::wake);
            let Some(at) = next else { return Poll::Pending };
            // Deadlines are on the runtime's clock, timers on tokio's.
            let at = tokio::time::Instant::now() + at.saturating_duration_since(clock::now());
            let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            sleep.as_mut().reset(at);
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl Drop for LocalReaper {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|cell| {
            if let Ok(mut state) = cell.try_borrow_mut() {
                *state = LocalState::Unknown;
            }
        });
    }
}

/// Runs `fut` until it completes or `deadline` (on the runtime's [clock])
/// passes, whichever is first. `fut` must be `Unpin` (box it with
/// `Box::pin` otherwise), which keeps this free of unsafe pin projection.
pub fn within<F: Future + Unpin>(deadline: Instant, fut: F) -> Within<F> {
    Within { fut, deadline, key: None }
}

/// The future returned by [`within`].
pub struct Within<F> {
    fut: F,
    deadline: Instant,
    key: Option<Key>,
}

impl<F: Future + Unpin> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(out) = Pin::new(&mut this.fut).poll(cx) {
            if let Some(key) = this.key.take() {
                cancel(key);
            }
            return Poll::Ready(Ok(out));
        }
        match this.key {
            // A deadline already past is registered all the same: the reaper
            // fires it at once, and the common case saves a clock read.
            None => {
                this.key = Some(register(this.deadline, cx.waker()));
                Poll::Pending
            }
            Some(key) => {
                if clock::now() >= this.deadline {
                    this.key = None;
                    cancel(key);
                    return Poll::Ready(Err(Elapsed));
                }
                if !refresh(key, cx.waker()) {
                    // Woken before the deadline by a registration shared
                    // with an earlier one, or moved to another task: a
                    // registration of its own.
                    cancel(key);
                    this.key = Some(register(this.deadline, cx.waker()));
                }
                Poll::Pending
            }
        }
    }
}

impl<F> Drop for Within<F> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            cancel(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn many_deadlines_fire_in_order_and_cancelled_ones_never_do() {
        let start = clock::now();
        let outs = futures::executor::block_on(futures::future::join_all((0..50u64).map(|i| async move {
            let at = start + Duration::from_millis(10 + (i % 5) * 10);
            let r = within(at, futures::future::pending::<()>()).await;
            (r, clock::now() >= at)
        })));
        assert!(outs.iter().all(|(r, late_enough)| *r == Err(Elapsed) && *late_enough));
        // Finished futures leave nothing behind.
        for _ in 0..100 {
            assert_eq!(
                futures::executor::block_on(within(clock::now() + Duration::from_secs(60), std::future::ready(1))),
                Ok(1)
            );
        }
        let leftover = reaper().lock().pending.keys().filter(|k| k.0 > clock::now() + Duration::from_secs(30)).count();
        assert_eq!(leftover, 0);
    }

    fn local_slots_in_use() -> usize {
        LOCAL.with(|c| match &*c.borrow() {
            LocalState::Table(t) => t.slots.iter().filter(|s| s.users > 0).count(),
            _ => usize::MAX,
        })
    }

    #[test]
    fn arbiter_threads_fire_local_deadlines_in_any_order_and_free_their_slots() {
        for _ in 0..2 {
            // A second System on the same thread gets a new reaper.
            actix_rt::System::new().block_on(async {
                let start = clock::now();
                let waits = [80u64, 10, 40, 5000, 20];
                let outs = futures::future::join_all(waits.iter().map(|&ms| async move {
                    let at = start + Duration::from_millis(ms);
                    let fut = within(at, futures::future::pending::<()>());
                    if ms == 5000 {
                        // Cancelled long before its deadline: must not fire.
                        let r = within(start + Duration::from_millis(100), fut).await;
                        return (ms, r.is_err(), clock::now() < at);
                    }
                    let r = fut.await;
                    (ms, r == Err(Elapsed), clock::now() >= at)
                }))
                .await;
                for (ms, fired, on_time) in outs {
                    assert!(fired && on_time, "deadline {ms} ms");
                }
                for _ in 0..1000 {
                    assert_eq!(within(clock::now() + Duration::from_secs(60), std::future::ready(1)).await, Ok(1));
                }
                assert_eq!(local_slots_in_use(), 0, "every slot was freed");
            });
        }
    }

    #[test]
    fn a_registration_shared_with_an_earlier_deadline_does_not_end_a_later_one() {
        actix_rt::System::new().block_on(async {
            let start = clock::now();
            // Pending once, then done: leaves a 30 ms registration behind.
            let early = within(start + Duration::from_millis(30), Box::pin(actix_rt::task::yield_now())).await;
            assert_eq!(early, Ok(()));
            // Shares it, is woken at 30 ms, and must still wait for 100 ms.
            let at = start + Duration::from_millis(100);
            assert_eq!(within(at, futures::future::pending::<()>()).await, Err(Elapsed));
            assert!(clock::now() >= at, "ended at its own deadline, not the shared one");
            // An earlier deadline than the latest registration gets its own.
            let at = clock::now() + Duration::from_millis(10);
            let late = within(clock::now() + Duration::from_secs(60), Box::pin(actix_rt::task::yield_now())).await;
            assert_eq!(late, Ok(()));
            assert_eq!(within(at, futures::future::pending::<()>()).await, Err(Elapsed));
            assert!(clock::now() >= at && clock::now() < at + Duration::from_secs(30));
            assert_eq!(local_slots_in_use(), 0);
        });
    }

    #[test]
    fn a_freed_slot_reused_by_another_task_wakes_that_task() {
        actix_rt::System::new().block_on(async {
            // Task A registers and finishes early: its slot is freed with
            // A's waker kept in it.
            let a = actix_rt::spawn(async {
                let quick = within(clock::now() + Duration::from_secs(60), futures::future::ready(1)).await;
                let never = within(clock::now() + Duration::from_secs(60), futures::future::pending::<()>());
                let _ = within(clock::now() + Duration::from_millis(5), never).await;
                quick
            });
            assert_eq!(a.await.ok(), Some(Ok(1)));
            // Task B takes that slot: its deadline must wake B, not A.
            let b = actix_rt::spawn(async {
                let at = clock::now() + Duration::from_millis(20);
                (within(at, futures::future::pending::<()>()).await, clock::now() >= at)
            });
            let out = actix_rt::time::timeout(Duration::from_secs(2), b).await;
            assert!(matches!(out, Ok(Ok((Err(Elapsed), true)))), "B timed out on time: {out:?}");
            assert_eq!(local_slots_in_use(), 0);
        });
    }
}
