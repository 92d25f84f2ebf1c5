//! Sagas on the bus: one coordinator per bus, its log beside the bus's
//! other storage.

use std::sync::Arc;

use actorbus_actors::saga::{
    EventStoreSagaLog, SagaCoordinatorBuilder, SagaCoordinatorHandle, SagaDefinition, SagaError, SagaLog,
};
use actorbus_actors::store::DataDir;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bus::Bus;

/// Registers saga definitions and starts the bus's saga coordinator. Get it
/// with [`Bus::sagas`].
///
/// The log is durable (`sagas.sqlite3` in the data directory) when the bus
/// has one, in memory otherwise. Starting resumes every saga the log holds
/// unfinished, so register every definition that may have sagas in flight.
///
/// ```
/// use actorbus::Bus;
/// use actorbus::actors::saga::{SagaDefinition, SagaStatus};
///
/// actix::System::new().block_on(async {
///     let bus = Bus::builder().build().unwrap();
///     let greet = SagaDefinition::<String>::new("greet")
///         .step("hello", |s: String, _| async move { Ok(format!("hello {s}")) });
///     let sagas = bus.sagas().definition(greet).start().await.unwrap();
///     let outcome = sagas.saga::<String>("greet").unwrap().run("ada".into()).await.unwrap();
///     assert_eq!((outcome.status, outcome.data.as_str()), (SagaStatus::Completed, "hello ada"));
/// });
/// ```
pub struct SagasBuilder {
    bus: Bus,
    inner: SagaCoordinatorBuilder,
}

impl SagasBuilder {
    pub(crate) fn new(bus: Bus, inner: SagaCoordinatorBuilder) -> Self {
        SagasBuilder { bus, inner }
    }

    /// Registers a saga definition.
    pub fn definition<D: Serialize + DeserializeOwned + 'static>(mut self, saga: SagaDefinition<D>) -> Self {
        self.inner = self.inner.definition(saga);
        self
    }

    /// Sagas running at once, at most (default 10,000).
    pub fn max_running(mut self, max: usize) -> Self {
        self.inner = self.inner.max_running(max);
        self
    }

    /// Writes to `log` instead of the bus's default.
    pub fn log(mut self, log: Arc<dyn SagaLog>) -> Self {
        self.inner = self.inner.log(log);
        self
    }

    /// Starts the coordinator (once per bus) and resumes unfinished sagas.
    pub async fn start(self) -> Result<SagaCoordinatorHandle, SagaError> {
        let SagasBuilder { bus, mut inner } = self;
        if !bus.claim_sagas() {
            return Err(SagaError::AlreadyStarted);
        }
        inner = inner.dead_letters(bus.dlq().clone());
        if let (false, Some(dir)) = (inner.has_log(), bus.data_dir()) {
            inner = inner.log(Arc::new(EventStoreSagaLog::open(&DataDir::new(dir))?));
        }
        let handle = inner.start().await?;
        bus.set_sagas(handle.clone());
        Ok(handle)
    }
}
