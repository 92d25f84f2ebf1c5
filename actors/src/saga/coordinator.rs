//! The coordinator actor, its builder and the handles applications use.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use actix::{Actor, Addr, ArbiterHandle, Context, Handler, Message};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::definition::{Definition, SagaDefinition};
use super::log::{LogEntry, MemorySagaLog, SagaLog};
use super::runner::{Finished, Runner};
use super::{Replay, SagaData, SagaId, SagaRecord, SagaStatus};
use crate::dlq::{DeadLetter, DlqHandle, DlqSource, FailureRecord};
use crate::envelope::Timestamp;
use crate::error::FailureReason;
use crate::metrics as m;
use crate::store::StoreError;

/// Why a saga could not be started, run or looked up.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// A definition is malformed (no steps, a repeated name, kinds out of
    /// order, a name registered twice).
    #[error("invalid saga definition: {0}")]
    InvalidDefinition(String),
    /// No definition of that name is registered.
    #[error("unknown saga `{0}`")]
    UnknownSaga(String),
    /// The definition of that name holds data of another type.
    #[error("saga `{saga}` does not hold data of type {requested}")]
    WrongDataType {
        /// The saga.
        saga: String,
        /// The type asked for.
        requested: &'static str,
    },
    /// The saga's data could not be encoded or decoded.
    #[error("saga data codec error: {0}")]
    Codec(String),
    /// The saga log could not be read or written. A saga interrupted by this
    /// stays unfinished in the log and resumes at the next start.
    #[error("saga log: {0}")]
    Log(#[from] StoreError),
    /// This runtime's coordinator was already started (one per bus, so that
    /// two never resume the same saga).
    #[error("the saga coordinator is already started")]
    AlreadyStarted,
    /// The coordinator is no longer running.
    #[error("the saga coordinator has stopped")]
    Stopped,
}

/// How a saga ended, with its data decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaOutcome<D> {
    /// The saga.
    pub id: SagaId,
    /// `Completed`, `Compensated` or `NeedsAttention`.
    pub status: SagaStatus,
    /// The data after the last step or compensation that completed.
    pub data: D,
    /// Why it did not complete (the failure that started compensation, or
    /// why it needs attention); `None` when completed.
    pub error: Option<String>,
}

/// A saga as its log tells it: status, data, and every transition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SagaState {
    /// The saga.
    pub id: SagaId,
    /// The definition's name.
    pub saga: String,
    /// Where it is.
    pub status: SagaStatus,
    /// The step (or compensation) last attempted, by name.
    pub step: Option<String>,
    /// The data after the last completed step or compensation.
    pub data: Value,
    /// Why it is compensating, compensated or stuck.
    pub error: Option<String>,
    /// The definition's steps, in order (history records name them by index).
    pub steps: Vec<String>,
    /// When it started.
    pub started_at: Timestamp,
    /// When its last transition was written.
    pub updated_at: Timestamp,
    /// Every transition, oldest first.
    pub history: Vec<LogEntry>,
}

impl SagaState {
    /// The history as text, one transition per line, timed from the start:
    ///
    /// ```text
    ///    +0.000 ms  started
    ///    +0.011 ms  reserve: attempt 1
    ///    +0.020 ms  reserve: done
    ///    +0.031 ms  charge: attempt 1 failed: card declined
    ///    +0.035 ms  compensating (card declined)
    /// ```
    pub fn timeline(&self) -> String {
        let name = |step: &usize| self.steps.get(*step).map_or("?", String::as_str);
        let mut out = String::new();
        for entry in &self.history {
            let line = match &entry.record {
                SagaRecord::Started { .. } => "started".to_string(),
                SagaRecord::StepStarted { step, attempt } => format!("{}: attempt {attempt}", name(step)),
                SagaRecord::StepCompleted { step, .. } => format!("{}: done", name(step)),
                SagaRecord::StepFailed { step, attempt, error } => {
                    format!("{}: attempt {attempt} failed: {error}", name(step))
                }
                SagaRecord::Compensating { reason } => format!("compensating ({reason})"),
                SagaRecord::CompensationStarted { step, attempt } => {
                    format!("{}: compensation attempt {attempt}", name(step))
                }
                SagaRecord::CompensationCompleted { step, .. } => format!("{}: compensated", name(step)),
                SagaRecord::CompensationFailed { step, attempt, error } => {
                    format!("{}: compensation attempt {attempt} failed: {error}", name(step))
                }
                SagaRecord::Completed => "completed".to_string(),
                SagaRecord::Compensated => "compensated".to_string(),
                SagaRecord::NeedsAttention { reason } => format!("needs attention: {reason}"),
            };
            let at = entry.at.as_micros().saturating_sub(self.started_at.as_micros());
            out.push_str(&format!("{:>+10.3} ms  {line}\n", at as f64 / 1000.0));
        }
        out
    }
}

/// What recovery found at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Unfinished sagas resumed.
    pub resumed: usize,
    /// Unfinished sagas left alone because no definition of their name is
    /// registered (they stay in the log and resume when one is).
    pub unknown: Vec<SagaId>,
}

/// A registered definition with its metric handles (made once, so the
/// per-step cost is a handle call, not a label lookup).
pub(crate) struct Registered {
    pub(crate) definition: Definition,
    /// The step names, as every `Started` record carries them.
    pub(crate) steps: Arc<[Arc<str>]>,
    pub(crate) metrics: SagaMetrics,
}

pub(crate) struct SagaMetrics {
    started: metrics::Counter,
    running: metrics::Gauge,
    ended: [metrics::Counter; 3],
    pub(crate) step_latency: Vec<metrics::Histogram>,
}

impl SagaMetrics {
    fn new(definition: &Definition) -> Self {
        let name = definition.name.to_string();
        let ended = [SagaStatus::Completed, SagaStatus::Compensated, SagaStatus::NeedsAttention]
            .map(|s| metrics::counter!(m::SAGA_ENDED, m::LABEL_SAGA => name.clone(), m::LABEL_OUTCOME => s.as_str()));
        SagaMetrics {
            started: metrics::counter!(m::SAGA_STARTED, m::LABEL_SAGA => name.clone()),
            running: metrics::gauge!(m::SAGA_RUNNING, m::LABEL_SAGA => name.clone()),
            ended,
            step_latency: definition
                .steps
                .iter()
                .map(|s| {
                    metrics::histogram!(m::SAGA_STEP_LATENCY, m::LABEL_SAGA => name.clone(), m::LABEL_STEP => s.name.to_string())
                })
                .collect(),
        }
    }

    fn ended(&self, status: SagaStatus) {
        match status {
            SagaStatus::Completed => self.ended[0].increment(1),
            SagaStatus::Compensated => self.ended[1].increment(1),
            SagaStatus::NeedsAttention => self.ended[2].increment(1),
            SagaStatus::Running | SagaStatus::Compensating => {}
        }
    }
}

/// The actor that runs sagas.
///
/// It owns no saga state: each saga runs as a task of its own on the
/// coordinator's arbiter (so actions need not be `Send` and may hold actor
/// addresses), its state in the task and its truth in the [`SagaLog`]. The
/// actor's job is to place those tasks on its arbiter, whoever starts them.
pub struct SagaCoordinator {
    log: Arc<dyn SagaLog>,
    dead_letters: Option<DlqHandle>,
}

impl SagaCoordinator {
    /// A builder for a coordinator; its log is a [`MemorySagaLog`] unless
    /// [`log`](SagaCoordinatorBuilder::log) says otherwise.
    pub fn builder() -> SagaCoordinatorBuilder {
        SagaCoordinatorBuilder {
            log: None,
            sagas: Vec::new(),
            problems: Vec::new(),
            max_running: 10_000,
            arbiter: None,
            dead_letters: None,
        }
    }
}

impl Actor for SagaCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
    }
}

/// Runs one saga: its `Started` record first when it is new.
#[derive(Message)]
#[rtype(result = "()")]
struct Launch {
    runner: Runner,
    permit: OwnedSemaphorePermit,
    started: Option<(LogEntry, oneshot::Sender<Result<(), StoreError>>)>,
    done: Option<oneshot::Sender<Result<Finished, StoreError>>>,
}

impl Handler<Launch> for SagaCoordinator {
    type Result = ();

    fn handle(&mut self, launch: Launch, _: &mut Context<Self>) {
        let log = self.log.clone();
        let dead_letters = self.dead_letters.clone();
        actix_rt::spawn(async move {
            let Launch { runner, permit, started, done } = launch;
            let (id, saga) = (runner.id, runner.saga.clone());
            let metrics = &saga.metrics;
            if let Some((entry, ack)) = started {
                let written = log.append(runner.id, entry).await;
                let failed = written.is_err();
                let _ = ack.send(written);
                if failed {
                    return;
                }
                metrics.started.increment(1);
            }
            metrics.running.increment(1.0);
            let result = runner.run().await;
            metrics.running.decrement(1.0);
            if let Ok(finished) = &result {
                metrics.ended(finished.status);
                if let (SagaStatus::NeedsAttention, Some(dlq)) = (finished.status, &dead_letters) {
                    dead_letter(dlq, &*log, id, &saga.definition.name, finished).await;
                }
            }
            drop(permit);
            if let Some(done) = done {
                let _ = done.send(result);
            }
        });
    }
}

/// Dead-letters a saga that needs attention, with its whole history and
/// every failed attempt, so an operator finds it beside failed messages. The
/// saga itself stays `needs_attention` in the log either way.
async fn dead_letter(dlq: &DlqHandle, log: &dyn SagaLog, id: SagaId, name: &str, finished: &Finished) {
    let history = log.history(id).await.unwrap_or_default();
    let errors = history
        .iter()
        .filter_map(|e| match &e.record {
            SagaRecord::StepFailed { attempt, error, .. } | SagaRecord::CompensationFailed { attempt, error, .. } => {
                Some(FailureRecord { at: e.at, attempt: *attempt, reason: error.clone() })
            }
            _ => None,
        })
        .collect();
    let reason = finished.error.clone().unwrap_or_else(|| "needs attention".into());
    let saga = serde_json::json!({ "id": id, "saga": name, "data": finished.data, "history": history });
    let letter = DeadLetter::new(DlqSource::new("saga", name), FailureReason::Failed(reason), &saga, errors);
    if let Err(e) = dlq.dead_letter(letter).await {
        tracing::error!(saga = %id, error = %e, "could not dead-letter a saga that needs attention; it stays in the saga log");
    }
}

/// Registers definitions, recovers unfinished sagas and starts a
/// [`SagaCoordinator`].
pub struct SagaCoordinatorBuilder {
    log: Option<Arc<dyn SagaLog>>,
    sagas: Vec<Definition>,
    problems: Vec<String>,
    max_running: usize,
    arbiter: Option<ArbiterHandle>,
    dead_letters: Option<DlqHandle>,
}

impl SagaCoordinatorBuilder {
    /// Dead-letters every saga that ends `needs_attention` to `dlq` (source
    /// `saga`/its definition's name, the saga's data and history as the
    /// envelope, each failed attempt in the error history).
    pub fn dead_letters(mut self, dlq: DlqHandle) -> Self {
        self.dead_letters = Some(dlq);
        self
    }

    /// Registers a saga definition (checked at [`start`](Self::start)).
    pub fn definition<D: Serialize + DeserializeOwned + 'static>(mut self, saga: SagaDefinition<D>) -> Self {
        // A malformed definition is reported by `start`, so that building
        // stays a chain of calls.
        match saga.validate() {
            Ok(()) => self.sagas.push(saga.erase()),
            Err(problem) => self.problems.push(problem),
        }
        self
    }

    /// Where transitions are written (default: a [`MemorySagaLog`]).
    pub fn log(mut self, log: Arc<dyn SagaLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// True when a log was set with [`log`](Self::log).
    pub fn has_log(&self) -> bool {
        self.log.is_some()
    }

    /// Sagas running at once, at most (default 10,000); a start waits for a
    /// free slot. Bounds the memory sagas in flight can take.
    pub fn max_running(mut self, max: usize) -> Self {
        self.max_running = max.max(1);
        self
    }

    /// Runs the coordinator (and every saga's task) on `arbiter` instead of
    /// the current one.
    pub fn arbiter(mut self, arbiter: ArbiterHandle) -> Self {
        self.arbiter = Some(arbiter);
        self
    }

    /// Starts the coordinator, then resumes every unfinished saga in the log
    /// whose definition is registered. Returns once each is running again.
    pub async fn start(self) -> Result<SagaCoordinatorHandle, SagaError> {
        if let Some(problem) = self.problems.into_iter().next() {
            return Err(SagaError::InvalidDefinition(problem));
        }
        let mut sagas = HashMap::new();
        for definition in self.sagas {
            let name = definition.name.clone();
            let metrics = SagaMetrics::new(&definition);
            if sagas
                .insert(
                    name.clone(),
                    Arc::new(Registered {
                        steps: definition.steps.iter().map(|s| s.name.clone()).collect(),
                        definition,
                        metrics,
                    }),
                )
                .is_some()
            {
                return Err(SagaError::InvalidDefinition(format!("saga `{name}` is registered twice")));
            }
        }
        let log = self.log.unwrap_or_else(|| Arc::new(MemorySagaLog::default()));
        let unfinished = log.unfinished().await?;
        let (actor_log, dead_letters) = (log.clone(), self.dead_letters.clone());
        let addr = match &self.arbiter {
            Some(arbiter) => {
                SagaCoordinator::start_in_arbiter(arbiter, move |_| SagaCoordinator { log: actor_log, dead_letters })
            }
            None => SagaCoordinator { log: actor_log, dead_letters }.start(),
        };
        let mut handle = SagaCoordinatorHandle {
            inner: Arc::new(Shared {
                addr,
                sagas,
                log,
                slots: Arc::new(Semaphore::new(self.max_running)),
                max_running: self.max_running,
                recovery: Recovery::default(),
            }),
        };
        let mut recovery = Recovery::default();
        for (id, entries) in unfinished {
            let Some(state) = Replay::of(&entries) else {
                tracing::warn!(saga = %id, "saga log entries without a start record; left alone");
                continue;
            };
            let Some(saga) = handle.inner.sagas.get(state.saga.as_str()).cloned() else {
                tracing::warn!(saga = %id, name = %state.saga, "unfinished saga of an unregistered definition; left alone");
                recovery.unknown.push(id);
                continue;
            };
            let runner = Runner { id, saga, log: handle.inner.log.clone(), state };
            handle.launch(runner, None, None).await?;
            recovery.resumed += 1;
        }
        metrics::counter!(m::SAGA_RECOVERED).increment(recovery.resumed as u64);
        if let Some(shared) = Arc::get_mut(&mut handle.inner) {
            shared.recovery = recovery;
        }
        Ok(handle)
    }
}

struct Shared {
    addr: Addr<SagaCoordinator>,
    sagas: HashMap<Arc<str>, Arc<Registered>>,
    log: Arc<dyn SagaLog>,
    slots: Arc<Semaphore>,
    max_running: usize,
    recovery: Recovery,
}

/// A running coordinator: typed saga handles, status and history queries.
/// Cheap to clone.
#[derive(Clone)]
pub struct SagaCoordinatorHandle {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for SagaCoordinatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaCoordinatorHandle").field("sagas", &self.inner.sagas.keys()).finish()
    }
}

impl SagaCoordinatorHandle {
    /// The typed handle of the registered saga `name` over data `D`.
    pub fn saga<D: Serialize + DeserializeOwned + 'static>(&self, name: &str) -> Result<Saga<D>, SagaError> {
        let saga = self.inner.sagas.get(name).ok_or_else(|| SagaError::UnknownSaga(name.to_owned()))?;
        if saga.definition.data_type != std::any::TypeId::of::<D>() {
            return Err(SagaError::WrongDataType { saga: name.to_owned(), requested: std::any::type_name::<D>() });
        }
        Ok(Saga { coordinator: self.clone(), saga: saga.clone(), _data: PhantomData })
    }

    /// A saga's status, data and history; `None` when the log does not know
    /// it (never started, or an in-memory log dropped it after it ended).
    pub async fn status(&self, id: SagaId) -> Result<Option<SagaState>, SagaError> {
        let history = self.inner.log.history(id).await?;
        let Some(replay) = Replay::of(&history) else { return Ok(None) };
        let steps = match &history[0].record {
            SagaRecord::Started { steps, .. } if !steps.is_empty() => steps.clone(),
            _ => self.inner.sagas.get(replay.saga.as_str()).map(|s| s.steps.clone()).unwrap_or_default(),
        };
        let steps: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        let step = replay.unit.and_then(|(_, i)| steps.get(i).cloned());
        Ok(Some(SagaState {
            id,
            saga: replay.saga,
            status: replay.status,
            step,
            data: replay.data.to_value(),
            error: replay.reason,
            steps,
            started_at: replay.started_at,
            updated_at: replay.updated_at,
            history,
        }))
    }

    /// The sagas the log holds unfinished (running, compensating, or waiting
    /// for a definition to be registered).
    pub async fn unfinished(&self) -> Result<Vec<SagaId>, SagaError> {
        Ok(self.inner.log.unfinished().await?.into_iter().map(|(id, _)| id).collect())
    }

    /// Sagas running now in this process (each holds one of the
    /// `max_running` slots until it ends).
    pub fn running(&self) -> usize {
        self.inner.max_running.saturating_sub(self.inner.slots.available_permits())
    }

    /// What recovery did at start.
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    async fn launch(
        &self,
        runner: Runner,
        started: Option<(LogEntry, oneshot::Sender<Result<(), StoreError>>)>,
        done: Option<oneshot::Sender<Result<Finished, StoreError>>>,
    ) -> Result<(), SagaError> {
        let permit = self.inner.slots.clone().acquire_owned().await.map_err(|_| SagaError::Stopped)?;
        self.inner.addr.send(Launch { runner, permit, started, done }).await.map_err(|_| SagaError::Stopped)
    }
}

/// The handle of one saga definition over data `D`.
pub struct Saga<D> {
    coordinator: SagaCoordinatorHandle,
    saga: Arc<Registered>,
    _data: PhantomData<fn(D) -> D>,
}

impl<D> Clone for Saga<D> {
    fn clone(&self) -> Self {
        Saga { coordinator: self.coordinator.clone(), saga: self.saga.clone(), _data: PhantomData }
    }
}

impl<D: Serialize + DeserializeOwned + 'static> Saga<D> {
    /// Starts a saga and returns its id once its start is in the log: from
    /// then on it runs to an end, across crashes when the log is durable.
    pub async fn start(&self, data: D) -> Result<SagaId, SagaError> {
        self.begin(data, None).await
    }

    /// Starts a saga and waits for its end.
    pub async fn run(&self, data: D) -> Result<SagaOutcome<D>, SagaError> {
        let (tx, rx) = oneshot::channel();
        let id = self.begin(data, Some(tx)).await?;
        let finished = rx.await.map_err(|_| SagaError::Stopped)??;
        let data = finished.data.decode().map_err(|e| SagaError::Codec(e.to_string()))?;
        Ok(SagaOutcome { id, status: finished.status, data, error: finished.error })
    }

    async fn begin(
        &self,
        data: D,
        done: Option<oneshot::Sender<Result<Finished, StoreError>>>,
    ) -> Result<SagaId, SagaError> {
        let id = SagaId::new();
        let data = SagaData::encode(&data).map_err(|e| SagaError::Codec(e.to_string()))?;
        let entry = LogEntry {
            at: Timestamp::now(),
            record: SagaRecord::Started {
                saga: self.saga.definition.name.to_string(),
                steps: self.saga.steps.clone(),
                data,
            },
        };
        let state = Replay::of(std::slice::from_ref(&entry)).ok_or(SagaError::Stopped)?;
        let runner = Runner { id, saga: self.saga.clone(), log: self.coordinator.inner.log.clone(), state };
        let (ack, acked) = oneshot::channel();
        self.coordinator.launch(runner, Some((entry, ack)), done).await?;
        acked.await.map_err(|_| SagaError::Stopped)??;
        Ok(id)
    }
}
