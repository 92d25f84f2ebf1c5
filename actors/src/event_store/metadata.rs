//! Stream metadata: how much of a stream its readers see.
//!
//! As in KurrentDB, a stream's metadata is itself an event stream: the
//! stream `$$orders` holds `$metadata` events for `orders`, and the last one
//! is in force. [`StreamMetadata`] has the two settings KurrentDB users
//! reach for first:
//!
//! - `$maxCount`: only the last N events of the stream are visible;
//! - `$maxAge`: only events committed within this age are visible.
//!
//! Truncation is logical, as in KurrentDB before a scavenge: stream reads,
//! catch-up subscriptions to the stream and aggregate loads skip the hidden
//! events, versions keep counting from where they were (the next append to a
//! stream truncated to 3 events still gets the next version), and `$all`
//! keeps every event, so projections and global positions are unaffected.
//! Nothing is deleted from the file. An aggregate whose stream is truncated
//! is rebuilt from what remains: give such streams a snapshot policy, or
//! truncate only streams whose readers want recent events.
//!
//! ```
//! use std::time::Duration;
//! use actorbus_actors::event_store::{EventStore, EventStoreConfig, ExpectedVersion, NewEvent, StreamMetadata};
//! use actorbus_actors::store::Direction;
//! use serde_json::json;
//!
//! actix_rt::System::new().block_on(async {
//!     let store = EventStore::in_memory(EventStoreConfig::default()).unwrap();
//!     let ticks = (0..10).map(|i| NewEvent::new("Tick", json!(i))).collect();
//!     store.append("sensor-1", ExpectedVersion::NoStream, ticks).await.unwrap();
//!     store.set_stream_metadata("sensor-1", StreamMetadata::default().max_count(3)).await.unwrap();
//!     let seen = store.read_stream("sensor-1", 0, Direction::Forward, 100).await.unwrap();
//!     assert_eq!(seen.iter().map(|e| e.version).collect::<Vec<_>>(), [7, 8, 9]);
//! });
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::envelope::Timestamp;
use crate::store::{Direction, EventReader, RecordedEvent, StoreError};

/// The event type of a metadata event.
pub const METADATA_EVENT: &str = "$metadata";

/// The metadata stream of `stream`: `$$<stream>`.
pub fn metadata_stream(stream: &str) -> String {
    format!("$${stream}")
}

/// What part of a stream its readers see. JSON: `{"$maxCount": 3,
/// "$maxAge": 86400}` (age in seconds, fractions allowed), either optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamMetadata {
    /// Only the last `max_count` events are visible.
    #[serde(rename = "$maxCount", default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// Only events committed within `max_age` are visible.
    #[serde(rename = "$maxAge", default, skip_serializing_if = "Option::is_none", with = "seconds")]
    pub max_age: Option<Duration>,
}

impl StreamMetadata {
    /// Keeps the last `n` events visible.
    pub fn max_count(mut self, n: u64) -> Self {
        self.max_count = Some(n);
        self
    }

    /// Keeps events younger than `age` visible.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// True when it hides nothing.
    pub fn is_unbounded(&self) -> bool {
        self.max_count.is_none() && self.max_age.is_none()
    }
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            None => Ok(None),
            Some(secs) => Duration::try_from_secs_f64(secs).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// The metadata in force for `stream` (the default when none was set, or
/// when the last metadata event does not parse: a bad write must not hide
/// a stream).
pub(crate) fn load(r: &mut dyn EventReader, stream: &str) -> Result<StreamMetadata, StoreError> {
    let last = r.read_stream(&metadata_stream(stream), u64::MAX, Direction::Backward, 1)?;
    Ok(last
        .first()
        .filter(|e| e.event_type == METADATA_EVENT)
        .and_then(|e| serde_json::from_value(e.data.clone()).ok())
        .unwrap_or_default())
}

/// Reads `stream` as its metadata lets readers see it.
pub(crate) fn read_visible(
    r: &mut dyn EventReader,
    stream: &str,
    from: u64,
    direction: Direction,
    max: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let meta = if stream.starts_with('$') { StreamMetadata::default() } else { load(r, stream)? };
    if meta.is_unbounded() {
        return r.read_stream(stream, from, direction, max);
    }
    let first_count = match (meta.max_count, r.stream_version(stream)?) {
        (Some(n), Some(last)) => (last + 1).saturating_sub(n),
        _ => 0,
    };
    let now = Timestamp::now().as_micros();
    let oldest =
        meta.max_age.map(|age| Timestamp(now.saturating_sub(u64::try_from(age.as_micros()).unwrap_or(u64::MAX))));
    let young = |e: &RecordedEvent| oldest.is_none_or(|t| e.timestamp >= t);
    match direction {
        Direction::Backward => {
            // Newest first: stop at the first hidden event.
            let mut out = r.read_stream(stream, from, direction, max)?;
            if let Some(cut) = out.iter().position(|e| e.version < first_count || !young(e)) {
                out.truncate(cut);
            }
            Ok(out)
        }
        Direction::Forward => {
            // Oldest first: hidden events are a prefix (commit times never
            // decrease along a stream); page past them.
            let mut from = from.max(first_count);
            loop {
                let page = r.read_stream(stream, from, direction, max)?;
                let Some(last) = page.last().map(|e| e.version) else { return Ok(page) };
                if let Some(first) = page.iter().find(|e| young(e)) {
                    if first.version == from {
                        return Ok(page);
                    }
                    // Everything from here on is visible: one full page of it.
                    return r.read_stream(stream, first.version, direction, max);
                }
                from = last + 1;
            }
        }
    }
}
