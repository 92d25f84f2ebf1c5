//! The panic boundary around user code.
//!
//! A panic inside a handler must not kill the actor that runs it (actix would
//! drop the actor, its message and its mailbox). [`catch`] and [`catch_async`]
//! turn a panic into an `Err` carrying the panic message, which the caller turns
//! into a failed delivery with reason `panic: <message>`.
//!
//! With `panic = "abort"` in the build profile nothing can be caught and a
//! panicking handler ends the process.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};

use futures::FutureExt;

/// Runs `f`, turning a panic into `Err(message)`.
///
/// The closure is asserted unwind-safe: whatever state it touched is thrown
/// away by the caller (the actor is rebuilt from its factory), never reused.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(message)
}

/// Awaits `fut`, turning a panic in any of its polls into `Err(message)`.
pub async fn catch_async<F: Future>(fut: F) -> Result<F::Output, String> {
    AssertUnwindSafe(fut).catch_unwind().await.map_err(message)
}

/// The text of a panic payload (`panic!("..")` gives `&str` or `String`).
pub fn message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "non-string panic payload".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_sync_and_async_panics_with_their_message() {
        assert_eq!(catch(|| 1), Ok(1));
        let n = 7;
        assert_eq!(catch(|| -> u8 { panic!("bad {n}") }), Err("bad 7".to_owned()));
        let out = futures::executor::block_on(catch_async(async { panic!("async boom") }));
        assert_eq!(out, Err::<(), _>("async boom".to_owned()));
    }
}
