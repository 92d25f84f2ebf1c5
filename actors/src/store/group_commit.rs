//! Group commit: the trigger the event store, the DLQ sink and durable
//! queues share.
//!
//! An fsync costs far more than writing one more row, so a storage actor
//! does not write as each request arrives. It asks for a write *after its
//! mailbox is drained*: actix polls a context's mailbox before its spawned
//! futures, so every request already waiting joins the same transaction
//! instead of the first one going alone. Under load the batch grows by
//! itself; alone, a request waits for nothing.

use actix::prelude::*;

/// A storage actor that writes what it collected in one transaction.
pub(crate) trait GroupCommit: Actor<Context = Context<Self>> {
    /// The flag that says a write is already scheduled.
    fn write_scheduled(&mut self) -> &mut bool;

    /// Writes everything collected so far.
    fn write_batch(&mut self, ctx: &mut Context<Self>);

    /// Schedules [`write_batch`](Self::write_batch) for when the mailbox is
    /// drained (once, however many requests ask).
    fn write_soon(&mut self, ctx: &mut Context<Self>) {
        if std::mem::replace(self.write_scheduled(), true) {
            return;
        }
        ctx.spawn(fut::ready(()).map(|(), act: &mut Self, ctx| {
            *act.write_scheduled() = false;
            act.write_batch(ctx);
        }));
    }
}
