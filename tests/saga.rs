//! Sagas: reverse compensation, pivot semantics, retries, timeouts,
//! compensations that keep failing, recovery from the log, concurrency.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actorbus::actors::envelope::Timestamp;
use actorbus::actors::saga::*;
use actorbus::Bus;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What the steps did, in order: `"do:<step>#<attempt>"`, `"undo:<step>"`.
#[derive(Clone, Default)]
struct Trace(Arc<Mutex<Vec<String>>>);

impl Trace {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Data {
    done: Vec<String>,
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

/// A compensable step that records itself; its compensation removes it.
fn compensable(saga: SagaDefinition<Data>, name: &'static str, trace: &Trace) -> SagaDefinition<Data> {
    let (t1, t2) = (trace.clone(), trace.clone());
    saga.step(name, move |mut d: Data, cx| {
        t1.push(format!("do:{name}#{}", cx.attempt));
        async move {
            d.done.push(name.into());
            Ok(d)
        }
    })
    .compensate(move |mut d: Data, _| {
        t2.push(format!("undo:{name}"));
        async move {
            d.done.retain(|s| s != name);
            Ok(d)
        }
    })
}

fn records(state: &SagaState) -> Vec<String> {
    state
        .history
        .iter()
        .map(|e| match &e.record {
            SagaRecord::Started { .. } => "started".to_string(),
            SagaRecord::StepStarted { step, attempt } => format!("step_started {} #{attempt}", state.steps[*step]),
            SagaRecord::StepCompleted { step, .. } => format!("step_completed {}", state.steps[*step]),
            SagaRecord::StepFailed { step, attempt, .. } => format!("step_failed {} #{attempt}", state.steps[*step]),
            SagaRecord::Compensating { .. } => "compensating".to_string(),
            SagaRecord::CompensationStarted { step, .. } => format!("compensation_started {}", state.steps[*step]),
            SagaRecord::CompensationCompleted { step, .. } => format!("compensation_completed {}", state.steps[*step]),
            SagaRecord::CompensationFailed { step, .. } => format!("compensation_failed {}", state.steps[*step]),
            SagaRecord::Completed => "completed".to_string(),
            SagaRecord::Compensated => "compensated".to_string(),
            SagaRecord::NeedsAttention { .. } => "needs_attention".to_string(),
        })
        .collect()
}

#[test]
fn a_failure_at_step_3_compensates_step_2_then_step_1() {
    run(async {
        let trace = Trace::default();
        let mut saga = SagaDefinition::<Data>::new("four");
        saga = compensable(saga, "s1", &trace);
        saga = compensable(saga, "s2", &trace);
        let t = trace.clone();
        saga = saga
            .step("s3", move |_d: Data, _| {
                t.push("do:s3".into());
                async { Err(StepError::permanent("out of stock")) }
            })
            .compensate(|d: Data, _| async move { panic!("a step that failed is not compensated: {d:?}") });
        saga = compensable(saga, "s4", &trace);
        let sagas = SagaCoordinator::builder().definition(saga).start().await.unwrap();

        let outcome = sagas.saga::<Data>("four").unwrap().run(Data::default()).await.unwrap();
        assert_eq!(outcome.status, SagaStatus::Compensated);
        assert_eq!(outcome.error.as_deref(), Some("out of stock"));
        assert_eq!(outcome.data, Data::default(), "both completed steps undone");
        assert_eq!(trace.take(), ["do:s1#1", "do:s2#1", "do:s3", "undo:s2", "undo:s1"]);

        let state = sagas.status(outcome.id).await.unwrap().expect("the log knows the saga");
        assert_eq!(state.status, SagaStatus::Compensated);
        assert_eq!(
            records(&state),
            [
                "started",
                "step_started s1 #1",
                "step_completed s1",
                "step_started s2 #1",
                "step_completed s2",
                "step_started s3 #1",
                "step_failed s3 #1",
                "compensating",
                "compensation_started s2",
                "compensation_completed s2",
                "compensation_started s1",
                "compensation_completed s1",
                "compensated",
            ]
        );
    });
}

#[test]
fn a_failing_pivot_compensates_what_came_before_it() {
    run(async {
        let trace = Trace::default();
        let t = trace.clone();
        let saga = compensable(SagaDefinition::<Data>::new("pivot-fails"), "reserve", &trace)
            .pivot("charge", move |_d: Data, cx| {
                t.push(format!("do:charge#{}", cx.attempt));
                async { Err(StepError::transient("gateway down")) }
            })
            .retry(RetryPolicy::attempts(2, Duration::from_millis(1)))
            .retryable("ship", |d: Data, _| async move { Ok(d) });
        let sagas = SagaCoordinator::builder().definition(saga).start().await.unwrap();
        let outcome = sagas.saga::<Data>("pivot-fails").unwrap().run(Data::default()).await.unwrap();
        assert_eq!(outcome.status, SagaStatus::Compensated);
        assert_eq!(trace.take(), ["do:reserve#1", "do:charge#1", "do:charge#2", "undo:reserve"]);
    });
}

#[test]
fn past_the_pivot_a_failing_step_needs_attention_and_nothing_is_undone() {
    run(async {
        let trace = Trace::default();
        let t = trace.clone();
        let saga = compensable(SagaDefinition::<Data>::new("pivot-done"), "reserve", &trace)
            .pivot("charge", |mut d: Data, _| async move {
                d.done.push("charge".into());
                Ok(d)
            })
            .retryable("ship", move |_d: Data, cx| {
                t.push(format!("do:ship#{}", cx.attempt));
                async { Err(StepError::transient("courier unreachable")) }
            })
            .retry(RetryPolicy::attempts(4, Duration::from_millis(1)));
        let sagas = SagaCoordinator::builder().definition(saga).start().await.unwrap();
        let outcome = sagas.saga::<Data>("pivot-done").unwrap().run(Data::default()).await.unwrap();
        assert_eq!(outcome.status, SagaStatus::NeedsAttention);
        assert_eq!(outcome.error.as_deref(), Some("step `ship` failed: courier unreachable"));
        assert_eq!(outcome.data.done, ["reserve", "charge"], "the pivot committed the saga: nothing undone");
        assert_eq!(trace.take(), ["do:reserve#1", "do:ship#1", "do:ship#2", "do:ship#3", "do:ship#4"]);
        let state = sagas.status(outcome.id).await.unwrap().unwrap();
        assert!(!records(&state).iter().any(|r| r.starts_with("compensat")), "{:?}", records(&state));
    });
}

#[test]
fn a_retryable_step_succeeds_on_its_third_attempt_with_one_idempotency_key() {
    run(async {
        let keys = Arc::new(Mutex::new(Vec::new()));
        let k = keys.clone();
        let saga = SagaDefinition::<Data>::new("flaky")
            .pivot("charge", |d: Data, _| async move { Ok(d) })
            .retryable("notify", move |mut d: Data, cx| {
                k.lock().unwrap().push((cx.idempotency_key.clone(), cx.attempt));
                async move {
                    if cx.attempt < 3 {
                        return Err(StepError::transient(format!("busy ({})", cx.attempt)));
                    }
                    d.done.push("notify".into());
                    Ok(d)
                }
            })
            .retry(RetryPolicy::attempts(5, Duration::from_millis(2)));
        let sagas = SagaCoordinator::builder().definition(saga).start().await.unwrap();
        let outcome = sagas.saga::<Data>("flaky").unwrap().run(Data::default()).await.unwrap();
        assert_eq!(outcome.status, SagaStatus::Completed);
        assert_eq!(outcome.error, None);
        assert_eq!(outcome.data.done, ["notify"]);
        let key = format!("{}:notify", outcome.id);
        assert_eq!(*keys.lock().unwrap(), [(key.clone(), 1), (key.clone(), 2), (key, 3)]);
        let state = sagas.status(outcome.id).await.unwrap().unwrap();
        let failures: Vec<_> = state
            .history
            .iter()
            .filter_map(|e| match &e.record {
                SagaRecord::StepFailed { attempt, error, .. } => Some((*attempt, error.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(failures, [(1, "busy (1)".to_string()), (2, "busy (2)".to_string())]);
    });
}

#[test]
fn a_step_that_times_out_is_compensated_for() {
    run(async {
        let trace = Trace::default();
        let saga = compensable(SagaDefinition::<Data>::new("slow"), "reserve", &trace)
            .step("charge", |d: Data, _| async move {
                actix_rt::time::sleep(Duration::from_secs(30)).await;
                Ok(d)
            })
            .timeout(Duration::from_millis(50))
            .retry(RetryPolicy::attempts(2, Duration::from_millis(1)));
        let sagas = SagaCoordinator::builder().definition(saga).start().await.unwrap();
        let began = std::time::Instant::now();
        let outcome = sagas.saga::<Data>("slow").unwrap().run(Data::default()).await.unwrap();
        assert!(began.elapsed() < Duration::from_secs(5), "two 50 ms attempts, not 30 s");
        assert_eq!(outcome.status, SagaStatus::Compensated);
        assert_eq!(outcome.error.as_deref(), Some("timed out after 50ms"));
        assert_eq!(trace.take(), ["do:reserve#1", "undo:reserve"]);
        let state = sagas.status(outcome.id).await.unwrap().unwrap();
        assert_eq!(records(&state).iter().filter(|r| r.starts_with("step_failed charge")).count(), 2);
    });
}

#[test]
fn a_panicking_step_is_a_failed_attempt_and_is_retried() {
    run(async {
        let saga = SagaDefinition::<Data>::new("panics").step("boom", |mut d: Data, cx| async move {
            if cx.attempt == 1 {
                panic!("kaboom");
            }
            d.done.push("boom".into());
            Ok(d)
        });
        let sagas = SagaCoordinator::builder().definition(saga).start().await.unwrap();
        let outcome = sagas.saga::<Data>("panics").unwrap().run(Data::default()).await.unwrap();
        assert_eq!(outcome.status, SagaStatus::Completed);
        let state = sagas.status(outcome.id).await.unwrap().unwrap();
        assert!(state
            .history
            .iter()
            .any(|e| matches!(&e.record, SagaRecord::StepFailed { error, .. } if error == "panic: kaboom")));
    });
}

#[test]
fn a_compensation_that_always_fails_leaves_the_saga_needing_attention() {
    run(async {
        let attempts = Arc::new(Mutex::new(0u32));
        let a = attempts.clone();
        let trace = Trace::default();
        let saga = compensable(SagaDefinition::<Data>::new("stuck"), "first", &trace)
            .step("refundable", |mut d: Data, _| async move {
                d.done.push("refundable".into());
                Ok(d)
            })
            .compensate(move |_d: Data, _| {
                *a.lock().unwrap() += 1;
                async { Err(StepError::transient("refund service down")) }
            })
            .compensation_retry(RetryPolicy::attempts(4, Duration::from_millis(1)))
            .step("fails", |_d: Data, _| async { Err(StepError::permanent("declined")) });
        let bus = Bus::builder().build().unwrap();
        let sagas = bus.sagas().definition(saga).start().await.unwrap();
        let outcome = sagas.saga::<Data>("stuck").unwrap().run(Data::default()).await.unwrap();
        assert_eq!(outcome.status, SagaStatus::NeedsAttention);
        assert_eq!(outcome.error.as_deref(), Some("compensation of `refundable` failed: refund service down"));
        assert_eq!(*attempts.lock().unwrap(), 4, "the compensation was retried by its policy");
        assert_eq!(trace.take(), ["do:first#1"], "compensation stops at the stuck step: `first` is not undone");
        let metric = |outcome: &str| {
            common::metric(&bus, "actorbus_saga_ended_total", &format!("saga=\"stuck\",outcome=\"{outcome}\""))
        };
        assert_eq!(metric("needs_attention"), 1.0);
        assert_eq!(metric("compensated"), 0.0);

        // And it is dead-lettered with its history: one step failure, then
        // the four failed compensation attempts.
        let letters =
            bus.dlq().list(actorbus::actors::dlq::DlqFilter::default().source("saga", "stuck")).await.unwrap();
        assert_eq!(letters.len(), 1);
        let letter = &letters[0];
        assert_eq!(letter.reason.code(), "failed");
        assert_eq!(letter.envelope["id"], outcome.id.to_string());
        assert_eq!(letter.envelope["data"]["done"], serde_json::json!(["first", "refundable"]));
        let errors: Vec<(u32, &str)> = letter.errors.iter().map(|e| (e.attempt, e.reason.as_str())).collect();
        assert_eq!(
            errors,
            [
                (1, "declined"),
                (1, "refund service down"),
                (2, "refund service down"),
                (3, "refund service down"),
                (4, "refund service down")
            ]
        );
        assert_eq!(letter.attempts, 4);
    });
}

#[test]
fn unfinished_sagas_resume_from_the_log_forward_and_backward() {
    run(async {
        let trace = Trace::default();
        let keys = Arc::new(Mutex::new(Vec::new()));
        let k = keys.clone();
        let define = |trace: &Trace| {
            let k = k.clone();
            let mut saga = SagaDefinition::<Data>::new("resume");
            saga = compensable(saga, "a", trace);
            saga = compensable(saga, "b", trace);
            saga.step("c", move |mut d: Data, cx| {
                k.lock().unwrap().push((cx.idempotency_key.clone(), cx.attempt));
                async move {
                    d.done.push("c".into());
                    Ok(d)
                }
            })
        };
        // A log as a crashed process left it: one saga cut off while its
        // step `c` ran (attempt 1, outcome unknown), one cut off between
        // the two compensations.
        let log = Arc::new(MemorySagaLog::default());
        let at = Timestamp::now();
        let write = |id: SagaId, records: Vec<SagaRecord>| {
            let log = log.clone();
            async move {
                for record in records {
                    log.append(id, LogEntry { at, record }).await.unwrap();
                }
            }
        };
        let data = |done: &[&str]| SagaData::encode(&json!({ "done": done })).expect("json");
        let forward = SagaId::new();
        write(
            forward,
            vec![
                SagaRecord::Started { saga: "resume".into(), steps: Default::default(), data: data(&[]) },
                SagaRecord::StepStarted { step: 0, attempt: 1 },
                SagaRecord::StepCompleted { step: 0, data: data(&["a"]) },
                SagaRecord::StepStarted { step: 1, attempt: 1 },
                SagaRecord::StepCompleted { step: 1, data: data(&["a", "b"]) },
                SagaRecord::StepStarted { step: 2, attempt: 1 },
            ],
        )
        .await;
        let backward = SagaId::new();
        write(
            backward,
            vec![
                SagaRecord::Started { saga: "resume".into(), steps: Default::default(), data: data(&[]) },
                SagaRecord::StepStarted { step: 0, attempt: 1 },
                SagaRecord::StepCompleted { step: 0, data: data(&["a"]) },
                SagaRecord::StepStarted { step: 1, attempt: 1 },
                SagaRecord::StepCompleted { step: 1, data: data(&["a", "b"]) },
                SagaRecord::StepStarted { step: 2, attempt: 1 },
                SagaRecord::StepFailed { step: 2, attempt: 1, error: "declined".into() },
                SagaRecord::Compensating { reason: "declined".into() },
                SagaRecord::CompensationStarted { step: 1, attempt: 1 },
                SagaRecord::CompensationCompleted { step: 1, data: data(&["a"]) },
            ],
        )
        .await;
        let orphan = SagaId::new();
        write(
            orphan,
            vec![SagaRecord::Started { saga: "unregistered".into(), steps: Default::default(), data: data(&[]) }],
        )
        .await;

        let sagas = SagaCoordinator::builder().log(log.clone()).definition(define(&trace)).start().await.unwrap();
        assert_eq!(sagas.recovery(), &Recovery { resumed: 2, unknown: vec![orphan] });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sagas.unfinished().await.unwrap() != [orphan] {
            assert!(std::time::Instant::now() < deadline, "recovered sagas did not finish");
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
        let fwd = sagas.status(forward).await.unwrap().unwrap();
        assert_eq!(fwd.status, SagaStatus::Completed);
        assert_eq!(fwd.data, data(&["a", "b", "c"]).to_value());
        assert_eq!(*keys.lock().unwrap(), [(format!("{forward}:c"), 2)], "step c re-run once, same key, attempt 2");
        let back = sagas.status(backward).await.unwrap().unwrap();
        assert_eq!(back.status, SagaStatus::Compensated);
        assert_eq!(back.data, data(&[]).to_value());
        assert_eq!(trace.take(), ["undo:a"], "only the compensation not yet done ran");
    });
}

#[test]
fn a_slow_saga_does_not_hold_up_the_others() {
    run(async {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let gate = Arc::new(Mutex::new(Some(released)));
        let saga = SagaDefinition::<u32>::new("mixed").step("work", move |n: u32, _| {
            let gate = if n == 0 { gate.lock().unwrap().take() } else { None };
            async move {
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                Ok(n + 1)
            }
        });
        let sagas = SagaCoordinator::builder().definition(saga).start().await.unwrap();
        let handle = sagas.saga::<u32>("mixed").unwrap();
        let slow = handle.start(0).await.unwrap();
        let outcomes = futures::future::join_all((1..=500).map(|n| handle.run(n))).await;
        let sum: u32 = outcomes.into_iter().map(|o| o.unwrap().data).sum();
        assert_eq!(sum, (2..=501).sum::<u32>());
        assert_eq!(sagas.status(slow).await.unwrap().unwrap().status, SagaStatus::Running);
        assert_eq!(sagas.running(), 1);
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sagas.status(slow).await.unwrap().unwrap().status != SagaStatus::Completed {
            assert!(std::time::Instant::now() < deadline);
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(sagas.running(), 0);
    });
}

#[test]
fn bad_definitions_and_lookups_are_typed_errors() {
    run(async {
        let empty = SagaDefinition::<Data>::new("empty");
        let err = SagaCoordinator::builder().definition(empty).start().await.unwrap_err();
        assert!(matches!(&err, SagaError::InvalidDefinition(m) if m.contains("no steps")), "{err}");

        let out_of_order = SagaDefinition::<Data>::new("order")
            .retryable("late", |d: Data, _| async move { Ok(d) })
            .step("early", |d: Data, _| async move { Ok(d) });
        let err = SagaCoordinator::builder().definition(out_of_order).start().await.unwrap_err();
        assert!(matches!(&err, SagaError::InvalidDefinition(m) if m.contains("`early`")), "{err}");

        let one = || SagaDefinition::<Data>::new("one").step("x", |d: Data, _| async move { Ok(d) });
        let err = SagaCoordinator::builder().definition(one()).definition(one()).start().await.unwrap_err();
        assert!(matches!(err, SagaError::InvalidDefinition(_)));

        let sagas = SagaCoordinator::builder().definition(one()).start().await.unwrap();
        assert!(matches!(sagas.saga::<Data>("two"), Err(SagaError::UnknownSaga(n)) if n == "two"));
        assert!(matches!(sagas.saga::<String>("one"), Err(SagaError::WrongDataType { .. })));
        assert_eq!(sagas.status(SagaId::new()).await.unwrap(), None);

        let bus = Bus::builder().build().unwrap();
        bus.sagas().definition(one()).start().await.unwrap();
        assert!(matches!(bus.sagas().start().await, Err(SagaError::AlreadyStarted)));
    });
}

#[test]
fn the_durable_log_keeps_status_and_history_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let define = || {
        SagaDefinition::<Data>::new("durable")
            .step("a", |mut d: Data, _| async move {
                d.done.push("a".into());
                Ok(d)
            })
            .step("b", |_d: Data, _| async { Err(StepError::permanent("no")) })
    };
    let id = run(async {
        let bus = Bus::builder().data_dir(dir.path()).build().unwrap();
        let sagas = bus.sagas().definition(define()).start().await.unwrap();
        let outcome = sagas.saga::<Data>("durable").unwrap().run(Data::default()).await.unwrap();
        // `a` has no compensation: nothing to undo, still compensated.
        assert_eq!(outcome.status, SagaStatus::Compensated);
        outcome.id
    });
    assert!(dir.path().join("sagas.sqlite3").exists());
    run(async {
        let bus = Bus::builder().data_dir(dir.path()).build().unwrap();
        let sagas = bus.sagas().definition(define()).start().await.unwrap();
        assert_eq!(sagas.recovery().resumed, 0);
        let state = sagas.status(id).await.unwrap().unwrap();
        assert_eq!(state.status, SagaStatus::Compensated);
        assert_eq!(state.error.as_deref(), Some("no"));
        assert_eq!(records(&state).len(), 7, "{:?}", records(&state));
    });
}
