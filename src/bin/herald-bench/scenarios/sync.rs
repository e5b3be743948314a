//! `sync`: one sender stores K messages for an offline user over STOMP
//! (every SendAck awaited), then the user pulls them all over REST with
//! `GET /inbox/sync` until `hasMore` is false.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{exit_code, Env};
use crate::client::{connect_all, shutdown, ConnectOpts, Identity, Routing, SendItem, SubMode};
use crate::herald::fresh_users;
use crate::proc::Meters;
use crate::stats::{r3, Payload, Report, RunSpec, Shared};

pub async fn run(env: &Env, a: &crate::cli::SyncArgs) -> Result<ExitCode> {
    let rest = env.rest()?;
    if a.messages == 0 || !(1..=500).contains(&a.page) {
        bail!("--messages must be positive and --page 1..=500");
    }
    let k = a.messages as u64;
    eprintln!("sync: registering a sender and an offline receiver");
    let users = fresh_users(rest, 2).await?;
    let (Some(sender), Some(receiver)) = (users.first(), users.get(1)) else {
        bail!("user setup failed");
    };
    let routing = Routing::HeraldUsers(vec![sender.user_id.clone(), receiver.user_id.clone()]);
    let shared = Arc::new(Shared::new(RunSpec::new(Instant::now(), 0.0, 1e6, 0.0)));
    let run = shared.collector.lock().spec().run;
    let clients = connect_all(
        &env.target,
        &Arc::new(routing),
        &shared,
        vec![Identity {
            idx: 0,
            token: Some(sender.token.clone()),
        }],
        ConnectOpts {
            mode: SubMode::Queue,
            read_buffer: 16 * 1024,
        },
    )
    .await?;
    let Some(client) = clients.first() else {
        bail!("no connection");
    };
    eprintln!(
        "sync: storing {k} messages ({} in flight at most; herald must allow this send rate: \
         HERALD_SEND_RATE_PER_SEC / HERALD_SEND_BURST)",
        a.window
    );
    let store_start = Instant::now();
    let deadline = store_start + Duration::from_secs_f64(a.send_timeout.max(1.0));
    let settled = |shared: &Shared| {
        let c = shared.collector.lock().counts();
        (c.send_acks, c.server_errors)
    };
    for seq in 0..k {
        loop {
            let (acks, errors) = settled(&shared);
            if errors > 0 {
                break;
            }
            if seq - (acks + errors).min(seq) < a.window.max(1) as u64 {
                break;
            }
            if Instant::now() >= deadline || shared.disconnect_count() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if settled(&shared).1 > 0 || Instant::now() >= deadline || shared.disconnect_count() > 0 {
            break;
        }
        let item = SendItem {
            dest: 1,
            payload: Payload {
                run,
                sender: 0,
                seq,
                due_ns: store_start.elapsed().as_nanos() as u64,
            },
        };
        client
            .send_tx
            .send(item)
            .await
            .ok()
            .context("the sender's connection is gone")?;
    }
    while settled(&shared).0 + settled(&shared).1 < k
        && Instant::now() < deadline
        && shared.disconnect_count() == 0
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (acks, errors) = settled(&shared);
    let store_s = store_start.elapsed().as_secs_f64();
    shutdown(&shared, &clients);
    if errors > 0 {
        let first = shared
            .collector
            .lock()
            .first_error()
            .unwrap_or("")
            .to_string();
        bail!("the server rejected sends ({errors}); first: {first}");
    }
    if shared.disconnect_count() > 0 {
        return Ok(exit_code(&shared));
    }
    if acks < k {
        bail!("only {acks} of {k} SendAcks within {} s", a.send_timeout);
    }
    eprintln!(
        "  stored {k} in {store_s:.2} s ({:.0} msg/s); syncing over REST",
        k as f64 / store_s
    );

    let meters = Meters::start(env.common.server_pid);
    let started = Instant::now();
    let mut after = 0i64;
    let mut pages = 0u64;
    let mut page_ms: Vec<f64> = Vec::new();
    let mut seen = HashSet::new();
    let (mut received, mut duplicated, mut out_of_order, mut foreign) = (0u64, 0u64, 0u64, 0u64);
    loop {
        if started.elapsed() > Duration::from_secs_f64(a.send_timeout.max(1.0)) {
            bail!("sync did not finish within {} s", a.send_timeout);
        }
        let t = Instant::now();
        let page = rest.inbox_sync(&receiver.token, after, a.page).await?;
        page_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        pages += 1;
        let mut last = after;
        for m in &page.messages {
            if m.inbox_seq <= last {
                out_of_order += 1;
            }
            last = last.max(m.inbox_seq);
            match Payload::parse(&m.content) {
                Some(p) if p.run == run => {
                    if seen.insert(p.seq) {
                        received += 1;
                    } else {
                        duplicated += 1;
                    }
                }
                _ => foreign += 1,
            }
        }
        let next = page.last_inbox_seq.unwrap_or(last).max(last);
        if !page.has_more || page.messages.is_empty() || next <= after {
            break;
        }
        after = next;
    }
    let sync_s = started.elapsed().as_secs_f64();
    let usage = meters.finish();
    page_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        let i = ((page_ms.len() as f64 - 1.0) * q).round() as usize;
        page_ms.get(i).copied().map(r3)
    };
    let mut r = Report {
        scenario: "sync",
        target: env.target.name(),
        clients: 1,
        offered_rate: None,
        delivered_rate: (sync_s > 0.0).then(|| r3(received as f64 / sync_s)),
        sent: k,
        received,
        lost: k.saturating_sub(received),
        duplicated,
        out_of_order,
        duration_s: r3(sync_s),
        ..Report::default()
    };
    r.set_usage(usage);
    r.extra("messages", k);
    r.extra("pages", pages);
    r.extra("page_size", a.page);
    if let Some(v) = pct(0.5) {
        r.extra("page_p50_ms", v);
    }
    if let Some(v) = pct(1.0) {
        r.extra("page_max_ms", v);
    }
    r.extra("store_s", r3(store_s));
    r.extra("store_rate", r3(k as f64 / store_s));
    if foreign > 0 {
        r.extra("foreign", foreign);
    }
    r.emit();
    eprintln!(
        "[sync] {received}/{k} messages synced over REST in {sync_s:.3} s ({:.0} msg/s, {pages} \
         pages); lost {}, duplicated {duplicated}, out of order {out_of_order}",
        received as f64 / sync_s.max(1e-9),
        k.saturating_sub(received)
    );
    Ok(ExitCode::SUCCESS)
}
