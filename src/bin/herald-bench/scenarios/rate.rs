//! `rate` and `find-max`: durable 1:1 chat between C clients.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::search::{RateSearch, Stop};
use super::{emit, exit_code, report, run_plan, settle, Dest, Env, Plan};
use crate::cli::{FindMaxArgs, RateArgs, TargetKind};
use crate::client::{connect_all, shutdown, Client, ConnectOpts, Identity, Routing, SubMode};
use crate::stats::{r3, Report, RunSpec, Shared};

/// Lead time between planning a run and its t0.
const LEAD: Duration = Duration::from_millis(50);

/// C connected clients, client i being user i (herald) or consuming
/// `/queue/<prefix>i` (stomp).
pub async fn setup_one_to_one(env: &Env, n: usize) -> Result<(Vec<Client>, Arc<Shared>)> {
    if n < 2 {
        bail!("at least 2 clients are needed");
    }
    let (routing, tokens) = match env.target.kind {
        TargetKind::Herald => {
            let users = env.users(n).await?;
            let ids = users.iter().map(|u| u.user_id.clone()).collect();
            let tokens = users.into_iter().map(|u| Some(u.token)).collect();
            (Routing::HeraldUsers(ids), tokens)
        }
        TargetKind::Stomp => (Routing::StompQueues, vec![None; n]),
    };
    let identities = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| Identity {
            idx: i as u32,
            token,
        })
        .collect();
    let shared = Arc::new(Shared::new(RunSpec::new(Instant::now(), 0.0, 0.0, 0.0)));
    eprintln!("opening {n} connections to {}", env.target.ws_url);
    let started = Instant::now();
    let clients = connect_all(
        &env.target,
        &Arc::new(routing),
        &shared,
        identities,
        ConnectOpts {
            mode: SubMode::Queue,
            read_buffer: 16 * 1024,
        },
    )
    .await?;
    eprintln!(
        "  {n} connections ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok((clients, shared))
}

/// One run on connected clients, each sending to random peers.
async fn one_run(
    env: &Env,
    clients: &[Client],
    shared: &Shared,
    rate: f64,
    spec: RunSpec,
) -> (bool, crate::proc::Usage) {
    let n = clients.len() as u32;
    // Two nodes: the first node's connections send to the second's.
    let (senders, dest) = match env.target.ws_url2 {
        Some(_) => (
            (0..clients.len()).step_by(2).collect(),
            Dest::RandomOdd { n },
        ),
        None => ((0..clients.len()).collect(), Dest::RandomPeer { n }),
    };
    let plan = Plan {
        clients,
        senders,
        rate,
        dest,
        fanout: 1,
    };
    run_plan(env, shared, plan, spec).await
}

fn check_args(rate: f64, duration: f64) -> Result<()> {
    if !(rate > 0.0 && rate.is_finite()) {
        bail!("the rate must be positive");
    }
    if !(duration > 0.0 && duration.is_finite()) {
        bail!("the duration must be positive");
    }
    Ok(())
}

pub async fn run_rate(env: &Env, a: &RateArgs) -> Result<ExitCode> {
    check_args(a.rate, a.duration)?;
    env.warn_rate_limit(a.rate / a.clients as f64);
    let (clients, shared) = setup_one_to_one(env, a.clients).await?;
    eprintln!(
        "rate: {} msg/s over {} clients for {} s (+{} s warm-up)",
        a.rate, a.clients, a.duration, a.warmup
    );
    let spec = RunSpec::new(Instant::now() + LEAD, a.warmup, a.duration, a.grace_ms);
    let (drained, usage) = one_run(env, &clients, &shared, a.rate, spec).await;
    let mut r = report("rate", env, a.clients, a.rate, &shared, usage);
    r.extra("drained", drained);
    emit(&r);
    shutdown(&shared, &clients);
    Ok(exit_code(&shared))
}

/// How long find-max waits for a failed step's backlog before refining.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
const SETTLE_QUIET: Duration = Duration::from_secs(3);

/// One find-max step at `rate`: its report, why it failed (empty if good),
/// and whether later steps on the same connections still measure anything
/// (no connection lost, nothing left in flight).
async fn judged_step(
    env: &Env,
    a: &FindMaxArgs,
    clients: &[Client],
    shared: &Shared,
    rate: f64,
) -> (Report, Vec<String>, bool) {
    let disconnects_before = shared.disconnect_count();
    let spec = RunSpec::new(Instant::now() + LEAD, 0.0, a.step_duration, a.p99_ms);
    let (drained, usage) = one_run(env, clients, shared, rate, spec).await;
    let mut r = report("find-max", env, a.clients, rate, shared, usage);
    r.extra("drained", drained);
    let mut failures = Vec::new();
    match r.p99_ms {
        Some(p99) if p99 > a.p99_ms => failures.push(format!("p99 {p99} ms > {} ms", a.p99_ms)),
        Some(_) => {}
        None => failures.push("nothing delivered".to_string()),
    }
    let delivered = r.delivered_rate.unwrap_or(0.0);
    if delivered < a.min_delivered * rate {
        failures.push(format!(
            "delivered {delivered} msg/s < {}% of offered",
            a.min_delivered * 100.0
        ));
    }
    if r.lost > 0 {
        failures.push(format!("{} lost", r.lost));
    }
    let counts = shared.collector.lock().counts();
    if counts.dropped > 0 {
        failures.push(format!(
            "{} not sent (connection queues full: the server is not reading)",
            counts.dropped
        ));
    }
    if counts.server_errors > 0 {
        failures.push(format!("{} server errors", counts.server_errors));
    }
    let connections_lost = shared.disconnect_count() > disconnects_before;
    if connections_lost {
        failures.push("connections lost".to_string());
    }
    // An overloaded server may still be delivering: wait for it, else the
    // next step would measure this one's backlog.
    let caught_up = drained || settle(shared, SETTLE_QUIET, SETTLE_LIMIT).await;
    (r, failures, caught_up && !connections_lost)
}

pub async fn run_find_max(env: &Env, a: &FindMaxArgs) -> Result<ExitCode> {
    check_args(a.start_rate, a.step_duration)?;
    if !(a.step > 1.0 && a.step.is_finite()) {
        bail!("--step must be greater than 1");
    }
    let (clients, shared) = setup_one_to_one(env, a.clients).await?;
    let per_client = |rate: f64| rate / a.clients as f64;
    env.warn_rate_limit(per_client(a.start_rate));
    if a.warmup > 0.0 {
        eprintln!(
            "find-max: warm-up at {} msg/s for {} s",
            a.start_rate, a.warmup
        );
        let spec = RunSpec::new(Instant::now() + LEAD, a.warmup, 0.0, 0.0);
        one_run(env, &clients, &shared, a.start_rate, spec).await;
    }
    let mut search = RateSearch::new(a.start_rate, a.step, a.max_steps, a.refine, a.max_rate);
    let mut best: Option<Report> = None;
    let mut first_failure: Option<String> = None;
    let mut warned = per_client(a.start_rate) > 50.0;
    let stop = loop {
        let rate = match search.next() {
            Ok(rate) => rate,
            Err(stop) => break stop,
        };
        let step = search.steps() + 1;
        if !warned && per_client(rate) > 50.0 {
            env.warn_rate_limit(per_client(rate));
            warned = true;
        }
        let refining = search.refining();
        let phase = if refining { " (refining)" } else { "" };
        eprintln!(
            "find-max step {step}{phase}: {rate:.0} msg/s for {} s",
            a.step_duration
        );
        let (mut r, failures, usable) = judged_step(env, a, &clients, &shared, rate).await;
        let good = failures.is_empty();
        r.extra("step", step);
        r.extra("good", good);
        r.extra("refine", refining);
        if !good {
            r.extra("failed", failures.join("; "));
        }
        emit(&r);
        search.record(rate, good);
        if good {
            // Above every good rate before it: refining only tries rates
            // between the highest good one and the lowest failed one.
            best = Some(r);
        } else {
            first_failure.get_or_insert_with(|| failures.join("; "));
        }
        if !usable {
            search.stop_refining();
        }
    };
    let stop_reason = match stop {
        Stop::Steps(n) => format!("{n} steps done"),
        Stop::MaxRate(max) => format!("--max-rate {max} reached"),
        Stop::Failed if search.refined() > 0 => format!(
            "{}; then {} refining step(s) between the last good and the failed rate",
            first_failure.unwrap_or_default(),
            search.refined()
        ),
        Stop::Failed => first_failure.unwrap_or_default(),
    };
    let mut headline = best.unwrap_or_else(|| Report {
        scenario: "find-max",
        target: env.target.name(),
        clients: a.clients,
        ..Report::default()
    });
    let max_good = search.best_good().unwrap_or(0.0);
    headline.extra("headline", true);
    headline.extra("max_good_rate", r3(max_good));
    headline.extra("p99_threshold_ms", a.p99_ms);
    headline.extra("stop_reason", stop_reason.clone());
    headline.emit();
    eprintln!(
        "find-max result ({}, {} clients): highest good rate {max_good:.0} msg/s (p99 <= {} ms, \
         delivered >= {}%, no loss); stopped: {stop_reason}",
        env.target.name(),
        a.clients,
        a.p99_ms,
        a.min_delivered * 100.0
    );
    shutdown(&shared, &clients);
    Ok(exit_code(&shared))
}
