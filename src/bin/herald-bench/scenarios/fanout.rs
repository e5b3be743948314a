//! `fanout`: a group of G online members; messages sent to the group at
//! rate R; per-delivery latency and deliveries per second.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{emit, exit_code, report, run_plan, Dest, Env, Plan};
use crate::cli::{FanoutArgs, TargetKind};
use crate::client::{connect_all, shutdown, ConnectOpts, Identity, Routing, SubMode};
use crate::stats::{r3, RunSpec, Shared};

pub async fn run(env: &Env, a: &FanoutArgs) -> Result<ExitCode> {
    let g = a.members;
    if g < 2 {
        bail!("--members must be at least 2");
    }
    if a.senders == 0 || a.senders > g {
        bail!("--senders must be 1..=members");
    }
    if !(a.rate > 0.0 && a.duration > 0.0) {
        bail!("--rate and --duration must be positive");
    }
    env.warn_rate_limit(a.rate / a.senders as f64);
    let (routing, tokens, mode) = match env.target.kind {
        TargetKind::Herald => {
            if g > 1001 {
                bail!("herald creates groups of at most 1000 members plus the owner");
            }
            let users = env.users(g).await?;
            let rest = env.rest()?;
            let owner = users.first().map(|u| u.token.clone()).unwrap_or_default();
            let members: Vec<String> = users.iter().skip(1).map(|u| u.user_id.clone()).collect();
            let name = format!("bench-{:08x}", rand::random::<u32>());
            let group_id = rest.create_group(&owner, &name, &members).await?;
            eprintln!("fanout: group {group_id} with {g} members");
            let tokens = users.into_iter().map(|u| Some(u.token)).collect();
            (Routing::HeraldGroup(group_id), tokens, SubMode::Queue)
        }
        TargetKind::Stomp => (Routing::StompTopic, vec![None; g], SubMode::Topic),
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
    eprintln!("opening {g} connections to {}", env.target.ws_url);
    let clients = connect_all(
        &env.target,
        &Arc::new(routing),
        &shared,
        identities,
        ConnectOpts {
            mode,
            read_buffer: 16 * 1024,
        },
    )
    .await?;
    eprintln!(
        "fanout: {} msg/s to {g} members ({} deliveries/s) for {} s (+{} s warm-up)",
        a.rate,
        a.rate * (g - 1) as f64,
        a.duration,
        a.warmup
    );
    let mut spec = RunSpec::new(
        Instant::now() + Duration::from_millis(50),
        a.warmup,
        a.duration,
        a.grace_ms,
    );
    spec.per_receiver = true;
    let plan = Plan {
        clients: &clients,
        senders: (0..a.senders).collect(),
        rate: a.rate,
        dest: Dest::Fixed(0),
        fanout: (g - 1) as u64,
    };
    let (drained, usage) = run_plan(env, &shared, plan, spec).await;
    let deliveries_rate = a.rate * (g - 1) as f64;
    let mut r = report("fanout", env, g, deliveries_rate, &shared, usage);
    r.extra("members", g);
    r.extra("message_rate", r3(a.rate));
    r.extra("senders", a.senders);
    r.extra("drained", drained);
    r.extra("rates_are", "deliveries per second");
    emit(&r);
    shutdown(&shared, &clients);
    Ok(exit_code(&shared))
}
