//! The seam between the patterns built here and the dead letter queue.
//!
//! Topics (overflow under the `dead_letter` policy, a claim-check payload
//! that cannot be claimed) and scatter-gather (an aggregator that times out)
//! hand the messages they give up on to a [`DeadLetterHook`]. The hook is a
//! trait object so that these patterns do not depend on the DLQ actor.
//!
//! [`DlqHandle`](crate::dlq::DlqHandle) implements it: each
//! [`Undeliverable`] becomes a [`DeadLetter`](crate::dlq::DeadLetter) with
//! source `(pattern, name)`, and the `Bus` installs its DLQ on every topic it
//! creates and on scatter-gathers that dead-letter on timeout. A pattern
//! without a hook (built directly from this crate) counts what it would have
//! dead-lettered (metrics with reason `dead_letter`) and logs a warning.
//! [`MemoryDeadLetters`] is a hook for tests.
//!
//! ```
//! use actorbus_actors::dead_letter::{DeadLetterHook, MemoryDeadLetters, Undeliverable};
//! use actorbus_actors::error::FailureReason;
//!
//! let dlq = MemoryDeadLetters::default();
//! let letter = Undeliverable::new("topic", "orders.created", FailureReason::Expired, serde_json::json!({"id": 1}));
//! futures::executor::block_on(dlq.dead_letter(letter)).unwrap();
//! assert_eq!(dlq.len(), 1);
//! assert_eq!(dlq.take()[0].reason, FailureReason::Expired);
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use crate::error::FailureReason;

/// A message a pattern gives up on, as the dead letter queue takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Undeliverable {
    /// The pattern it came from: `topic`, `scatter_gather`, …
    pub pattern: &'static str,
    /// The topic name, scatter-gather name, …
    pub name: String,
    /// Why it is dead-lettered.
    pub reason: FailureReason,
    /// The original envelope (or what is known of it), serialized.
    pub envelope: Value,
    /// Delivery attempts made (1 for a message dropped on first delivery).
    pub attempts: u32,
}

impl Undeliverable {
    /// A dead letter for `envelope` after one attempt.
    pub fn new(pattern: &'static str, name: impl Into<String>, reason: FailureReason, envelope: Value) -> Self {
        Undeliverable { pattern, name: name.into(), reason, envelope, attempts: 1 }
    }
}

/// A future a hook returns: resolves once the dead letter is stored.
pub type HookFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Where a pattern sends what it gives up on.
///
/// The future resolves once the dead letter is stored; patterns await it
/// before they forget the message, so a slow DLQ slows its sources instead
/// of losing letters.
pub trait DeadLetterHook: Send + Sync + 'static {
    /// Stores one dead letter.
    fn dead_letter(&self, letter: Undeliverable) -> HookFuture;
}

/// A shareable hook.
pub type SharedHook = Arc<dyn DeadLetterHook>;

/// A hook that keeps dead letters in memory, for tests and examples.
#[derive(Clone, Default)]
pub struct MemoryDeadLetters {
    letters: Arc<Mutex<Vec<Undeliverable>>>,
}

impl MemoryDeadLetters {
    /// Dead letters received so far.
    pub fn len(&self) -> usize {
        self.letters.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// True when none were received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns everything received, oldest first.
    pub fn take(&self) -> Vec<Undeliverable> {
        std::mem::take(&mut *self.letters.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl fmt::Debug for MemoryDeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDeadLetters").field("len", &self.len()).finish()
    }
}

impl DeadLetterHook for MemoryDeadLetters {
    fn dead_letter(&self, letter: Undeliverable) -> HookFuture {
        self.letters.lock().unwrap_or_else(PoisonError::into_inner).push(letter);
        Box::pin(std::future::ready(Ok(())))
    }
}
