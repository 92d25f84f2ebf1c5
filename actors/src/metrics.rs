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

/// Label: the pattern a dead letter came from (`queue`, `saga`, …).
pub const LABEL_PATTERN: &str = "pattern";

/// Counter: entries stored in the dead letter queue, by source pattern, source
/// name and reason code.
pub const DLQ_DEAD_LETTERED: &str = "actorbus_dlq_dead_lettered_total";
/// Gauge: entries in the dead letter queue.
pub const DLQ_DEPTH: &str = "actorbus_dlq_depth_messages";
/// Counter: entries redriven (sent back and removed), by target pattern and name.
pub const DLQ_REDRIVEN: &str = "actorbus_dlq_redriven_total";
/// Counter: entries purged.
pub const DLQ_PURGED: &str = "actorbus_dlq_purged_total";
/// Counter: entries discarded by a full in-memory DLQ (oldest first).
pub const DLQ_EVICTED: &str = "actorbus_dlq_evicted_total";

/// Label: an overflow policy (`drop_oldest`, `drop_newest`, …).
pub const LABEL_POLICY: &str = "policy";

/// Counter: messages accepted into a queue, by queue.
pub const QUEUE_ENQUEUED: &str = "actorbus_queue_enqueued_total";
/// Counter: deliveries made (first deliveries and redeliveries), by queue.
pub const QUEUE_DELIVERED: &str = "actorbus_queue_delivered_total";
/// Counter: messages acked, by queue.
pub const QUEUE_ACKED: &str = "actorbus_queue_acked_total";
/// Counter: deliveries nacked by consumers, by queue.
pub const QUEUE_NACKED: &str = "actorbus_queue_nacked_total";
/// Counter: failed deliveries given another attempt, by queue.
pub const QUEUE_REDELIVERED: &str = "actorbus_queue_redelivered_total";
/// Counter: deliveries that passed their visibility timeout, by queue.
pub const QUEUE_VISIBILITY_TIMEOUTS: &str = "actorbus_queue_visibility_timeouts_total";
/// Counter: messages whose deadline passed before a handler got them, by queue.
pub const QUEUE_EXPIRED: &str = "actorbus_queue_expired_total";
/// Counter: messages a queue stored in the DLQ, by queue and reason code.
pub const QUEUE_DEAD_LETTERED: &str = "actorbus_queue_dead_lettered_total";
/// Counter: messages dropped by an overflow policy, by queue and policy.
pub const QUEUE_DROPPED: &str = "actorbus_queue_dropped_total";
/// Counter: sends refused because the queue was full (`reject`), by queue.
pub const QUEUE_REJECTED: &str = "actorbus_queue_rejected_total";
/// Counter: acks and nacks that came after their delivery timed out, by queue.
pub const QUEUE_STALE_SETTLES: &str = "actorbus_queue_stale_settles_total";
/// Counter: dead letters the DLQ failed to store, by queue.
pub const QUEUE_DLQ_FAILURES: &str = "actorbus_queue_dlq_failures_total";
/// Counter: sends whose payload a queue checked in to the claim-check store.
pub const QUEUE_CLAIM_CHECKED: &str = "actorbus_queue_claim_checked_total";
/// Counter: queue deliveries whose payload could not be claimed (dead-lettered).
pub const QUEUE_CLAIM_FAILURES: &str = "actorbus_queue_claim_failures_total";
/// Counter: durable queue commits that failed.
pub const QUEUE_STORE_ERRORS: &str = "actorbus_queue_store_errors_total";
/// Gauge: messages waiting in a queue (ready or delayed), by queue.
pub const QUEUE_DEPTH: &str = "actorbus_queue_depth_messages";
/// Gauge: deliveries not settled yet, by queue.
pub const QUEUE_IN_FLIGHT: &str = "actorbus_queue_in_flight_messages";
/// Histogram (sampled): time from enqueue to delivery, by queue.
pub const QUEUE_TIME_IN_QUEUE: &str = "actorbus_queue_time_in_queue_seconds";
/// Histogram (sampled): time from delivery to ack, by queue.
pub const QUEUE_HANDLER_LATENCY: &str = "actorbus_queue_handler_latency_seconds";

/// Gauge: workers running in a consumer pool, by pool.
pub const POOL_WORKERS: &str = "actorbus_pool_workers_workers";
/// Counter: deliveries a pool's handlers finished, by pool and outcome
/// (`ok`, `error`, `panic`, `timeout`).
pub const POOL_HANDLED: &str = "actorbus_pool_handled_total";
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

/// Gauge: queue deliveries the HTTP gateway holds for its clients (received,
/// not yet settled nor past their visibility timeout), by queue.
pub const GATEWAY_HELD_DELIVERIES: &str = "actorbus_gateway_held_deliveries_messages";
/// Counter: HTTP receipts that stopped settling anything before their
/// client settled them (the queue redelivered the message), by queue.
pub const GATEWAY_EXPIRED_RECEIPTS: &str = "actorbus_gateway_expired_receipts_total";

/// Registers help text and units for every metric, so exporters print them.
/// Call once after installing a recorder.
pub fn describe() {
    describe_counter!(REQUEST_HANDLED, Unit::Count, "Requests handled by a service, by outcome.");
    describe_counter!(REQUEST_REFUSED, Unit::Count, "Requests refused before reaching a handler, by reason.");
    describe_counter!(REQUEST_LATE_REPLIES, Unit::Count, "Replies dropped because the requester had timed out.");
    describe_histogram!(REQUEST_HANDLER_LATENCY, Unit::Seconds, "Time a service handler took (every 16th request).");
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
    describe_counter!(DLQ_DEAD_LETTERED, Unit::Count, "Dead letters stored, by source and reason.");
    describe_gauge!(DLQ_DEPTH, Unit::Count, "Entries in the dead letter queue.");
    describe_counter!(DLQ_REDRIVEN, Unit::Count, "Dead letters redriven, by target.");
    describe_counter!(DLQ_PURGED, Unit::Count, "Dead letters purged.");
    describe_counter!(DLQ_EVICTED, Unit::Count, "Dead letters discarded by a full in-memory DLQ.");
    describe_counter!(QUEUE_ENQUEUED, Unit::Count, "Messages accepted into a queue.");
    describe_counter!(QUEUE_DELIVERED, Unit::Count, "Queue deliveries made, redeliveries included.");
    describe_counter!(QUEUE_ACKED, Unit::Count, "Queue messages acked.");
    describe_counter!(QUEUE_NACKED, Unit::Count, "Queue deliveries nacked by consumers.");
    describe_counter!(QUEUE_REDELIVERED, Unit::Count, "Failed queue deliveries given another attempt.");
    describe_counter!(QUEUE_VISIBILITY_TIMEOUTS, Unit::Count, "Queue deliveries that passed their visibility timeout.");
    describe_counter!(QUEUE_EXPIRED, Unit::Count, "Queue messages whose deadline passed before a handler got them.");
    describe_counter!(QUEUE_DEAD_LETTERED, Unit::Count, "Queue messages stored in the DLQ, by reason.");
    describe_counter!(QUEUE_DROPPED, Unit::Count, "Queue messages dropped by an overflow policy.");
    describe_counter!(QUEUE_REJECTED, Unit::Count, "Sends refused because the queue was full.");
    describe_counter!(QUEUE_STALE_SETTLES, Unit::Count, "Acks and nacks that came after their delivery timed out.");
    describe_counter!(QUEUE_DLQ_FAILURES, Unit::Count, "Dead letters the DLQ failed to store.");
    describe_counter!(QUEUE_CLAIM_CHECKED, Unit::Count, "Queue sends whose payload was checked in to the claim check.");
    describe_counter!(QUEUE_CLAIM_FAILURES, Unit::Count, "Queue deliveries whose payload could not be claimed.");
    describe_counter!(QUEUE_STORE_ERRORS, Unit::Count, "Durable queue commits that failed.");
    describe_gauge!(QUEUE_DEPTH, Unit::Count, "Messages waiting in a queue.");
    describe_gauge!(QUEUE_IN_FLIGHT, Unit::Count, "Queue deliveries not settled yet.");
    describe_histogram!(QUEUE_TIME_IN_QUEUE, Unit::Seconds, "Time from enqueue to delivery (sampled).");
    describe_histogram!(QUEUE_HANDLER_LATENCY, Unit::Seconds, "Time from delivery to ack (sampled).");
    describe_gauge!(POOL_WORKERS, Unit::Count, "Workers running in a consumer pool.");
    describe_counter!(POOL_HANDLED, Unit::Count, "Deliveries a consumer pool's handlers finished, by outcome.");
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
    describe_gauge!(GATEWAY_HELD_DELIVERIES, Unit::Count, "Queue deliveries the HTTP gateway holds for clients.");
    describe_counter!(GATEWAY_EXPIRED_RECEIPTS, Unit::Count, "HTTP receipts that expired before being settled.");
}
