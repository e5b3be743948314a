//! `herald-bench`: an open-loop STOMP-over-WebSocket load generator for
//! Herald and any other STOMP broker (e.g. RabbitMQ Web-STOMP). See
//! `herald-bench --help`.

mod cli;
mod client;
mod herald;
mod proc;
mod relay;
mod scenarios;
mod stats;
mod stomp_client;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let is_relay = matches!(cli.scenario, cli::Scenario::Relay(_));
    let threads = match cli.common.threads {
        // A relay is a server: it gets the machine's cores unless told.
        1 if is_relay => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n.max(1),
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(scenarios::run(cli));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herald-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
