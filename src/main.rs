//! The `herald` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::{Config, FlagOverrides};

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: a fast, durable instant-messaging server (STOMP 1.2 over WebSocket + REST)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded backends under --data-dir by default).
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080; env HERALD_LISTEN].
        #[arg(long)]
        listen: Option<String>,
        /// Directory of the embedded store [default: ./herald-data; env HERALD_DATA_DIR].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// TOML configuration file [default: ./herald.toml if present].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the OpenAPI document of the REST API.
    Openapi,
    /// Print every setting with its environment variable and default.
    Settings,
}

fn main() -> ExitCode {
    herald::sys::tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            print!("{}", herald::controller::rest::openapi_spec_yaml());
            ExitCode::SUCCESS
        }
        Command::Settings => {
            for (name, env, default, doc) in Config::describe() {
                println!("{name}\t{env}\t{default}\t{doc}");
            }
            ExitCode::SUCCESS
        }
        Command::Serve {
            listen,
            data_dir,
            config,
        } => serve(listen, data_dir, config),
    }
}

/// The RocketMQ client's periodic rebalance, in ms: a member that died
/// without leaving its group is noticed only then (the client's default,
/// 20 s, held a killed node's queues that long). Read from the environment
/// only, once, when the client starts.
const ROCKETMQ_REBALANCE: (&str, &str) = ("rocketmq.client.rebalance.waitInterval", "2000");

fn serve(listen: Option<String>, data_dir: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    // Before any thread exists: setting the environment is safe only then.
    if std::env::var_os(ROCKETMQ_REBALANCE.0).is_none() {
        std::env::set_var(ROCKETMQ_REBALANCE.0, ROCKETMQ_REBALANCE.1);
    }
    herald::telemetry::init_logging();
    let flags = FlagOverrides { listen, data_dir };
    let cfg = match Config::load(config.as_deref(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    // Before any thread or SQLite call: SQLite takes configuration only
    // before its first use, and only from a single thread.
    if !herald::embedded::page_cache::install() {
        tracing::warn!("SQLite's default page cache is in use (slower commits)");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(herald::app::serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}
