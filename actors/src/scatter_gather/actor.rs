//! The actor that runs gathers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{oneshot, Semaphore};

use super::gather::{Aggregator, Gather, GatherResult};
use crate::metrics as m;

/// Why a gather could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScatterError {
    /// The scatter-gather actor is stopped.
    #[error("the scatter-gather actor is stopped")]
    Stopped,
}

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A gather to run.
struct Run(Job);

impl Message for Run {
    type Result = ();
}

/// Hosts gathers: each runs as a task on the actor's arbiter, so a slow
/// gather never holds up another, and at most `max_running` run at once
/// (a new one waits for a slot). After a gather completes, the same task
/// keeps listening, until the deadline, only to count late replies.
pub struct ScatterGather {
    _private: (),
}

impl Actor for ScatterGather {
    type Context = Context<Self>;
}

impl Handler<Run> for ScatterGather {
    type Result = ();
    fn handle(&mut self, Run(job): Run, ctx: &mut Context<Self>) {
        ctx.spawn(job.into_actor(self));
    }
}

impl ScatterGather {
    /// Starts the actor on the current arbiter.
    pub fn start_with(max_running: usize) -> ScatterGatherHandle {
        let running = metrics::gauge!(m::SCATTER_RUNNING);
        let permits = Arc::new(Semaphore::new(max_running.max(1)));
        let addr = ScatterGather { _private: () }.start();
        ScatterGatherHandle { addr, permits, running }
    }
}

/// Runs gathers on a [`ScatterGather`] actor. Cheap to clone.
#[derive(Clone)]
pub struct ScatterGatherHandle {
    addr: Addr<ScatterGather>,
    permits: Arc<Semaphore>,
    running: metrics::Gauge,
}

impl std::fmt::Debug for ScatterGatherHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScatterGatherHandle").field("free_slots", &self.permits.available_permits()).finish()
    }
}

impl ScatterGatherHandle {
    /// Runs `gather` with `aggregator` on the actor and waits for its result.
    pub async fn run<Q, A, Acc>(
        &self,
        gather: Gather<Q, A>,
        aggregator: Aggregator<A, Acc>,
    ) -> Result<GatherResult<Acc>, ScatterError>
    where
        Q: Clone + Send + 'static,
        A: Send + 'static,
        Acc: Send + 'static,
    {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| ScatterError::Stopped)?;
        let (tx, rx) = oneshot::channel();
        let running = self.running.clone();
        running.increment(1.0);
        let job: Job = Box::pin(async move {
            let result = gather.run(aggregator).await;
            running.decrement(1.0);
            drop(permit);
            let _ = tx.send(result);
        });
        self.addr.send(Run(job)).await.map_err(|_| ScatterError::Stopped)?;
        rx.await.map_err(|_| ScatterError::Stopped)
    }
}
