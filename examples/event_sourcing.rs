//! Event sourcing: a bank account whose state is only ever changed by events.
//!
//! The account is an `Aggregate`: `handle` decides what a command means
//! (refusing an overdraft), `apply` folds events into the balance. The
//! `AggregateActor` appends the events with optimistic concurrency and saves
//! a snapshot every 3 events. Then the example prints the account's history,
//! rebuilds its balance as it was at an earlier moment, and shows a
//! projection (total deposits per account) built from `$all`.
//!
//! ```text
//! cargo run --example event_sourcing
//! ```
//!
//! Data goes to a temporary directory that is removed at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::Actor;
use actorbus::actors::event_store::*;
use actorbus::actors::store::DataDir;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "Opened",
            AccountEvent::Deposited { .. } => "Deposited",
            AccountEvent::Withdrawn { .. } => "Withdrawn",
        }
    }
}

enum AccountCommand {
    Open { owner: String },
    Deposit(u64),
    Withdraw(u64),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

impl Aggregate for Account {
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = String;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => self.owner = Some(owner.clone()),
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, String> {
        match (command, &self.owner) {
            (AccountCommand::Open { owner }, None) => Ok(vec![AccountEvent::Opened { owner }]),
            (AccountCommand::Open { .. }, Some(_)) => Err("already open".into()),
            (_, None) => Err("no such account".into()),
            (AccountCommand::Deposit(0), _) | (AccountCommand::Withdraw(0), _) => Err("amount must be positive".into()),
            (AccountCommand::Deposit(amount), _) => Ok(vec![AccountEvent::Deposited { amount }]),
            (AccountCommand::Withdraw(amount), _) if amount > self.balance => {
                Err(format!("insufficient funds: balance {}, asked {amount}", self.balance))
            }
            (AccountCommand::Withdraw(amount), _) => Ok(vec![AccountEvent::Withdrawn { amount }]),
        }
    }
}

/// Read model: total deposited per account, from every stream.
struct DepositsByAccount;

impl Projection for DepositsByAccount {
    type State = BTreeMap<String, u64>;

    fn apply(&mut self, totals: &mut Self::State, event: &RecordedEvent) {
        if let Ok(AccountEvent::Deposited { amount }) = event.decode() {
            *totals.entry(event.stream.clone()).or_default() += amount;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    actix_rt::System::new().block_on(run(DataDir::new(dir.path())))
}

async fn run(data: DataDir) -> Result<(), Box<dyn std::error::Error>> {
    let store = EventStore::open(&data, EventStoreConfig::default())?;
    let account = AggregateActor::<Account>::new(store.clone(), "account-ada", SnapshotPolicy::every(3)).start();

    let commands = [
        AccountCommand::Open { owner: "Ada".into() },
        AccountCommand::Deposit(100),
        AccountCommand::Withdraw(30),
        AccountCommand::Deposit(250),
        AccountCommand::Withdraw(1_000),
        AccountCommand::Withdraw(70),
    ];
    for command in commands {
        match account.send(Execute::new(command)).await? {
            Ok(done) => println!("ok       -> version {:?}", done.version),
            Err(e) => println!("refused  -> {e}"),
        }
        // Let the clock move, so that "the balance at time T" has a meaning.
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }

    println!("\nHistory of account-ada:");
    let history = store.read_stream("account-ada", 0, Direction::Forward, 100).await?;
    for e in &history {
        println!("  v{} @{} µs  {:<10} {}", e.version, e.timestamp.as_micros(), e.event_type, e.data);
    }

    let (now, version) = account.send(GetState::new()).await??;
    println!("\nBalance now (version {version:?}): {}", now.balance);

    // The balance right after the second deposit, by time and by version.
    let moment = history[3].timestamp;
    let then = load_aggregate::<Account>(&store, "account-ada", Upto::Time(moment), true).await?;
    println!(
        "Balance at {} µs (version {:?}, from snapshot {:?} + {} events): {}",
        moment.as_micros(),
        then.version,
        then.snapshot_version,
        then.replayed,
        then.state.balance
    );
    let at_v2 = load_aggregate::<Account>(&store, "account-ada", Upto::Version(2), false).await?;
    println!("Balance at version 2: {}", at_v2.state.balance);
    assert_eq!(then.state.balance, 320);
    assert_eq!(at_v2.state.balance, 70);
    assert_eq!(now.balance, 250);

    let deposits = ProjectionActor::new(store.clone(), DepositsByAccount, ProjectionConfig::new("deposits")).start();
    let end = store.end_position().await?;
    let status = loop {
        let status = deposits.send(GetProjection::new()).await?;
        if status.position >= end {
            break status;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    };
    println!("\nProjection `deposits` at position {}: {:?}", status.position, status.state);
    assert_eq!(status.state.get("account-ada"), Some(&350));
    Ok(())
}
