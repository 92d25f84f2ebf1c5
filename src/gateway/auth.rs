//! The admin token on mutating admin routes (`Authorization: Bearer <token>`).
//!
//! - No `Authorization` header, or one that is not `Bearer <token>`: 401 with
//!   `WWW-Authenticate: Bearer` (codes `missing_token`, `malformed_token`).
//! - A token that is not the configured one: 403 `wrong_token`. The
//!   comparison takes the same time wherever the first difference is.
//! - No token configured at all: every mutation is refused, 403
//!   `admin_disabled`, whatever the request carries. A server without a
//!   token would otherwise have to choose between letting anyone on the
//!   network purge the DLQ and nobody; refusing is the safe default, and the
//!   message says how to turn admin routes on.
//!
//! Reads (`GET /v1/dlq…`) need no token: the gateway listens on loopback
//! unless configured otherwise, and serving beyond loopback without a token
//! is logged as a warning at startup.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::HttpRequest;

use super::error::ApiError;
use super::State;

/// Checks the request's bearer token against the configured admin token.
pub fn require_admin(state: &State, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(expected) = state.admin_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "admin routes are disabled: this server has no admin token (set `admin_token` in the config file \
             or the ACTORBUS_ADMIN_TOKEN environment variable, and restart)",
        ));
    };
    let unauthorized = |code, message: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, message);
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(unauthorized("missing_token", "this route needs the admin token: `Authorization: Bearer <token>`"));
    };
    let malformed = || unauthorized("malformed_token", "the Authorization header must be `Bearer <token>`");
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = text.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed());
    }
    if !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "wrong_token", "the admin token is not the configured one"));
    }
    Ok(())
}

/// Equality whose time depends on the lengths only, not on where the inputs
/// differ, so response times do not reveal the token byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret-longer"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
