//! Smoke test of `herald-bench` (so the tool cannot rot): every scenario
//! against a real herald with tiny numbers, checking the exit status and
//! the JSON lines (counts, loss, consistent fields). No timing assertions:
//! the figures live in docs/BENCHMARKS.md. Also checks
//! `scripts/bench_report.py` on a synthetic results file.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

static SERVER: OnceLock<TestServer> = OnceLock::new();
/// One herald-bench run at a time: the runs share the server and the users
/// file, and should not compete for the CPU.
static SERIAL: Mutex<()> = Mutex::new(());
/// Generous bound on one run, only so that a hang cannot block CI.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn server() -> &'static TestServer {
    TestServer::shared(
        &SERVER,
        &[
            ("HERALD_SEND_RATE_PER_SEC", "100000"),
            ("HERALD_SEND_BURST", "100000"),
            ("HERALD_MAX_CONNECTIONS_PER_USER", "100000"),
        ],
    )
}

static LIMITED_SERVER: OnceLock<TestServer> = OnceLock::new();

/// A server that lets each user send 3 messages a second (burst 3): a
/// find-max step of 1 msg/s per client is good and one of 10 is not (its
/// extra sends are refused), so a search on it always bisects.
fn limited_server() -> &'static TestServer {
    TestServer::shared(
        &LIMITED_SERVER,
        &[
            ("HERALD_SEND_RATE_PER_SEC", "3"),
            ("HERALD_SEND_BURST", "3"),
            ("HERALD_MAX_CONNECTIONS_PER_USER", "100000"),
        ],
    )
}

/// Runs `cmd` with stdout and stderr in files under `dir`; returns (exit
/// success, stdout, stderr). Kills it after [`RUN_TIMEOUT`].
fn run_to_files(mut cmd: Command, dir: &Path, name: &str) -> (bool, String, String) {
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    let out = File::create(&out_path).expect("create stdout file");
    let err = File::create(&err_path).expect("create stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} did not finish within {RUN_TIMEOUT:?}\nstderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).expect("read stdout");
    let stderr = std::fs::read_to_string(&err_path).expect("read stderr");
    (status.success(), stdout, stderr)
}

/// Runs herald-bench against the shared server with `args` (after the
/// common options), asserts exit status 0 and returns its JSON lines.
fn bench(name: &str, args: &[&str]) -> Vec<Value> {
    bench_on(server(), name, args)
}

/// [`bench`] against server `s`.
fn bench_on(s: &TestServer, name: &str, args: &[&str]) -> Vec<Value> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _log = s.log_guard();
    let dir = s
        .data_dir()
        .parent()
        .expect("server root dir")
        .to_path_buf();
    let pid = s.pid().expect("the server is running").to_string();
    let users = dir.join("bench-users.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald-bench"));
    cmd.arg("--url")
        .arg(s.base_url())
        .arg("--server-pid")
        .arg(&pid)
        .arg("--users-file")
        .arg(&users)
        .args(args);
    let (ok, stdout, stderr) = run_to_files(cmd, &dir, name);
    assert!(
        ok,
        "herald-bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}\nstderr:\n{stderr}"))
        })
        .collect();
    assert!(
        !lines.is_empty(),
        "herald-bench {args:?} printed no JSON line\nstderr:\n{stderr}"
    );
    for l in &lines {
        assert!(l.is_object(), "not a JSON object: {l}");
    }
    lines
}

#[track_caller]
fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} must be an unsigned integer in {v}"))
}

#[track_caller]
fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} must be a number in {v}"))
}

/// Fields every scenario reports.
#[track_caller]
fn check_common(v: &Value, scenario: &str, clients: u64) {
    assert_eq!(v["scenario"], scenario, "{v}");
    assert_eq!(v["target"], "herald", "{v}");
    assert_eq!(u(v, "clients"), clients, "{v}");
    assert!(f(v, "duration_s") > 0.0, "{v}");
    assert!(
        u(v, "server_rss_kib") > 0,
        "server RSS read from /proc: {v}"
    );
    assert!(f(v, "server_cpu_pct") >= 0.0, "{v}");
    assert!(f(v, "generator_cpu_pct") >= 0.0, "{v}");
    if v.get("disconnects").is_some() {
        assert_eq!(u(v, "disconnects"), 0, "{v}");
    }
}

/// Latency quantiles present and ordered.
#[track_caller]
fn check_latency(v: &Value) {
    let q: Vec<f64> = ["p50_ms", "p99_ms", "p999_ms", "max_ms"]
        .iter()
        .map(|k| f(v, k))
        .collect();
    assert!(q[0] > 0.0, "{v}");
    assert!(
        q.windows(2).all(|w| w[0] <= w[1]),
        "quantiles out of order: {v}"
    );
    assert!(f(v, "mean_ms") > 0.0, "{v}");
}

/// Everything sent arrived, once, in order, without errors.
#[track_caller]
fn check_delivery(v: &Value, expected_deliveries: u64) {
    assert_eq!(u(v, "received"), expected_deliveries, "{v}");
    assert_eq!(u(v, "lost"), 0, "{v}");
    assert_eq!(u(v, "duplicated"), 0, "{v}");
    assert_eq!(u(v, "out_of_order"), 0, "{v}");
    assert_eq!(u(v, "dropped"), 0, "{v}");
    assert_eq!(u(v, "server_errors"), 0, "{v}");
    assert_eq!(u(v, "disconnects"), 0, "{v}");
    assert_eq!(v["drained"], true, "{v}");
}

/// A short rate run: 20 clients, 200 msg/s for 2 s.
const RATE_ARGS: &[&str] = &[
    "rate",
    "--clients",
    "20",
    "--rate",
    "200",
    "--duration",
    "2",
    "--warmup",
    "0.5",
];

/// A short fanout run: 10 members, 20 msg/s for 1 s.
const FANOUT_ARGS: &[&str] = &[
    "fanout",
    "--members",
    "10",
    "--rate",
    "20",
    "--duration",
    "1",
    "--warmup",
    "0.5",
];

#[test]
fn bench_rate() {
    let lines = bench("rate", RATE_ARGS);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v = &lines[0];
    check_common(v, "rate", 20);
    let sent = u(v, "sent");
    assert!(sent.abs_diff(400) <= 1, "200 msg/s for 2 s: {v}");
    u(v, "send_acks");
    check_delivery(v, sent);
    check_latency(v);
    assert_eq!(f(v, "offered_rate"), 200.0, "{v}");
    assert!(f(v, "delivered_rate") > 0.0, "{v}");
}

#[test]
fn bench_find_max() {
    let lines = bench(
        "find-max",
        &[
            "find-max",
            "--clients",
            "20",
            "--start-rate",
            "100",
            "--step",
            "2",
            "--step-duration",
            "1",
            "--max-steps",
            "2",
            "--warmup",
            "0.5",
            "--p99-ms",
            "1000",
        ],
    );
    let (head, steps) = lines.split_last().expect("at least the headline");
    // Two climbing steps, or fewer if one fails: then up to two (the
    // default `--refine`) bisecting it with the last good rate.
    assert!(
        (1..=4).contains(&steps.len()),
        "one line per step, then the headline: {lines:?}"
    );
    let mut best = 0.0;
    let mut first_failed: Option<f64> = None;
    for (i, s) in steps.iter().enumerate() {
        check_common(s, "find-max", 20);
        assert_eq!(u(s, "step"), i as u64 + 1, "{s}");
        let rate = f(s, "offered_rate");
        let refining = s["refine"]
            .as_bool()
            .unwrap_or_else(|| panic!("refine: {s}"));
        assert_eq!(refining, first_failed.is_some(), "{s}");
        match first_failed {
            None => assert_eq!(rate, 100.0 * 2f64.powi(i as i32), "{s}"),
            Some(failed) => assert!(best < rate && rate < failed, "bisects: {s}"),
        }
        let sent = u(s, "sent");
        assert!(sent > 0, "{s}");
        assert_eq!(u(s, "received"), sent, "{s}");
        assert_eq!(u(s, "lost"), 0, "{s}");
        assert_eq!(u(s, "duplicated"), 0, "{s}");
        check_latency(s);
        let good = s["good"].as_bool().unwrap_or_else(|| panic!("good: {s}"));
        if good {
            best = rate;
            assert!(s.get("failed").is_none(), "{s}");
        } else {
            assert!(s["failed"].is_string(), "a failed step says why: {s}");
            first_failed = Some(first_failed.map_or(rate, |f| f.min(rate)));
        }
    }
    assert_eq!(head["headline"], true, "{head}");
    assert_eq!(head["scenario"], "find-max", "{head}");
    assert_eq!(f(head, "max_good_rate"), best, "{head}");
    assert_eq!(f(head, "p99_threshold_ms"), 1000.0, "{head}");
    assert!(head["stop_reason"].is_string(), "{head}");
}

#[test]
fn bench_find_max_bisects_between_the_last_good_and_the_first_failed_rate() {
    let lines = bench_on(
        limited_server(),
        "find-max-refine",
        &[
            "find-max",
            "--clients",
            "20",
            "--start-rate",
            "20",
            "--step",
            "10",
            "--step-duration",
            "1",
            "--max-steps",
            "3",
            "--warmup",
            "0",
            "--p99-ms",
            "1000",
        ],
    );
    let (head, steps) = lines.split_last().expect("at least the headline");
    let good = |s: &Value| s["good"].as_bool().unwrap_or_else(|| panic!("good: {s}"));
    let refining = |s: &Value| {
        s["refine"]
            .as_bool()
            .unwrap_or_else(|| panic!("refine: {s}"))
    };
    assert_eq!(steps.len(), 4, "good, failed, two bisections: {lines:?}");
    for (i, s) in steps.iter().enumerate() {
        check_common(s, "find-max", 20);
        assert_eq!(u(s, "step"), i as u64 + 1, "{s}");
    }
    // 1 msg/s per client: within the limit.
    assert_eq!(f(&steps[0], "offered_rate"), 20.0, "{}", steps[0]);
    assert!(good(&steps[0]) && !refining(&steps[0]), "{}", steps[0]);
    // 10 msg/s per client: refused sends fail the step.
    assert_eq!(f(&steps[1], "offered_rate"), 200.0, "{}", steps[1]);
    assert!(!good(&steps[1]) && !refining(&steps[1]), "{}", steps[1]);
    assert!(u(&steps[1], "server_errors") > 0, "{}", steps[1]);
    // Refused, not lost: the server never accepted them.
    assert!(u(&steps[1], "refused") > 0, "{}", steps[1]);
    assert_eq!(u(&steps[1], "lost"), 0, "{}", steps[1]);
    let failed_why = steps[1]["failed"].as_str().unwrap_or_default();
    assert!(failed_why.contains("server errors"), "{}", steps[1]);
    // Then each step tries the geometric middle of the gap left so far.
    let (mut best, mut failed) = (20.0_f64, 200.0_f64);
    for s in &steps[2..] {
        assert!(refining(s), "{s}");
        let rate = f(s, "offered_rate");
        assert!(
            (rate - (best * failed).sqrt()).abs() < 1e-3, // reported to 3 decimals
            "bisects {best}..{failed}: {s}"
        );
        if good(s) {
            best = rate;
        } else {
            failed = rate;
        }
    }
    assert_eq!(head["headline"], true, "{head}");
    assert_eq!(f(head, "max_good_rate"), best, "{head}");
    assert!(head["stop_reason"].is_string(), "{head}");
}

#[test]
fn bench_idle() {
    let lines = bench(
        "idle",
        &[
            "idle",
            "--connections",
            "50",
            "--conns-per-user",
            "10",
            "--settle",
            "0.5",
        ],
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v = &lines[0];
    check_common(v, "idle", 50);
    assert_eq!(u(v, "connections"), 50, "{v}");
    assert!(u(v, "server_rss_before_kib") > 0, "{v}");
    assert!(f(v, "kib_per_connection") >= 0.0, "{v}");
    assert!(f(v, "connect_s") >= 0.0, "{v}");
    assert!(u(v, "generator_rss_kib") > 0, "{v}");
    u(v, "setup_password_hashes");
    assert_eq!((u(v, "sent"), u(v, "received"), u(v, "lost")), (0, 0, 0));
}

#[test]
fn bench_fanout() {
    let lines = bench("fanout", FANOUT_ARGS);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v = &lines[0];
    check_common(v, "fanout", 10);
    let sent = u(v, "sent");
    assert!(sent.abs_diff(20) <= 1, "20 msg/s for 1 s: {v}");
    assert_eq!(
        u(v, "expected_deliveries"),
        sent * 9,
        "each reaches 9 members: {v}"
    );
    check_delivery(v, sent * 9);
    check_latency(v);
    assert_eq!(u(v, "members"), 10, "{v}");
    assert_eq!(f(v, "message_rate"), 20.0, "{v}");
    assert_eq!(f(v, "offered_rate"), 180.0, "deliveries per second: {v}");
}

#[test]
fn bench_sync() {
    let lines = bench("sync", &["sync", "--messages", "300", "--page", "100"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v = &lines[0];
    check_common(v, "sync", 1);
    assert_eq!(u(v, "messages"), 300, "{v}");
    assert_eq!(u(v, "sent"), 300, "{v}");
    assert_eq!(u(v, "received"), 300, "{v}");
    assert_eq!(u(v, "lost"), 0, "{v}");
    assert_eq!(u(v, "duplicated"), 0, "{v}");
    assert_eq!(u(v, "out_of_order"), 0, "{v}");
    assert!(u(v, "pages") >= 3, "100 per page: {v}");
    assert!(f(v, "store_rate") > 0.0, "{v}");
    assert!(f(v, "delivered_rate") > 0.0, "{v}");
    assert!(v.get("foreign").is_none(), "{v}");
}

/// A running `herald-bench relay`, killed when dropped.
struct Relay {
    child: std::process::Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Relay {
    fn start() -> Relay {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
            .args(["relay", "--listen", "127.0.0.1:0", "--answer-sends"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the relay");
        let stderr = child.stderr.take().expect("the relay's stderr");
        let mut first = String::new();
        std::io::BufReader::new(stderr)
            .read_line(&mut first)
            .expect("read the relay's first line");
        let url = first
            .trim()
            .strip_prefix("relay listening on ")
            .unwrap_or_else(|| panic!("unexpected first line of the relay: {first:?}"))
            .to_string();
        let dir = tempfile::tempdir().expect("temp dir");
        Relay { child, url, dir }
    }

    /// herald-bench `args` with the stomp target against the relay.
    fn bench(&self, name: &str, args: &[&str]) -> Vec<Value> {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let pid = self.child.id().to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald-bench"));
        cmd.args([
            "--target",
            "stomp",
            "--url",
            &self.url,
            "--server-pid",
            &pid,
        ])
        .args(args);
        let (ok, stdout, stderr) = run_to_files(cmd, self.dir.path(), name);
        assert!(
            ok,
            "herald-bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The relay (the machine's ceiling) relays every message once, in order,
/// to queues and topics alike, for the stomp target's rate and fanout.
#[test]
fn bench_stomp_target_against_the_relay() {
    let relay = Relay::start();
    let lines = relay.bench("relay-rate", RATE_ARGS);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v = &lines[0];
    assert_eq!(v["target"], "stomp", "{v}");
    let sent = u(v, "sent");
    assert!(sent.abs_diff(400) <= 1, "200 msg/s for 2 s: {v}");
    check_delivery(v, sent);
    check_latency(v);
    assert!(u(v, "server_rss_kib") > 0, "the relay's RSS: {v}");

    let lines = relay.bench("relay-fanout", FANOUT_ARGS);
    let v = &lines[0];
    let sent = u(v, "sent");
    check_delivery(v, sent * 9);
}

// ---------------------------------------------------------------------------
// scripts/bench_report.py
// ---------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python3_available() -> bool {
    match Command::new("python3").arg("--version").output() {
        Ok(o) => o.status.success(),
        Err(_) => false,
    }
}

fn meta(extra: &[(&str, &str)]) -> Value {
    let mut m = json!({
        "case": "meta", "started_utc": "2025-01-01T00:00:00Z", "kernel": "Linux 6.1 x86_64",
        "nproc": "2", "cpu_model": "Test CPU", "mem_total_kib": "4194304",
        "herald_version": "herald 0.1.0", "herald_git": "abc1234", "rustc": "rustc 1.85.0",
        "rabbitmq_version": "3.10.8", "erlang_version": "1:25.2", "work_dir": "/tmp/hvr.XYZ",
        "herald_cmd": "env HERALD_LOG=warn target/release/herald serve",
        "invocation": "scripts/bench-vs-rabbitmq.sh",
        "ROUNDS": "3", "CLIENTS": "1000", "P99_MS": "50", "IDLE_CONNECTIONS": "10000",
        "FANOUT_MEMBERS": "1000", "SYNC_MESSAGES": "10000", "FIXED_RATE": "2500",
        "QUIET_PCT": "15",
    });
    for (k, v) in extra {
        m[*k] = json!(v);
    }
    m
}

/// A run's record: (round, server, case) plus herald-bench fields.
fn rec(round: u32, server: &str, case: &str, fields: Value) -> Value {
    let mut r = json!({
        "round": round, "server": server, "case": case, "exit": 0,
        "cpu_busy_before_pct": 3,
        "cmd": format!("target/release/herald-bench --users-file /tmp/hvr.XYZ/u.json {case}"),
        "scenario": if case == "fixed" { "rate" } else { case },
        "target": if server == "herald" { "herald" } else { "stomp" },
    });
    for (k, v) in fields.as_object().expect("object") {
        r[k.as_str()] = v.clone();
    }
    r
}

/// find-max steps from `start` doubling, good while p99 <= 50, then the
/// headline.
fn find_max(round: u32, server: &str, p99s: &[f64]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut best = 0.0;
    let mut rate = 1000.0;
    let mut best_rec = json!({});
    for (i, p99) in p99s.iter().enumerate() {
        let good = *p99 <= 50.0;
        let mut r = rec(
            round,
            server,
            "find-max",
            json!({"step": i + 1, "good": good, "offered_rate": rate, "p99_ms": p99,
                   "lost": 0, "sent": 100, "received": 100, "server_cpu_pct": 90.0}),
        );
        if !good {
            r["failed"] = json!("p99 too high");
        }
        if good {
            best = rate;
            best_rec = r.clone();
        }
        out.push(r);
        rate *= 2.0;
    }
    best_rec["headline"] = json!(true);
    best_rec["max_good_rate"] = json!(best);
    best_rec["p99_threshold_ms"] = json!(50.0);
    best_rec["stop_reason"] = json!("p99 too high");
    best_rec["round"] = json!(round);
    best_rec["server"] = json!(server);
    best_rec["case"] = json!("find-max");
    out.push(best_rec);
    out
}

fn write_jsonl(path: &Path, records: &[Value]) {
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).expect("write jsonl");
}

fn synthetic_results(herald_p99s: [&[f64]; 3]) -> Vec<Value> {
    let mut v = vec![meta(&[])];
    let rabbit_p99s: [&[f64]; 3] = [&[10.0, 30.0, 80.0], &[12.0, 30.0, 900.0], &[9.0, 70.0]];
    let idle_h = [8.0, 8.5, 9.0];
    for round in 1..=3u32 {
        let i = (round - 1) as usize;
        v.extend(find_max(round, "herald", herald_p99s[i]));
        v.push(rec(
            round,
            "herald",
            "fixed",
            json!({"p50_ms": 1.0, "p99_ms": 4.0 + i as f64, "p999_ms": 9.0, "lost": 0,
                   "delivered_rate": 2500.0, "server_cpu_pct": 20.0}),
        ));
        v.push(rec(
            round,
            "herald",
            "fanout",
            json!({"p99_ms": 20.0, "lost": 0, "delivered_rate": 9990.0}),
        ));
        v.push(rec(
            round,
            "herald",
            "sync",
            json!({"duration_s": 0.4, "delivered_rate": 25000.0, "lost": 0}),
        ));
        v.push(rec(
            round,
            "herald",
            "idle",
            json!({"kib_per_connection": idle_h[i], "clients": 10000,
                   "setup_password_hashes": 0}),
        ));
        v.extend(find_max(round, "rabbitmq", rabbit_p99s[i]));
        let mut fixed = rec(
            round,
            "rabbitmq",
            "fixed",
            json!({"p50_ms": 3.0, "p99_ms": 40.0, "p999_ms": 90.0, "lost": 0,
                   "delivered_rate": 2400.0, "server_cpu_pct": 150.0}),
        );
        if round == 3 {
            fixed["exit"] = json!(2);
            fixed["lost"] = json!(7);
        }
        v.push(fixed);
        v.push(rec(
            round,
            "rabbitmq",
            "fanout",
            json!({"p99_ms": 60.0, "lost": 0, "delivered_rate": 9990.0}),
        ));
        v.push(rec(
            round,
            "rabbitmq",
            "idle",
            json!({"kib_per_connection": 170.0, "clients": 10000}),
        ));
    }
    v.push(json!({"case": "end", "finished_utc": "2025-01-01T01:00:00Z"}));
    v
}

/// `v` (synthetic_results) with the relay's find-max and fixed runs (it has
/// no other case), one per round, good up to `good_up_to[round - 1]`.
fn with_relay(mut v: Vec<Value>, good_up_to: [f64; 3]) -> Vec<Value> {
    let end = v.pop().expect("the end record");
    for round in 1..=3u32 {
        // find_max's rates: 1000, 2000, 4000, ...
        let good = (good_up_to[(round - 1) as usize] / 1000.0).log2() as usize + 1;
        let p99s: Vec<f64> = (0..good).map(|_| 1.0).chain([80.0]).collect();
        v.extend(find_max(round, "relay", &p99s));
        v.push(rec(
            round,
            "relay",
            "fixed",
            json!({"p50_ms": 0.5, "p99_ms": 1.5, "p999_ms": 3.0, "lost": 0,
                   "delivered_rate": 2500.0, "server_cpu_pct": 10.0}),
        ));
    }
    v.push(end);
    v
}

fn run_report(args: &[&Path]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new("python3");
    cmd.current_dir(repo())
        .arg(repo().join("scripts/bench_report.py"))
        .args(args);
    run_to_files(cmd, dir.path(), "report")
}

#[test]
fn bench_report_on_synthetic_results() {
    if !python3_available() {
        eprintln!("SKIPPED: python3 is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let results = dir.path().join("results.jsonl");
    let before = dir.path().join("before.jsonl");
    let md = dir.path().join("out/BENCHMARKS.md");
    let svg = dir.path().join("out/bench/chart.svg");
    // Herald: 1000, 2000, ... good up to 16000, 32000, 8000 (p99 <= 50).
    // The relay (the machine's ceiling): 16000, 16000, 32000.
    let five = [1.0, 1.0, 2.0, 3.0, 5.0];
    write_jsonl(
        &results,
        &with_relay(
            synthetic_results([
                &[five.as_slice(), &[60.0]].concat(),
                &[five.as_slice(), &[9.0, 99.0]].concat(),
                &[&five[..4], &[70.0]].concat(),
            ]),
            [16000.0, 16000.0, 32000.0],
        ),
    );
    write_jsonl(
        &before,
        &synthetic_results([&[1.0, 60.0], &[1.0, 2.0, 60.0], &[1.0, 2.0, 3.0, 60.0]]),
    );
    let (ok, _, stderr) = run_report(&[
        &results,
        Path::new("--before"),
        &before,
        Path::new("--out"),
        &md,
        Path::new("--svg"),
        &svg,
    ]);
    assert!(ok, "bench_report.py failed:\n{stderr}");
    let text = std::fs::read_to_string(&md).expect("report written");
    let row = |prefix: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no row starting with {prefix:?} in\n{text}"))
            .to_string()
    };
    // Medians, spreads and ratios from the records only; the relay in the
    // last column where it ran (find-max, fixed).
    assert!(
        row("| Metric | Unit | Herald |")
            .ends_with("| Ratio | relay (stores nothing: the machine's ceiling) |"),
        "{text}"
    );
    assert_eq!(
        row("| find-max: highest good rate"),
        "| find-max: highest good rate (durable 1:1) | msg/s | 16,000 (8,000–32,000, 3 runs) \
         | 2,000 (1,000–2,000, 3 runs) | 8.00× | 16,000 (16,000–32,000, 3 runs) |"
    );
    assert!(
        row("| find-max: server CPU at that rate").ends_with("| – | 90.0 (90.0–90.0, 3 runs) |"),
        "{text}"
    );
    assert_eq!(
        row("| idle: server RSS per connection"),
        "| idle: server RSS per connection | KiB | 8.50 (8.00–9.00, 3 runs) \
         | 170 (170–170, 3 runs) | 20.0× | – |"
    );
    assert_eq!(
        row("| fixed rate: p99 |"),
        "| fixed rate: p99 | ms | 5.00 (4.00–6.00, 3 runs) | 40.0 (40.0–40.0, 3 runs) | 8.00× \
         | 1.50 (1.50–1.50, 3 runs) |"
    );
    assert!(
        row("| sync: time to pull all messages").contains("| 0.4 (0.4–0.4, 3 runs) | – | – |"),
        "RabbitMQ has no sync: {text}"
    );
    // The bar: ratio 8 < 10.
    assert!(
        row("| find-max durable, 1000 clients").ends_with("| **no** |"),
        "{text}"
    );
    assert!(row("| idle, 10000 connections").ends_with("| **yes** |"));
    // The ceiling against the bar, and Herald's share of it.
    let ceiling = row("**The machine's ceiling**");
    assert!(
        ceiling.contains(
            "ceiling 16,000 msg/s < 10 × RabbitMQ 20,000 msg/s: no server can meet the 10× bar \
             on this machine."
        ),
        "{ceiling}"
    );
    assert!(
        ceiling.ends_with(
            "Herald reaches 100% of the ceiling (Herald/relay = 16,000 / 16,000 msg/s = 1.00×)."
        ),
        "{ceiling}"
    );
    // Problems are reported, not hidden.
    assert!(
        text.contains("round 3, RabbitMQ Web-STOMP, fixed: exit status 2; lost 7"),
        "{text}"
    );
    assert!(!text.contains("Reduced configuration"), "{text}");
    // Before/after: herald before 2000 (1000-4000) -> 16000.
    assert!(
        row("| find-max: highest good rate (durable 1:1) (msg/s) | Herald |")
            .ends_with("| 2,000 (1,000–4,000, 3 runs) | 16,000 (8,000–32,000, 3 runs) | 8.00× |"),
        "{text}"
    );
    assert!(text.contains("![p99 latency against offered rate](bench/chart.svg)"));
    assert!(text.contains("--users-file $WORK/u.json"), "{text}");

    let chart = std::fs::read_to_string(&svg).expect("chart written");
    assert!(chart.starts_with("<svg"), "{chart}");
    assert_eq!(chart.matches("<polyline").count(), 4, "{chart}");
    for name in [
        "Herald",
        "RabbitMQ Web-STOMP",
        "relay (stores nothing)",
        "Herald (before)",
        "p99 limit 50 ms",
    ] {
        assert!(chart.contains(name), "{name} missing in the chart");
    }
    let (well_formed, _, err) = {
        let mut cmd = Command::new("python3");
        cmd.args([
            "-c",
            "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])",
        ])
        .arg(&svg);
        run_to_files(cmd, dir.path(), "xml")
    };
    assert!(well_formed, "the SVG is not well-formed XML: {err}");

    // Results without the relay (older files) render without it.
    let (ok, _, stderr) = run_report(&[&before, Path::new("--out"), &md, Path::new("--svg"), &svg]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&md).expect("report written");
    assert_eq!(
        text.lines().find(|l| l.starts_with("| fixed rate: p99 |")),
        Some("| fixed rate: p99 | ms | 5.00 (4.00–6.00, 3 runs) | 40.0 (40.0–40.0, 3 runs) | 8.00× |"),
        "{text}"
    );
    assert!(!text.contains("**The machine's ceiling**"), "{text}");
    assert!(!text.contains("relay (stores nothing"), "{text}");
    let chart = std::fs::read_to_string(&svg).expect("chart written");
    assert_eq!(chart.matches("<polyline").count(), 2, "{chart}");

    // A ceiling at or above 10x RabbitMQ says so.
    write_jsonl(
        &results,
        &with_relay(
            synthetic_results([&[1.0, 60.0], &[1.0, 2.0, 60.0], &[1.0, 2.0, 3.0, 60.0]]),
            [32000.0; 3],
        ),
    );
    let (ok, _, stderr) =
        run_report(&[&results, Path::new("--out"), &md, Path::new("--svg"), &svg]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&md).expect("report written");
    assert!(
        text.contains(
            "ceiling 32,000 msg/s ≥ 10 × RabbitMQ 20,000 msg/s: the machine leaves room for the \
             10× bar. Herald reaches 6% of the ceiling (Herald/relay = 2,000 / 32,000 msg/s = 0.06×)."
        ),
        "{text}"
    );

    // A reduced configuration is labelled as such.
    write_jsonl(
        &results,
        &[
            meta(&[("CLIENTS", "50"), ("ROUNDS", "1")]),
            rec(
                1,
                "herald",
                "sync",
                json!({"duration_s": 0.1, "delivered_rate": 3000.0, "lost": 0}),
            ),
        ],
    );
    let (ok, _, stderr) =
        run_report(&[&results, Path::new("--out"), &md, Path::new("--svg"), &svg]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&md).expect("report written");
    assert!(
        text.contains("**Reduced configuration:** CLIENTS=50, ROUNDS=1"),
        "{text}"
    );
    assert!(text.contains("No earlier results were given"), "{text}");

    // Broken input is an error, not a report.
    std::fs::write(&results, "{\"case\":\"meta\"}\nnot json\n").expect("write");
    let (ok, _, stderr) =
        run_report(&[&results, Path::new("--out"), &md, Path::new("--svg"), &svg]);
    assert!(!ok, "a broken results file must fail");
    assert!(stderr.contains("results.jsonl:2"), "{stderr}");
}
