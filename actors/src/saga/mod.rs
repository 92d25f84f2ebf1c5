//! Sagas (DESIGN §6.8): long-lived transactions as ordered steps, each undone
//! by a compensation when a later step fails.
//!
//! A [`SagaDefinition`] lists the steps over some data `D`: each step has an
//! action (an async function, which may of course ask an actor), an optional
//! compensation, a timeout per attempt, a [`RetryPolicy`] and a [`StepKind`]:
//!
//! ```text
//!  compensable … compensable │ pivot │ retryable … retryable
//!  ◄── a failure here undoes ─┘       └── past the pivot the saga only
//!      the completed steps,               goes forward: a step that keeps
//!      last first                          failing needs attention
//! ```
//!
//! The [`SagaCoordinator`] actor runs sagas: every saga is a task of its own
//! on the coordinator's arbiter, so a slow saga never holds up another, and
//! at most `max_running` run at once (a start waits for a free slot).
//!
//! ## The log comes first
//!
//! Every transition ([`SagaRecord`]) is appended to a [`SagaLog`] *before*
//! it takes effect: `StepStarted` before the action runs, `StepCompleted`
//! (with the data the action returned) before the next step starts,
//! `Compensating` before the first compensation. So after a crash the log
//! says exactly where each saga was, and [`SagaCoordinator::builder`]'s
//! `start` resumes every unfinished one: forward from the first step not
//! completed, or on with its compensations. A step that had started but not
//! completed is run again — with the same [`StepContext::idempotency_key`]
//! (`"{saga id}:{step}"`, compensations `"…:compensate"`), so the service it
//! calls can recognise the repeat and apply the effect once. That is the
//! contract with services: effects are at-least-once, deduplicated by key.
//!
//! The log is [`MemorySagaLog`] (fast, gone with the process) or
//! [`EventStoreSagaLog`] (durable, one stream per saga on an event store
//! with its group commit and crash safety).
//!
//! ## Outcomes
//!
//! A saga ends [`Completed`](SagaStatus::Completed) (every step done),
//! [`Compensated`](SagaStatus::Compensated) (a step before or at the pivot
//! failed and every completed step was undone, in reverse order) or
//! [`NeedsAttention`](SagaStatus::NeedsAttention): a compensation kept
//! failing, or a step after the pivot did. Such a saga cannot finish by
//! itself; it is dead-lettered with its history for an operator.
//! [`SagaCoordinatorHandle::status`] answers for any saga the log still
//! holds, running or ended.
//!
//! ```
//! use actorbus_actors::saga::{SagaCoordinator, SagaDefinition, SagaStatus, StepError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Trip { hotel: Option<u32>, flight: Option<u32> }
//!
//! let trip = SagaDefinition::<Trip>::new("trip")
//!     .step("hotel", |mut t: Trip, _| async move { t.hotel = Some(7); Ok(t) })
//!     .compensate(|mut t: Trip, _| async move { t.hotel = None; Ok(t) })
//!     .pivot("flight", |_t: Trip, _| async move { Err(StepError::permanent("no seats")) });
//!
//! actix_rt::System::new().block_on(async {
//!     let sagas = SagaCoordinator::builder().definition(trip)
//!         .start()
//!         .await?;
//!     let outcome = sagas.saga::<Trip>("trip")?.run(Trip { hotel: None, flight: None }).await?;
//!     assert_eq!(outcome.status, SagaStatus::Compensated);
//!     assert_eq!(outcome.data.hotel, None); // the hotel was booked, then cancelled
//!     assert_eq!(outcome.error.as_deref(), Some("no seats"));
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

mod coordinator;
mod definition;
mod log;
mod runner;

pub use coordinator::{
    Recovery, Saga, SagaCoordinator, SagaCoordinatorBuilder, SagaCoordinatorHandle, SagaError, SagaOutcome, SagaState,
};
pub use definition::{RetryPolicy, SagaDefinition, StepContext, StepError, StepKind};
pub use log::{EventStoreSagaLog, LogEntry, LogFuture, MemorySagaLog, SagaLog, SagaRecord};

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::envelope::{MessageId, Timestamp};

/// A saga's data as the log holds it: JSON text, shared, so handing it to
/// a step, logging it and keeping it in the saga's state copy nothing
/// (a clone is a reference-count bump). Steps see it decoded as their `D`.
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct SagaData(Arc<RawValue>);

impl<'de> Deserialize<'de> for SagaData {
    // Through a `Value`: records are an internally tagged enum, which serde
    // buffers, and a buffered `RawValue` cannot be read back. Only reading
    // the log (recovery, status) pays for this; running sagas never do.
    fn deserialize<De: serde::Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        SagaData::encode(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl SagaData {
    /// Encodes `value` as JSON.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(|raw| SagaData(Arc::from(raw)))
    }

    /// Decodes the JSON as a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The JSON as a [`Value`].
    pub fn to_value(&self) -> Value {
        // Valid JSON by construction: it came from an encoder or the log.
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for SagaData {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl std::fmt::Debug for SagaData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.json())
    }
}

/// A saga's id: time-ordered like a message id.
pub type SagaId = MessageId;

/// Where a saga is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Running its steps forward.
    Running,
    /// A step failed; undoing the completed ones.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Every completed step was undone.
    Compensated,
    /// Stuck: a compensation, or a step past the pivot, kept failing.
    NeedsAttention,
}

impl SagaStatus {
    /// True once the saga has ended.
    pub fn is_final(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::NeedsAttention)
    }

    /// The status as written in metrics and JSON (`running`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::NeedsAttention => "needs_attention",
        }
    }
}

/// What a saga's log says about it: the fold of its records. The runner
/// resumes from this after a crash, and status queries report it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Replay {
    pub(crate) saga: String,
    pub(crate) status: SagaStatus,
    pub(crate) data: SagaData,
    /// Steps `0..completed` completed.
    pub(crate) completed: usize,
    /// Why compensation began.
    pub(crate) reason: Option<String>,
    /// Steps whose compensation completed.
    pub(crate) compensated: Vec<usize>,
    /// The action or compensation last attempted (`true` = compensation),
    /// with its attempts started and failed so far.
    pub(crate) unit: Option<(bool, usize)>,
    pub(crate) attempts: u32,
    pub(crate) failures: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) started_at: Timestamp,
    pub(crate) updated_at: Timestamp,
}

impl Replay {
    /// Folds a saga's entries; `None` when the first is not `Started`.
    pub(crate) fn of(entries: &[LogEntry]) -> Option<Replay> {
        let (first, rest) = entries.split_first()?;
        let SagaRecord::Started { saga, data, .. } = &first.record else { return None };
        let mut replay = Replay {
            saga: saga.clone(),
            status: SagaStatus::Running,
            data: data.clone(),
            completed: 0,
            reason: None,
            compensated: Vec::new(),
            unit: None,
            attempts: 0,
            failures: 0,
            last_error: None,
            started_at: first.at,
            updated_at: first.at,
        };
        for entry in rest {
            replay.apply(entry);
        }
        Some(replay)
    }

    fn attempt(&mut self, unit: (bool, usize), attempt: u32) {
        if self.unit != Some(unit) {
            self.unit = Some(unit);
            self.failures = 0;
        }
        self.attempts = attempt;
    }

    pub(crate) fn apply(&mut self, entry: &LogEntry) {
        self.updated_at = entry.at;
        match &entry.record {
            SagaRecord::Started { .. } => {}
            SagaRecord::StepStarted { step, attempt } => self.attempt((false, *step), *attempt),
            SagaRecord::CompensationStarted { step, attempt } => self.attempt((true, *step), *attempt),
            SagaRecord::StepFailed { error, .. } | SagaRecord::CompensationFailed { error, .. } => {
                self.failures += 1;
                self.last_error = Some(error.clone());
            }
            SagaRecord::StepCompleted { step, data } => {
                self.completed = step + 1;
                self.data = data.clone();
            }
            SagaRecord::Compensating { reason } => {
                self.status = SagaStatus::Compensating;
                self.reason = Some(reason.clone());
            }
            SagaRecord::CompensationCompleted { step, data } => {
                self.compensated.push(*step);
                self.data = data.clone();
            }
            SagaRecord::Completed => self.status = SagaStatus::Completed,
            SagaRecord::Compensated => self.status = SagaStatus::Compensated,
            SagaRecord::NeedsAttention { reason } => {
                self.status = SagaStatus::NeedsAttention;
                self.reason = Some(reason.clone());
            }
        }
    }
}
