//! Sagas: three-step sagas run to completion, many at once, with the
//! in-memory log and with the durable log (an event store on SQLite, WAL,
//! `synchronous = FULL`), beside the same three steps awaited directly in a
//! task with no log and no coordinator, in the same run.
//!
//! Target (DESIGN §8): ≥ 100,000 sagas/s with the in-memory log.
//!
//! ```text
//! cargo bench --bench saga
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use actorbus::actors::saga::{
    EventStoreSagaLog, MemorySagaLog, Saga, SagaCoordinator, SagaDefinition, SagaLog, SagaStatus, StepContext,
    StepError,
};
use actorbus::actors::store::DataDir;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::{Deserialize, Serialize};

/// Sagas in flight at once in every measured batch.
const BATCH: u64 = 1_000;

#[derive(Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    reserved: bool,
    charged: bool,
    shipped: bool,
}

async fn reserve(mut o: Order) -> Result<Order, StepError> {
    o.reserved = true;
    Ok(o)
}
async fn charge(mut o: Order) -> Result<Order, StepError> {
    o.charged = true;
    Ok(o)
}
async fn ship(mut o: Order) -> Result<Order, StepError> {
    o.shipped = true;
    Ok(o)
}

fn definition() -> SagaDefinition<Order> {
    SagaDefinition::new("order")
        .step("reserve", |o, _: StepContext| reserve(o))
        .compensate(|o, _: StepContext| async move { Ok(o) })
        .pivot("charge", |o, _: StepContext| charge(o))
        .retryable("ship", |o, _: StepContext| ship(o))
}

fn order(id: u64) -> Order {
    Order { id, reserved: false, charged: false, shipped: false }
}

fn coordinator(system: &actix_rt::SystemRunner, log: Arc<dyn SagaLog>) -> Saga<Order> {
    system.block_on(async move {
        let sagas = SagaCoordinator::builder().log(log).definition(definition()).start().await.expect("coordinator");
        sagas.saga::<Order>("order").expect("saga")
    })
}

/// Runs `n` sagas (`run(i)` each, `BATCH` in flight at a time, each in a
/// task of its own) and returns how long they took.
fn measure<F, Fut>(system: &actix_rt::SystemRunner, n: u64, run: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    system.block_on(async move {
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            let batch = BATCH.min(n - done);
            for task in futures::future::join_all((0..batch).map(|i| actix_rt::spawn(run(done + i)))).await {
                task.expect("task");
            }
            done += batch;
        }
        start.elapsed()
    })
}

fn sagas(c: &mut Criterion) {
    let mut group = c.benchmark_group("saga_3_steps");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    let system = actix_rt::System::new();

    // Baseline: the same steps awaited in a task each, nothing logged.
    group.bench_function("plain_tasks_no_log", |b| {
        b.iter_custom(|n| {
            measure(&system, n, |i| async move {
                let steps = async { ship(charge(reserve(order(i)).await?).await?).await };
                assert!(steps.await.expect("steps").shipped);
            })
        })
    });

    // The durable log on the same disk as the build, not a tmpfs /tmp where
    // fsync is free.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench dir");
    let durable: Arc<dyn SagaLog> =
        Arc::new(system.block_on(async { EventStoreSagaLog::open(&DataDir::new(dir.path())) }).expect("durable log"));
    for (name, log) in [
        ("actorbus_memory_log", Arc::new(MemorySagaLog::default()) as Arc<dyn SagaLog>),
        ("actorbus_durable_log", durable),
    ] {
        let saga = coordinator(&system, log);
        group.bench_function(name, |b| {
            b.iter_custom(|n| {
                measure(&system, n, |i| {
                    let saga = saga.clone();
                    async move { assert_eq!(saga.run(order(i)).await.expect("saga").status, SagaStatus::Completed) }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, sagas);
criterion_main!(benches);
