//! Event store: optimistic concurrency, idempotency, group commit, reads,
//! catch-up subscriptions, aggregates and snapshots (DESIGN §6.5).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use actix::Actor;
use actorbus::actors::envelope::Timestamp;
use actorbus::actors::event_store::*;
use actorbus::actors::store::DataDir;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A SQLite store in a fresh directory (kept alive by the returned guard).
fn sqlite_store(config: EventStoreConfig) -> (tempfile::TempDir, EventStoreHandle) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EventStore::open(&DataDir::new(dir.path()), config).expect("open store");
    (dir, store)
}

/// Both backends, so the same rules are checked on each.
fn both_backends() -> Vec<(Option<tempfile::TempDir>, EventStoreHandle)> {
    let (dir, sqlite) = sqlite_store(EventStoreConfig::named("sqlite"));
    let memory = EventStore::in_memory(EventStoreConfig::named("memory")).expect("memory store");
    vec![(Some(dir), sqlite), (None, memory)]
}

fn ev(n: u64) -> NewEvent {
    NewEvent::new("Added", json!({ "n": n }))
}

fn count_rows(dir: &tempfile::TempDir) -> i64 {
    let conn = rusqlite::Connection::open(dir.path().join("events.sqlite3")).expect("open file");
    conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).expect("count")
}

#[actix_rt::test]
async fn concurrent_appenders_with_the_same_expected_version_exactly_one_wins() {
    for (_dir, store) in both_backends() {
        store.append("acct", ExpectedVersion::NoStream, vec![ev(0)]).await.unwrap();
        let attempts = (0..16u64).map(|i| {
            let store = store.clone();
            async move {
                let event = ev(100 + i).with_header("writer", i.to_string());
                store.append("acct", ExpectedVersion::Exact(0), vec![event]).await
            }
        });
        let results = join_all(attempts).await;
        let winners: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
        assert_eq!(winners.len(), 1, "{}: {results:?}", store.name());
        for (i, r) in results.iter().enumerate() {
            if i != winners[0] {
                match r {
                    Err(AppendError::WrongExpectedVersion { stream, expected, actual }) => {
                        assert_eq!(stream, "acct");
                        assert_eq!(*expected, ExpectedVersion::Exact(0));
                        assert_eq!(*actual, Some(1));
                    }
                    other => panic!("{}: expected a conflict, got {other:?}", store.name()),
                }
            }
        }
        let events = store.read_stream("acct", 0, Direction::Forward, 100).await.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1].metadata.headers.get("writer"),
            Some(&winners[0].to_string()),
            "the stored event is the winner's"
        );
    }
}

#[actix_rt::test]
async fn a_retried_append_with_the_same_event_ids_writes_nothing_twice() {
    for (dir, store) in both_backends() {
        let request = AppendRequest::new("order-1", ExpectedVersion::NoStream, vec![ev(1), ev(2), ev(3)]);
        let first = store.append_request(request.clone()).await.unwrap();
        assert_eq!(first.version, Some(2));
        assert_eq!(first.positions, Some(0..=2));
        assert!(first.written);

        // The ack was lost; the client retries the very same request.
        let retry = store.append_request(request.clone()).await.unwrap();
        assert_eq!(retry.version, Some(2));
        assert_eq!(retry.positions, Some(0..=2));
        assert!(!retry.written, "{}", store.name());

        // Still idempotent once the stream has moved on.
        store.append("order-1", ExpectedVersion::Exact(2), vec![ev(4)]).await.unwrap();
        let late_retry = store.append_request(request.clone()).await.unwrap();
        assert!(!late_retry.written);
        assert_eq!(late_retry.version, Some(2));

        // Two copies of one request in the same group commit: one writes.
        let twin = AppendRequest::new("order-2", ExpectedVersion::NoStream, vec![ev(5)]);
        let (a, b) = futures::join!(store.append_request(twin.clone()), store.append_request(twin.clone()));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(u8::from(a.written) + u8::from(b.written), 1);
        assert_eq!(a.positions, b.positions);

        // Reusing one stored id beside a new one is refused, not half-written.
        let mixed = AppendRequest::new("order-1", ExpectedVersion::Any, vec![request.events[0].clone(), ev(6)]);
        assert!(matches!(store.append_request(mixed).await, Err(AppendError::DuplicateEventId { version: 0, .. })));
        // The same ids in another stream are refused too.
        let elsewhere = AppendRequest { stream: "order-9".into(), ..request.clone() };
        assert!(matches!(store.append_request(elsewhere).await, Err(AppendError::DuplicateEventId { .. })));

        assert_eq!(store.end_position().await.unwrap(), 5);
        let stored = store.read_stream("order-1", 0, Direction::Forward, 10).await.unwrap();
        let ids: Vec<_> = stored.iter().take(3).map(|e| Some(e.id)).collect();
        let sent: Vec<_> = request.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, sent);
        assert_eq!(stored.len(), 4);
        if let Some(dir) = &dir {
            assert_eq!(count_rows(dir), 5, "rows in the SQLite file");
        }
    }
}

#[actix_rt::test]
async fn expected_version_variants_and_invalid_appends() {
    for (_dir, store) in both_backends() {
        use ExpectedVersion::*;
        let conflict = |r: Result<AppendResult, AppendError>, actual: Option<u64>| match r {
            Err(AppendError::WrongExpectedVersion { actual: a, .. }) => assert_eq!(a, actual),
            other => panic!("expected a conflict, got {other:?}"),
        };
        conflict(store.append("s", StreamExists, vec![ev(0)]).await, None);
        conflict(store.append("s", Exact(0), vec![ev(0)]).await, None);
        assert_eq!(store.append("s", NoStream, vec![ev(0)]).await.unwrap().version, Some(0));
        conflict(store.append("s", NoStream, vec![ev(1)]).await, Some(0));
        conflict(store.append("s", Exact(5), vec![ev(1)]).await, Some(0));
        assert_eq!(store.append("s", StreamExists, vec![ev(1)]).await.unwrap().version, Some(1));
        assert_eq!(store.append("s", Any, vec![ev(2), ev(3)]).await.unwrap().version, Some(3));
        // An empty append checks the version and writes nothing.
        let empty = store.append("s", Exact(3), vec![]).await.unwrap();
        assert_eq!((empty.version, empty.written), (Some(3), false));
        for bad in ["", "$all", "$system"] {
            assert!(matches!(store.append(bad, Any, vec![ev(0)]).await, Err(AppendError::InvalidRequest(_))));
        }
        assert_eq!(store.stream_version("s").await.unwrap(), Some(3));
        assert_eq!(store.stream_version("nope").await.unwrap(), None);
        assert_eq!(store.end_position().await.unwrap(), 4);
    }
}

#[actix_rt::test]
async fn concurrent_appends_share_commits() {
    let (_dir, store) = sqlite_store(EventStoreConfig::default());
    let appends = (0..64u64).map(|i| {
        let store = store.clone();
        async move { store.append(format!("w-{i}"), ExpectedVersion::NoStream, vec![ev(i)]).await }
    });
    for r in join_all(appends).await {
        r.unwrap();
    }
    let all = store.read_all(0, Direction::Forward, 100).await.unwrap();
    assert_eq!(all.len(), 64);
    // Every event of one commit carries the commit's timestamp; 64
    // individually committed appends would show 64 distinct ones.
    let commits: BTreeSet<Timestamp> = all.iter().map(|e| e.timestamp).collect();
    assert!(commits.len() <= 8, "64 concurrent appends took {} commits", commits.len());
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (0..64).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn appends_beyond_a_full_queue_wait_for_room_instead_of_failing() {
    // max_batch 1: an append queue of 32 (twice its floor of 16), one
    // append per commit.
    let (_dir, store) = sqlite_store(EventStoreConfig { max_batch: 1, ..EventStoreConfig::default() });
    // Sent from one task before the actor runs: all but 32 find it full.
    let appends = (0..100u64).map(|i| store.append(format!("s-{i}"), ExpectedVersion::NoStream, vec![ev(i)]));
    for r in join_all(appends).await {
        r.unwrap();
    }
    assert_eq!(store.read_all(0, Direction::Forward, 200).await.unwrap().len(), 100);
}

#[actix_rt::test]
async fn reads_forward_backward_and_across_all() {
    for (_dir, store) in both_backends() {
        for i in 0..6u64 {
            let stream = if i % 2 == 0 { "a" } else { "b" };
            store.append(stream, ExpectedVersion::Any, vec![ev(i)]).await.unwrap();
        }
        let versions = |es: &[RecordedEvent]| es.iter().map(|e| e.version).collect::<Vec<_>>();
        let positions = |es: &[RecordedEvent]| es.iter().map(|e| e.position).collect::<Vec<_>>();
        let fwd = store.read_stream("a", 1, Direction::Forward, 10).await.unwrap();
        assert_eq!(versions(&fwd), [1, 2]);
        assert_eq!(positions(&fwd), [2, 4]);
        let back = store.read_stream("b", u64::MAX, Direction::Backward, 2).await.unwrap();
        assert_eq!(versions(&back), [2, 1]);
        let back_from = store.read_stream("b", 1, Direction::Backward, 10).await.unwrap();
        assert_eq!(versions(&back_from), [1, 0]);
        let all = store.read_all(2, Direction::Forward, 3).await.unwrap();
        assert_eq!(positions(&all), [2, 3, 4]);
        assert_eq!(all[0].decode::<serde_json::Value>().unwrap(), json!({"n": 2}));
        assert_eq!(all[0].event_type, "Added");
        let all_back = store.read_all(u64::MAX, Direction::Backward, 2).await.unwrap();
        assert_eq!(positions(&all_back), [5, 4]);
        assert!(store.read_stream("missing", 0, Direction::Forward, 10).await.unwrap().is_empty());
        // The gateway's read shape.
        let shape = serde_json::to_value(&all[0]).unwrap();
        for field in ["id", "stream", "version", "position", "type", "data", "metadata", "timestamp"] {
            assert!(shape.get(field).is_some(), "missing {field}: {shape}");
        }
    }
}

#[actix_rt::test]
async fn metadata_round_trips() {
    for (_dir, store) in both_backends() {
        let cause = actorbus::actors::envelope::Envelope::new("cmd");
        let event = ev(1).with_metadata(EventMetadata::caused_by(&cause)).with_header("tenant", "acme");
        store.append("m", ExpectedVersion::Any, vec![event]).await.unwrap();
        let stored = store.read_stream("m", 0, Direction::Forward, 1).await.unwrap();
        let meta = &stored[0].metadata;
        assert_eq!(meta.correlation_id, Some(cause.correlation_id));
        assert_eq!(meta.causation_id, Some(cause.id));
        assert_eq!(meta.headers.get("tenant").map(String::as_str), Some("acme"));
    }
}

/// Collects `n` events from a subscription, failing after a generous timeout.
async fn collect(sub: &mut Subscription, n: usize, stall_at: Option<(usize, &dyn Fn() -> bool)>) -> Vec<RecordedEvent> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let next = actix_rt::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("subscription stalled")
            .expect("subscription ended")
            .expect("subscription failed");
        got.push(next);
        if let Some((at, until)) = stall_at.filter(|(at, _)| *at == got.len()) {
            // A consumer that stalls while commits pour in: the store must
            // drop it from the live set and let it catch up from storage
            // instead of buffering for it. It stalls until that happened (not
            // for a fixed time, which a slow disk can outlast).
            let waited = actix_rt::time::timeout(Duration::from_secs(30), async {
                while !until() {
                    actix_rt::time::sleep(Duration::from_millis(5)).await;
                }
            });
            waited.await.unwrap_or_else(|_| panic!("the stall at event {at} never ended"));
        }
    }
    got
}

#[actix_rt::test]
async fn catch_up_subscription_during_10k_appends_gets_each_event_once_in_order() {
    // Small buffers so that live delivery overflows and falls back.
    let config =
        EventStoreConfig { live_buffer: 4, subscription_buffer: 32, read_batch: 256, ..EventStoreConfig::default() };
    let (_dir, store) = sqlite_store(config);
    const HISTORY: u64 = 500;
    for i in 0..HISTORY / 10 {
        store.append("history", ExpectedVersion::Any, (0..10).map(|j| ev(i * 10 + j)).collect()).await.unwrap();
    }
    let mut fast = store.subscribe_all_named("fast", 0);
    let mut slow = store.subscribe_all(0);
    let mut one_stream = store.subscribe_stream("live-3", 0);
    // The slow subscriber is live (history delivered) before the flood.
    let slow_history = collect(&mut slow, HISTORY as usize, None).await;
    let fallbacks_before = store.live_fallbacks();

    // 8 writers x 125 appends x 10 events = 10,000 events, while the
    // subscriptions are catching up.
    let writers = (0..8u64).map(|w| {
        let store = store.clone();
        actix_rt::spawn(async move {
            for a in 0..125u64 {
                let events = (0..10).map(|j| ev(a * 10 + j)).collect();
                let expected = if a == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(a * 10 - 1) };
                store.append(format!("live-{w}"), expected, events).await.unwrap();
            }
        })
    });
    let writers: Vec<_> = writers.collect();
    let total = (HISTORY + 10_000) as usize;
    let overflowed = || store.live_fallbacks() > fallbacks_before;
    let (fast_got, slow_got, stream_got) = futures::join!(
        collect(&mut fast, total, None),
        collect(&mut slow, total - HISTORY as usize, Some((1, &overflowed))),
        collect(&mut one_stream, 1250, None),
    );
    for w in writers {
        w.await.unwrap();
    }
    assert!(store.live_fallbacks() > fallbacks_before, "the stalled subscriber overflowed its live buffer");
    let slow_got: Vec<RecordedEvent> = slow_history.into_iter().chain(slow_got).collect();
    for got in [&fast_got, &slow_got] {
        let positions: Vec<u64> = got.iter().map(|e| e.position).collect();
        assert_eq!(positions, (0..total as u64).collect::<Vec<_>>());
        let ids: HashSet<_> = got.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), total, "no event twice");
        // Per stream, versions arrive in order without gaps.
        let mut next_version: BTreeMap<&str, u64> = BTreeMap::new();
        for e in got.iter() {
            let next = next_version.entry(e.stream.as_str()).or_default();
            assert_eq!(e.version, *next, "{} out of order", e.stream);
            *next += 1;
        }
    }
    let versions: Vec<u64> = stream_got.iter().map(|e| e.version).collect();
    assert_eq!(versions, (0..1250).collect::<Vec<_>>());
    assert!(stream_got.iter().all(|e| e.stream == "live-3"));

    // Caught up: the next commit arrives live.
    store.append("after", ExpectedVersion::NoStream, vec![ev(0)]).await.unwrap();
    let after = collect(&mut fast, 1, None).await;
    assert_eq!(after[0].position, total as u64);
    assert_eq!(after[0].stream, "after");
}

// ---------------------------------------------------------------------------
// Aggregates and snapshots
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TallyEvent {
    Added(i64),
    Doubled,
}

impl DomainEvent for TallyEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TallyEvent::Added(_) => "Added",
            TallyEvent::Doubled => "Doubled",
        }
    }
}

/// Order-sensitive on purpose (add then double differs from double then
/// add), so a replay that skips, repeats or reorders events shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    value: i64,
    events: u64,
}

enum TallyCommand {
    Add(i64),
    Double,
}

impl Aggregate for Tally {
    type Event = TallyEvent;
    type Command = TallyCommand;
    type Error = String;

    fn apply(&mut self, event: &TallyEvent) {
        match event {
            TallyEvent::Added(n) => self.value += n,
            TallyEvent::Doubled => self.value *= 2,
        }
        self.events += 1;
    }

    fn handle(&self, command: TallyCommand) -> Result<Vec<TallyEvent>, String> {
        match command {
            TallyCommand::Add(0) => Err("adding zero".into()),
            TallyCommand::Add(n) => Ok(vec![TallyEvent::Added(n)]),
            TallyCommand::Double if self.value.abs() > 1 << 40 => Err("too large".into()),
            TallyCommand::Double => Ok(vec![TallyEvent::Doubled]),
        }
    }
}

fn fold(events: &[RecordedEvent]) -> Tally {
    let mut t = Tally::default();
    for e in events {
        t.apply(&e.decode::<TallyEvent>().unwrap());
    }
    t
}

#[actix_rt::test]
async fn state_at_version_and_time_equals_a_fold_of_the_first_events() {
    for (_dir, store) in both_backends() {
        let tally = AggregateActor::<Tally>::new(store.clone(), "tally-1", SnapshotPolicy::every(5)).start();
        for i in 0..30i64 {
            let command = if i % 4 == 3 { TallyCommand::Double } else { TallyCommand::Add(i - 7) };
            let done = tally.send(Execute::new(command)).await.unwrap().unwrap();
            assert_eq!(done.version, Some(i as u64));
            // Distinct commit times, so "as of time T" picks a clear prefix.
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
        // A refused command writes nothing.
        assert!(matches!(tally.send(Execute::new(TallyCommand::Add(0))).await.unwrap(), Err(EntityError::Rejected(_))));
        let events = store.read_stream("tally-1", 0, Direction::Forward, 100).await.unwrap();
        assert_eq!(events.len(), 30);

        for n in 0..30u64 {
            let expected = fold(&events[..=n as usize]);
            let with_snap = load_aggregate::<Tally>(&store, "tally-1", Upto::Version(n), true).await.unwrap();
            let from_zero = load_aggregate::<Tally>(&store, "tally-1", Upto::Version(n), false).await.unwrap();
            assert_eq!(with_snap.state, expected, "at version {n}");
            assert_eq!(from_zero.state, expected, "at version {n}");
            assert_eq!(with_snap.version, Some(n));
            assert_eq!(from_zero.replayed, n + 1);
            // Snapshots at versions 4, 9, 14, …: the latest at or before n.
            let snap = (n + 1) / 5 * 5;
            let snap = snap.checked_sub(1);
            assert_eq!(with_snap.snapshot_version, snap, "at version {n}");
            let replayed = match snap {
                Some(s) => n - s,
                None => n + 1,
            };
            assert_eq!(with_snap.replayed, replayed, "at version {n}");

            let at = events[n as usize].timestamp;
            let by_time = load_aggregate::<Tally>(&store, "tally-1", Upto::Time(at), true).await.unwrap();
            assert_eq!(by_time.state, expected, "at the time of version {n}");
            assert_eq!(by_time.version, Some(n));
        }
        let before = Timestamp(events[0].timestamp.0 - 1);
        let nothing = load_aggregate::<Tally>(&store, "tally-1", Upto::Time(before), true).await.unwrap();
        assert_eq!((nothing.state, nothing.version), (Tally::default(), None));

        // Replay from the latest snapshot equals replay from zero.
        let latest = load_aggregate::<Tally>(&store, "tally-1", Upto::Latest, true).await.unwrap();
        let zero = load_aggregate::<Tally>(&store, "tally-1", Upto::Latest, false).await.unwrap();
        assert_eq!(latest.state, zero.state);
        assert_eq!(latest.state, fold(&events));
        assert_eq!((latest.snapshot_version, latest.replayed), (Some(29), 0));
        assert_eq!(zero.replayed, 30);

        // A fresh actor (a restart) rebuilds the same state.
        let (live, version) = tally.send(GetState::new()).await.unwrap().unwrap();
        let restarted = AggregateActor::<Tally>::new(store.clone(), "tally-1", SnapshotPolicy::never()).start();
        let (state, v) = restarted.send(GetState::new()).await.unwrap().unwrap();
        assert_eq!((&state, v), (&live, version));
        assert_eq!(state.events, 30);
    }
}

#[actix_rt::test]
async fn two_aggregate_actors_on_one_stream_conflict_instead_of_both_writing() {
    for (_dir, store) in both_backends() {
        let a = AggregateActor::<Tally>::new(store.clone(), "shared", SnapshotPolicy::never()).start();
        let b = AggregateActor::<Tally>::new(store.clone(), "shared", SnapshotPolicy::never()).start();
        a.send(Execute::new(TallyCommand::Add(1))).await.unwrap().unwrap();
        // b loads version 0 …
        b.send(GetState::new()).await.unwrap().unwrap();
        // … a moves on to version 1 …
        a.send(Execute::new(TallyCommand::Add(2))).await.unwrap().unwrap();
        // … so b's command, decided on version 0, must not be written.
        let r = b.send(Execute::new(TallyCommand::Double)).await.unwrap();
        assert!(matches!(r, Err(EntityError::Conflict(_))), "{r:?}");
        // b reloaded; the retry is decided on the current state.
        let done = b.send(Execute::new(TallyCommand::Double)).await.unwrap().unwrap();
        assert_eq!(done.version, Some(2));
        let (state, _) = b.send(GetState::new()).await.unwrap().unwrap();
        assert_eq!(state.value, 6, "(1 + 2) * 2");
        assert_eq!(store.stream_version("shared").await.unwrap(), Some(2));
    }
}

// ---------------------------------------------------------------------------
// Projections (in process; the kill -9 version is in event_store_crash.rs)
// ---------------------------------------------------------------------------

struct SumByStream;

impl Projection for SumByStream {
    type State = BTreeMap<String, i64>;

    fn apply(&mut self, state: &mut Self::State, event: &RecordedEvent) {
        let n = event.data.get("n").and_then(|v| v.as_i64()).unwrap_or(0);
        *state.entry(event.stream.clone()).or_default() += n;
    }
}

async fn wait_for_position(
    actor: &actix::Addr<ProjectionActor<SumByStream>>,
    position: u64,
) -> ProjectionStatus<BTreeMap<String, i64>> {
    for _ in 0..3000 {
        let status = actor.send(GetProjection::new()).await.unwrap();
        if status.position >= position {
            return status;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("projection did not reach {position}");
}

fn sums_config() -> ProjectionConfig {
    ProjectionConfig { name: "sums".into(), checkpoint_every: 50, checkpoint_interval: None }
}

#[test]
fn a_projection_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    // First life, in its own actix system so that it is gone for good when
    // the thread ends.
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async {
            let store = EventStore::open(&DataDir::new(&path), EventStoreConfig::default()).unwrap();
            for i in 0..120u64 {
                store.append(format!("s-{}", i % 3), ExpectedVersion::Any, vec![ev(i)]).await.unwrap();
            }
            let first = ProjectionActor::new(store.clone(), SumByStream, sums_config()).start();
            let status = wait_for_position(&first, 120).await;
            assert_eq!(status.resumed_from, 0);
            // Saved by count only (every 50 events, or at once when 50 more
            // arrived during a save): wait for the second one.
            for _ in 0..400 {
                if status_checkpoint(&store).await >= 100 {
                    break;
                }
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
        });
    })
    .join()
    .unwrap();

    actix_rt::System::new().block_on(async {
        let store = EventStore::open(&DataDir::new(dir.path()), EventStoreConfig::named("reopened")).unwrap();
        let saved = status_checkpoint(&store).await;
        assert!((100..=120).contains(&saved), "checkpoint at {saved}");
        let second = ProjectionActor::new(store.clone(), SumByStream, sums_config()).start();
        store.append("s-0", ExpectedVersion::Any, vec![ev(1000)]).await.unwrap();
        let status = wait_for_position(&second, 121).await;
        assert_eq!(status.resumed_from, saved);
        let mut expected = BTreeMap::new();
        for e in store.read_all(0, Direction::Forward, 1000).await.unwrap() {
            SumByStream.apply(&mut expected, &e);
        }
        assert_eq!(status.state, expected);
        assert_eq!(expected.values().sum::<i64>(), (0..120).sum::<i64>() + 1000);
    });
}

async fn status_checkpoint(store: &EventStoreHandle) -> u64 {
    store.load_checkpoint("sums").await.unwrap().map_or(0, |c| c.position)
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

#[actix_rt::test]
async fn max_count_hides_all_but_the_last_events_of_a_stream() {
    use actorbus::actors::store::Direction::{Backward, Forward};
    for (_dir, store) in both_backends() {
        store.append("sensor", ExpectedVersion::NoStream, (0..10).map(ev).collect()).await.unwrap();
        store.append("other", ExpectedVersion::NoStream, vec![ev(0)]).await.unwrap();
        assert_eq!(store.stream_metadata("sensor").await.unwrap(), StreamMetadata::default());
        store.set_stream_metadata("sensor", StreamMetadata::default().max_count(3)).await.unwrap();
        assert_eq!(store.stream_metadata("sensor").await.unwrap().max_count, Some(3));

        assert_eq!(versions(&store.read_stream("sensor", 0, Forward, 100).await.unwrap()), [7, 8, 9]);
        assert_eq!(versions(&store.read_stream("sensor", 8, Forward, 100).await.unwrap()), [8, 9]);
        assert_eq!(versions(&store.read_stream("sensor", u64::MAX, Backward, 100).await.unwrap()), [9, 8, 7]);
        assert_eq!(versions(&store.read_stream("sensor", 0, Forward, 2).await.unwrap()), [7, 8]);
        assert_eq!(versions(&store.read_stream("other", 0, Forward, 100).await.unwrap()), [0], "only `sensor`");

        // Versions keep counting; the window moves.
        let r = store.append("sensor", ExpectedVersion::Exact(9), vec![ev(10)]).await.unwrap();
        assert_eq!(r.version, Some(10));
        assert_eq!(versions(&store.read_stream("sensor", 0, Forward, 100).await.unwrap()), [8, 9, 10]);
        let mut sub = store.subscribe_stream("sensor", 0);
        let first = actix_rt::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(first.version, 8, "a catch-up subscription starts at the window");

        // `$all` keeps everything: 11 + 1 events and one metadata event.
        let all = store.read_all(0, Forward, 100).await.unwrap();
        assert_eq!(all.iter().filter(|e| e.stream == "sensor").count(), 11);
        assert_eq!(all.iter().filter(|e| e.stream == "$$sensor" && e.event_type == "$metadata").count(), 1);
        assert_eq!(all.iter().find(|e| e.stream == "$$sensor").unwrap().data, json!({"$maxCount": 3}));

        // The last metadata event is in force.
        store.set_stream_metadata("sensor", StreamMetadata::default()).await.unwrap();
        assert_eq!(store.read_stream("sensor", 0, Forward, 100).await.unwrap().len(), 11);
    }
}

#[actix_rt::test]
async fn max_age_hides_events_older_than_the_age() {
    use actorbus::actors::store::Direction::{Backward, Forward};
    for (_dir, store) in both_backends() {
        store.append("clicks", ExpectedVersion::NoStream, (0..3).map(ev).collect()).await.unwrap();
        // Wide margins: the fresh events must still be fresh at the reads
        // below on a loaded machine, where a commit can take a while.
        actix_rt::time::sleep(Duration::from_millis(1500)).await;
        store.append("clicks", ExpectedVersion::Exact(2), (3..5).map(ev).collect()).await.unwrap();
        let meta = StreamMetadata::default().max_age(Duration::from_millis(1000));
        store.set_stream_metadata("clicks", meta).await.unwrap();
        assert_eq!(store.stream_metadata("clicks").await.unwrap(), meta);
        // A page of old events alone is skipped, not returned empty.
        assert_eq!(versions(&store.read_stream("clicks", 0, Forward, 2).await.unwrap()), [3, 4]);
        assert_eq!(versions(&store.read_stream("clicks", 0, Forward, 100).await.unwrap()), [3, 4]);
        assert_eq!(versions(&store.read_stream("clicks", u64::MAX, Backward, 100).await.unwrap()), [4, 3]);
        actix_rt::time::sleep(Duration::from_millis(1100)).await;
        assert!(store.read_stream("clicks", 0, Forward, 100).await.unwrap().is_empty(), "all aged out");
        assert_eq!(store.stream_version("clicks").await.unwrap(), Some(4), "nothing was deleted");
    }
}

#[actix_rt::test]
async fn metadata_that_does_not_parse_hides_nothing_and_bad_names_are_refused() {
    for (_dir, store) in both_backends() {
        store.append("s", ExpectedVersion::NoStream, (0..4).map(ev).collect()).await.unwrap();
        let junk = NewEvent::new("$metadata", json!({"$maxCount": "three"}));
        store.append("$$s", ExpectedVersion::Any, vec![junk]).await.unwrap();
        assert_eq!(store.stream_metadata("s").await.unwrap(), StreamMetadata::default());
        assert_eq!(store.read_stream("s", 0, actorbus::actors::store::Direction::Forward, 100).await.unwrap().len(), 4);
        for name in ["$$", "$$$all", "$$$$s"] {
            let r = store.append(name, ExpectedVersion::Any, vec![ev(0)]).await;
            assert!(matches!(r, Err(AppendError::InvalidRequest(_))), "{name}: {r:?}");
        }
    }
}

/// A memory log whose writer fails every batch while `failing` is set, as a
/// broken disk would.
struct Failing {
    log: actorbus::actors::store::MemoryEventLog,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

struct FailingWriter {
    writer: Box<dyn actorbus::actors::store::EventWriter>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl actorbus::actors::store::EventLog for Failing {
    fn writer(&self) -> Result<Box<dyn actorbus::actors::store::EventWriter>, StoreError> {
        Ok(Box::new(FailingWriter { writer: self.log.writer()?, failing: self.failing.clone() }))
    }
    fn reader(&self) -> Result<Box<dyn actorbus::actors::store::EventReader>, StoreError> {
        self.log.reader()
    }
}

impl actorbus::actors::store::EventWriter for FailingWriter {
    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<Result<actorbus::actors::store::AppendOutcome, AppendError>>, StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Backend("the disk is on fire".into()));
        }
        self.writer.append_batch(batch)
    }
    fn save_snapshot(&mut self, snapshot: &actorbus::actors::store::Snapshot) -> Result<(), StoreError> {
        self.writer.save_snapshot(snapshot)
    }
    fn save_checkpoint(&mut self, checkpoint: &actorbus::actors::store::Checkpoint) -> Result<(), StoreError> {
        self.writer.save_checkpoint(checkpoint)
    }
}

#[actix_rt::test]
async fn a_failed_commit_answers_every_appender_with_the_error_and_the_store_goes_on() {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let log = Failing { log: actorbus::actors::store::MemoryEventLog::new(), failing: failing.clone() };
    let store = EventStore::start(log, EventStoreConfig::named("failing")).expect("start");
    // Concurrent appends: several batches, every one of them failing.
    let appends = (0..40u64).map(|i| store.append(format!("s-{}", i % 4), ExpectedVersion::Any, vec![ev(i)]));
    for result in join_all(appends).await {
        match result {
            Err(AppendError::Store(StoreError::Backend(m))) => assert_eq!(m, "the disk is on fire"),
            other => panic!("expected the storage error, got {other:?}"),
        }
    }
    assert_eq!(store.end_position().await.unwrap(), 0);
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let written = store.append("s-0", ExpectedVersion::NoStream, vec![ev(99)]).await.expect("append");
    assert_eq!(written.positions, Some(0..=0));
}

#[actix_rt::test]
async fn an_answered_append_is_readable_published_and_delivered_without_gaps() {
    let (_dir, store) = sqlite_store(EventStoreConfig::named("answers"));
    let mut from_start = store.subscribe_all(0);
    for round in 0..20u64 {
        // 8 appenders at a time, so answers come in batches.
        let appends = (0..8u64).map(|w| store.append(format!("s-{w}"), ExpectedVersion::Any, vec![ev(round * 8 + w)]));
        for result in join_all(appends).await {
            let position = *result.expect("append").positions.expect("written").start();
            // Answered: committed, visible to a reader, counted in the
            // published end, and where a subscription from it starts.
            assert!(store.published_end() > position);
            let mut from_here = store.subscribe_all(position);
            let first = tokio::time::timeout(Duration::from_secs(10), from_here.next()).await;
            assert_eq!(first.expect("in time").expect("an event").expect("no error").position, position);
        }
    }
    let all = collect(&mut from_start, 160, None).await;
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (0..160).collect::<Vec<_>>());
}
