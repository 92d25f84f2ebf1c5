//! Every metric name actorbus records, in one place (DESIGN §5).
//!
//! Names follow `actorbus_<pattern>_<what>_<unit>`; labels name the service,
//! queue, topic, saga or stream. Everything goes through the [`metrics`]
//! facade, so any recorder works; the `actorbus` crate installs a Prometheus
//! recorder and serves it at `/metrics`.
//!
//! Hot paths register their handles once (when an actor starts) and reuse them,
//! so recording costs an atomic add, not a registry lookup.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Label: the kind of actor (`service`, `supervisor`, `queue`, …).
pub const LABEL_KIND: &str = "kind";
/// Label: the name of the service, queue, topic, saga or stream.
pub const LABEL_NAME: &str = "name";
/// Label: how a request or delivery ended.
pub const LABEL_OUTCOME: &str = "outcome";
/// Label: a failure reason code (see `FailureReason::code`).
pub const LABEL_REASON: &str = "reason";

/// Requests handled by a service, by outcome (`ok`, `error`, `panic`).
pub const REQUEST_HANDLED: &str = "actorbus_request_reply_handled_total";
/// Requests refused before reaching a handler, by reason (`expired`,
/// `mailbox_full`, `unavailable`, `timeout`).
pub const REQUEST_REFUSED: &str = "actorbus_request_reply_refused_total";
/// Replies that arrived after their requester stopped waiting.
pub const REQUEST_LATE_REPLIES: &str = "actorbus_request_reply_late_replies_total";
/// Time a service handler took.
pub const REQUEST_HANDLER_LATENCY: &str = "actorbus_request_reply_handler_latency_seconds";

/// Handler panics caught by a panic boundary, per actor kind and name.
pub const SUPERVISION_PANICS: &str = "actorbus_supervision_panics_total";
/// Actors rebuilt from their factory, per actor kind and name.
pub const SUPERVISION_RESTARTS: &str = "actorbus_supervision_restarts_total";
/// Supervisors that exceeded their restart intensity and escalated.
pub const SUPERVISION_ESCALATIONS: &str = "actorbus_supervision_escalations_total";

/// Jobs submitted, by kind.
pub const JOBS_SUBMITTED: &str = "actorbus_jobs_submitted_total";
/// Jobs that ended, by kind and outcome (`succeeded`, `failed`).
pub const JOBS_FINISHED: &str = "actorbus_jobs_finished_total";
/// Jobs currently known to the tracker, by state.
pub const JOBS_BY_STATE: &str = "actorbus_jobs_by_state_jobs";

/// Label: the saga definition's name.
pub const LABEL_SAGA: &str = "saga";
/// Label: a saga step's name.
pub const LABEL_STEP: &str = "step";

/// Counter: sagas started (their start written to the log), by saga.
pub const SAGA_STARTED: &str = "actorbus_saga_started_total";
/// Counter: sagas ended, by saga and outcome (`completed`, `compensated`,
/// `needs_attention`).
pub const SAGA_ENDED: &str = "actorbus_saga_ended_total";
/// Gauge: sagas running now, by saga.
pub const SAGA_RUNNING: &str = "actorbus_saga_running_sagas";
/// Histogram: time one attempt of a step or compensation took, by saga and step.
pub const SAGA_STEP_LATENCY: &str = "actorbus_saga_step_latency_seconds";
/// Counter: unfinished sagas resumed from the log at start.
pub const SAGA_RECOVERED: &str = "actorbus_saga_recovered_total";

/// Label: the name of a subscription or projection.
pub const LABEL_SUBSCRIPTION: &str = "subscription";

/// Appends answered by an event store, by store name and outcome
/// (`written`, `idempotent`, `conflict`, `duplicate`, `invalid`, `error`).
pub const EVENT_STORE_APPENDS: &str = "actorbus_event_store_appends_total";
/// Events written by an event store (idempotent repeats not counted).
pub const EVENT_STORE_EVENTS_APPENDED: &str = "actorbus_event_store_events_appended_total";
/// Appends refused for a wrong expected version.
pub const EVENT_STORE_CONFLICTS: &str = "actorbus_event_store_conflicts_total";
/// Time from an append reaching the event store to its answer (queueing,
/// group commit and fsync included).
pub const EVENT_STORE_APPEND_LATENCY: &str = "actorbus_event_store_append_latency_seconds";
/// Durable commits (one transaction, one fsync each).
pub const EVENT_STORE_COMMITS: &str = "actorbus_event_store_commits_total";
/// Time one group commit took on the writer thread.
pub const EVENT_STORE_COMMIT_LATENCY: &str = "actorbus_event_store_commit_latency_seconds";
/// Events written per commit: how much group commit is batching.
pub const EVENT_STORE_BATCH_SIZE: &str = "actorbus_event_store_batch_size_events";
/// Subscriptions currently receiving live events.
pub const EVENT_STORE_LIVE_SUBSCRIPTIONS: &str = "actorbus_event_store_live_subscriptions_active";
/// Live subscriptions that fell behind and went back to catch-up reads.
pub const EVENT_STORE_SUBSCRIPTION_FALLBACKS: &str = "actorbus_event_store_subscription_fallbacks_total";
/// Events in `$all` that a named subscription has not delivered yet.
pub const EVENT_STORE_SUBSCRIPTION_LAG: &str = "actorbus_event_store_subscription_lag_events";
/// Aggregate snapshots saved.
pub const EVENT_STORE_SNAPSHOTS_SAVED: &str = "actorbus_event_store_snapshots_saved_total";
/// Events replayed to rebuild aggregate state.
pub const EVENT_STORE_EVENTS_REPLAYED: &str = "actorbus_event_store_replayed_events_total";
/// The global position up to which a projection's checkpoint is saved.
pub const EVENT_STORE_PROJECTION_CHECKPOINT: &str = "actorbus_event_store_projection_checkpoint_position";

/// Label: what completed a scatter-gather (`all`, `first_n`, `quorum`,
/// `predicate`, `timeout`).
pub const LABEL_COMPLETED_BY: &str = "completed_by";

/// Counter: messages published to a topic, by topic.
pub const TOPIC_PUBLISHED: &str = "actorbus_topic_published_total";
/// Counter: messages accepted into a subscription's buffer, by topic.
pub const TOPIC_DELIVERIES: &str = "actorbus_topic_deliveries_total";
/// Counter: messages a subscription's filter turned away, by topic.
pub const TOPIC_FILTERED: &str = "actorbus_topic_filtered_total";
/// Counter: messages a subscription lost, by topic and reason (`drop_oldest`,
/// `drop_newest`, `dead_letter`, `reject`, `claim_check`, `closed`).
pub const TOPIC_DROPPED: &str = "actorbus_topic_dropped_total";
/// Counter: messages published while no subscription matched, by topic.
pub const TOPIC_UNROUTED: &str = "actorbus_topic_unrouted_total";
/// Counter: messages handed to durable subscription sinks, by topic.
pub const TOPIC_DURABLE_FORWARDED: &str = "actorbus_topic_durable_forwarded_total";
/// Gauge: subscriptions attached to a topic, by topic.
pub const TOPIC_SUBSCRIPTIONS: &str = "actorbus_topic_subscriptions_active";
/// Counter: subscriptions removed from a topic, by topic and reason
/// (`unsubscribed`, `subscriber_dead`).
pub const TOPIC_SUBSCRIPTIONS_REMOVED: &str = "actorbus_topic_subscriptions_removed_total";
/// Counter: payloads a topic sent as claim-check tickets, by topic.
pub const TOPIC_CLAIM_CHECKED: &str = "actorbus_topic_claim_checked_total";

/// Counter: scatter-gathers completed, by name and cause (label
/// `completed_by`): the aggregator completions of DESIGN §5.
pub const SCATTER_COMPLETED: &str = "actorbus_scatter_gather_completed_total";
/// Counter: replies folded into an aggregate or recorded as failures, by
/// name and outcome (`ok`, `failed`).
pub const SCATTER_REPLIES: &str = "actorbus_scatter_gather_replies_total";
/// Counter: replies that arrived after their gather completed (dropped).
pub const SCATTER_LATE_REPLIES: &str = "actorbus_scatter_gather_late_replies_total";
/// Counter: recipients that had not answered when their gather completed.
pub const SCATTER_MISSING: &str = "actorbus_scatter_gather_missing_total";
/// Counter: gathers that timed out and were handed to the dead letter hook.
pub const SCATTER_DEAD_LETTERED: &str = "actorbus_scatter_gather_dead_lettered_total";
/// Histogram: time from scatter to completion.
pub const SCATTER_LATENCY: &str = "actorbus_scatter_gather_latency_seconds";
/// Gauge: gathers running now.
pub const SCATTER_RUNNING: &str = "actorbus_scatter_gather_running_gathers";

/// Counter: payloads checked in to a claim-check store, by store.
pub const CLAIM_CHECK_CHECKED_IN: &str = "actorbus_claim_check_checked_in_total";
/// Counter: bytes checked in to a claim-check store.
pub const CLAIM_CHECK_CHECKED_IN_BYTES: &str = "actorbus_claim_check_checked_in_bytes_total";
/// Counter: claims, by store and outcome (`ok`, `not_found`, `expired`,
/// `digest_mismatch`, `store_error`).
pub const CLAIM_CHECK_CLAIMS: &str = "actorbus_claim_check_claims_total";
/// Counter: payloads freed by their last release or a delete.
pub const CLAIM_CHECK_FREED: &str = "actorbus_claim_check_freed_total";
/// Counter: payloads deleted at expiry.
pub const CLAIM_CHECK_EXPIRED: &str = "actorbus_claim_check_expired_total";
/// Gauge: bytes stored in a claim-check store.
pub const CLAIM_CHECK_STORED_BYTES: &str = "actorbus_claim_check_stored_bytes";
/// Gauge: payloads stored in a claim-check store.
pub const CLAIM_CHECK_STORED_PAYLOADS: &str = "actorbus_claim_check_stored_payloads";

/// Registers help text and units for every metric, so exporters print them.
/// Call once after installing a recorder.
pub fn describe() {
    describe_counter!(REQUEST_HANDLED, Unit::Count, "Requests handled by a service, by outcome.");
    describe_counter!(REQUEST_REFUSED, Unit::Count, "Requests refused before reaching a handler, by reason.");
    describe_counter!(REQUEST_LATE_REPLIES, Unit::Count, "Replies dropped because the requester had timed out.");
    describe_histogram!(REQUEST_HANDLER_LATENCY, Unit::Seconds, "Time a service handler took.");
    describe_counter!(SUPERVISION_PANICS, Unit::Count, "Handler panics caught by a panic boundary.");
    describe_counter!(SUPERVISION_RESTARTS, Unit::Count, "Actors rebuilt from their factory.");
    describe_counter!(SUPERVISION_ESCALATIONS, Unit::Count, "Supervisors that exceeded their restart intensity.");
    describe_counter!(EVENT_STORE_APPENDS, Unit::Count, "Appends answered by an event store, by outcome.");
    describe_counter!(EVENT_STORE_EVENTS_APPENDED, Unit::Count, "Events written by an event store.");
    describe_counter!(EVENT_STORE_CONFLICTS, Unit::Count, "Appends refused for a wrong expected version.");
    describe_histogram!(
        EVENT_STORE_APPEND_LATENCY,
        Unit::Seconds,
        "Time from an append reaching the event store to its answer."
    );
    describe_counter!(EVENT_STORE_COMMITS, Unit::Count, "Durable event store commits (one fsync each).");
    describe_histogram!(EVENT_STORE_COMMIT_LATENCY, Unit::Seconds, "Time one event store group commit took.");
    describe_histogram!(EVENT_STORE_BATCH_SIZE, Unit::Count, "Events written per event store commit.");
    describe_gauge!(EVENT_STORE_LIVE_SUBSCRIPTIONS, Unit::Count, "Event store subscriptions receiving live events.");
    describe_counter!(
        EVENT_STORE_SUBSCRIPTION_FALLBACKS,
        Unit::Count,
        "Live subscriptions that fell behind and went back to catch-up reads."
    );
    describe_gauge!(EVENT_STORE_SUBSCRIPTION_LAG, Unit::Count, "Events a named subscription has not delivered yet.");
    describe_counter!(EVENT_STORE_SNAPSHOTS_SAVED, Unit::Count, "Aggregate snapshots saved.");
    describe_counter!(EVENT_STORE_EVENTS_REPLAYED, Unit::Count, "Events replayed to rebuild aggregate state.");
    describe_gauge!(
        EVENT_STORE_PROJECTION_CHECKPOINT,
        Unit::Count,
        "Global position up to which a projection checkpoint is saved."
    );
    describe_counter!(JOBS_SUBMITTED, Unit::Count, "Jobs submitted, by kind.");
    describe_counter!(JOBS_FINISHED, Unit::Count, "Jobs that ended, by kind and outcome.");
    describe_gauge!(JOBS_BY_STATE, Unit::Count, "Jobs known to the tracker, by state.");
    describe_counter!(SAGA_STARTED, Unit::Count, "Sagas started, by saga.");
    describe_counter!(SAGA_ENDED, Unit::Count, "Sagas ended, by saga and outcome.");
    describe_gauge!(SAGA_RUNNING, Unit::Count, "Sagas running now, by saga.");
    describe_histogram!(SAGA_STEP_LATENCY, Unit::Seconds, "Time one attempt of a saga step or compensation took.");
    describe_counter!(SAGA_RECOVERED, Unit::Count, "Unfinished sagas resumed from the saga log at start.");
    describe_counter!(TOPIC_PUBLISHED, Unit::Count, "Messages published to a topic.");
    describe_counter!(TOPIC_DELIVERIES, Unit::Count, "Messages accepted into subscription buffers.");
    describe_counter!(TOPIC_FILTERED, Unit::Count, "Messages turned away by subscription filters.");
    describe_counter!(TOPIC_DROPPED, Unit::Count, "Messages a subscription lost, by reason.");
    describe_counter!(TOPIC_UNROUTED, Unit::Count, "Messages published while no subscription matched.");
    describe_counter!(TOPIC_DURABLE_FORWARDED, Unit::Count, "Messages handed to durable subscription sinks.");
    describe_gauge!(TOPIC_SUBSCRIPTIONS, Unit::Count, "Subscriptions attached to a topic.");
    describe_counter!(TOPIC_SUBSCRIPTIONS_REMOVED, Unit::Count, "Subscriptions removed from a topic, by reason.");
    describe_counter!(TOPIC_CLAIM_CHECKED, Unit::Count, "Payloads a topic sent as claim-check tickets.");
    describe_counter!(SCATTER_COMPLETED, Unit::Count, "Scatter-gathers completed, by cause.");
    describe_counter!(SCATTER_REPLIES, Unit::Count, "Scatter-gather replies, by outcome.");
    describe_counter!(SCATTER_LATE_REPLIES, Unit::Count, "Scatter-gather replies dropped for arriving late.");
    describe_counter!(SCATTER_MISSING, Unit::Count, "Recipients missing when their gather completed.");
    describe_counter!(SCATTER_DEAD_LETTERED, Unit::Count, "Timed-out gathers handed to the dead letter hook.");
    describe_histogram!(SCATTER_LATENCY, Unit::Seconds, "Time from scatter to completion.");
    describe_gauge!(SCATTER_RUNNING, Unit::Count, "Scatter-gathers running now.");
    describe_counter!(CLAIM_CHECK_CHECKED_IN, Unit::Count, "Payloads checked in to a claim-check store.");
    describe_counter!(CLAIM_CHECK_CHECKED_IN_BYTES, Unit::Bytes, "Bytes checked in to a claim-check store.");
    describe_counter!(CLAIM_CHECK_CLAIMS, Unit::Count, "Claim-check claims, by outcome.");
    describe_counter!(CLAIM_CHECK_FREED, Unit::Count, "Claim-check payloads freed by release or delete.");
    describe_counter!(CLAIM_CHECK_EXPIRED, Unit::Count, "Claim-check payloads deleted at expiry.");
    describe_gauge!(CLAIM_CHECK_STORED_BYTES, Unit::Bytes, "Bytes stored in a claim-check store.");
    describe_gauge!(CLAIM_CHECK_STORED_PAYLOADS, Unit::Count, "Payloads stored in a claim-check store.");
}
