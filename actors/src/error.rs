//! Failure reasons and the error a user handler returns.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a delivery failed or a message left the normal flow.
///
/// The `Display` form (`panic: boom`, `expired`, …) is the reason recorded in
/// metrics labels and in the dead letter queue; [`FailureReason::code`] is its
/// first word, used to filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", content = "detail", rename_all = "snake_case")]
pub enum FailureReason {
    /// The handler panicked; the panic message.
    Panic(String),
    /// The handler returned an error; its message.
    Failed(String),
    /// The deadline passed before a handler got the message.
    Expired,
    /// The handler did not finish in time.
    Timeout,
    /// A bounded buffer overflowed; the policy that dropped it.
    Overflow(String),
    /// The message was delivered `max_deliveries` times without success.
    MaxDeliveries,
    /// The runtime shut down before the message was handled.
    Shutdown,
    /// A claim-check payload could not be claimed (missing, expired or
    /// tampered with); the detail says which.
    ClaimCheck(String),
}

impl FailureReason {
    /// The reason's kind: `panic`, `failed`, `expired`, `timeout`, `overflow`,
    /// `max_deliveries`, `shutdown` or `claim_check`.
    pub fn code(&self) -> &'static str {
        match self {
            FailureReason::Panic(_) => "panic",
            FailureReason::Failed(_) => "failed",
            FailureReason::Expired => "expired",
            FailureReason::Timeout => "timeout",
            FailureReason::Overflow(_) => "overflow",
            FailureReason::MaxDeliveries => "max_deliveries",
            FailureReason::Shutdown => "shutdown",
            FailureReason::ClaimCheck(_) => "claim_check",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Panic(m)
            | FailureReason::Failed(m)
            | FailureReason::Overflow(m)
            | FailureReason::ClaimCheck(m) => {
                write!(f, "{}: {m}", self.code())
            }
            _ => f.write_str(self.code()),
        }
    }
}

/// The error a user handler returns.
///
/// Any `std::error::Error` converts into it with `?`, so handlers can use the
/// errors of the libraries they call. It deliberately does not implement
/// `Error` itself (as `anyhow::Error` does not), which is what makes that
/// blanket conversion possible.
///
/// ```
/// use actorbus_actors::error::HandlerError;
/// fn parse(s: &str) -> Result<u32, HandlerError> {
///     Ok(s.parse::<u32>()?)
/// }
/// assert_eq!(parse("7").unwrap(), 7);
/// assert!(parse("x").unwrap_err().to_string().contains("invalid digit"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError {
    message: String,
}

impl HandlerError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError { message: message.into() }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::new(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_display_with_their_code() {
        assert_eq!(FailureReason::Panic("boom".into()).to_string(), "panic: boom");
        assert_eq!(FailureReason::Expired.to_string(), "expired");
        assert_eq!(FailureReason::Overflow("drop_oldest".into()).code(), "overflow");
        let json = serde_json::to_string(&FailureReason::Panic("x".into())).unwrap();
        assert_eq!(json, r#"{"code":"panic","detail":"x"}"#);
    }
}
