//! # actorbus
//!
//! Cloud messaging patterns as supervised [actix] actors exchanging typed
//! messages inside one actor system. This crate is what an application
//! touches: the [`Bus`] that starts the runtime, typed handles for each
//! pattern, and the HTTP gateway and CLI. The actors themselves live in
//! [`actorbus_actors`], re-exported as [`actors`].
//!
//! ## Request-reply in thirty lines
//!
//! ```
//! use std::time::Duration;
//! use actorbus::{Bus, HandlerError, Request, RequestContext, RequestError, Service};
//!
//! struct Add(u64, u64);
//! impl Request for Add { type Response = u64; }
//!
//! struct Adder;
//! impl Service for Adder {
//!     type Request = Add;
//!     async fn call(&mut self, Add(a, b): Add, _cx: RequestContext) -> Result<u64, HandlerError> {
//!         a.checked_add(b).ok_or_else(|| HandlerError::new("overflow"))
//!     }
//! }
//!
//! actix::System::new().block_on(async {
//!     let bus = Bus::builder().build().unwrap();
//!     bus.service("adder", || Adder).start().await.unwrap();
//!     assert_eq!(bus.request("adder", Add(2, 3)).await, Ok(5));
//!     assert!(matches!(
//!         bus.request("adder", Add(u64::MAX, 1)).timeout(Duration::from_secs(1)).await,
//!         Err(RequestError::Failed(_))
//!     ));
//!     assert_eq!(bus.request("nobody", Add(1, 1)).await, Err(RequestError::UnknownService("nobody".into())));
//!     bus.shutdown(Duration::from_secs(1)).await;
//! });
//! ```
//!
//! ## Supervision
//!
//! A handler that panics does not take its service down: the panic becomes a
//! typed error for that request (`RequestError::Failed(FailureReason::Panic)`),
//! the service's state is rebuilt from its factory, and requests queued behind
//! it are served by the new state. Supervisors ([`Bus::supervisor`]) group
//! services under a [`Strategy`] and a restart [`Intensity`]; when a
//! supervisor exceeds it, it stops its children and escalates to its parent.
//! See [`actors::supervision`].
//!
//! Building with `panic = "abort"` disables all of this: a panic then ends the
//! process.

pub use actorbus_actors as actors;

mod bus;
pub mod config;
#[cfg(feature = "http")]
pub mod gateway;
mod jobs;
mod queue;
mod request;
mod saga;
mod scatter;
mod telemetry;
mod topic;

pub use actorbus_actors::backpressure::OverflowPolicy;
pub use actorbus_actors::envelope::{Envelope, Headers, MessageId, Priority, Timestamp};
pub use actorbus_actors::error::{FailureReason, HandlerError};
pub use actorbus_actors::request_reply::{service_fn, Reply, Request, RequestContext, RequestError, Service};
pub use actorbus_actors::supervision::{Backoff, Exit, Intensity, Restart, Strategy, SupervisionEvent, SupervisorSpec};
pub use bus::{
    Bus, BusBuilder, BusError, ServiceBuilder, ServiceHandle, ShutdownReport, SupervisorBuilder, SupervisorHandle,
};
pub use jobs::{JobKindBuilder, Jobs};
pub use queue::QueueBuilder;
pub use request::RequestBuilder;
pub use saga::SagasBuilder;
pub use scatter::Scatter;
pub use topic::SubscribeBuilder;
