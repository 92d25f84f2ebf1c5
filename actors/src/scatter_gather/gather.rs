//! One scatter-gather: send, fold replies, decide when it is complete.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use serde_json::Value;

use super::target::Target;
use crate::clock;
use crate::dead_letter::{SharedHook, Undeliverable};
use crate::deadline;
use crate::envelope::{Envelope, MessageId, Timestamp};
use crate::error::FailureReason;
use crate::metrics as m;
use crate::request_reply::inherit_context;

/// What completed a gather. When one reply satisfies several conditions,
/// the first in this order is reported: predicate, first N, quorum, all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompletedBy {
    /// Every recipient replied or failed.
    All,
    /// This many recipients replied successfully.
    FirstN(usize),
    /// A quorum (this many successful replies) was reached.
    Quorum(usize),
    /// The predicate on the aggregate returned true.
    Predicate,
    /// The total timeout passed first.
    Timeout,
}

impl CompletedBy {
    /// The metric label: `all`, `first_n`, `quorum`, `predicate`, `timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompletedBy::All => "all",
            CompletedBy::FirstN(_) => "first_n",
            CompletedBy::Quorum(_) => "quorum",
            CompletedBy::Predicate => "predicate",
            CompletedBy::Timeout => "timeout",
        }
    }
}

impl fmt::Display for CompletedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of a gather.
#[derive(Clone, Debug, PartialEq)]
pub struct GatherResult<Acc> {
    /// The correlation id every recipient's request carried.
    pub id: MessageId,
    /// The folded replies.
    pub aggregate: Acc,
    /// What completed it.
    pub completed_by: CompletedBy,
    /// Recipients whose replies were folded, in arrival order.
    pub replied: Vec<String>,
    /// Recipients that had neither replied nor failed at completion, in the
    /// order they were given. Their replies, if they come, are dropped and
    /// counted as late.
    pub missing: Vec<String>,
    /// Recipients that failed (handler error, panic, unavailable, overflow),
    /// with the reason, in arrival order.
    pub failed: Vec<(String, FailureReason)>,
    /// Time from scatter to completion.
    pub elapsed: Duration,
    /// True when a timeout handed the gather to the dead letter hook.
    pub dead_lettered: bool,
}

type Fold<A, Acc> = Box<dyn FnMut(Acc, &str, A) -> Acc + Send>;
type Until<Acc> = Box<dyn Fn(&Acc) -> bool + Send>;

/// How replies are combined: a fold from an initial value, and optionally a
/// predicate that completes the gather as soon as the aggregate satisfies it.
pub struct Aggregator<A, Acc> {
    init: Acc,
    fold: Fold<A, Acc>,
    until: Option<Until<Acc>>,
}

impl<A: Send + 'static, Acc: Send + 'static> Aggregator<A, Acc> {
    /// Folds each successful reply (with its recipient's name) into `init`.
    pub fn fold(init: Acc, fold: impl FnMut(Acc, &str, A) -> Acc + Send + 'static) -> Self {
        Aggregator { init, fold: Box::new(fold), until: None }
    }

    /// Completes the gather (`CompletedBy::Predicate`) once `done` holds
    /// for the aggregate.
    pub fn until(mut self, done: impl Fn(&Acc) -> bool + Send + 'static) -> Self {
        self.until = Some(Box::new(done));
        self
    }
}

impl<A: Send + 'static> Aggregator<A, Vec<(String, A)>> {
    /// Keeps every reply with its recipient's name, in arrival order.
    pub fn collect() -> Self {
        Aggregator::fold(Vec::new(), |mut all, name, a| {
            all.push((name.to_owned(), a));
            all
        })
    }
}

/// A scatter-gather being prepared: the request, its recipients and its
/// completion conditions. Run it with [`run`](Self::run) or on a
/// [`ScatterGather`](super::ScatterGather) actor.
pub struct Gather<Q, A> {
    name: String,
    request: Envelope<Q>,
    targets: Vec<Target<Q, A>>,
    first_n: Option<usize>,
    quorum: Option<Quorum>,
    timeout: Duration,
    dead_letter: Option<(SharedHook, Value)>,
}

#[derive(Clone, Copy, Debug)]
enum Quorum {
    Majority,
    Of(usize),
}

impl<Q, A> fmt::Debug for Gather<Q, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gather")
            .field("name", &self.name)
            .field("targets", &self.targets.len())
            .field("first_n", &self.first_n)
            .field("quorum", &self.quorum)
            .field("timeout", &self.timeout)
            .finish()
    }
}

type Pending<A> = FuturesUnordered<Pin<Box<dyn Future<Output = (usize, Result<A, FailureReason>)> + Send>>>;

impl<Q: Clone + Send + 'static, A: Send + 'static> Gather<Q, A> {
    /// A gather named `name` (its metrics label) of `request`, with no
    /// recipients yet and a 5 s total timeout. Inside a handler the request
    /// joins the handler's conversation and never outlives its deadline.
    pub fn new(name: impl Into<String>, request: Q) -> Self {
        Self::from_envelope(name, Envelope::new(request))
    }

    /// As [`new`](Self::new), with an envelope of the caller's (headers,
    /// priority, correlation).
    pub fn from_envelope(name: impl Into<String>, mut request: Envelope<Q>) -> Self {
        inherit_context(&mut request);
        Gather {
            name: name.into(),
            request,
            targets: Vec::new(),
            first_n: None,
            quorum: None,
            timeout: Duration::from_secs(5),
            dead_letter: None,
        }
    }

    /// Adds a recipient.
    pub fn target(mut self, target: Target<Q, A>) -> Self {
        self.targets.push(target);
        self
    }

    /// Adds recipients.
    pub fn targets(mut self, targets: impl IntoIterator<Item = Target<Q, A>>) -> Self {
        self.targets.extend(targets);
        self
    }

    /// Recipients so far.
    pub fn target_names(&self) -> Vec<&str> {
        self.targets.iter().map(|t| t.name.as_str()).collect()
    }

    /// Completes once `n` recipients replied successfully.
    pub fn first(mut self, n: usize) -> Self {
        self.first_n = Some(n.max(1));
        self
    }

    /// Completes once a majority of the recipients (`n / 2 + 1`) replied
    /// successfully.
    pub fn quorum(mut self) -> Self {
        self.quorum = Some(Quorum::Majority);
        self
    }

    /// Completes once `k` recipients replied successfully (reported as
    /// `Quorum(k)`; the same as [`first`](Self::first) but for the label).
    pub fn quorum_of(mut self, k: usize) -> Self {
        self.quorum = Some(Quorum::Of(k.max(1)));
        self
    }

    /// The total timeout (default 5 s; also bounded by the request's own
    /// deadline). Every recipient's request carries it as its deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The correlation id the recipients will see.
    pub fn correlation_id(&self) -> MessageId {
        self.request.correlation_id
    }

    /// Scatters the request, folds the replies, and returns when the first
    /// completion condition fires.
    pub async fn run<Acc: Send + 'static>(self, aggregator: Aggregator<A, Acc>) -> GatherResult<Acc> {
        let started = clock::now();
        let Gather { name, mut request, targets, first_n, quorum, timeout, dead_letter } = self;
        let budget = request.remaining().map_or(timeout, |left| left.min(timeout));
        let deadline = started + budget;
        let own = Timestamp::now().after(budget);
        request.deadline = Some(request.deadline.map_or(own, |d| d.min(own)));
        let n = targets.len();
        let quorum = quorum.map(|q| match q {
            Quorum::Majority => n / 2 + 1,
            Quorum::Of(k) => k,
        });
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        let pending: Pending<A> = FuturesUnordered::new();
        for (i, target) in targets.into_iter().enumerate() {
            let mut env = request.clone();
            env.id = MessageId::new();
            env.causation_id = Some(request.id);
            let ask = (target.ask)(env, budget);
            pending.push(Box::pin(async move { (i, ask.await) }));
        }
        let mut pending = pending;
        let Aggregator { init, mut fold, until } = aggregator;
        let mut acc = init;
        let mut answered = vec![false; n];
        let (mut replied, mut failed) = (Vec::new(), Vec::new());
        let ok = |replied: &Vec<String>| replied.len();
        let replies =
            |outcome| metrics::counter!(m::SCATTER_REPLIES, m::LABEL_NAME => name.clone(), m::LABEL_OUTCOME => outcome);
        let completed_by = loop {
            if replied.len() + failed.len() == n {
                break CompletedBy::All;
            }
            match deadline::within(deadline, pending.next()).await {
                Err(deadline::Elapsed) => break CompletedBy::Timeout,
                // Only recipients whose own requests timed out are left.
                Ok(None) => break CompletedBy::Timeout,
                Ok(Some((_, Err(FailureReason::Timeout)))) => {
                    // The recipient's request ran out of time (the gather's
                    // deadline, or the recipient's own): it is missing, not
                    // failed.
                }
                Ok(Some((i, Ok(answer)))) => {
                    answered[i] = true;
                    acc = fold(acc, &names[i], answer);
                    replied.push(names[i].clone());
                    if until.as_ref().is_some_and(|done| done(&acc)) {
                        break CompletedBy::Predicate;
                    }
                    if let Some(k) = first_n.filter(|k| ok(&replied) >= *k) {
                        break CompletedBy::FirstN(k);
                    }
                    if let Some(k) = quorum.filter(|k| ok(&replied) >= *k) {
                        break CompletedBy::Quorum(k);
                    }
                }
                Ok(Some((i, Err(reason)))) => {
                    answered[i] = true;
                    failed.push((names[i].clone(), reason));
                }
            }
        };
        let elapsed = started.elapsed();
        replies("ok").increment(replied.len() as u64);
        replies("failed").increment(failed.len() as u64);
        let missing: Vec<String> =
            answered.iter().zip(&names).filter(|(done, _)| !**done).map(|(_, name)| name.clone()).collect();
        metrics::counter!(m::SCATTER_MISSING, m::LABEL_NAME => name.clone()).increment(missing.len() as u64);
        metrics::counter!(m::SCATTER_COMPLETED, m::LABEL_NAME => name.clone(), m::LABEL_COMPLETED_BY => completed_by.as_str())
            .increment(1);
        metrics::histogram!(m::SCATTER_LATENCY, m::LABEL_NAME => name.clone()).record(elapsed);
        if !pending.is_empty() && completed_by != CompletedBy::Timeout {
            // Keep listening until the deadline, only to count late replies.
            let late = metrics::counter!(m::SCATTER_LATE_REPLIES, m::LABEL_NAME => name.clone());
            actix_rt::spawn(async move {
                while let Ok(Some((_, outcome))) = deadline::within(deadline, pending.next()).await {
                    if !matches!(outcome, Err(FailureReason::Timeout)) {
                        late.increment(1);
                    }
                }
            });
        }
        let mut dead_lettered = false;
        if let (CompletedBy::Timeout, Some((hook, envelope))) = (completed_by, dead_letter) {
            let detail = serde_json::json!({
                "envelope": envelope,
                "replied": replied,
                "missing": missing,
                "failed": failed.iter().map(|(n, r)| serde_json::json!({"recipient": n, "reason": r.to_string()})).collect::<Vec<_>>(),
            });
            match hook
                .dead_letter(Undeliverable::new("scatter_gather", name.clone(), FailureReason::Timeout, detail))
                .await
            {
                Ok(()) => {
                    dead_lettered = true;
                    metrics::counter!(m::SCATTER_DEAD_LETTERED, m::LABEL_NAME => name.clone()).increment(1);
                }
                Err(e) => tracing::error!(gather = %name, error = %e, "dead letter hook failed"),
            }
        }
        GatherResult {
            id: request.correlation_id,
            aggregate: acc,
            completed_by,
            replied,
            missing,
            failed,
            elapsed,
            dead_lettered,
        }
    }
}

impl<Q: Clone + Serialize + Send + 'static, A: Send + 'static> Gather<Q, A> {
    /// On completion by timeout, hands the request (with the replied,
    /// missing and failed recipients) to `hook` with reason `timeout`
    /// before returning.
    pub fn dead_letter_on_timeout(mut self, hook: SharedHook) -> Self {
        let envelope = serde_json::to_value(&self.request)
            .unwrap_or_else(|e| serde_json::json!({ "unserializable": e.to_string() }));
        self.dead_letter = Some((hook, envelope));
        self
    }
}
