//! The request builder returned by [`Bus::request`](crate::Bus::request).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actorbus_actors::envelope::{Envelope, Priority, Timestamp};
use actorbus_actors::request_reply::{self, inherit_context, Request, RequestError, ServiceRef};

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
    timeout: Duration,
}

impl<R: Request> RequestBuilder<R> {
    pub(crate) fn new(target: Result<Arc<ServiceRef<R>>, RequestError>, req: R, timeout: Duration) -> Self {
        RequestBuilder { target, envelope: Envelope::new(req), timeout }
    }

    /// How long to wait for the reply. The handler sees the same limit as
    /// its deadline.
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
        let RequestBuilder { target, mut envelope, timeout } = self;
        // Inside a handler, the request joins its conversation and inherits
        // its deadline.
        inherit_context(&mut envelope);
        let own_deadline = envelope.created_at.after(timeout);
        envelope.deadline = Some(envelope.deadline.map_or(own_deadline, |d| d.min(own_deadline)));
        match target {
            Ok(service) => Reply::Sent(service.ask(envelope, timeout)),
            Err(e) => Reply::Refused(Some(e)),
        }
    }
}

/// The future of an awaited [`RequestBuilder`]: the reply, or why there is
/// none.
#[must_use = "a reply does nothing unless awaited"]
pub enum Reply<R: Request> {
    /// Sent to the service.
    Sent(request_reply::Reply<R>),
    /// Never sent (unknown service, wrong request type).
    Refused(Option<RequestError>),
}

impl<R: Request> Future for Reply<R> {
    type Output = Result<R::Response, RequestError>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Reply::Sent(reply) => Pin::new(reply).poll(cx),
            Reply::Refused(e) => std::task::Poll::Ready(Err(e
                .take()
                .unwrap_or_else(|| RequestError::UnknownService("reply polled after it completed".into())))),
        }
    }
}
