//! Projections: read models folded from `$all`, saved with a checkpoint and
//! resumed after a restart.
//!
//! A [`Projection`] folds events into a state (a read model: balances by
//! account, orders by customer, …). A [`ProjectionActor`] runs it: it loads
//! the last checkpoint (state and the global position it covers), subscribes
//! to `$all` from that position, applies each event, and saves a new
//! checkpoint every `checkpoint_every` events and every `checkpoint_interval`.
//!
//! The state and the position are saved together, in one write. That is what
//! makes a restart correct: after a crash, the projection resumes from a
//! state that includes exactly the events before the saved position, so no
//! event is counted twice or skipped. Events handled after the last
//! checkpoint are simply handled again.
//!
//! ```
//! use actorbus_actors::event_store::*;
//! use actix::Actor;
//! use serde_json::json;
//! use std::collections::BTreeMap;
//!
//! struct CountByType;
//! impl Projection for CountByType {
//!     type State = BTreeMap<String, u64>;
//!     fn apply(&mut self, counts: &mut Self::State, event: &RecordedEvent) {
//!         *counts.entry(event.event_type.clone()).or_default() += 1;
//!     }
//! }
//!
//! actix_rt::System::new().block_on(async {
//!     let store = EventStore::in_memory(EventStoreConfig::default()).unwrap();
//!     store.append("a", ExpectedVersion::Any, vec![NewEvent::new("Opened", json!({}))]).await.unwrap();
//!     let counts = ProjectionActor::new(store.clone(), CountByType, ProjectionConfig::new("by-type")).start();
//!     loop {
//!         let status = counts.send(GetProjection::new()).await.unwrap();
//!         if status.position == 1 {
//!             assert_eq!(status.state.get("Opened"), Some(&1));
//!             break;
//!         }
//!         actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
//!     }
//! });
//! ```

use std::marker::PhantomData;
use std::time::Duration;

use actix::prelude::*;
use metrics::Gauge;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

use super::store::EventStoreHandle;
use crate::metrics as m;
use crate::store::{Checkpoint, RecordedEvent, StoreError};

/// A read model folded from `$all`.
pub trait Projection: Send + Unpin + 'static {
    /// The read model, saved as JSON with each checkpoint.
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Unpin + 'static;

    /// Folds one event into the read model.
    fn apply(&mut self, state: &mut Self::State, event: &RecordedEvent);
}

/// Settings of a [`ProjectionActor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionConfig {
    /// The projection's name: the key of its checkpoint, and a metric label.
    pub name: String,
    /// Save a checkpoint after this many events (`0`: only on the interval).
    pub checkpoint_every: u64,
    /// Also save one this often when there is progress (`None`: only by
    /// count).
    pub checkpoint_interval: Option<Duration>,
}

impl ProjectionConfig {
    /// A checkpoint every 1,000 events and every second.
    pub fn new(name: impl Into<String>) -> Self {
        ProjectionConfig {
            name: name.into(),
            checkpoint_every: 1_000,
            checkpoint_interval: Some(Duration::from_secs(1)),
        }
    }
}

/// Where a projection is.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionStatus<S> {
    /// The read model.
    pub state: S,
    /// Every event before this global position is folded in.
    pub position: u64,
    /// The position of the last saved checkpoint.
    pub checkpointed: u64,
    /// The checkpoint position the actor started from (0: from scratch).
    pub resumed_from: u64,
}

/// Asks a [`ProjectionActor`] for its read model and progress.
pub struct GetProjection<S>(PhantomData<fn() -> S>);

impl<S> GetProjection<S> {
    /// The request.
    pub fn new() -> Self {
        GetProjection(PhantomData)
    }
}

impl<S> Default for GetProjection<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: 'static> Message for GetProjection<S> {
    type Result = ProjectionStatus<S>;
}

/// Runs a [`Projection`] over `$all` with persisted checkpoints.
///
/// If loading the checkpoint or reading events fails, the actor stops (a
/// supervisor restarts it from the last checkpoint).
pub struct ProjectionActor<P: Projection> {
    store: EventStoreHandle,
    projection: P,
    config: ProjectionConfig,
    state: P::State,
    position: u64,
    checkpointed: u64,
    resumed_from: u64,
    since_checkpoint: u64,
    saving: bool,
    gauge: Gauge,
}

impl<P: Projection> ProjectionActor<P> {
    /// A projection actor; it loads its checkpoint when started.
    pub fn new(store: EventStoreHandle, projection: P, config: ProjectionConfig) -> Self {
        let gauge = metrics::gauge!(m::EVENT_STORE_PROJECTION_CHECKPOINT,
            m::LABEL_NAME => store.name().to_owned(), m::LABEL_SUBSCRIPTION => config.name.clone());
        ProjectionActor {
            store,
            projection,
            config,
            state: P::State::default(),
            position: 0,
            checkpointed: 0,
            resumed_from: 0,
            since_checkpoint: 0,
            saving: false,
            gauge,
        }
    }

    fn resume(&mut self, checkpoint: Result<Option<Checkpoint>, StoreError>, ctx: &mut Context<Self>) {
        match checkpoint {
            Ok(Some(cp)) => match P::State::deserialize(&cp.state) {
                Ok(state) => {
                    self.state = state;
                    self.position = cp.position;
                }
                Err(e) => tracing::warn!(
                    projection = %self.config.name, error = %e,
                    "checkpoint does not decode; rebuilding from the start"
                ),
            },
            Ok(None) => {}
            Err(e) => {
                tracing::error!(projection = %self.config.name, error = %e, "cannot load checkpoint");
                ctx.stop();
                return;
            }
        }
        self.resumed_from = self.position;
        self.checkpointed = self.position;
        self.gauge.set(self.position as f64);
        ctx.add_stream(self.store.subscribe_all_named(self.config.name.clone(), self.position));
        if let Some(every) = self.config.checkpoint_interval {
            ctx.run_interval(every, |act, ctx| act.checkpoint(ctx));
        }
    }

    fn due(&self) -> bool {
        self.config.checkpoint_every > 0 && self.since_checkpoint >= self.config.checkpoint_every
    }

    /// Saves state and position together, unless a save is in flight or
    /// nothing changed.
    fn checkpoint(&mut self, ctx: &mut Context<Self>) {
        if self.saving || self.position == self.checkpointed {
            return;
        }
        let state = match serde_json::to_value(&self.state) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(projection = %self.config.name, error = %e, "read model does not serialize");
                return;
            }
        };
        let position = self.position;
        let checkpoint = Checkpoint { name: self.config.name.clone(), position, state };
        self.saving = true;
        self.since_checkpoint = 0;
        let store = self.store.clone();
        let save = async move { store.save_checkpoint(checkpoint).await };
        ctx.spawn(save.into_actor(self).map(move |res, act, ctx| {
            act.saving = false;
            match res {
                Ok(()) => {
                    act.checkpointed = position;
                    act.gauge.set(position as f64);
                }
                Err(e) => tracing::warn!(projection = %act.config.name, error = %e, "checkpoint not saved"),
            }
            // Events that arrived during the save may already be due.
            if act.due() {
                act.checkpoint(ctx);
            }
        }));
    }
}

impl<P: Projection> Actor for ProjectionActor<P> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let name = self.config.name.clone();
        let load = async move { store.load_checkpoint(name).await };
        // `wait`: no event or query is handled before the checkpoint is in.
        ctx.wait(load.into_actor(self).map(|res, act, ctx| act.resume(res, ctx)));
    }
}

impl<P: Projection> StreamHandler<Result<RecordedEvent, StoreError>> for ProjectionActor<P> {
    fn handle(&mut self, item: Result<RecordedEvent, StoreError>, ctx: &mut Context<Self>) {
        match item {
            Ok(event) => {
                if event.position < self.position {
                    return;
                }
                self.projection.apply(&mut self.state, &event);
                self.position = event.position + 1;
                self.since_checkpoint += 1;
                if self.due() {
                    self.checkpoint(ctx);
                }
            }
            Err(e) => {
                tracing::error!(projection = %self.config.name, error = %e, "projection subscription failed");
                ctx.stop();
            }
        }
    }
}

impl<P: Projection> Handler<GetProjection<P::State>> for ProjectionActor<P> {
    type Result = MessageResult<GetProjection<P::State>>;

    fn handle(&mut self, _: GetProjection<P::State>, _: &mut Context<Self>) -> Self::Result {
        MessageResult(ProjectionStatus {
            state: self.state.clone(),
            position: self.position,
            checkpointed: self.checkpointed,
            resumed_from: self.resumed_from,
        })
    }
}
