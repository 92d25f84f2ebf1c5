//! One saga's run: the state machine that writes each transition to the log,
//! then takes it.

use std::sync::Arc;
use std::time::Instant;

use super::coordinator::Registered;
use super::definition::{RetryPolicy, StepContext, StepError, StepKind};
use super::log::{LogEntry, SagaLog};
use super::{Replay, SagaData, SagaId, SagaRecord, SagaStatus};
use crate::envelope::Timestamp;
use crate::store::StoreError;
use crate::supervision::panic::catch_async;

/// How a saga ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: SagaStatus,
    pub(crate) data: SagaData,
    pub(crate) error: Option<String>,
}

/// One saga in progress.
pub(crate) struct Runner {
    pub(crate) id: SagaId,
    pub(crate) saga: Arc<Registered>,
    pub(crate) log: Arc<dyn SagaLog>,
    pub(crate) state: Replay,
}

impl Runner {
    async fn write(&mut self, record: SagaRecord) -> Result<(), StoreError> {
        let entry = LogEntry { at: Timestamp::now(), record };
        // Keep the replay in step with the log, so what the runner does next
        // is exactly what a recovery from the log would do.
        self.state.apply(&entry);
        self.log.append(self.id, entry).await
    }

    /// Runs the saga from wherever its state says to its end. An `Err` means
    /// the log could not be written: the saga stops where it is, unfinished
    /// in the log, and resumes at the next start.
    pub(crate) async fn run(mut self) -> Result<Finished, StoreError> {
        let steps = self.saga.definition.steps.len();
        let start = self.state.status;
        if start == SagaStatus::Running {
            while self.state.completed < steps {
                let step = self.state.completed;
                match self.attempt(false, step).await? {
                    Ok(data) => self.write(SagaRecord::StepCompleted { step, data }).await?,
                    Err(error) => {
                        let kind = self.saga.definition.steps[step].kind;
                        if kind == StepKind::Retryable {
                            // Past the pivot there is no going back.
                            let name = &self.saga.definition.steps[step].name;
                            return self.needs_attention(format!("step `{name}` failed: {error}")).await;
                        }
                        self.write(SagaRecord::Compensating { reason: error }).await?;
                        break;
                    }
                }
            }
            if self.state.status == SagaStatus::Running {
                self.write(SagaRecord::Completed).await?;
                return Ok(self.finished());
            }
        }
        if self.state.status == SagaStatus::Compensating {
            while let Some(step) = self.next_compensation() {
                match self.attempt(true, step).await? {
                    Ok(data) => self.write(SagaRecord::CompensationCompleted { step, data }).await?,
                    Err(error) => {
                        let name = &self.saga.definition.steps[step].name;
                        return self.needs_attention(format!("compensation of `{name}` failed: {error}")).await;
                    }
                }
            }
            self.write(SagaRecord::Compensated).await?;
        }
        Ok(self.finished())
    }

    /// The completed step to undo next: the latest one with a compensation
    /// that has not run to completion.
    fn next_compensation(&self) -> Option<usize> {
        let steps = &self.saga.definition.steps;
        (0..self.state.completed)
            .rev()
            .find(|&i| steps[i].compensation.is_some() && !self.state.compensated.contains(&i))
    }

    async fn needs_attention(&mut self, reason: String) -> Result<Finished, StoreError> {
        self.write(SagaRecord::NeedsAttention { reason }).await?;
        Ok(self.finished())
    }

    fn finished(&self) -> Finished {
        Finished { status: self.state.status, data: self.state.data.clone(), error: self.state.reason.clone() }
    }

    /// Attempts a step's action (`compensation` false) or compensation until
    /// it succeeds or its retry policy gives up, logging each attempt before
    /// it runs and each failure after. Continues the attempt count of a run
    /// interrupted by a crash; an attempt that was cut off does not count as
    /// failed (its outcome is unknown, and the idempotency key covers it).
    async fn attempt(&mut self, compensation: bool, step: usize) -> Result<Result<SagaData, String>, StoreError> {
        let saga = self.saga.clone();
        let def = &saga.definition.steps[step];
        let (f, policy): (_, RetryPolicy) = match (compensation, &def.compensation) {
            (true, Some(comp)) => (comp, def.compensation_retry),
            _ => (&def.action, def.retry),
        };
        if self.state.unit != Some((compensation, step)) {
            self.state.unit = Some((compensation, step));
            self.state.attempts = 0;
            self.state.failures = 0;
        }
        let idempotency_key = match compensation {
            false => format!("{}:{}", self.id, def.name),
            true => format!("{}:{}:compensate", self.id, def.name),
        };
        loop {
            if self.state.failures >= policy.max_attempts {
                return Ok(Err(self.state.last_error.clone().unwrap_or_else(|| "attempts exhausted".into())));
            }
            let attempt = self.state.attempts + 1;
            let started = match compensation {
                false => SagaRecord::StepStarted { step, attempt },
                true => SagaRecord::CompensationStarted { step, attempt },
            };
            self.write(started).await?;
            let cx = StepContext {
                saga_id: self.id,
                step: def.name.clone(),
                idempotency_key: idempotency_key.clone(),
                attempt,
            };
            let began = Instant::now();
            let result = match actix_rt::time::timeout(def.timeout, catch_async(f(self.state.data.clone(), cx))).await {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => Err(StepError::transient(format!("panic: {panic}"))),
                Err(_) => Err(StepError::transient(format!("timed out after {:?}", def.timeout))),
            };
            saga.metrics.step_latency[step].record(began.elapsed());
            let error = match result {
                Ok(data) => return Ok(Ok(data)),
                Err(error) => error,
            };
            let failed = match compensation {
                false => SagaRecord::StepFailed { step, attempt, error: error.message.clone() },
                true => SagaRecord::CompensationFailed { step, attempt, error: error.message.clone() },
            };
            self.write(failed).await?;
            if !error.retryable {
                return Ok(Err(error.message));
            }
            if self.state.failures < policy.max_attempts {
                actix_rt::time::sleep(policy.delay_after(self.state.failures)).await;
            }
        }
    }
}
