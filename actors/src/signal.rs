//! A wake-up for an actor that coalesces: raised any number of times, from
//! any thread, before the actor looks, it is one stream item.
//!
//! The queue's core and the event store's append queue share state with
//! their actor behind a lock and only need to tell it "look again". A
//! message per raise would go through the bounded mailbox (where it may not
//! fit, and `do_send` would ignore the bound) or an unbounded channel; a
//! [`Notify`] keeps at most one pending wake-up, so the signal is bounded
//! by construction and never lost.

use std::sync::Arc;

use futures::Stream;
use tokio::sync::Notify;

/// See the [module docs](self).
#[derive(Clone, Default)]
pub(crate) struct Signal(Arc<Notify>);

impl Signal {
    /// Wakes the actor (once, however often it is raised before it looks).
    pub(crate) fn raise(&self) {
        self.0.notify_one();
    }

    /// The raises as a stream, for `ctx.add_stream`: one item per look.
    pub(crate) fn stream(&self) -> impl Stream<Item = ()> + 'static {
        futures::stream::unfold(Arc::clone(&self.0), |n| async move {
            n.notified().await;
            Some(((), n))
        })
    }
}
