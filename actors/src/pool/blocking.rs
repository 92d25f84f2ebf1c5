//! Consumer pools for blocking handlers, on a `SyncArbiter`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::envelope::Envelope;
use crate::error::{FailureReason, HandlerError};
use crate::metrics as m;
use crate::queue::{QueueError, QueueHandle, QueueMessage, Settler};
use crate::supervision::panic;

/// Handles one delivery on a thread of its own; blocking (file I/O, a
/// blocking client, heavy CPU work) is fine here. Any
/// `FnMut(Envelope<T>) -> Result<(), HandlerError> + Send` is one.
pub trait BlockingHandler<T>: Send + 'static {
    /// Handles one message; `Ok` acks it, `Err` nacks it.
    fn handle(&mut self, envelope: Envelope<T>) -> Result<(), HandlerError>;
}

impl<T, F> BlockingHandler<T> for F
where
    F: FnMut(Envelope<T>) -> Result<(), HandlerError> + Send + 'static,
{
    fn handle(&mut self, envelope: Envelope<T>) -> Result<(), HandlerError> {
        self(envelope)
    }
}

struct Run<T>(Envelope<T>, Settler);

impl<T: Send + 'static> Message for Run<T> {
    type Result = ();
}

struct SyncWorker<T, H> {
    factory: Arc<dyn Fn() -> H + Send + Sync>,
    handler: Option<Box<H>>,
    restarts: Arc<AtomicU64>,
    restarts_metric: metrics::Counter,
    panics_metric: metrics::Counter,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T: QueueMessage, H: BlockingHandler<T>> Actor for SyncWorker<T, H> {
    type Context = SyncContext<Self>;
}

impl<T: QueueMessage, H: BlockingHandler<T>> Handler<Run<T>> for SyncWorker<T, H> {
    type Result = ();

    fn handle(&mut self, Run(envelope, settler): Run<T>, _: &mut SyncContext<Self>) {
        if self.handler.is_none() {
            match panic::catch(|| (self.factory)()) {
                Ok(h) => self.handler = Some(Box::new(h)),
                Err(msg) => return settler.nack_with(FailureReason::Panic(format!("factory: {msg}"))),
            }
        }
        let Some(handler) = self.handler.as_mut() else { return settler.nack() };
        match panic::catch(|| handler.handle(envelope)) {
            Ok(Ok(())) => settler.ack(),
            Ok(Err(e)) => settler.nack_with(FailureReason::Failed(e.message().to_owned())),
            Err(msg) => {
                settler.nack_with(FailureReason::Panic(msg));
                // Rebuilt from the factory before the next message.
                self.handler = None;
                self.panics_metric.increment(1);
                self.restarts_metric.increment(1);
                self.restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A fixed pool of threads running a [`BlockingHandler`] on one queue's
/// messages: a `SyncArbiter` of `threads` workers fed by one consumer with
/// `threads` credits. A panic nacks the delivery and rebuilds that thread's
/// handler; the thread itself survives.
pub struct BlockingPool {
    restarts: Arc<AtomicU64>,
    threads: usize,
}

impl BlockingPool {
    /// Starts `threads` (at least 1) worker threads on `queue`; `factory`
    /// builds each thread's handler.
    pub async fn start<T, H, F>(queue: QueueHandle<T>, threads: usize, factory: F) -> Result<Self, QueueError>
    where
        T: QueueMessage,
        H: BlockingHandler<T>,
        F: Fn() -> H + Send + Sync + 'static,
    {
        let threads = threads.max(1);
        let restarts = Arc::new(AtomicU64::new(0));
        let factory: Arc<dyn Fn() -> H + Send + Sync> = Arc::new(factory);
        let name = queue.name().to_owned();
        let counters = Arc::clone(&restarts);
        let addr = SyncArbiter::start(threads, move || SyncWorker::<T, H> {
            factory: Arc::clone(&factory),
            handler: None,
            restarts: Arc::clone(&counters),
            restarts_metric: metrics::counter!(m::SUPERVISION_RESTARTS, m::LABEL_KIND => "pool", m::LABEL_NAME => name.clone()),
            panics_metric: metrics::counter!(m::SUPERVISION_PANICS, m::LABEL_KIND => "pool", m::LABEL_NAME => name.clone()),
            _t: std::marker::PhantomData,
        });
        let mut consumer = queue.consumer(threads).await?;
        actix_rt::spawn(async move {
            while let Some(d) = consumer.recv().await {
                let (envelope, settler) = d.into_parts();
                let addr = addr.clone();
                // At most `threads` of these wait at once: the consumer's
                // credit. A send that fails drops the settler: a nack.
                actix_rt::spawn(async move {
                    let _ = addr.send(Run(envelope, settler)).await;
                });
            }
        });
        Ok(BlockingPool { restarts, threads })
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Handlers rebuilt after a panic so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}
