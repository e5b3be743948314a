//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// herald-bench: an open-loop STOMP-over-WebSocket load generator.
///
/// Message k of a run is due at t0 + k/R and its latency is measured from
/// that due time, not from the moment it was actually written, so a server
/// that stalls the generator cannot hide its delays (no coordinated
/// omission). Every message carries (run, sender, sequence, due time) in its
/// body; receivers ack every message and count loss, duplicates and
/// out-of-order deliveries. Sends go out on tokio's 1 ms timer ticks, so
/// latencies include up to about 1 ms of generator timer granularity.
///
/// Herald applies a per-user send rate limit (default 50 msg/s, burst 100)
/// and a per-user connection limit (default 16). For load tests start it
/// with e.g. HERALD_SEND_RATE_PER_SEC=100000 HERALD_SEND_BURST=100000
/// HERALD_MAX_CONNECTIONS_PER_USER=100000, and since every user registers
/// and logs in from this one address, HERALD_REGISTRATIONS_PER_HOUR=0
/// HERALD_LOGIN_MAX_FAILURES=0.
///
/// Output: one JSON line per run (or find-max step) on stdout, a readable
/// summary on stderr.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, verbatim_doc_comment)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// Herald: users registered over REST, `/app/send` to `/user/queue/message`.
    Herald,
    /// Any STOMP broker (e.g. RabbitMQ Web-STOMP): `/queue/<prefix>{i}`.
    Stomp,
}

/// Options shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server under test.
    #[arg(long, value_enum, default_value_t = TargetKind::Herald, global = true)]
    pub target: TargetKind,
    /// Herald: base URL `http://HOST:PORT` (the WebSocket is `/ws` on it).
    /// Stomp: the WebSocket URL, e.g. `ws://127.0.0.1:15674/ws`.
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// Herald: a second node of the same cluster, `http://HOST:PORT`.
    /// Odd-numbered connections go there; in `rate` and `find-max` the
    /// connections on `--url` send, and only to those on this one.
    #[arg(long, global = true)]
    pub url2: Option<String>,
    /// Stomp target: CONNECT `login`.
    #[arg(long, default_value = "guest", global = true)]
    pub login: String,
    /// Stomp target: CONNECT `passcode`.
    #[arg(long, default_value = "guest", global = true)]
    pub passcode: String,
    /// Stomp target: CONNECT `host` (the RabbitMQ virtual host).
    #[arg(long, default_value = "/", global = true)]
    pub vhost: String,
    /// Stomp target: durable queues (`durable:true`, `auto-delete:false`) and
    /// persistent messages (`persistent:true`).
    #[arg(long, global = true)]
    pub durable: bool,
    /// Stomp target: queue name prefix; client i consumes `/queue/<prefix>{i}`.
    /// Use a different prefix for durable and transient runs (a broker refuses
    /// to redeclare a queue with other properties).
    #[arg(long, default_value = "b-", global = true)]
    pub queue_prefix: String,
    /// Herald target: JSON file caching registered users across runs
    /// (created if missing). A cached token the server still accepts is
    /// reused, otherwise the user logs in again (or is registered anew if
    /// the server does not know it).
    #[arg(long, global = true)]
    pub users_file: Option<PathBuf>,
    /// Tokio worker threads of the generator (1 = current-thread runtime).
    #[arg(long, default_value_t = 1, global = true)]
    pub threads: usize,
    /// Pid of the server process: its CPU and RSS are reported.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Message content size in bytes (at least the ~40-byte header).
    #[arg(long, default_value_t = 64, global = true)]
    pub size: usize,
    /// Parallel REST requests during setup (register, login).
    #[arg(long, default_value_t = 16, global = true)]
    pub setup_concurrency: usize,
    /// Parallel WebSocket handshakes during setup.
    #[arg(long, default_value_t = 64, global = true)]
    pub connect_concurrency: usize,
    /// Timeout of one connection attempt (TCP, WebSocket, CONNECT, SUBSCRIBE
    /// receipts), in seconds.
    #[arg(long, default_value_t = 15.0, global = true)]
    pub connect_timeout: f64,
    /// Outbound queue capacity per connection (messages beyond it are
    /// counted as `dropped` instead of being queued without bound).
    #[arg(long, default_value_t = 4096, global = true)]
    pub queue: usize,
    /// After sending stops, wait at most this long (seconds) for in-flight
    /// messages.
    #[arg(long, default_value_t = 10.0, global = true)]
    pub drain_timeout: f64,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// C clients send at an aggregate rate R to random peers for D seconds.
    Rate(RateArgs),
    /// Raise the rate step by step on the same connections until p99, the
    /// delivered ratio or loss fails, then bisect between the last good and
    /// the failed rate; prints the highest good rate.
    FindMax(FindMaxArgs),
    /// N idle, authenticated, subscribed connections: server RSS per
    /// connection (needs --server-pid).
    ///
    /// Measure a freshly started server: memory the server freed earlier
    /// (e.g. after a previous run's connections closed) stays resident and is
    /// reused, which hides the cost of new connections. Herald: password
    /// hashing (argon2)
    /// during setup leaves memory resident that new connections then reuse,
    /// which hides their cost; for a clean figure run once with
    /// --users-file, restart the server on the same data dir and run again
    /// (cached tokens need no hashing).
    Idle(IdleArgs),
    /// A group of G online members receives messages sent at rate R
    /// (stomp target: every member subscribes `/topic/<prefix>fanout`).
    Fanout(FanoutArgs),
    /// One user receives K messages while offline, then syncs them over REST.
    Sync(SyncArgs),
    /// Serve a STOMP relay that stores and checks nothing (not a scenario:
    /// a server). Driven with `--target stomp`, it shows the most any
    /// server can reach on this machine with the generator beside it.
    ///
    /// A SEND to `/queue/X` (or `/amq/queue/X`) goes to the first
    /// subscriber of `/queue/X`, one to `/topic/X` to every subscriber;
    /// ACK and NACK are ignored. Runs on a multi-threaded runtime
    /// (`--threads`, default: one worker per CPU) until it is stopped.
    Relay(RelayArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RateArgs {
    /// Connected clients (each one user / one queue), at least 2.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Aggregate offered rate, messages per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured duration in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured warm-up at the same rate before the measured part, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// A message counts as delivered in time (for `delivered_rate`) if it
    /// arrives at most this many ms after the end of the sending window.
    #[arg(long, default_value_t = 1000.0)]
    pub grace_ms: f64,
}

#[derive(Debug, Clone, Args)]
pub struct FindMaxArgs {
    /// Connected clients, at least 2.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Rate of the first step, messages per second.
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Rate multiplier between steps (> 1).
    #[arg(long, default_value_t = 1.25)]
    pub step: f64,
    /// Duration of each step, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub step_duration: f64,
    /// Highest acceptable p99 latency, ms.
    #[arg(long, default_value_t = 50.0)]
    pub p99_ms: f64,
    /// Lowest acceptable delivered/offered ratio.
    #[arg(long, default_value_t = 0.995)]
    pub min_delivered: f64,
    /// Stop after this rate even if it is still good.
    #[arg(long)]
    pub max_rate: Option<f64>,
    /// At most this many climbing steps.
    #[arg(long, default_value_t = 40)]
    pub max_steps: usize,
    /// After the first failed step, this many more steps bisect the gap
    /// between the highest good rate and the lowest failed one
    /// (geometrically): the headline is then within step^(1/2^refine) of
    /// the limit instead of within `step`.
    #[arg(long, default_value_t = 2)]
    pub refine: usize,
    /// Unmeasured warm-up at the start rate before the first step, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Herald: connections per registered user (must not exceed the
    /// server's HERALD_MAX_CONNECTIONS_PER_USER, default 16).
    #[arg(long, default_value_t = 16)]
    pub conns_per_user: usize,
    /// Seconds to wait after the last connection before reading RSS.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Group members (the creator included), all online; at most 1001.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Messages per second sent to the group (each reaches members - 1).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Members that take turns sending (round-robin).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Measured duration in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured warm-up before the measured part, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// See `rate --grace-ms`.
    #[arg(long, default_value_t = 1000.0)]
    pub grace_ms: f64,
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// Messages to store for the offline user.
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Sends in flight (sent, SendAck not yet received) at most.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Page size of `GET /inbox/sync` (1-500).
    #[arg(long, default_value_t = 500)]
    pub page: usize,
    /// Timeout for storing all messages, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub send_timeout: f64,
}

#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:15999")]
    pub listen: String,
    /// Write one more frame (a heart-beat) to the sender of every SEND, as
    /// Herald writes its SendAck: four frames per message instead of three.
    #[arg(long)]
    pub answer_sends: bool,
}
