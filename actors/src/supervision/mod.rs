//! Supervision: nothing is lost when a handler fails (DESIGN §3).
//!
//! actix restarts an actor only when it stops itself; a panic in a handler
//! drops the actor, its message in flight and its mailbox. actorbus closes that
//! gap with two pieces:
//!
//! 1. **A panic boundary around user code** ([`panic`](mod@panic)). Every
//!    user handler runs inside it, so a panic becomes a failed delivery with
//!    reason `panic: <message>`, and the actor that hosts the handler
//!    survives.
//! 2. **Supervisors that rebuild user state** ([`Supervisor`]). After a panic
//!    the hosting actor drops the user state (it may be corrupt) and asks its
//!    supervisor what to do. The supervisor applies its [`Strategy`], each
//!    child's [`Restart`] policy, and its restart [`Intensity`] with
//!    exponential [`Backoff`]: it answers [`Directive::Restart`] (the state is
//!    rebuilt from its factory) or, once the intensity is exceeded, stops its
//!    children and escalates to its own parent.
//!
//! Because the hosting actor, not the user state, owns the mailbox, an address
//! taken before a restart keeps working after it, and messages queued behind a
//! failing one are not lost: they wait (bounded) until the restart is done.
//!
//! Supervisors nest: a supervisor is itself a child of its parent. A parent
//! answers an escalation like any child failure — restart the whole subtree
//! (within its own intensity) or stop it. The root supervisor's escalations are
//! final and are reported as [`SupervisionEvent::Escalated`].
//!
//! Any actor can be supervised: it implements [`Child`] (how to restart and
//! stop it) and reports its failures through a [`ChildLink`].

mod budget;
pub mod panic;
mod supervisor;

pub(crate) use budget::RestartBudget;
pub use budget::{Backoff, Intensity};
pub use supervisor::{AddChild, Child, ChildLink, DuplicateChild, RestartAll, StopAll, Supervisor};

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which children restart when one fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the failed child.
    #[default]
    OneForOne,
    /// Every child of the supervisor.
    OneForAll,
    /// The failed child and every child added after it.
    RestForOne,
}

/// When a child is restarted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always.
    #[default]
    Permanent,
    /// Only after an abnormal exit (a panic, an escalation), not a normal one.
    Transient,
    /// Never: the first exit stops it for good.
    Temporary,
}

/// Why a child exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It finished normally.
    Normal,
    /// Its handler (or its factory) panicked.
    Panic(String),
    /// A supervisor below exceeded its restart intensity.
    Escalated {
        /// Path of the supervisor that gave up.
        supervisor: String,
        /// The failure that used up its budget.
        cause: Box<Exit>,
    },
}

impl Exit {
    /// True for a normal exit.
    pub fn is_normal(&self) -> bool {
        matches!(self, Exit::Normal)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Normal => f.write_str("normal"),
            Exit::Panic(m) => write!(f, "panic: {m}"),
            Exit::Escalated { supervisor, cause } => write!(f, "escalated by {supervisor}: {cause}"),
        }
    }
}

/// A supervisor's answer to a child that exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Directive {
    /// Rebuild from the factory and carry on.
    Restart,
    /// Stay stopped.
    Stop,
}

/// How a supervisor handles its children's failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SupervisorSpec {
    /// Which children restart together.
    pub strategy: Strategy,
    /// How many restarts before escalating.
    pub intensity: Intensity,
    /// Delay between restarts.
    pub backoff: Backoff,
}

/// What happened in a supervision tree, as seen by anyone who subscribed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisionEvent {
    /// A child exited (`path` is `supervisor/child`).
    Exited {
        /// The child's path.
        path: String,
        /// Why.
        exit: Exit,
    },
    /// A child will be rebuilt after `delay`.
    Restarting {
        /// The child's path.
        path: String,
        /// Backoff before the restart.
        delay: Duration,
    },
    /// A child will not be restarted.
    Stopped {
        /// The child's path.
        path: String,
    },
    /// A supervisor exceeded its intensity, stopped its children and
    /// escalated to its parent.
    Escalated {
        /// The supervisor's path.
        supervisor: String,
        /// The failure that used up the budget.
        cause: Exit,
    },
}
