//! Subjects and NATS-style subject patterns.
//!
//! A subject is a name made of tokens separated by dots (`orders.eu.created`).
//! A pattern may use two wildcards, as in NATS:
//!
//! - `*` matches exactly one token: `orders.*` matches `orders.created`, not
//!   `orders` and not `orders.eu.created`;
//! - `>` matches one or more tokens and only stands last: `orders.>` matches
//!   `orders.created` and `orders.eu.created`, not `orders`.
//!
//! Wildcards match whole tokens only (`ord*` is a literal token, as in NATS:
//! it is refused here rather than silently never matching). Tokens are
//! non-empty and hold no whitespace; subjects hold no wildcard.
//!
//! ```
//! use actorbus_actors::topic::Pattern;
//! let p: Pattern = "orders.*.created".parse().unwrap();
//! assert!(p.matches("orders.eu.created"));
//! assert!(!p.matches("orders.eu.west.created"));
//! assert!("orders.>".parse::<Pattern>().unwrap().matches("orders.eu.west.created"));
//! ```

use std::fmt;
use std::str::FromStr;

/// A subject or pattern that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subject `{subject}`: {why}")]
pub struct InvalidSubject {
    /// What was given.
    pub subject: String,
    /// What is wrong with it.
    pub why: &'static str,
}

fn check_tokens(s: &str, allow_wildcards: bool) -> Result<(), InvalidSubject> {
    let bad = |why| Err(InvalidSubject { subject: s.to_owned(), why });
    if s.is_empty() {
        return bad("it is empty");
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return bad("tokens between dots must not be empty");
        }
        if t.chars().any(char::is_whitespace) {
            return bad("tokens must not contain whitespace");
        }
        let wild = *t == "*" || *t == ">";
        if wild && !allow_wildcards {
            return bad("a subject to publish to cannot contain wildcards");
        }
        if !wild && (t.contains('*') || t.contains('>')) {
            return bad("wildcards `*` and `>` must be whole tokens");
        }
        if *t == ">" && i + 1 != tokens.len() {
            return bad("`>` may only be the last token");
        }
    }
    Ok(())
}

/// Checks that `s` is a subject one can publish to (no wildcards).
pub fn validate_subject(s: &str) -> Result<(), InvalidSubject> {
    check_tokens(s, false)
}

/// A subscription pattern: a subject, possibly with `*` and `>` wildcards.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Token {
    Literal(String),
    One,
    Rest,
}

impl Pattern {
    /// Parses and validates a pattern.
    pub fn new(s: &str) -> Result<Self, InvalidSubject> {
        check_tokens(s, true)?;
        let tokens = s
            .split('.')
            .map(|t| match t {
                "*" => Token::One,
                ">" => Token::Rest,
                lit => Token::Literal(lit.to_owned()),
            })
            .collect();
        Ok(Pattern { text: s.to_owned(), tokens })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has no wildcard (it names one subject).
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// True when `subject` matches.
    pub fn matches(&self, subject: &str) -> bool {
        let mut parts = subject.split('.');
        for token in &self.tokens {
            match token {
                Token::Rest => return parts.next().is_some_and(|p| !p.is_empty()),
                Token::One => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Token::Literal(l) => match parts.next() {
                    Some(p) if p == l => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

impl FromStr for Pattern {
    type Err = InvalidSubject;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::new(s)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        for ok in ["a", "a.b", "a.*", "a.>", "*", ">", "*.b.>"] {
            assert!(Pattern::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "a.>.b", "a.b*", "a b", ">.a"] {
            assert!(Pattern::new(bad).is_err(), "{bad}");
        }
        assert!(validate_subject("a.b").is_ok());
        assert!(validate_subject("a.*").is_err());
        assert!(validate_subject("a.>").is_err());
    }
}
