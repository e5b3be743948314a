//! `idle`: N idle, authenticated, subscribed connections; server RSS per
//! connection.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{exit_code, Env};
use crate::cli::{IdleArgs, TargetKind};
use crate::client::{connect_all, shutdown, ConnectOpts, Identity, Routing, SubMode};
use crate::proc::{rss_kib, CpuMeter, Pid};
use crate::stats::{r3, Report, RunSpec, Shared};

pub async fn run(env: &Env, a: &IdleArgs) -> Result<ExitCode> {
    if a.connections == 0 {
        bail!("--connections must be positive");
    }
    let pid = env.common.server_pid;
    if pid.is_none() {
        eprintln!("warning: without --server-pid the server's RSS cannot be measured");
    }
    let mut setup_hashes = 0;
    let (routing, identities) = match env.target.kind {
        TargetKind::Herald => {
            let per_user = a.conns_per_user.max(1);
            let n_users = a.connections.div_ceil(per_user);
            eprintln!(
                "idle: {} connections as {n_users} users, {per_user} each (herald's \
                 HERALD_MAX_CONNECTIONS_PER_USER must be >= {per_user}; default 16)",
                a.connections
            );
            let (users, hashes) = env.users_counting_hashes(n_users).await?;
            setup_hashes = hashes;
            if hashes > 0 && pid.is_some() {
                eprintln!(
                    "warning: the server computed {hashes} argon2 password hashes during setup; \
                     with glibc malloc that memory stays resident and is reused by new \
                     connections, so the per-connection figure reads too low. For a clean \
                     figure run once with --users-file, restart the server (same data dir), \
                     and run again: cached tokens need no password hashing."
                );
            }
            let ids = (0..a.connections)
                .map(|i| Identity {
                    idx: i as u32,
                    token: users.get(i / per_user).map(|u| u.token.clone()),
                })
                .collect::<Vec<_>>();
            let user_ids = users.into_iter().map(|u| u.user_id).collect();
            (Routing::HeraldUsers(user_ids), ids)
        }
        TargetKind::Stomp => (
            Routing::StompQueues,
            (0..a.connections)
                .map(|i| Identity {
                    idx: i as u32,
                    token: None,
                })
                .collect(),
        ),
    };
    // Let the setup's garbage settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = pid.and_then(|p| rss_kib(Pid::Other(p)));
    let gen_before = rss_kib(Pid::SelfProc);
    let cpu = CpuMeter::start(Pid::SelfProc);
    let server_cpu = pid.map(|p| CpuMeter::start(Pid::Other(p)));
    let shared = Arc::new(Shared::new(RunSpec::new(Instant::now(), 0.0, 0.0, 0.0)));
    eprintln!(
        "opening {} connections to {}",
        a.connections, env.target.ws_url
    );
    let started = Instant::now();
    let clients = connect_all(
        &env.target,
        &Arc::new(routing),
        &shared,
        identities,
        ConnectOpts {
            mode: SubMode::Queue,
            read_buffer: 4 * 1024,
        },
    )
    .await?;
    let connect_s = started.elapsed().as_secs_f64();
    eprintln!(
        "  {} connections ready in {connect_s:.1} s; settling {} s",
        clients.len(),
        a.settle
    );
    tokio::time::sleep(Duration::from_secs_f64(a.settle.max(0.0))).await;
    let rss_after = pid.and_then(|p| rss_kib(Pid::Other(p)));
    let gen_after = rss_kib(Pid::SelfProc);
    let n = clients.len();
    let mut r = Report {
        scenario: "idle",
        target: env.target.name(),
        clients: n,
        duration_s: r3(started.elapsed().as_secs_f64()),
        server_rss_kib: rss_after,
        server_cpu_pct: server_cpu.and_then(|m| m.percent()).map(r3),
        generator_cpu_pct: cpu.percent().map(r3),
        ..Report::default()
    };
    r.extra("connections", n);
    r.extra("connect_s", r3(connect_s));
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        r.extra("server_rss_before_kib", b);
        r.extra(
            "kib_per_connection",
            r3(a.saturating_sub(b) as f64 / n as f64),
        );
    }
    if let (Some(b), Some(a)) = (gen_before, gen_after) {
        r.extra("generator_rss_kib", a);
        r.extra(
            "generator_kib_per_connection",
            r3(a.saturating_sub(b) as f64 / n as f64),
        );
    }
    r.extra("disconnects", shared.disconnect_count());
    if env.target.kind == TargetKind::Herald {
        r.extra("setup_password_hashes", setup_hashes);
    }
    r.emit();
    eprintln!(
        "[idle] target {}: {n} idle subscribed connections; server RSS {} -> {} KiB = {} KiB per \
         connection (generator: {} KiB per connection)",
        env.target.name(),
        rss_before.map_or("-".into(), |v| v.to_string()),
        rss_after.map_or("-".into(), |v| v.to_string()),
        r.extra
            .get("kib_per_connection")
            .map_or("-".into(), |v| v.to_string()),
        r.extra
            .get("generator_kib_per_connection")
            .map_or("-".into(), |v| v.to_string()),
    );
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        if (a.saturating_sub(b) as f64) < n as f64 {
            eprintln!(
                "warning: under 1 KiB per connection is not credible: the server probably reused \
                 memory it had freed before (earlier runs, password hashing). Restart it and \
                 measure first thing (see --help)."
            );
        }
    }
    shutdown(&shared, &clients);
    Ok(exit_code(&shared))
}
