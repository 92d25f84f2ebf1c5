//! The request builder returned by [`Bus::request`](crate::Bus::request).

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use actorbus_actors::clock::{self, Instant};
use actorbus_actors::envelope::{Envelope, Priority, Timestamp};
use actorbus_actors::request_reply::{inherit_context, Reply, Request, RequestError, ServiceRef};

/// A request being prepared. Set options, then `.await` it.
///
/// ```no_run
/// # use actorbus::{Bus, Request};
/// # use std::time::Duration;
/// # struct Quote; impl Request for Quote { type Response = u64; }
/// # async fn f(bus: Bus) -> Result<(), actorbus::RequestError> {
/// let price = bus.request("pricing", Quote).timeout(Duration::from_millis(200)).await?;
/// # Ok(()) }
/// ```
#[must_use = "a request does nothing until it is awaited"]
pub struct RequestBuilder<R: Request> {
    target: Result<Arc<ServiceRef<R>>, RequestError>,
    envelope: Envelope<R>,
    /// The envelope's creation on the monotonic clock, which the timeout
    /// counts from (one clock read for both).
    created: Instant,
    timeout: Duration,
}

impl<R: Request> RequestBuilder<R> {
    pub(crate) fn new(target: Result<Arc<ServiceRef<R>>, RequestError>, req: R, timeout: Duration) -> Self {
        let created = clock::now();
        RequestBuilder { target, envelope: Envelope::new_at(req, clock::wall_at(created)), created, timeout }
    }

    /// How long to wait for the reply, counted from when the request was
    /// made (`request`), like its envelope's deadline: the handler sees the
    /// same limit as its deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// An absolute deadline; past it the request is never started.
    pub fn deadline(mut self, deadline: Timestamp) -> Self {
        self.envelope.deadline = Some(deadline);
        self
    }

    /// Adds an application header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envelope.headers.insert(key.into(), value.into());
        self
    }

    /// Sets the priority carried in the envelope.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.envelope.priority = priority;
        self
    }

    /// The envelope as it will be sent (id, correlation id, …).
    pub fn envelope(&self) -> &Envelope<R> {
        &self.envelope
    }
}

impl<R: Request> IntoFuture for RequestBuilder<R> {
    type Output = Result<R::Response, RequestError>;
    type IntoFuture = Reply<R>;

    fn into_future(self) -> Self::IntoFuture {
        let RequestBuilder { target, mut envelope, created, timeout } = self;
        // Inside a handler, the request joins its conversation and inherits
        // its deadline.
        inherit_context(&mut envelope);
        let own_deadline = envelope.created_at.after(timeout);
        envelope.deadline = Some(envelope.deadline.map_or(own_deadline, |d| d.min(own_deadline)));
        match target {
            Ok(service) => service.ask_from(created, envelope, timeout),
            Err(e) => Reply::ready(Err(e)),
        }
    }
}
