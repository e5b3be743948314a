//! `rate` and `find-max`: durable 1:1 chat between C clients.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{emit, exit_code, report, run_plan, Dest, Env, Plan};
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
    let plan = Plan {
        clients,
        senders: (0..clients.len()).collect(),
        rate,
        dest: Dest::RandomPeer {
            n: clients.len() as u32,
        },
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
    let mut rate = a.start_rate;
    let mut best: Option<Report> = None;
    let mut stop_reason = format!("{} steps done", a.max_steps);
    let mut warned = per_client(rate) > 50.0;
    for step in 1..=a.max_steps {
        if let Some(max) = a.max_rate {
            if rate > max * (1.0 + 1e-9) {
                stop_reason = format!("--max-rate {max} reached");
                break;
            }
        }
        if !warned && per_client(rate) > 50.0 {
            env.warn_rate_limit(per_client(rate));
            warned = true;
        }
        eprintln!(
            "find-max step {step}: {rate:.0} msg/s for {} s",
            a.step_duration
        );
        let disconnects_before = shared.disconnect_count();
        let spec = RunSpec::new(Instant::now() + LEAD, 0.0, a.step_duration, a.p99_ms);
        let (drained, usage) = one_run(env, &clients, &shared, rate, spec).await;
        let mut r = report("find-max", env, a.clients, rate, &shared, usage);
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
        if shared.disconnect_count() > disconnects_before {
            failures.push("connections lost".to_string());
        }
        let good = failures.is_empty();
        r.extra("step", step);
        r.extra("good", good);
        r.extra("drained", drained);
        if !good {
            r.extra("failed", failures.join("; "));
        }
        emit(&r);
        if !good {
            stop_reason = failures.join("; ");
            break;
        }
        best = Some(r);
        rate *= a.step;
    }
    let mut headline = best.clone().unwrap_or_else(|| Report {
        scenario: "find-max",
        target: env.target.name(),
        clients: a.clients,
        ..Report::default()
    });
    let max_good = best.as_ref().and_then(|b| b.offered_rate).unwrap_or(0.0);
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
