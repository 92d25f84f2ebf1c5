//! [`Topics`]: the topics of one bus by name, and subscriptions by pattern.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use actix::Recipient;

use super::subject::{InvalidSubject, Pattern};
use super::subscription::{pump, Published, SubCore, Subscription, SubscriptionConfig};
use super::topic::{TopicConfig, TopicHandle};

/// Why a topic could not be made or found, or a subscription made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name or pattern is not well formed.
    #[error(transparent)]
    InvalidSubject(#[from] InvalidSubject),
    /// A topic of that name exists with another payload type.
    #[error("topic `{0}` carries another payload type")]
    WrongType(String),
    /// A topic of that name exists already (`create`).
    #[error("topic `{0}` already exists")]
    Exists(String),
    /// No topic has that name (`get`).
    #[error("no topic named `{0}`")]
    Unknown(String),
}

struct Wildcard {
    pattern: Pattern,
    /// An `Arc<SubCore<T>>`, for topics of payload type `T` only.
    core: Arc<dyn Any + Send + Sync>,
    closed: Box<dyn Fn() -> bool + Send + Sync>,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Arc<dyn Any + Send + Sync>>,
    subscriptions: Vec<Wildcard>,
}

/// Every topic of a bus, by name, and every subscription, by pattern.
///
/// A subscription's pattern is matched against topic names: it is attached
/// to every matching topic that exists when it is made *and* to every
/// matching topic created later, like a NATS subscription, which receives
/// from subjects nobody had published to when it subscribed. Subscriptions
/// are typed: one made for payload type `T` only attaches to topics of type
/// `T` (a topic of another type is invisible to it).
///
/// Cheap to clone; every clone is the same table.
#[derive(Clone, Default)]
pub struct Topics {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics").field("topics", &self.names()).finish()
    }
}

impl Topics {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The topic `name`, created with the default configuration if missing.
    pub fn topic<T: Clone + Send + Sync + 'static>(&self, name: &str) -> Result<TopicHandle<T>, TopicError> {
        match self.get(name) {
            Err(TopicError::Unknown(_)) => match self.create(name, TopicConfig::default()) {
                Err(TopicError::Exists(_)) => self.get(name),
                other => other,
            },
            other => other,
        }
    }

    /// The topic `name`, if it exists with payload type `T`.
    pub fn get<T: Clone + Send + Sync + 'static>(&self, name: &str) -> Result<TopicHandle<T>, TopicError> {
        let st = self.lock();
        let any = st.topics.get(name).ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
        any.downcast_ref::<TopicHandle<T>>().cloned().ok_or_else(|| TopicError::WrongType(name.to_owned()))
    }

    /// Creates the topic `name` with `config`, attaching every existing
    /// subscription whose pattern matches.
    pub fn create<T: Clone + Send + Sync + 'static>(
        &self,
        name: &str,
        config: TopicConfig<T>,
    ) -> Result<TopicHandle<T>, TopicError> {
        let mut st = self.lock();
        if st.topics.contains_key(name) {
            return Err(TopicError::Exists(name.to_owned()));
        }
        st.subscriptions.retain(|w| !(w.closed)());
        let subs = st
            .subscriptions
            .iter()
            .filter(|w| w.pattern.matches(name))
            .filter_map(|w| w.core.clone().downcast::<SubCore<T>>().ok())
            .collect();
        let handle = TopicHandle::start_with(name, config, subs)?;
        st.topics.insert(name.to_owned(), Arc::new(handle.clone()));
        Ok(handle)
    }

    /// Names of the topics, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().topics.keys().cloned().collect();
        names.sort();
        names
    }

    /// Subscribes to every topic of payload type `T` whose name matches
    /// `pattern` (`orders.*`, `orders.>`, or a plain name), now and later.
    pub fn subscribe<T: Clone + Send + Sync + 'static>(
        &self,
        pattern: &str,
        config: SubscriptionConfig<T>,
    ) -> Result<Subscription<T>, TopicError> {
        let pattern = Pattern::new(pattern)?;
        let core = Arc::new(SubCore::new(pattern.clone(), config));
        let mut st = self.lock();
        st.subscriptions.retain(|w| !(w.closed)());
        for topic in st.topics.iter().filter(|(name, _)| pattern.matches(name)).map(|(_, t)| t) {
            if let Some(topic) = topic.downcast_ref::<TopicHandle<T>>() {
                topic.attach(core.clone());
            }
        }
        let watch = core.clone();
        st.subscriptions.push(Wildcard { pattern, core: core.clone(), closed: Box::new(move || watch.is_closed()) });
        Ok(Subscription::new(core))
    }

    /// Subscribes an actor: each matching message arrives as a
    /// [`Published`] message, sent once the actor handled the previous one.
    /// The subscription ends (and is removed from its topics) when the actor
    /// stops.
    pub fn subscribe_recipient<T: Clone + Send + Sync + 'static>(
        &self,
        pattern: &str,
        recipient: Recipient<Published<T>>,
        config: SubscriptionConfig<T>,
    ) -> Result<super::SubscriptionId, TopicError> {
        let sub = self.subscribe(pattern, config)?;
        let id = sub.id();
        pump(sub, recipient);
        Ok(id)
    }
}
