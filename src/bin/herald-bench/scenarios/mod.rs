//! Scenarios and what they share: setup of connected clients, the
//! open-loop scheduler, draining, and building reports.

pub mod fanout;
pub mod idle;
pub mod rate;
pub mod search;
pub mod sync;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc::error::TrySendError;

use crate::cli::{Cli, Common, Scenario, TargetKind};
use crate::client::{Client, SendItem, Target};
use crate::herald::{ensure_users, Rest, User};
use crate::proc::{Meters, Usage};
use crate::stats::{r3, Payload, Report, RunSpec, Shared};

/// Everything a scenario needs.
pub struct Env {
    pub common: Common,
    pub target: Arc<Target>,
    /// Herald only.
    pub rest: Option<Rest>,
}

impl Env {
    /// The target of `common`, with a REST client for Herald.
    fn new(common: Common) -> Result<Env> {
        let target = Arc::new(Target::from_common(&common)?);
        let rest = match target.kind {
            TargetKind::Herald => Some(Rest::new(&target.base_url)?),
            TargetKind::Stomp => None,
        };
        Ok(Env {
            common,
            target,
            rest,
        })
    }

    pub fn rest(&self) -> Result<&Rest> {
        match &self.rest {
            Some(r) => Ok(r),
            None => bail!("this scenario needs --target herald"),
        }
    }

    /// Herald: `n` logged-in users (cached in --users-file if given).
    pub async fn users(&self, n: usize) -> Result<Vec<User>> {
        Ok(self.users_counting_hashes(n).await?.0)
    }

    /// [`Env::users`], plus how many argon2 hashes the server computed.
    pub async fn users_counting_hashes(&self, n: usize) -> Result<(Vec<User>, usize)> {
        ensure_users(
            self.rest()?,
            &self.target.base_url,
            n,
            self.common.users_file.as_deref(),
            self.common.setup_concurrency,
        )
        .await
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.common.drain_timeout.max(0.0))
    }

    /// Prints the herald rate-limit warning when a user sends faster than
    /// the server's default limit allows.
    pub fn warn_rate_limit(&self, per_user_rate: f64) {
        if self.target.kind == TargetKind::Herald && per_user_rate > 50.0 {
            eprintln!(
                "warning: {per_user_rate:.1} msg/s per sending user is above herald's default \
                 limit (HERALD_SEND_RATE_PER_SEC=50, HERALD_SEND_BURST=100); start herald with \
                 e.g. HERALD_SEND_RATE_PER_SEC=100000 HERALD_SEND_BURST=100000 or sends are \
                 rejected (counted as server errors)"
            );
        }
    }
}

/// Runs the scenario; the exit code is non-zero when connections failed.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let common = cli.common;
    match cli.scenario {
        Scenario::Rate(a) => rate::run_rate(&Env::new(common)?, &a).await,
        Scenario::FindMax(a) => rate::run_find_max(&Env::new(common)?, &a).await,
        Scenario::Idle(a) => idle::run(&Env::new(common)?, &a).await,
        Scenario::Fanout(a) => fanout::run(&Env::new(common)?, &a).await,
        Scenario::Sync(a) => sync::run(&Env::new(common)?, &a).await,
        Scenario::Relay(a) => crate::relay::run(&a).await.map(|()| ExitCode::SUCCESS),
    }
}

/// How the scheduler picks destinations.
#[derive(Debug, Clone, Copy)]
pub enum Dest {
    /// A random client other than the sender, among `n`.
    RandomPeer { n: u32 },
    /// A random odd-numbered client among `n` (those on the second node).
    RandomOdd { n: u32 },
    /// Always the same destination index (e.g. the group).
    Fixed(u32),
}

/// One open-loop run: message k is due at t0 + k/rate and goes to the
/// outbound queue of sender `senders[k % senders.len()]` with per-sender
/// sequence number k / senders.len().
pub struct Plan<'a> {
    pub clients: &'a [Client],
    /// Indices into `clients` that take turns sending.
    pub senders: Vec<usize>,
    pub rate: f64,
    pub dest: Dest,
    /// Deliveries each message should cause.
    pub fanout: u64,
}

/// Runs the schedule of `shared`'s current run (until its window end).
pub async fn schedule(plan: Plan<'_>, shared: &Shared) {
    let spec = *shared.collector.lock().spec();
    let n_senders = plan.senders.len().max(1) as u64;
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let ns_per_msg = 1e9 / plan.rate;
    let (mut sent, mut dropped, mut warm) = (0u64, 0u64, 0u64);
    let mut k: u64 = 0;
    loop {
        let due_ns = (k as f64 * ns_per_msg).round() as u64;
        if due_ns >= spec.window_end_ns {
            break;
        }
        let due = spec.t0 + Duration::from_nanos(due_ns);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        } else if k.is_multiple_of(128) {
            // Behind schedule: still let the connections make progress.
            tokio::task::yield_now().await;
        }
        let slot = (k % n_senders) as usize;
        let Some(&sender) = plan.senders.get(slot) else {
            break;
        };
        let Some(client) = plan.clients.get(sender) else {
            break;
        };
        let dest = match plan.dest {
            Dest::RandomPeer { n } => {
                let r = rng.random_range(0..n.saturating_sub(1).max(1));
                if r >= client.idx {
                    r + 1
                } else {
                    r
                }
            }
            Dest::RandomOdd { n } => 2 * rng.random_range(0..(n / 2).max(1)) + 1,
            Dest::Fixed(d) => d,
        };
        let item = SendItem {
            dest,
            payload: Payload {
                run: spec.run,
                sender: client.idx,
                seq: k / n_senders,
                due_ns,
            },
        };
        let measured = due_ns >= spec.measure_from_ns;
        match client.send_tx.try_send(item) {
            Ok(()) if measured => sent += 1,
            Ok(()) => warm += 1,
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => dropped += u64::from(measured),
        }
        k += 1;
    }
    let mut col = shared.collector.lock();
    let c = col.counts_mut();
    c.sent += sent;
    c.expected += sent * plan.fanout;
    c.dropped += dropped;
    c.warmup_expected += warm * plan.fanout;
}

/// Waits until every expected delivery arrived, every connection is gone,
/// or `timeout`. Returns whether everything arrived.
pub async fn drain(shared: &Shared, n_clients: usize, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        if shared.collector.lock().all_arrived() {
            return true;
        }
        if start.elapsed() >= timeout || shared.disconnect_count() as usize >= n_clients {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After a drain that timed out: keeps waiting while the run's deliveries
/// still arrive (until none came for `quiet`, or `limit`), so that a next
/// run on the same connections does not start on the server's backlog.
/// Returns whether everything arrived.
pub async fn settle(shared: &Shared, quiet: Duration, limit: Duration) -> bool {
    let start = Instant::now();
    let (mut received, mut progress_at) = (shared.collector.lock().counts().received, start);
    loop {
        let (all_arrived, now_received) = {
            let col = shared.collector.lock();
            (col.all_arrived(), col.counts().received)
        };
        if all_arrived {
            return true;
        }
        if now_received > received {
            (received, progress_at) = (now_received, Instant::now());
        }
        if progress_at.elapsed() >= quiet || start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sleeps until `t`.
pub async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(t.into()).await;
}

/// Starts a run with `spec`, executes `plan`, drains; the usage meters
/// cover the measured part and the drain.
pub async fn run_plan(env: &Env, shared: &Shared, plan: Plan<'_>, spec: RunSpec) -> (bool, Usage) {
    shared.reset(spec, plan.fanout);
    let n_clients = plan.clients.len();
    let measure_start = spec.t0 + Duration::from_nanos(spec.measure_from_ns);
    let meters = async {
        sleep_until(measure_start).await;
        Meters::start(env.common.server_pid)
    };
    let ((), meters) = tokio::join!(schedule(plan, shared), meters);
    let drained = drain(shared, n_clients, env.drain_timeout()).await;
    (drained, meters.finish())
}

/// Builds the report of the current run of `shared`.
pub fn report(
    scenario: &'static str,
    env: &Env,
    clients: usize,
    rate: f64,
    shared: &Shared,
    usage: Usage,
) -> Report {
    let col = shared.collector.lock();
    let spec: RunSpec = *col.spec();
    let c = col.counts();
    let measured = spec.measured_s();
    let mut r = Report {
        scenario,
        target: env.target.name(),
        clients,
        offered_rate: Some(r3(rate)),
        delivered_rate: (measured > 0.0).then(|| r3(c.in_time as f64 / measured)),
        sent: c.sent,
        received: c.received,
        lost: col.lost(),
        duplicated: c.duplicated,
        out_of_order: c.out_of_order,
        duration_s: r3(measured),
        ..Report::default()
    };
    r.set_latency(col.latency());
    r.set_usage(usage);
    if c.expected != c.sent {
        r.extra("expected_deliveries", c.expected);
    }
    r.extra("dropped", c.dropped);
    r.extra("server_errors", c.server_errors);
    if env.target.kind == TargetKind::Herald {
        r.extra("refused", c.refused);
    }
    if let Some(e) = col.first_error() {
        r.extra("first_error", e);
    }
    if env.target.kind == TargetKind::Herald {
        r.extra("send_acks", c.send_acks);
    }
    if c.stale > 0 {
        r.extra("stale", c.stale);
    }
    let disconnects = shared.disconnect_count();
    r.extra("disconnects", disconnects);
    if let Some(why) = shared.first_disconnect.lock().clone() {
        r.extra("first_disconnect", why);
    }
    if let Some(g) = usage.generator_cpu_pct {
        if g > 90.0 * env.common.threads as f64 {
            r.extra("generator_saturated", true);
        }
    }
    r
}

/// Prints a report (JSON on stdout, summary on stderr).
pub fn emit(r: &Report) {
    r.emit();
    eprintln!("{}", r.summary());
    if r.extra.get("generator_saturated").is_some() {
        eprintln!(
            "warning: the generator used all its CPU; latency figures include its own \
             queueing (try --threads 2)"
        );
    }
}

/// Exit code: 2 if connections were lost during the run.
pub fn exit_code(shared: &Shared) -> ExitCode {
    let d = shared.disconnect_count();
    if d > 0 {
        eprintln!(
            "error: {d} connection(s) ended during the run; first: {}",
            shared.first_disconnect.lock().clone().unwrap_or_default()
        );
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
