//! Fan-Out / Fan-In (DESIGN §6.6): one request to many recipients, the
//! replies folded into one answer.
//!
//! ```text
//!               ┌──► recipient 1 ──┐
//!   request ──► ├──► recipient 2 ──┼──► fold ──► GatherResult { aggregate, completed_by,
//!   (Gather)    └──► recipient n ──┘                           replied, missing, failed }
//! ```
//!
//! A [`Gather`] names its recipients ([`Target`]s): request-reply services
//! ([`Target::service`], DESIGN §6.1), every subscription of a topic
//! ([`topic_targets`]: each subscriber gets a [`TopicRequest`] and answers
//! with [`TopicRequest::reply`]), or anything asked by a closure
//! ([`Target::new`]). Replies are combined by an [`Aggregator`], a fold
//! with an optional predicate.
//!
//! ## Completion: the first condition to fire wins
//!
//! - **all**: every recipient replied or failed (always armed);
//! - **first N** ([`Gather::first`]): N successful replies;
//! - **quorum** ([`Gather::quorum`]: a majority, `n / 2 + 1`;
//!   [`Gather::quorum_of`]: k) successful replies;
//! - **predicate** ([`Aggregator::until`]) on the aggregate;
//! - **total timeout** ([`Gather::timeout`], always armed, default 5 s).
//!
//! The [`GatherResult`] says which fired ([`CompletedBy`]) and lists the
//! recipients that replied, that had not answered (**missing**) and that
//! **failed** with their reason (a handler error, a panic caught by the
//! service's panic boundary, an unavailable service, a full subscription).
//! A recipient whose own request timed out counts as missing, not failed.
//! Failures never count towards first N or quorum; if too many fail for a
//! condition to be reachable, the gather ends when the others have all
//! answered (**all**) or at the timeout.
//!
//! ## Late replies, deadlines, dead letters
//!
//! Every recipient's request carries the gather's deadline, so a service
//! does not start work nobody waits for. A reply that arrives after the
//! gather completed is dropped and counted
//! (`actorbus_scatter_gather_late_replies_total`); after the deadline the
//! request-reply layer counts it instead. A gather that completes by
//! timeout can be dead-lettered ([`Gather::dead_letter_on_timeout`]): the
//! request, with who replied, who is missing and who failed, goes to the
//! [`DeadLetterHook`](crate::dead_letter::DeadLetterHook) with reason
//! `timeout` before the result is returned (the DLQ itself is wired in
//! when it lands; see [`dead_letter`](crate::dead_letter)).
//!
//! ## Where gathers run
//!
//! [`Gather::run`] runs in the caller's task. A [`ScatterGather`] actor
//! hosts them instead, bounding how many run at once and keeping the
//! running-gathers gauge; the `Bus` has one.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use actorbus_actors::error::FailureReason;
//! use actorbus_actors::scatter_gather::{Aggregator, CompletedBy, Gather, Target};
//!
//! actix_rt::System::new().block_on(async {
//!     // Three quote providers; one is slow, one is out of stock.
//!     let provider = |name: &'static str, price: Option<u32>, delay_ms: u64| {
//!         Target::new(name, move |_req, _left| async move {
//!             actix_rt::time::sleep(Duration::from_millis(delay_ms)).await;
//!             price.ok_or_else(|| FailureReason::Failed("out of stock".into()))
//!         })
//!     };
//!     let best = Gather::new("quotes", "sku-1")
//!         .targets([provider("a", Some(30), 0), provider("b", None, 0), provider("c", Some(20), 2_000)])
//!         .timeout(Duration::from_millis(100))
//!         .run(Aggregator::fold(u32::MAX, |best, _name, price: u32| best.min(price)))
//!         .await;
//!     assert_eq!(best.completed_by, CompletedBy::Timeout);
//!     assert_eq!(best.aggregate, 30);
//!     assert_eq!((best.replied, best.missing), (vec!["a".to_string()], vec!["c".to_string()]));
//!     assert_eq!(best.failed, vec![("b".to_string(), FailureReason::Failed("out of stock".into()))]);
//! });
//! ```

mod actor;
mod gather;
mod target;

pub use actor::{ScatterError, ScatterGather, ScatterGatherHandle};
pub use gather::{Aggregator, CompletedBy, Gather, GatherResult};
pub use target::{request_failure, topic_targets, ReplyFuture, Target, TopicRequest};
