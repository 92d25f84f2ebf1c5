//! Saga definitions: ordered steps with actions, compensations, timeouts,
//! retry policies and kinds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{SagaData, SagaId};

/// What a step means for the saga's fate (Garcia-Molina's classification).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Can be undone by its compensation; a failure here or later (before
    /// the pivot) compensates the steps done so far, in reverse order.
    Compensable,
    /// The point of no return: once it succeeds the saga must complete, so
    /// every later step is retryable. If it fails, the compensable steps
    /// before it are compensated. It has no compensation itself.
    Pivot,
    /// Comes after the pivot and is retried until it succeeds; when its
    /// retry policy gives up, the saga needs attention.
    Retryable,
}

/// How often and how patiently a step (or a compensation) is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles after each failure.
    pub backoff: Duration,
    /// The longest delay.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub const NONE: RetryPolicy = RetryPolicy { max_attempts: 1, backoff: Duration::ZERO, max_backoff: Duration::ZERO };

    /// `max_attempts` attempts, `backoff` doubling up to 1 s between them.
    pub fn attempts(max_attempts: u32, backoff: Duration) -> Self {
        RetryPolicy { max_attempts: max_attempts.max(1), backoff, max_backoff: Duration::from_secs(1) }
    }

    pub(crate) fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

impl Default for RetryPolicy {
    /// Three attempts, 10 ms doubling up to 1 s.
    fn default() -> Self {
        RetryPolicy::attempts(3, Duration::from_millis(10))
    }
}

/// Why a step or compensation failed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepError {
    /// What went wrong.
    pub message: String,
    /// False: retrying cannot help (a declined card); fail at once.
    pub retryable: bool,
}

impl StepError {
    /// A failure worth retrying (a timeout, a busy service).
    pub fn transient(message: impl Into<String>) -> Self {
        StepError { message: message.into(), retryable: true }
    }

    /// A failure retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError { message: message.into(), retryable: false }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for StepError {
    fn from(e: E) -> Self {
        StepError::transient(e.to_string())
    }
}

/// What an action or compensation knows besides the saga's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepContext {
    /// The saga.
    pub saga_id: SagaId,
    /// The step.
    pub step: Arc<str>,
    /// `"{saga id}:{step}"` for actions, `"{saga id}:{step}:compensate"` for
    /// compensations: the same on every retry and after a crash, so the
    /// service called can recognise a repeat.
    pub idempotency_key: String,
    /// 1 for the first attempt.
    pub attempt: u32,
}

pub(crate) type BoxFut<T> = Pin<Box<dyn Future<Output = T>>>;
/// A type-erased action or compensation: JSON data in, JSON data out.
pub(crate) type ErasedFn = Arc<dyn Fn(SagaData, StepContext) -> BoxFut<Result<SagaData, StepError>> + Send + Sync>;

pub(crate) struct StepDef {
    pub(crate) name: Arc<str>,
    pub(crate) kind: StepKind,
    pub(crate) action: ErasedFn,
    pub(crate) compensation: Option<ErasedFn>,
    pub(crate) timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) compensation_retry: RetryPolicy,
}

/// A definition with its data type erased, as the coordinator keeps it.
pub(crate) struct Definition {
    pub(crate) name: Arc<str>,
    pub(crate) steps: Vec<StepDef>,
    pub(crate) data_type: std::any::TypeId,
}

/// A saga: a name and ordered steps over data of type `D`.
///
/// Each action receives the data and returns it, possibly changed (a
/// reservation id to undo later); the data after each completed step is in
/// the saga log, so compensations and recovery see it.
///
/// ```
/// use actorbus_actors::saga::{SagaDefinition, StepError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Order { id: u64, reservation: Option<String> }
///
/// let saga = SagaDefinition::<Order>::new("order")
///     .step("reserve", |mut o: Order, cx| async move {
///         o.reservation = Some(format!("r-{}", cx.idempotency_key));
///         Ok(o)
///     })
///     .compensate(|o: Order, _cx| async move { Ok(o) })
///     .pivot("charge", |o: Order, _cx| async move { Err(StepError::permanent("card declined")) })
///     .retryable("ship", |o: Order, _cx| async move { Ok(o) });
/// assert_eq!(saga.validate(), Ok(()));
/// ```
pub struct SagaDefinition<D> {
    pub(crate) name: Arc<str>,
    pub(crate) steps: Vec<StepDef>,
    _data: std::marker::PhantomData<fn(D) -> D>,
}

fn erase<D, F, Fut>(f: F) -> ErasedFn
where
    D: Serialize + DeserializeOwned + 'static,
    F: Fn(D, StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<D, StepError>> + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |value: SagaData, cx: StepContext| {
        let f = f.clone();
        Box::pin(async move {
            let data = value.decode().map_err(|e| StepError::permanent(format!("saga data does not decode: {e}")))?;
            let out = f(data, cx).await?;
            SagaData::encode(&out).map_err(|e| StepError::permanent(format!("saga data does not encode: {e}")))
        }) as BoxFut<Result<SagaData, StepError>>
    })
}

impl<D: Serialize + DeserializeOwned + 'static> SagaDefinition<D> {
    /// A saga with no steps yet.
    pub fn new(name: &str) -> Self {
        SagaDefinition { name: name.into(), steps: Vec::new(), _data: std::marker::PhantomData }
    }

    fn push<F, Fut>(mut self, name: &str, kind: StepKind, action: F) -> Self
    where
        F: Fn(D, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<D, StepError>> + 'static,
    {
        let retry = match kind {
            StepKind::Retryable => RetryPolicy::attempts(10, Duration::from_millis(10)),
            _ => RetryPolicy::default(),
        };
        self.steps.push(StepDef {
            name: name.into(),
            kind,
            action: erase(action),
            compensation: None,
            timeout: Duration::from_secs(30),
            retry,
            compensation_retry: RetryPolicy::attempts(5, Duration::from_millis(10)),
        });
        self
    }

    /// Adds a compensable step (give it a compensation with
    /// [`compensate`](Self::compensate)).
    pub fn step<F, Fut>(self, name: &str, action: F) -> Self
    where
        F: Fn(D, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<D, StepError>> + 'static,
    {
        self.push(name, StepKind::Compensable, action)
    }

    /// Adds the pivot step.
    pub fn pivot<F, Fut>(self, name: &str, action: F) -> Self
    where
        F: Fn(D, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<D, StepError>> + 'static,
    {
        self.push(name, StepKind::Pivot, action)
    }

    /// Adds a retryable step (after the pivot). Default retry: 10 attempts.
    pub fn retryable<F, Fut>(self, name: &str, action: F) -> Self
    where
        F: Fn(D, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<D, StepError>> + 'static,
    {
        self.push(name, StepKind::Retryable, action)
    }

    /// The compensation of the last step added.
    pub fn compensate<F, Fut>(mut self, compensation: F) -> Self
    where
        F: Fn(D, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<D, StepError>> + 'static,
    {
        if let Some(step) = self.steps.last_mut() {
            step.compensation = Some(erase(compensation));
        }
        self
    }

    /// The timeout of each attempt of the last step added (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        if let Some(step) = self.steps.last_mut() {
            step.timeout = timeout;
        }
        self
    }

    /// The retry policy of the last step added. Defaults: compensable and
    /// pivot steps 3 attempts, retryable steps 10, each 10 ms doubling up to
    /// 1 s.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        if let Some(step) = self.steps.last_mut() {
            step.retry = policy;
        }
        self
    }

    /// The retry policy of the last step's compensation (default 5 attempts,
    /// 10 ms doubling up to 1 s). A compensation that exhausts it, or fails
    /// with a [permanent](StepError::permanent) error, leaves the saga
    /// `needs_attention`.
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        if let Some(step) = self.steps.last_mut() {
            step.compensation_retry = policy;
        }
        self
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn erase(self) -> Definition {
        Definition { name: self.name, steps: self.steps, data_type: std::any::TypeId::of::<D>() }
    }

    /// Checks the shape: at least one step, unique names, compensable steps
    /// first, then at most one pivot, then retryable steps.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err(format!("saga `{}` has no steps", self.name));
        }
        let mut seen = std::collections::HashSet::new();
        let mut phase = StepKind::Compensable;
        for step in &self.steps {
            if !seen.insert(step.name.clone()) {
                return Err(format!("saga `{}`: step `{}` appears twice", self.name, step.name));
            }
            let order = |k: StepKind| match k {
                StepKind::Compensable => 0,
                StepKind::Pivot => 1,
                StepKind::Retryable => 2,
            };
            if order(step.kind) < order(phase) || (step.kind == StepKind::Pivot && phase == StepKind::Pivot) {
                return Err(format!(
                    "saga `{}`: step `{}` is {:?} after a {:?} step (compensable steps, then one pivot, then retryable steps)",
                    self.name, step.name, step.kind, phase
                ));
            }
            phase = step.kind;
        }
        Ok(())
    }
}
