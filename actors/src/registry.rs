//! Name → handle tables.
//!
//! Applications address services, queues and topics by name. A [`Registry`]
//! maps each name to the handle of the actor behind it. Handles stay valid
//! across restarts because a restart rebuilds the state inside the actor that
//! owns the mailbox; the registry entry never changes while the actor lives.

use std::any::Any;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

/// A concurrent table of typed handles, one table per kind of thing named.
///
/// ```
/// use actorbus_actors::registry::{Lookup, Registry};
/// let services = Registry::new("service");
/// services.insert("pricing", 42u32).unwrap();
/// assert_eq!(*services.get::<u32>("pricing").unwrap(), 42);
/// assert!(matches!(services.get::<String>("pricing"), Err(Lookup::WrongType)));
/// assert!(matches!(services.get::<u32>("billing"), Err(Lookup::Unknown)));
/// assert!(services.insert("pricing", 7u32).is_err());
/// ```
pub struct Registry {
    kind: &'static str,
    entries: DashMap<Box<str>, Arc<dyn Any + Send + Sync>>,
}

/// Why a lookup found no handle of the wanted type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Nothing is registered under the name.
    Unknown,
    /// Something is, but its handle has another type (for a service: another
    /// request type).
    WrongType,
}

/// The name is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {kind} named `{name}` already exists")]
pub struct NameTaken {
    /// What kind of thing (`service`, `queue`, …).
    pub kind: &'static str,
    /// The name.
    pub name: String,
}

impl Registry {
    /// An empty table for things of `kind` (used in error messages).
    pub fn new(kind: &'static str) -> Self {
        Registry { kind, entries: DashMap::new() }
    }

    /// Registers `handle` under `name`, unless the name is taken.
    pub fn insert<T: Any + Send + Sync>(&self, name: &str, handle: T) -> Result<Arc<T>, NameTaken> {
        match self.entries.entry(name.into()) {
            Entry::Occupied(_) => Err(NameTaken { kind: self.kind, name: name.to_owned() }),
            Entry::Vacant(slot) => {
                let handle = Arc::new(handle);
                slot.insert(handle.clone());
                Ok(handle)
            }
        }
    }

    /// The handle registered under `name`, if it has type `T`.
    pub fn get<T: Any + Send + Sync>(&self, name: &str) -> Result<Arc<T>, Lookup> {
        let entry = self.entries.get(name).ok_or(Lookup::Unknown)?;
        entry.value().clone().downcast::<T>().map_err(|_| Lookup::WrongType)
    }

    /// True when something is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Removes `name`; true when it was there.
    pub fn remove(&self, name: &str) -> bool {
        self.entries.remove(name).is_some()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.iter().map(|e| e.key().to_string()).collect();
        names.sort();
        names
    }

    /// What kind of thing this table names.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}
