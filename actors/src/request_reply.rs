//! Request-Reply (DESIGN §6.1): a typed ask to a named service.
//!
//! A *service* is user state plus an async handler ([`Service`]). The runtime
//! hosts it in a [`ServiceActor`], which runs one request at a time inside a
//! panic boundary and answers through a oneshot reply channel. [`ServiceRef`]
//! is the sending side: it puts an [`Ask`] in the actor's bounded mailbox and
//! waits for the reply within the request's timeout.
//!
//! The inbox is the actor's own actix mailbox, sized to the service's
//! capacity: a request costs one channel hop, as a raw actix `send` does.
//! Every requester shares the one sender in the [`ServiceRef`], so the bound
//! is exact: actix parks a sender at the message that fills the mailbox and
//! refuses it more until the actor takes one. Supervisor commands
//! ([`Control`]) come through other senders and so always get in, one over
//! the bound at most, and are taken in turn with the requests queued before
//! them.
//!
//! What can go wrong is typed ([`RequestError`]): an unknown service, a full
//! mailbox, a timeout, a deadline that passed before the handler started, a
//! handler error or panic (with its reason), a service that its supervisor
//! stopped, a bus shutting down. A reply that arrives after its requester gave
//! up is dropped and counted (`actorbus_request_reply_late_replies_total`).
//!
//! Requests and their failures belong to the requester, who gets the typed
//! error and decides whether to retry; request-reply therefore does not
//! dead-letter (as Akka's ask does not). Patterns that own their messages —
//! queues, topics, sagas — do.
//!
//! While a handler runs, [`current_context`] tells code it calls which
//! conversation it is in, so requests it sends inherit the correlation id, the
//! causation id and the (never extended) deadline.

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{self, Poll, Waker};
use std::time::Duration;

use actix::dev::SendError;
use actix::prelude::*;
use tokio::sync::{oneshot, Notify};
use tracing::Span;

use crate::backpressure::OverflowPolicy;
use crate::clock::{self, Instant};
use crate::deadline::{self, Within};
use crate::envelope::{Envelope, Headers, MessageId, Timestamp};
use crate::error::{FailureReason, HandlerError};
use crate::metrics as m;
use crate::supervision::{panic, Child, ChildLink, Directive, Exit};

/// A request type, and the response type it gets.
///
/// ```
/// use actorbus_actors::request_reply::Request;
/// struct GetPrice { sku: String }
/// impl Request for GetPrice { type Response = u64; }
/// ```
pub trait Request: Send + 'static {
    /// What the service answers.
    type Response: Send + 'static;
}

/// A request handler with state. The state is rebuilt from its factory after a
/// panic, so it must be fine to lose.
///
/// ```
/// use actorbus_actors::request_reply::{Request, RequestContext, Service};
/// use actorbus_actors::error::HandlerError;
///
/// struct Add(u64, u64);
/// impl Request for Add { type Response = u64; }
///
/// struct Calculator { calls: u64 }
/// impl Service for Calculator {
///     type Request = Add;
///     async fn call(&mut self, req: Add, _cx: RequestContext) -> Result<u64, HandlerError> {
///         self.calls += 1;
///         req.0.checked_add(req.1).ok_or_else(|| HandlerError::new("overflow"))
///     }
/// }
/// ```
pub trait Service: 'static {
    /// The request type it answers.
    type Request: Request;

    /// Handles one request. Requests are handled one at a time, in arrival order.
    fn call(
        &mut self,
        req: Self::Request,
        cx: RequestContext,
    ) -> impl Future<Output = Result<<Self::Request as Request>::Response, HandlerError>>;
}

/// A [`Service`] made from a closure; see [`service_fn`].
pub struct ServiceFn<R, F> {
    f: F,
    _req: std::marker::PhantomData<fn(R)>,
}

/// Makes a stateless service from an async closure.
///
/// ```
/// use actorbus_actors::request_reply::{service_fn, Request};
/// struct Ping;
/// impl Request for Ping { type Response = &'static str; }
/// let pong = service_fn(|_: Ping, _cx| async { Ok("pong") });
/// # let _ = pong;
/// ```
pub fn service_fn<R, F, Fut>(f: F) -> ServiceFn<R, F>
where
    R: Request,
    F: FnMut(R, RequestContext) -> Fut + 'static,
    Fut: Future<Output = Result<R::Response, HandlerError>>,
{
    ServiceFn { f, _req: std::marker::PhantomData }
}

impl<R, F, Fut> Service for ServiceFn<R, F>
where
    R: Request,
    F: FnMut(R, RequestContext) -> Fut + 'static,
    Fut: Future<Output = Result<R::Response, HandlerError>>,
{
    type Request = R;

    fn call(&mut self, req: R, cx: RequestContext) -> impl Future<Output = Result<R::Response, HandlerError>> {
        (self.f)(req, cx)
    }
}

/// What a handler knows about the request it handles: the envelope's metadata.
#[derive(Clone, Debug)]
pub struct RequestContext {
    envelope: Envelope<()>,
}

impl RequestContext {
    /// The request's envelope, without its payload.
    pub fn envelope(&self) -> &Envelope<()> {
        &self.envelope
    }

    /// The request's id.
    pub fn id(&self) -> MessageId {
        self.envelope.id
    }

    /// The conversation the request belongs to.
    pub fn correlation_id(&self) -> MessageId {
        self.envelope.correlation_id
    }

    /// Application headers sent with the request.
    pub fn headers(&self) -> &Headers {
        &self.envelope.headers
    }

    /// Time left before the requester stops waiting.
    pub fn remaining(&self) -> Option<Duration> {
        self.envelope.remaining()
    }
}

/// The conversation a handler is running in; see [`current_context`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Causation {
    /// The message being handled.
    pub message_id: MessageId,
    /// Its conversation.
    pub correlation_id: MessageId,
    /// Its deadline.
    pub deadline: Option<Timestamp>,
}

thread_local! {
    /// The causation of the handler being polled on this thread. Set only
    /// for the duration of each poll (like a tokio task-local, which is a
    /// thread-local swapped in and out per poll too), so it follows the
    /// handler and never leaks into other tasks. A plain `Cell` of a `Copy`
    /// value: the task-local's `RefCell` and its lazy initialisation cost
    /// more than the swap itself on every request.
    static CURRENT: Cell<Option<Causation>> = const { Cell::new(None) };
}

/// The message being handled by the handler that is running now, if any.
/// Senders use it to copy the correlation id and deadline onto what a handler
/// sends, so conversations and deadlines propagate without plumbing.
pub fn current_context() -> Option<Causation> {
    CURRENT.try_with(Cell::get).ok().flatten()
}

/// Puts back the causation that was current before a poll, on return and on
/// unwind alike, so nested scopes and panicking handlers leave it as found.
struct Restore(Option<Causation>);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|c| c.set(self.0));
    }
}

/// Makes `causation` current until the returned guard drops.
#[inline]
fn enter(causation: Causation) -> Restore {
    Restore(CURRENT.try_with(|c| c.replace(Some(causation))).ok().flatten())
}

/// Runs `fut` as if it were handling a message with `causation`: what it sends
/// joins that conversation. The runtime wraps every handler with it.
pub async fn in_context<F: Future>(causation: Causation, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        let _current = enter(causation);
        fut.as_mut().poll(cx)
    })
    .await
}

/// Stamps `envelope` as caused by the message being handled now, if any: same
/// correlation id, causation id set, deadline no later than the current one.
pub fn inherit_context<T>(envelope: &mut Envelope<T>) {
    if let Some(c) = current_context() {
        envelope.correlation_id = c.correlation_id;
        envelope.causation_id = Some(c.message_id);
        envelope.deadline = match (envelope.deadline, c.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No service has that name.
    #[error("no service named `{0}`")]
    UnknownService(String),
    /// The service exists but answers another request type.
    #[error("service `{0}` does not handle this request type")]
    WrongRequestType(String),
    /// The service's mailbox is full and its policy is `reject`.
    #[error("mailbox of service `{0}` is full")]
    MailboxFull(String),
    /// No reply within the request's time budget (its timeout, or the
    /// shorter deadline it inherited).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The deadline passed before a handler took the request; it never ran.
    #[error("deadline passed before the request was handled")]
    Expired,
    /// The handler returned an error or panicked (`failed: …`, `panic: …`).
    #[error("{0}")]
    Failed(FailureReason),
    /// The service is stopped (by its supervisor, or for good).
    #[error("service `{service}` is unavailable: {reason}")]
    Unavailable {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// The bus is shutting down and takes no new requests.
    #[error("the bus is shutting down")]
    ShuttingDown,
}

/// A request in a service's inbox: the envelope and where the reply goes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ask<R: Request> {
    envelope: Envelope<R>,
    /// When the requester stops waiting: the envelope's deadline or the
    /// ask's timeout, whichever comes first, on the monotonic clock (cheaper
    /// to compare at dequeue than the envelope's wall-clock deadline).
    deadline: Instant,
    reply: oneshot::Sender<Result<R::Response, RequestError>>,
}

/// The sending side of a service: cheap to share, valid for the service's
/// whole life (restarts included).
pub struct ServiceRef<R: Request> {
    name: Arc<str>,
    tx: Recipient<Ask<R>>,
    inbox: Arc<Inbox>,
    block_when_full: bool,
    closing: AtomicBool,
    timeouts: metrics::Counter,
    mailbox_full: metrics::Counter,
}

impl<R: Request> ServiceRef<R> {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests waiting in the service's inbox.
    pub fn queued(&self) -> usize {
        self.inbox.sent.load(Ordering::Relaxed).saturating_sub(self.inbox.taken.load(Ordering::Relaxed))
    }

    /// Sends `envelope` and waits up to `timeout` (and never past its deadline)
    /// for the reply.
    ///
    /// The returned [`Reply`] is a plain struct, not a boxed future: a
    /// same-arbiter round trip is a few hundred nanoseconds, and an
    /// allocation per request was a visible part of it. It takes the
    /// `Arc` by value and keeps it (for its errors) for the same reason: a
    /// clone is an atomic increment and decrement per request.
    pub fn ask(self: Arc<Self>, envelope: Envelope<R>, timeout: Duration) -> Reply<R> {
        self.ask_from(clock::now(), envelope, timeout)
    }

    /// [`ask`](Self::ask) for an envelope created at `created` on the
    /// monotonic clock (read together with its `created_at`, see
    /// [`clock::wall_at`]): the request's time budget counts from there,
    /// and a clock read per request is saved.
    pub fn ask_from(self: Arc<Self>, created: Instant, envelope: Envelope<R>, timeout: Duration) -> Reply<R> {
        let done = Reply::ready;
        if self.closing.load(Ordering::Relaxed) {
            return done(Err(RequestError::ShuttingDown));
        }
        // The whole budget the request was given, counted from its creation
        // (which is what a timeout reports). A request that sat unsent past
        // its deadline is refused by the service at dequeue, so this needs no
        // clock read of its own.
        let budget = envelope.deadline.map_or(timeout, |d| envelope.created_at.until(d).min(timeout));
        if budget.is_zero() {
            return done(Err(RequestError::Expired));
        }
        let deadline = created + budget;
        let (reply, response) = oneshot::channel();
        // Try first: the inbox almost always has room, and only a full one
        // under `block` needs the (boxed, deadline-bounded) waiting send.
        match self.tx.try_send(Ask { envelope, deadline, reply }) {
            Ok(()) => {
                self.inbox.sent.fetch_add(1, Ordering::Relaxed);
                Reply {
                    state: ReplyState::Waiting {
                        service: self,
                        budget,
                        response: deadline::within(deadline, response),
                    },
                }
            }
            Err(SendError::Closed(_)) => done(Err(self.gone())),
            Err(SendError::Full(ask)) if self.block_when_full => {
                let service = self;
                Reply {
                    state: ReplyState::Blocked(Box::pin(async move {
                        match deadline::within(deadline, Box::pin(service.send_when_room(ask))).await {
                            Ok(Ok(())) => {}
                            Ok(Err(())) => return Err(service.gone()),
                            Err(_) => return Err(service.timed_out(budget)),
                        }
                        match deadline::within(deadline, response).await {
                            Ok(Ok(result)) => result,
                            Ok(Err(_)) => Err(service.gone()),
                            Err(_) => Err(service.timed_out(budget)),
                        }
                    })),
                }
            }
            Err(SendError::Full(_)) => {
                self.mailbox_full.increment(1);
                done(Err(RequestError::MailboxFull(self.name.to_string())))
            }
        }
    }

    /// Waits for room in a full inbox (`block`); `Err` if the service stopped.
    async fn send_when_room(&self, mut ask: Ask<R>) -> Result<(), ()> {
        loop {
            // Listen before trying again, so that room made in between is
            // not missed; the service wakes one blocked sender per request
            // it takes.
            let room = self.inbox.room.notified();
            let mut room = std::pin::pin!(room);
            room.as_mut().enable();
            let _blocked = Blocked::new(&self.inbox.blocked);
            match self.tx.try_send(ask) {
                Ok(()) => {
                    self.inbox.sent.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(SendError::Closed(_)) => return Err(()),
                Err(SendError::Full(back)) => ask = back,
            }
            room.await;
        }
    }

    fn gone(&self) -> RequestError {
        RequestError::Unavailable { service: self.name.to_string(), reason: "service stopped".into() }
    }

    fn timed_out(&self, timeout: Duration) -> RequestError {
        self.timeouts.increment(1);
        RequestError::Timeout(timeout)
    }

    /// Refuses new requests from now on (shutdown).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

/// What the senders and the service share about the inbox.
#[derive(Default)]
struct Inbox {
    /// Requests put in and taken out: the difference waits.
    sent: AtomicUsize,
    taken: AtomicUsize,
    /// Senders waiting for room (`block`), and how they are woken.
    blocked: AtomicUsize,
    room: Notify,
}

/// Counts a sender as blocked while it lives.
struct Blocked<'a>(&'a AtomicUsize);

impl<'a> Blocked<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Blocked(count)
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The answer to one request, as a future: see [`ServiceRef::ask`].
#[must_use = "a reply does nothing unless awaited"]
pub struct Reply<R: Request> {
    state: ReplyState<R>,
}

type Answer<R> = Result<<R as Request>::Response, RequestError>;

enum ReplyState<R: Request> {
    /// Answered before anything was sent (refused, expired, inbox full).
    Done(Option<Answer<R>>),
    /// In the inbox: waiting for the service, up to the deadline.
    Waiting { service: Arc<ServiceRef<R>>, budget: Duration, response: Within<oneshot::Receiver<Answer<R>>> },
    /// The inbox was full under `block`: the rare path, boxed.
    Blocked(Pin<Box<dyn Future<Output = Answer<R>> + Send>>),
}

impl<R: Request> Reply<R> {
    /// A reply that is already there: for a request refused before it
    /// could be sent (an unknown service, say).
    pub fn ready(answer: Result<R::Response, RequestError>) -> Self {
        Reply { state: ReplyState::Done(Some(answer)) }
    }
}

// Nothing in a reply is pinned structurally: the answer is moved out by
// value, the receiver is `Unpin`, and the rare boxed future is pinned in
// its box.
impl<R: Request> Unpin for Reply<R> {}

impl<R: Request> Future for Reply<R> {
    type Output = Answer<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Answer<R>> {
        match &mut self.get_mut().state {
            ReplyState::Done(answer) => {
                Poll::Ready(answer.take().unwrap_or(Err(RequestError::Failed(FailureReason::Failed(
                    "reply polled after it completed".into(),
                )))))
            }
            ReplyState::Waiting { service, budget, response } => match Pin::new(response).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(Ok(answer))) => Poll::Ready(answer),
                Poll::Ready(Ok(Err(_))) => Poll::Ready(Err(service.gone())),
                Poll::Ready(Err(_)) => Poll::Ready(Err(service.timed_out(*budget))),
            },
            ReplyState::Blocked(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// One request in this many is timed for the handler latency histogram
/// (every 16th); outcomes are counted for every request.
const LATENCY_SAMPLE_EVERY: u32 = 16;

/// Latency samples a service holds before it records them: recording one
/// is an epoch-pinned push with a fence, and done on the request path it
/// put every sampled request (one in 16) into the round trip's p99. They
/// are recorded together when this many are held, and every second.
const LATENCY_BATCH: usize = 64;

/// How a service is hosted.
pub struct ServiceSpec<S> {
    /// Unique service name.
    pub name: Arc<str>,
    /// Builds the state, at start and after every restart.
    pub factory: Arc<dyn Fn() -> S + Send + Sync>,
    /// Inbox capacity.
    pub capacity: usize,
    /// `Block` (senders wait) or `Reject` (senders get `MailboxFull`); the
    /// other policies evict or drop and make no sense for requests, whose
    /// senders are waiting for an answer, and are treated as `Reject`.
    pub overflow: OverflowPolicy,
}

/// Hosts a [`Service`]: bounded inbox, panic boundary, supervised restarts.
pub struct ServiceActor<S: Service> {
    name: Arc<str>,
    factory: Arc<dyn Fn() -> S + Send + Sync>,
    state: Option<Box<S>>,
    /// Why the service has no state, while it has none.
    down: Option<String>,
    link: ChildLink,
    metrics: ServiceMetrics,
    inbox: Arc<Inbox>,
    /// Requests taken, for sampling the latency histogram.
    handled: u32,
    /// Latency samples not yet recorded (see [`LATENCY_BATCH`]).
    latencies: Vec<f64>,
    /// Where handler futures run.
    slot: Box<dyn WorkSlot<S>>,
}

struct ServiceMetrics {
    ok: metrics::Counter,
    error: metrics::Counter,
    panic: metrics::Counter,
    expired: metrics::Counter,
    unavailable: metrics::Counter,
    late: metrics::Counter,
    latency: metrics::Histogram,
    panics: metrics::Counter,
    restarts: metrics::Counter,
}

impl ServiceMetrics {
    fn new(name: &str) -> Self {
        let handled = |outcome: &'static str| metrics::counter!(m::REQUEST_HANDLED, m::LABEL_NAME => name.to_owned(), m::LABEL_OUTCOME => outcome);
        let refused = |reason: &'static str| metrics::counter!(m::REQUEST_REFUSED, m::LABEL_NAME => name.to_owned(), m::LABEL_REASON => reason);
        let actor = |metric: &'static str| metrics::counter!(metric, m::LABEL_KIND => "service", m::LABEL_NAME => name.to_owned());
        ServiceMetrics {
            ok: handled("ok"),
            error: handled("error"),
            panic: handled("panic"),
            expired: refused("expired"),
            unavailable: refused("unavailable"),
            late: metrics::counter!(m::REQUEST_LATE_REPLIES, m::LABEL_NAME => name.to_owned()),
            latency: metrics::histogram!(m::REQUEST_HANDLER_LATENCY, m::LABEL_NAME => name.to_owned()),
            panics: actor(m::SUPERVISION_PANICS),
            restarts: actor(m::SUPERVISION_RESTARTS),
        }
    }
}

/// What a handler future gives back: the state, to keep, and the
/// handler's outcome.
type Handled<S> = (Box<S>, Result<<<S as Service>::Request as Request>::Response, HandlerError>);

/// What a request's handling ended with: `Err` holds a panic's message (the
/// state went with the panicked future).
type Done<S> = Result<Handled<S>, String>;

/// One request's handler. The call itself is inside the future, so that the
/// code a closure handler runs before it returns its future is inside the
/// panic boundary and the request's context too.
async fn run_handler<S: Service>(mut state: Box<S>, req: S::Request, cx: RequestContext) -> Handled<S> {
    let outcome = state.call(req, cx).await;
    (state, outcome)
}

/// The place a service's handler futures run in: one allocation for the
/// service's life instead of a box per request (an allocation, a free and a
/// copy were a tenth of a same-arbiter round trip). Requests are handled one
/// at a time, so one slot is enough. The slot polls its future inside the
/// panic boundary and the request's context: one of each per poll, with no
/// wrapper futures (each nested async fn keeps its argument beside what it
/// awaits, and `catch_async` around `in_context` tripled the future's size).
///
/// The future's type cannot be named (`Service::call` returns an
/// `impl Future`), so the slot is a trait object over a [`Slot`] that holds
/// the function making them.
trait WorkSlot<S: Service> {
    /// Makes the handler future of one request in the slot, dropping any
    /// future left there. Its polls run in `causation`, and in `span` when
    /// one is given.
    fn start(&mut self, state: Box<S>, req: S::Request, cx: RequestContext, causation: Causation, span: Option<Span>);

    /// Polls the future in the slot, emptying the slot when it completes or
    /// panics; `None` if the slot is empty.
    fn poll_work(&mut self, cx: &mut task::Context<'_>) -> Option<Poll<Done<S>>>;
}

/// Makes a handler future from a request: [`run_handler`].
type MakeWork<S, F> = fn(Box<S>, <S as Service>::Request, RequestContext) -> F;

/// A [`WorkSlot`] for handler futures of type `F`.
struct Slot<S: Service, F> {
    make: MakeWork<S, F>,
    fut: Pin<Box<Option<F>>>,
    /// The context of the request in the slot.
    causation: Option<Causation>,
    /// Its tracing span, when someone listens.
    span: Option<Span>,
}

impl<S: Service, F: Future<Output = Handled<S>>> WorkSlot<S> for Slot<S, F> {
    fn start(&mut self, state: Box<S>, req: S::Request, cx: RequestContext, causation: Causation, span: Option<Span>) {
        self.causation = Some(causation);
        self.span = span;
        self.fut.set(Some((self.make)(state, req, cx)));
    }

    fn poll_work(&mut self, cx: &mut task::Context<'_>) -> Option<Poll<Done<S>>> {
        let fut = self.fut.as_mut().as_pin_mut()?;
        let polled = {
            let _span = self.span.as_ref().map(Span::enter);
            let _current = self.causation.map(enter);
            // Whatever the future touched is dropped after a panic (the
            // state is rebuilt from its factory), never reused.
            catch_unwind(AssertUnwindSafe(|| fut.poll(cx)))
        };
        let done = match polled {
            Ok(Poll::Pending) => return Some(Poll::Pending),
            Ok(Poll::Ready(handled)) => Ok(handled),
            Err(payload) => Err(panic::message(payload)),
        };
        // A finished future must not be polled again (an async fn panics
        // outside the boundary), and a panicked one is dropped with the
        // state it held: the slot is emptied at once.
        self.fut.set(None);
        self.causation = None;
        self.span = None;
        Some(Poll::Ready(done))
    }
}

/// An empty slot for the futures `make` makes.
fn new_slot<S: Service, F: Future<Output = Handled<S>> + 'static>(make: MakeWork<S, F>) -> Box<dyn WorkSlot<S>> {
    Box::new(Slot { make, fut: Box::pin(None), causation: None, span: None })
}

/// The rest of a request whose handler did not finish at its first poll:
/// polls the actor's slot with the actor's waker until it does, then answers.
struct Resume<R: Request> {
    reply: Option<oneshot::Sender<Result<R::Response, RequestError>>>,
    started: Option<Instant>,
}

impl<S: Service> ActorFuture<ServiceActor<S>> for Resume<S::Request> {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut ServiceActor<S>,
        ctx: &mut Context<ServiceActor<S>>,
        task: &mut task::Context<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        let polled = act.slot.poll_work(task);
        let done = match polled {
            Some(Poll::Pending) => return Poll::Pending,
            Some(Poll::Ready(done)) => done,
            // Cannot happen (the slot is filled before this is made, and
            // only this empties it), but a requester must never hang.
            None => {
                if let Some(reply) = this.reply.take() {
                    let lost = FailureReason::Failed("handler future lost".into());
                    let _ = reply.send(Err(RequestError::Failed(lost)));
                }
                return Poll::Ready(());
            }
        };
        act.record_latency(this.started);
        match this.reply.take() {
            Some(reply) => act.finish(done, reply, ctx),
            // Cannot happen either (only this takes the reply, once), but
            // the state must survive it.
            None => match done {
                Ok((state, _)) => act.state = Some(state),
                Err(msg) => act.fail(Exit::Panic(msg), ctx),
            },
        }
        Poll::Ready(())
    }
}

/// Supervisor commands to a service actor.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum Control {
    /// Build the state for the first time.
    Start,
    /// Drop the state and rebuild it from the factory.
    Restart,
    /// Drop the state; refuse requests until restarted.
    Stop,
    /// Stop the actor (shutdown). Queued requests are answered `Unavailable`.
    Shutdown,
}

impl<S: Service> ServiceActor<S> {
    /// Starts the actor on `arbiter` (or the current one) and returns its
    /// address and sending side. The state is built on [`Control::Start`],
    /// which the caller sends once the supervisor knows the child.
    pub fn start(
        spec: ServiceSpec<S>,
        link: ChildLink,
        arbiter: Option<&actix::ArbiterHandle>,
    ) -> (Addr<Self>, ServiceRef<S::Request>) {
        let capacity = spec.capacity.max(1);
        let inbox = Arc::new(Inbox::default());
        let name = spec.name.clone();
        let factory = spec.factory;
        let shared = inbox.clone();
        let create = move |ctx: &mut Context<Self>| {
            ctx.set_mailbox_capacity(capacity);
            ServiceActor {
                inbox: shared,
                metrics: ServiceMetrics::new(&name),
                name,
                factory,
                state: None,
                down: Some("starting".into()),
                link,
                handled: 0,
                latencies: Vec::with_capacity(LATENCY_BATCH),
                slot: new_slot(run_handler::<S>),
            }
        };
        let addr = match arbiter {
            Some(arbiter) => Self::start_in_arbiter(arbiter, create),
            None => Self::create(create),
        };
        let sref = ServiceRef {
            timeouts: metrics::counter!(m::REQUEST_REFUSED, m::LABEL_NAME => spec.name.to_string(), m::LABEL_REASON => "timeout"),
            mailbox_full: metrics::counter!(m::REQUEST_REFUSED, m::LABEL_NAME => spec.name.to_string(), m::LABEL_REASON => "mailbox_full"),
            name: spec.name,
            tx: addr.clone().recipient(),
            inbox,
            block_when_full: spec.overflow == OverflowPolicy::Block,
            closing: AtomicBool::new(false),
        };
        (addr, sref)
    }

    fn build(&mut self, ctx: &mut Context<Self>) {
        match panic::catch(|| (self.factory)()) {
            Ok(state) => {
                self.state = Some(Box::new(state));
                self.down = None;
            }
            Err(msg) => self.fail(Exit::Panic(format!("factory: {msg}")), ctx),
        }
    }

    /// The state is gone: ask the supervisor what next, handling nothing
    /// meanwhile (requests wait in the bounded inbox).
    fn fail(&mut self, exit: Exit, ctx: &mut Context<Self>) {
        self.state = None;
        self.down = Some(exit.to_string());
        let link = self.link.clone();
        ctx.wait(async move { link.exited(exit).await }.into_actor(self).map(|directive, act, ctx| {
            if directive == Directive::Restart {
                act.metrics.restarts.increment(1);
                act.build(ctx);
            }
        }));
    }

    fn record_latency(&mut self, started: Option<Instant>) {
        if let Some(started) = started {
            self.latencies.push(started.elapsed().as_secs_f64());
            if self.latencies.len() >= LATENCY_BATCH {
                self.flush_latencies();
            }
        }
    }

    fn flush_latencies(&mut self) {
        for seconds in self.latencies.drain(..) {
            self.metrics.latency.record(seconds);
        }
    }

    fn finish(
        &mut self,
        done: Done<S>,
        reply: oneshot::Sender<Result<<S::Request as Request>::Response, RequestError>>,
        ctx: &mut Context<Self>,
    ) {
        let result = match done {
            Ok((state, Ok(response))) => {
                self.state = Some(state);
                self.metrics.ok.increment(1);
                Ok(response)
            }
            Ok((state, Err(e))) => {
                self.state = Some(state);
                self.metrics.error.increment(1);
                Err(RequestError::Failed(FailureReason::Failed(e.to_string())))
            }
            Err(msg) => {
                self.metrics.panic.increment(1);
                self.metrics.panics.increment(1);
                tracing::warn!(service = %self.name, panic = %msg, "handler panicked; restarting");
                self.fail(Exit::Panic(msg.clone()), ctx);
                Err(RequestError::Failed(FailureReason::Panic(msg)))
            }
        };
        if reply.send(result).is_err() {
            self.metrics.late.increment(1);
        }
    }
}

impl<S: Service> Actor for ServiceActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // A timer of the actor's own (`run_interval`) would be polled at
        // every wake-up of the actor, that is at every request: a task
        // beside it sends a flush once a second instead. It waits for each
        // flush to be taken before the next, so a service stuck in a long
        // handler holds one flush, not one per second. Sent through a fresh
        // sender, like a supervisor command: it gets in even when requests
        // fill the mailbox (one over the bound at most).
        let me = ctx.address().downgrade();
        actix::spawn(async move {
            loop {
                actix_rt::time::sleep(Duration::from_secs(1)).await;
                let Some(addr) = me.upgrade() else { break };
                let flushed = addr.send(FlushLatencies);
                // Not kept alive by its own flush task.
                drop(addr);
                if flushed.await.is_err() {
                    break;
                }
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.flush_latencies();
    }
}

impl<S: Service> Handler<Ask<S::Request>> for ServiceActor<S> {
    type Result = ();

    fn handle(&mut self, ask: Ask<S::Request>, ctx: &mut Context<Self>) {
        // Only this actor writes `taken`; senders read it for `queued`.
        self.inbox.taken.store(self.inbox.taken.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if self.inbox.blocked.load(Ordering::SeqCst) > 0 {
            self.inbox.room.notify_one();
        }
        let Ask { envelope, deadline, reply } = ask;
        // The one clock read of a request at the service: the expiry check
        // and, for every 16th request, the latency sample's start.
        let started = clock::now();
        if started >= deadline {
            self.metrics.expired.increment(1);
            let _ = reply.send(Err(RequestError::Expired));
            return;
        }
        let Some(state) = self.state.take() else {
            self.metrics.unavailable.increment(1);
            let reason = self.down.clone().unwrap_or_default();
            let _ = reply.send(Err(RequestError::Unavailable { service: self.name.to_string(), reason }));
            return;
        };
        let (meta, req) = envelope.split();
        let (meta_id, correlation_id) = (meta.id, meta.correlation_id);
        let causation = Causation { message_id: meta_id, correlation_id, deadline: meta.deadline };
        let cx = RequestContext { envelope: meta };
        self.handled = self.handled.wrapping_add(1);
        let started = (self.handled % LATENCY_SAMPLE_EVERY == 0).then_some(started);
        // Most handlers finish without waiting on anything: answer those at
        // once and keep the actor's wait queue for those that do wait. A
        // handler left pending is polled again by `ctx.wait` with the actor's
        // real waker, which every future must accept.
        let mut noop = task::Context::from_waker(Waker::noop());
        // A span costs to build even with no subscriber (the `log` bridge
        // checks its level), and an enter and exit per poll: made only when
        // someone listens.
        let span = tracing::enabled!(tracing::Level::DEBUG).then(|| {
            tracing::debug_span!("request", service = %self.name, message_id = %meta_id, correlation_id = %correlation_id)
        });
        self.slot.start(state, req, cx, causation, span);
        match self.slot.poll_work(&mut noop) {
            Some(Poll::Ready(done)) => {
                self.record_latency(started);
                self.finish(done, reply, ctx);
            }
            _ => ctx.wait(Resume { reply: Some(reply), started }),
        }
    }
}

/// Records the latency samples a service holds (see [`LATENCY_BATCH`]).
#[derive(Message)]
#[rtype(result = "()")]
struct FlushLatencies;

impl<S: Service> Handler<FlushLatencies> for ServiceActor<S> {
    type Result = ();

    fn handle(&mut self, _: FlushLatencies, _: &mut Context<Self>) {
        self.flush_latencies();
    }
}

impl<S: Service> Handler<Control> for ServiceActor<S> {
    type Result = ();

    fn handle(&mut self, msg: Control, ctx: &mut Context<Self>) {
        match msg {
            Control::Start => self.build(ctx),
            Control::Restart => {
                self.state = None;
                self.metrics.restarts.increment(1);
                self.build(ctx);
            }
            Control::Stop => {
                self.state = None;
                self.down = Some("stopped by its supervisor".into());
            }
            Control::Shutdown => {
                self.state = None;
                self.down = Some("shut down".into());
                ctx.stop();
            }
        }
    }
}

impl<S: Service> Child for Addr<ServiceActor<S>> {
    fn restart(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let addr = self.clone();
        Box::pin(async move {
            let _ = addr.send(Control::Restart).await;
        })
    }

    fn stop(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let addr = self.clone();
        Box::pin(async move {
            let _ = addr.send(Control::Stop).await;
        })
    }
}
