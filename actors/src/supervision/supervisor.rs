//! The supervisor actor.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::{broadcast, oneshot};

use super::{Directive, Exit, Restart, RestartBudget, Strategy, SupervisionEvent, SupervisorSpec};
use crate::metrics as m;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a supervisor can do to a child. Implemented by every supervised actor
/// kind (services, workers, supervisors themselves).
pub trait Child: Send + 'static {
    /// Drop the child's state and rebuild it from its factory.
    fn restart(&self) -> BoxFuture;
    /// Drop the child's state; it refuses work until restarted.
    fn stop(&self) -> BoxFuture;
}

/// A child's line to its supervisor.
#[derive(Clone)]
pub struct ChildLink {
    supervisor: Addr<Supervisor>,
    name: Arc<str>,
}

impl fmt::Debug for ChildLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildLink").field("name", &self.name).finish()
    }
}

impl ChildLink {
    /// A link for the child `name` of `supervisor`.
    pub fn new(supervisor: Addr<Supervisor>, name: impl Into<Arc<str>>) -> Self {
        ChildLink { supervisor, name: name.into() }
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reports that the child exited and waits for the supervisor's decision.
    /// A supervisor that is gone answers [`Directive::Stop`].
    pub async fn exited(&self, exit: Exit) -> Directive {
        let (reply, decision) = oneshot::channel();
        let msg = ChildExited { name: self.name.clone(), exit, reply };
        if self.supervisor.send(msg).await.is_err() {
            return Directive::Stop;
        }
        decision.await.unwrap_or(Directive::Stop)
    }
}

/// Adds a child to a supervisor. Send it before the child can fail, so that
/// its first failure finds the supervisor ready.
#[derive(Message)]
#[rtype(result = "Result<(), DuplicateChild>")]
pub struct AddChild {
    /// Unique among the supervisor's children.
    pub name: Arc<str>,
    /// When it is restarted.
    pub restart: Restart,
    /// How to restart and stop it.
    pub child: Box<dyn Child>,
}

/// A supervisor already has a child of that name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("supervisor already has a child named `{0}`")]
pub struct DuplicateChild(pub String);

#[derive(Message)]
#[rtype(result = "()")]
struct ChildExited {
    name: Arc<str>,
    exit: Exit,
    reply: oneshot::Sender<Directive>,
}

/// Restarts every child (a parent restarting this subtree).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestartAll;

/// Stops every child (a parent stopping this subtree).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAll;

struct Entry {
    name: Arc<str>,
    restart: Restart,
    child: Box<dyn Child>,
    running: bool,
}

/// Supervises an ordered list of children (see the [module docs](super)).
pub struct Supervisor {
    path: Arc<str>,
    spec: SupervisorSpec,
    budget: RestartBudget,
    children: Vec<Entry>,
    parent: Option<ChildLink>,
    /// True once this supervisor gave up and before its parent restarts it.
    down: bool,
    events: broadcast::Sender<SupervisionEvent>,
    escalations: metrics::Counter,
}

impl Supervisor {
    /// Starts a supervisor on the current arbiter. `parent` is `None` for a
    /// root, whose escalations are final.
    pub fn start(
        path: impl Into<Arc<str>>,
        spec: SupervisorSpec,
        parent: Option<ChildLink>,
        events: broadcast::Sender<SupervisionEvent>,
    ) -> Addr<Supervisor> {
        let path = path.into();
        let escalations = metrics::counter!(m::SUPERVISION_ESCALATIONS, m::LABEL_NAME => path.to_string());
        Supervisor {
            budget: RestartBudget::new(spec.intensity, spec.backoff),
            path,
            spec,
            children: Vec::new(),
            parent,
            down: false,
            events,
            escalations,
        }
        .start()
    }

    fn emit(&self, event: SupervisionEvent) {
        // No subscriber is fine: events are for observers, not for control.
        let _ = self.events.send(event);
    }

    fn child_path(&self, name: &str) -> String {
        format!("{}/{}", self.path, name)
    }

    /// Children that restart along with child `failed`, besides itself.
    fn siblings_to_restart(&self, failed: usize) -> Vec<usize> {
        let range = match self.spec.strategy {
            Strategy::OneForOne => 0..0,
            Strategy::OneForAll => 0..self.children.len(),
            Strategy::RestForOne => failed..self.children.len(),
        };
        range.filter(|&i| i != failed && self.children[i].running).collect()
    }

    fn escalate(&mut self, cause: Exit, ctx: &mut Context<Self>) {
        self.down = true;
        self.escalations.increment(1);
        tracing::error!(supervisor = %self.path, %cause, "restart intensity exceeded, escalating");
        let stops = self.stop_children();
        self.emit(SupervisionEvent::Escalated { supervisor: self.path.to_string(), cause: cause.clone() });
        let parent = self.parent.clone();
        let exit = Exit::Escalated { supervisor: self.path.to_string(), cause: Box::new(cause) };
        let decide = async move {
            stops.await;
            match parent {
                Some(link) => link.exited(exit).await,
                None => Directive::Stop,
            }
        };
        ctx.spawn(decide.into_actor(self).map(|directive, act, _| {
            if directive == Directive::Restart {
                act.restart_children();
            }
        }));
    }

    fn stop_children(&mut self) -> impl Future<Output = ()> {
        let mut stops = Vec::new();
        for entry in self.children.iter_mut().filter(|e| e.running) {
            entry.running = false;
            stops.push(entry.child.stop());
            let path = format!("{}/{}", self.path, entry.name);
            let _ = self.events.send(SupervisionEvent::Stopped { path });
        }
        async move {
            join_all(stops).await;
        }
    }

    /// Restarts every non-temporary child with a fresh budget.
    fn restart_children(&mut self) {
        self.down = false;
        self.budget.reset();
        for entry in self.children.iter_mut().filter(|e| e.restart != Restart::Temporary) {
            entry.running = true;
            actix::spawn(entry.child.restart());
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Control traffic only: one message per child event, so a modest bound.
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<AddChild> for Supervisor {
    type Result = Result<(), DuplicateChild>;

    fn handle(&mut self, msg: AddChild, _: &mut Context<Self>) -> Self::Result {
        if self.children.iter().any(|e| e.name == msg.name) {
            return Err(DuplicateChild(msg.name.to_string()));
        }
        self.children.push(Entry { name: msg.name, restart: msg.restart, child: msg.child, running: true });
        Ok(())
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        let ChildExited { name, exit, reply } = msg;
        let path = self.child_path(&name);
        self.emit(SupervisionEvent::Exited { path: path.clone(), exit: exit.clone() });
        let Some(idx) = self.children.iter().position(|e| e.name == name) else {
            let _ = reply.send(Directive::Stop);
            return;
        };
        let wanted = match self.children[idx].restart {
            Restart::Permanent => true,
            Restart::Transient => !exit.is_normal(),
            Restart::Temporary => false,
        };
        if self.down || !wanted {
            self.children[idx].running = false;
            self.emit(SupervisionEvent::Stopped { path });
            let _ = reply.send(Directive::Stop);
            return;
        }
        let Some(delay) = self.budget.charge(Instant::now()) else {
            self.children[idx].running = false;
            self.emit(SupervisionEvent::Stopped { path });
            let _ = reply.send(Directive::Stop);
            self.escalate(exit, ctx);
            return;
        };
        self.emit(SupervisionEvent::Restarting { path, delay });
        let siblings: Vec<BoxFuture> =
            self.siblings_to_restart(idx).into_iter().map(|i| self.children[i].child.restart()).collect();
        ctx.spawn(
            async move {
                if !delay.is_zero() {
                    actix_rt::time::sleep(delay).await;
                }
                join_all(siblings).await;
                let _ = reply.send(Directive::Restart);
            }
            .into_actor(self),
        );
    }
}

impl Handler<RestartAll> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: RestartAll, _: &mut Context<Self>) {
        self.restart_children();
    }
}

impl Handler<StopAll> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopAll, _: &mut Context<Self>) -> Self::Result {
        self.down = true;
        Box::pin(self.stop_children())
    }
}

/// A supervisor is the child of its parent supervisor.
impl Child for Addr<Supervisor> {
    fn restart(&self) -> BoxFuture {
        let addr = self.clone();
        Box::pin(async move {
            let _ = addr.send(RestartAll).await;
        })
    }

    fn stop(&self) -> BoxFuture {
        let addr = self.clone();
        Box::pin(async move {
            let _ = addr.send(StopAll).await;
        })
    }
}
