//! The `actorbus` command: runs the demo of the pattern catalogue, serves it
//! over HTTP, and administers a running server's dead letter queue.

mod demo;
mod dlq_cmd;
mod http_client;
#[cfg(feature = "http")]
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// actorbus: cloud messaging patterns as supervised actix actors.
#[derive(Parser, Debug)]
#[command(name = "actorbus", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run every pattern end to end and print what happened, with a closing
    /// summary per pattern.
    Demo {
        /// Where the embedded store keeps its files.
        #[arg(long, default_value = "./actorbus-data")]
        data_dir: PathBuf,
        /// Messages per pattern.
        #[arg(long, default_value_t = 10_000)]
        messages: u32,
    },
    /// Run the runtime behind the HTTP gateway, configured by a TOML file.
    #[cfg(feature = "http")]
    Serve {
        /// The configuration file (listen address, data directory, admin
        /// token, body limit, queues, topics, job kinds). Without one, the
        /// defaults: 127.0.0.1:8080 and no job kinds.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `listen` from the file.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Overrides `data_dir` from the file.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Inspect, redrive and purge the dead letter queue of a running server
    /// (`actorbus serve`) through its gateway. Exit codes: 0 done, 1 the
    /// server refused or failed, 2 usage error.
    Dlq(dlq_cmd::DlqArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout; its deliberate failures need no log lines
    // unless RUST_LOG asks for them.
    let default_filter = match cli.command {
        Command::Demo { .. } => "off",
        #[cfg(feature = "http")]
        Command::Serve { .. } => "info",
        Command::Dlq(_) => "off",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Demo { data_dir, messages } => match demo::run(&data_dir, messages) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("demo: some checks failed (see the summary)");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("demo: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Dlq(args) => dlq_cmd::run(args),
        #[cfg(feature = "http")]
        Command::Serve { config, listen, data_dir } => match serve::run(config.as_deref(), listen, data_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("serve: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
