//! kill -9 test for sagas: a child process runs 1,000 sagas whose steps
//! write to a SQLite "service" database, deduplicated by the steps'
//! idempotency keys, and is killed with SIGKILL at a random moment. A second
//! child then starts on the same data directory: every saga must end
//! completed or compensated as its data says, none left running, and the
//! service's balances must show each effect applied exactly once.
//!
//! The children are this test binary re-executed, running one of the
//! `#[ignore]`d `child_*` functions (as in `event_store_crash.rs`).

#[path = "common/crash.rs"]
mod crash;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actorbus::actors::saga::*;
use actorbus::actors::store::{DataDir, Direction};
use actorbus::Bus;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

const SAGAS: u32 = 1000;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Order {
    n: u32,
}

/// The service the steps call: effects keyed by idempotency key, each
/// applied to the balances only the first time its key is seen; `calls`
/// counts every call, repeats included.
#[derive(Clone)]
struct Service(Arc<Mutex<Connection>>);

impl Service {
    fn open(dir: &Path) -> Service {
        let conn = Connection::open(dir.join("service.sqlite3")).expect("service db");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, n INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, amount INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS calls (key TEXT NOT NULL);
             INSERT OR IGNORE INTO balances VALUES ('customer', 0), ('stock', 0), ('shipped', 0);",
        )
        .expect("schema");
        Service(Arc::new(Mutex::new(conn)))
    }

    /// Applies `changes` once per `key`, in one transaction.
    fn apply(&self, key: &str, n: u32, changes: &[(&str, i64)]) -> Result<(), StepError> {
        let mut conn = self.0.lock().map_err(|_| StepError::transient("service lock poisoned"))?;
        let tx = conn.transaction()?;
        tx.execute("INSERT INTO calls (key) VALUES (?1)", [key])?;
        let fresh = tx.execute("INSERT OR IGNORE INTO effects (key, n) VALUES (?1, ?2)", (key, n))?;
        if fresh == 1 {
            for (account, delta) in changes {
                tx.execute("UPDATE balances SET amount = amount + ?1 WHERE account = ?2", (delta, account))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Sleeps a little so that many sagas are between steps at any moment.
async fn jitter() {
    actix_rt::time::sleep(Duration::from_micros(rand::random_range(0..1500))).await;
}

/// order → debit (compensable) → reserve (compensable) → charge (pivot,
/// declined for every third order) → ship (retryable, busy once for every
/// fifth).
fn order_saga(service: &Service) -> SagaDefinition<Order> {
    let s = service.clone();
    let step = move |changes: &'static [(&'static str, i64)]| {
        let s = s.clone();
        move |o: Order, cx: StepContext| {
            let s = s.clone();
            async move {
                jitter().await;
                s.apply(&cx.idempotency_key, o.n, changes)?;
                Ok(o)
            }
        }
    };
    SagaDefinition::<Order>::new("order")
        .step("debit", step(&[("customer", -10)]))
        .compensate(step(&[("customer", 10)]))
        .step("reserve", step(&[("stock", -1)]))
        .compensate(step(&[("stock", 1)]))
        .pivot("charge", {
            let apply = step(&[]);
            move |o: Order, cx: StepContext| {
                let declined = o.n % 3 == 0;
                let apply = apply(o, cx);
                async move {
                    if declined {
                        return Err(StepError::permanent("card declined"));
                    }
                    apply.await
                }
            }
        })
        .retryable("ship", {
            let apply = step(&[("shipped", 1)]);
            move |o: Order, cx: StepContext| {
                let busy = o.n % 5 == 0 && cx.attempt == 1;
                let apply = apply(o, cx);
                async move {
                    if busy {
                        return Err(StepError::transient("courier busy"));
                    }
                    apply.await
                }
            }
        })
        .retry(RetryPolicy::attempts(10, Duration::from_millis(1)))
}

/// Child 1: starts every saga and prints `ended <n>` as each ends. Killed
/// before it finishes.
#[test]
#[ignore = "child process of sagas_killed_mid_flight_all_end_with_each_effect_applied_once"]
fn child_run_sagas() {
    let Some(dir) = crash::child_dir() else { return };
    let dir = Path::new(&dir).to_owned();
    println!(); // ends the harness's `test … ` line, so ours start clean
    actix_rt::System::new().block_on(async move {
        let service = Service::open(&dir);
        let bus = Bus::builder().data_dir(&dir).build().expect("bus");
        let sagas = bus.sagas().definition(order_saga(&service)).start().await.expect("sagas");
        let order = sagas.saga::<Order>("order").expect("order saga");
        let runs = (0..SAGAS).map(|n| {
            let order = order.clone();
            async move {
                let outcome = order.run(Order { n }).await.expect("saga");
                println!("ended {n} {}", outcome.status.as_str());
            }
        });
        futures::future::join_all(runs).await;
        println!("all ended");
    });
}

/// Child 2: restarts on the same directory (recovery resumes what was
/// unfinished), waits until nothing is unfinished, starts the orders that
/// never started, then prints `saga <n> <status>` for every saga.
#[test]
#[ignore = "child process of sagas_killed_mid_flight_all_end_with_each_effect_applied_once"]
fn child_recover_sagas() {
    let Some(dir) = crash::child_dir() else { return };
    let dir = Path::new(&dir).to_owned();
    println!(); // ends the harness's `test … ` line, so ours start clean
    actix_rt::System::new().block_on(async move {
        let service = Service::open(&dir);
        let bus = Bus::builder().data_dir(&dir).build().expect("bus");
        let log = Arc::new(EventStoreSagaLog::open(&DataDir::new(&dir)).expect("saga log"));
        let store = log.store().clone();
        let sagas = bus.sagas().log(log).definition(order_saga(&service)).start().await.expect("sagas");
        println!("resumed {}", sagas.recovery().resumed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sagas.unfinished().await.expect("unfinished").is_empty() {
            assert!(Instant::now() < deadline, "resumed sagas did not end");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        // Every saga the log knows, by order number.
        let mut ids: BTreeMap<u32, Vec<SagaId>> = BTreeMap::new();
        for e in store.read_all(0, Direction::Forward, usize::MAX).await.expect("read log") {
            let entry: LogEntry = e.decode().expect("entry");
            if let SagaRecord::Started { data, .. } = entry.record {
                let order: Order = data.decode().expect("order");
                let id = e.stream.strip_prefix("saga-").expect("saga stream").parse().expect("id");
                ids.entry(order.n).or_default().push(id);
            }
        }
        let order = sagas.saga::<Order>("order").expect("order saga");
        for n in 0..SAGAS {
            if !ids.contains_key(&n) {
                let outcome = order.run(Order { n }).await.expect("saga");
                ids.entry(n).or_default().push(outcome.id);
            }
        }
        for (n, ids) in ids {
            for id in ids {
                let state = sagas.status(id).await.expect("status").expect("known saga");
                println!("saga {n} {}", state.status.as_str());
            }
        }
        println!("unfinished {}", sagas.unfinished().await.expect("unfinished").len());
    });
}

#[test]
fn sagas_killed_mid_flight_all_end_with_each_effect_applied_once() {
    for round in 0..3 {
        let dir = tempfile::tempdir().expect("tempdir");

        // Run, and kill after a random number of sagas have ended.
        let kill_after = rand::random_range(1..(SAGAS as usize * 3 / 4));
        let mut run = crash::spawn_child("child_run_sagas", dir.path());
        let out = BufReader::new(run.stdout.take().expect("stdout"));
        let mut ended = 0;
        for line in out.lines() {
            let line = line.expect("line");
            assert_ne!(line, "all ended", "round {round}: the child finished before the kill");
            ended += usize::from(line.starts_with("ended "));
            if ended == kill_after {
                break;
            }
        }
        run.kill().expect("SIGKILL");
        assert!(!run.wait().expect("wait").success());

        // Recover and report.
        let recover = crash::spawn_child("child_recover_sagas", dir.path()).wait_with_output().expect("recover child");
        let out = String::from_utf8(recover.stdout).expect("utf-8");
        assert!(recover.status.success(), "round {round}: recovery failed:\n{out}");
        let mut outcomes: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut resumed = None;
        for line in out.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["saga", n, status] => outcomes.entry(n.parse().expect("n")).or_default().push(status.to_string()),
                ["resumed", k] => resumed = Some(k.parse::<usize>().expect("k")),
                ["unfinished", k] => assert_eq!(*k, "0", "round {round}: sagas left running"),
                _ => {}
            }
        }
        let resumed = resumed.expect("recovery report");
        assert!(resumed > 0, "round {round}: the kill should have cut some sagas off mid-flight");
        assert_eq!(outcomes.len(), SAGAS as usize, "round {round}: every order has its saga");
        for (n, statuses) in &outcomes {
            let expected = if n % 3 == 0 { "compensated" } else { "completed" };
            assert_eq!(statuses, &[expected], "round {round}: order {n}");
        }

        // Each effect exactly once: the balances are what the outcomes say.
        let conn = Connection::open(dir.path().join("service.sqlite3")).expect("service db");
        let balance = |account: &str| -> i64 {
            conn.query_row("SELECT amount FROM balances WHERE account = ?1", [account], |r| r.get(0)).expect("balance")
        };
        let completed = (0..SAGAS).filter(|n| n % 3 != 0).count() as i64;
        assert_eq!(balance("customer"), -10 * completed, "round {round}");
        assert_eq!(balance("stock"), -completed, "round {round}");
        assert_eq!(balance("shipped"), completed, "round {round}");
        let effects: i64 = conn.query_row("SELECT count(*) FROM effects", [], |r| r.get(0)).expect("count");
        // Completed: debit, reserve, charge, ship; compensated: debit,
        // reserve and their two compensations.
        assert_eq!(effects, 4 * i64::from(SAGAS), "round {round}");
        let compensations: i64 = conn
            .query_row("SELECT count(*) FROM effects WHERE key LIKE '%:compensate'", [], |r| r.get(0))
            .expect("count");
        assert_eq!(compensations, 2 * (i64::from(SAGAS) - completed), "round {round}");
        let repeats: i64 = conn
            .query_row("SELECT (SELECT count(*) FROM calls) - (SELECT count(*) FROM effects)", [], |r| r.get(0))
            .expect("count");
        eprintln!(
            "round {round}: killed after {kill_after} ended, {resumed} resumed, {repeats} repeated calls deduplicated"
        );
    }
}
