//! The queue actor's command inbox: a vector behind a lock, which the actor
//! takes whole.
//!
//! A send is a lock, a push and, when the inbox was empty, a wake-up; the
//! actor swaps the vector out once per handler call. A bounded tokio channel
//! costs a semaphore permit and a slot of its block list per message on
//! both sides, and the queue already bounds its messages with its capacity
//! permits: here the bound (`limit` waiting commands) only keeps a producer
//! that outruns the actor from piling up more than a channel would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::sync::Notify;

struct Inbox<T> {
    waiting: Mutex<Waiting<T>>,
    /// The actor's task, woken when the inbox stops being empty or the
    /// last sender goes.
    actor: AtomicWaker,
    /// Senders that found the inbox full wait for the actor to take it.
    taken: Notify,
    senders: AtomicUsize,
    limit: usize,
}

struct Waiting<T> {
    items: Vec<T>,
    /// The actor is gone: sends fail.
    closed: bool,
}

impl<T> Inbox<T> {
    fn lock(&self) -> MutexGuard<'_, Waiting<T>> {
        // Nothing panics while holding it: a poisoned lock is still sound.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a send did not go in.
pub(crate) enum SendError<T> {
    /// `limit` commands wait already.
    Full(T),
    /// The actor is gone.
    Closed(T),
}

/// The sending side: cheap to clone.
pub(crate) struct Sender<T>(Arc<Inbox<T>>);

/// The actor's side.
pub(crate) struct Receiver<T>(Arc<Inbox<T>>);

/// An inbox that holds at most `limit` commands (at least 1).
pub(crate) fn inbox<T>(limit: usize) -> (Sender<T>, Receiver<T>) {
    let inbox = Arc::new(Inbox {
        waiting: Mutex::new(Waiting { items: Vec::new(), closed: false }),
        actor: AtomicWaker::new(),
        taken: Notify::new(),
        senders: AtomicUsize::new(1),
        limit: limit.max(1),
    });
    (Sender(Arc::clone(&inbox)), Receiver(inbox))
}

impl<T> Sender<T> {
    /// Puts `item` in, unless the inbox is full or the actor gone.
    pub(crate) fn try_send(&self, item: T) -> Result<(), SendError<T>> {
        let inbox = &*self.0;
        let was_empty = {
            let mut waiting = inbox.lock();
            if waiting.closed {
                return Err(SendError::Closed(item));
            }
            if waiting.items.len() >= inbox.limit {
                return Err(SendError::Full(item));
            }
            waiting.items.push(item);
            waiting.items.len() == 1
        };
        // Only the first item of a batch wakes the actor: it takes them all.
        if was_empty {
            inbox.actor.wake();
        }
        Ok(())
    }

    /// Puts `item` in, waiting while the inbox is full; gives it back when
    /// the actor is gone. Cancel-safe: dropped while it waits, it sent
    /// nothing.
    pub(crate) async fn send(&self, mut item: T) -> Result<(), T> {
        loop {
            // Made before the attempt, so a take between the attempt and the
            // wait is not missed.
            let taken = self.0.taken.notified();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(SendError::Closed(back)) => return Err(back),
                Err(SendError::Full(back)) => item = back,
            }
            taken.await;
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(Arc::clone(&self.0))
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The actor sees the inbox end once it took what is left.
            self.0.actor.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// Swaps everything waiting into `into` (which must be empty; its room
    /// goes to the inbox for what comes next) and gives how many came:
    /// 0 once every sender is gone and nothing is left.
    pub(crate) fn poll_take(&mut self, cx: &mut Context<'_>, into: &mut Vec<T>) -> Poll<usize> {
        let inbox = &*self.0;
        // Registered before looking, so a send that comes after the look
        // wakes this task.
        inbox.actor.register(cx.waker());
        let taken = {
            let mut waiting = inbox.lock();
            if waiting.items.is_empty() {
                None
            } else {
                std::mem::swap(&mut waiting.items, into);
                Some(into.len())
            }
        };
        match taken {
            Some(n) => {
                if n >= inbox.limit {
                    inbox.taken.notify_waiters();
                }
                Poll::Ready(n)
            }
            None if inbox.senders.load(Ordering::Acquire) == 0 => Poll::Ready(0),
            None => Poll::Pending,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let left = {
            let mut waiting = self.0.lock();
            waiting.closed = true;
            std::mem::take(&mut waiting.items)
        };
        // Senders waiting for room learn that there will be none.
        self.0.taken.notify_waiters();
        // Dropped outside the lock: a command's drop may send (a durable
        // send's reply, a consumer's link).
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    fn take(rx: &mut Receiver<u32>) -> Poll<Vec<u32>> {
        let mut into = Vec::new();
        let waker = futures::task::noop_waker();
        rx.poll_take(&mut Context::from_waker(&waker), &mut into).map(|_| into)
    }

    #[test]
    fn a_full_inbox_holds_the_send_until_the_actor_takes_it() {
        let (tx, mut rx) = inbox::<u32>(2);
        assert!(tx.try_send(1).is_ok() && tx.try_send(2).is_ok());
        assert!(matches!(tx.try_send(3), Err(SendError::Full(3))));
        let mut waiting = Box::pin(tx.send(3));
        assert!(waiting.as_mut().now_or_never().is_none());
        assert_eq!(take(&mut rx), Poll::Ready(vec![1, 2]));
        assert_eq!(waiting.now_or_never(), Some(Ok(())));
        assert_eq!(take(&mut rx), Poll::Ready(vec![3]));
        assert_eq!(take(&mut rx), Poll::Pending);
        drop(tx);
        assert_eq!(take(&mut rx), Poll::Ready(Vec::new()), "ends once every sender is gone");
    }

    #[test]
    fn sends_fail_once_the_actor_is_gone() {
        let (tx, rx) = inbox::<u32>(1);
        assert!(tx.try_send(1).is_ok());
        let mut waiting = Box::pin(tx.send(2));
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(rx);
        assert_eq!(waiting.now_or_never(), Some(Err(2)));
        assert!(matches!(tx.try_send(3), Err(SendError::Closed(3))));
    }
}
