//! The built-in demo workers: `echo`, `fail` and `sleep` (DESIGN §7).

use std::time::Duration;

use serde_json::{json, Value};

use super::{JobContext, JobWorker};
use crate::error::HandlerError;

/// One of the built-in workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinWorker {
    /// Answers its input after `delay_ms` (default 0).
    Echo,
    /// Fails with the input's `message`.
    Fail,
    /// Waits `ms`, reporting progress.
    Sleep,
}

impl BuiltinWorker {
    /// By name: `echo`, `fail`, `sleep`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "echo" => Some(BuiltinWorker::Echo),
            "fail" => Some(BuiltinWorker::Fail),
            "sleep" => Some(BuiltinWorker::Sleep),
            _ => None,
        }
    }

    /// Checks an input before the job is accepted, so a bad one is refused at
    /// submission (HTTP 400), not discovered by the worker later.
    pub fn validate(self, input: &Value) -> Result<(), String> {
        let field = |name: &str| input.get(name);
        match self {
            BuiltinWorker::Echo => match field("delay_ms") {
                None => Ok(()),
                Some(v) if v.as_u64().is_some_and(|ms| ms <= 600_000) => Ok(()),
                Some(_) => Err("`delay_ms` must be an integer from 0 to 600000".into()),
            },
            BuiltinWorker::Fail => match field("message") {
                Some(Value::String(_)) => Ok(()),
                _ => Err("`message` must be a string".into()),
            },
            BuiltinWorker::Sleep => match field("ms") {
                Some(v) if v.as_u64().is_some_and(|ms| ms <= 600_000) => Ok(()),
                _ => Err("`ms` must be an integer from 0 to 600000".into()),
            },
        }
    }
}

impl JobWorker for BuiltinWorker {
    async fn run(&mut self, input: Value, cx: JobContext) -> Result<Value, HandlerError> {
        match self {
            BuiltinWorker::Echo => {
                let delay = input.get("delay_ms").and_then(Value::as_u64).unwrap_or(0);
                if delay > 0 {
                    actix_rt::time::sleep(Duration::from_millis(delay)).await;
                }
                Ok(input)
            }
            BuiltinWorker::Fail => {
                let message = input.get("message").and_then(Value::as_str).unwrap_or("failed on purpose");
                Err(HandlerError::new(message))
            }
            BuiltinWorker::Sleep => {
                let total = input.get("ms").and_then(Value::as_u64).unwrap_or(0);
                let step = (total / 10).max(1);
                let mut slept = 0;
                while slept < total {
                    if cx.is_cancelled() {
                        return Err(HandlerError::new("cancelled"));
                    }
                    let nap = step.min(total - slept);
                    actix_rt::time::sleep(Duration::from_millis(nap)).await;
                    slept += nap;
                    cx.progress(u8::try_from(slept * 100 / total).unwrap_or(100));
                }
                Ok(json!({ "slept_ms": total }))
            }
        }
    }
}

/// A factory for the `echo` worker.
pub fn echo_worker() -> BuiltinWorker {
    BuiltinWorker::Echo
}

/// A factory for the `fail` worker.
pub fn fail_worker() -> BuiltinWorker {
    BuiltinWorker::Fail
}

/// A factory for the `sleep` worker.
pub fn sleep_worker() -> BuiltinWorker {
    BuiltinWorker::Sleep
}
