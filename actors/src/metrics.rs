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
/// Requests waiting in a service's mailbox.
pub const REQUEST_MAILBOX_DEPTH: &str = "actorbus_request_reply_mailbox_depth_messages";

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

/// Registers help text and units for every metric, so exporters print them.
/// Call once after installing a recorder.
pub fn describe() {
    describe_counter!(REQUEST_HANDLED, Unit::Count, "Requests handled by a service, by outcome.");
    describe_counter!(REQUEST_REFUSED, Unit::Count, "Requests refused before reaching a handler, by reason.");
    describe_counter!(REQUEST_LATE_REPLIES, Unit::Count, "Replies dropped because the requester had timed out.");
    describe_histogram!(REQUEST_HANDLER_LATENCY, Unit::Seconds, "Time a service handler took.");
    describe_gauge!(REQUEST_MAILBOX_DEPTH, Unit::Count, "Requests waiting in a service mailbox.");
    describe_counter!(SUPERVISION_PANICS, Unit::Count, "Handler panics caught by a panic boundary.");
    describe_counter!(SUPERVISION_RESTARTS, Unit::Count, "Actors rebuilt from their factory.");
    describe_counter!(JOBS_SUBMITTED, Unit::Count, "Jobs submitted, by kind.");
    describe_counter!(JOBS_FINISHED, Unit::Count, "Jobs that ended, by kind and outcome.");
    describe_gauge!(JOBS_BY_STATE, Unit::Count, "Jobs known to the tracker, by state.");
    describe_counter!(SUPERVISION_ESCALATIONS, Unit::Count, "Supervisors that exceeded their restart intensity.");
}
