//! Shared harness for the integration tests: starts the real `herald`
//! binary on a free port with its own data directory, plus a small REST
//! helper (reqwest) and a STOMP-over-WebSocket client built on the crate's
//! own codec. Every wait has a timeout so no test can hang.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald::stomp::{encode_to_vec, Command, Decoded, Decoder, Frame, Limits, StompVersion};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// HS256 secret every test server uses.
pub const JWT_SECRET: &str = "herald-integration-test-secret-0123456789abcdef";
/// REST base path.
pub const API: &str = "/api/v1";
/// How long a server may take to answer `/healthz` after spawning.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a cluster node may take to be ready (its consumers get their
/// queues at the broker's next rebalance).
pub const CLUSTER_STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// Default wait for something that should arrive.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_millis() as i64
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A name unique within this run (and very likely across runs), at most
/// `prefix.len() + 20` characters of `[A-Za-z0-9_]`.
pub fn unique(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}{:08x}{:x}_{n}",
        rand::random::<u32>(),
        std::process::id() % 0xffff
    )
}

/// Asserts that `v` is a JSON string of decimal digits (a 64-bit id).
#[track_caller]
pub fn assert_id(v: &Value, what: &str) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} must be a JSON string of digits, got {v}"));
    assert!(
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
        "{what} must be decimal digits, got {s:?}"
    );
    s.parse::<u64>()
        .unwrap_or_else(|e| panic!("{what} {s:?} is not a u64: {e}"));
    s.to_string()
}

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Blocking `GET path` on 127.0.0.1:port; returns the status code.
pub fn raw_http_status(port: u16, path: &str) -> Option<u16> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = StdTcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while buf.len() < 12 {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let _version = parts.next()?;
    parts.next()?.parse().ok()
}

fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    let all: Vec<&str> = s.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}

/// Prints the tail of a server log if the current thread panics while it
/// is alive (hold one per test on shared servers).
pub struct LogGuard {
    path: PathBuf,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- server log tail ({}) -----\n{}\n----- end of server log -----",
                self.path.display(),
                log_tail(&self.path, 80)
            );
        }
    }
}

/// One real `herald serve` process with its own temporary data directory.
pub struct TestServer {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    child: Option<Child>,
    /// `sh` process that SIGKILLs the server and removes the directory when
    /// its stdin (held by this process) closes, i.e. when the test binary
    /// exits without dropping us (servers kept in statics).
    watchdog: Option<Child>,
    /// In cluster mode, the other node of the server's cluster: REST calls
    /// and STOMP connections alternate between the two, so that senders
    /// and recipients meet across nodes.
    peer: Option<Box<TestServer>>,
    /// Which node the next STOMP connection goes to.
    stomp_turn: AtomicU64,
}

/// The backend the tests run on: `HERALD_TEST_BACKEND=cluster` runs every
/// server in cluster mode on the services of `scripts/services.sh` (which
/// must be up), each in a cluster of its own unless a test puts several
/// in one (`Cluster`).
pub fn cluster_mode() -> bool {
    match std::env::var("HERALD_TEST_BACKEND").as_deref() {
        Ok("cluster") => true,
        Ok("embedded") | Err(_) => false,
        Ok(other) => panic!("HERALD_TEST_BACKEND={other}: expected embedded or cluster"),
    }
}

/// The `HERALD_*` settings `scripts/services.sh env` prints.
fn services_env() -> &'static Vec<(String, String)> {
    static ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ENV.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
        let out = Proc::new("bash")
            .arg(&script)
            .arg("env")
            .output()
            .expect("run scripts/services.sh env");
        assert!(
            out.status.success(),
            "scripts/services.sh env failed (run scripts/services.sh up first): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("export "))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches(['\'', '"']).to_string()))
            .collect()
    })
}

/// The settings of node `node` of the cluster `name`, which has its own
/// database (ids are unique within a cluster only).
pub fn cluster_env(name: &str, node: u16) -> Vec<(String, String)> {
    let mut env = services_env().clone();
    for (k, v) in &mut env {
        if k == "HERALD_MONGODB_URI" {
            let host_end = v.find("://").map(|i| i + 3).unwrap_or(0);
            if let Some(path) = v[host_end..].find('/') {
                v.truncate(host_end + path);
            }
            v.push('/');
            v.push_str(name);
        }
    }
    env.push(("HERALD_CLUSTER_NAME".into(), name.into()));
    env.push(("HERALD_NODE_ID".into(), node.to_string()));
    env
}

/// A cluster name no other test (or run) uses.
pub fn new_cluster_name() -> String {
    format!("it{:08x}", rand::random::<u32>())
}

impl TestServer {
    /// Starts a server with `HERALD_DURABILITY=normal` (fast) plus `env`
    /// (which may override it) and waits until `/healthz` is 200 (in
    /// cluster mode, `/readyz`: its consumers hold their queues).
    pub fn start(env: &[(&str, &str)]) -> TestServer {
        let mut all: Vec<(String, String)> = vec![("HERALD_DURABILITY".into(), "normal".into())];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Self::start_with(all)
    }

    /// Starts a server with exactly `env` on top of the defaults (so the
    /// default durability, `full`, unless `env` says otherwise).
    pub fn start_with(env: Vec<(String, String)>) -> TestServer {
        if cluster_mode() && !env.iter().any(|(k, _)| k == "HERALD_CLUSTER_NAME") {
            return Self::start_pair(env);
        }
        let dir = tempfile::Builder::new()
            .prefix("herald-it-")
            .tempdir()
            .expect("create temp dir");
        let root = dir.path().to_path_buf();
        let data_dir = root.join("data");
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        let log_path = root.join("server.log");
        let mut server = TestServer {
            dir: Some(dir),
            root,
            data_dir,
            log_path,
            env,
            port: 0,
            child: None,
            watchdog: None,
            peer: None,
            stomp_turn: AtomicU64::new(0),
        };
        server.spawn();
        server
    }

    /// Two nodes of a new cluster, each with `env` on top.
    fn start_pair(env: Vec<(String, String)>) -> TestServer {
        let name = new_cluster_name();
        let node = |n| {
            let mut all = cluster_env(&name, n);
            all.extend(env.iter().cloned());
            std::thread::spawn(move || TestServer::start_with(all))
        };
        let (first, second) = (node(1), node(2));
        let mut server = first.join().expect("node 1 starts");
        server.peer = Some(Box::new(second.join().expect("node 2 starts")));
        server
    }

    /// A lazily started server shared by all tests of one test binary. It
    /// is killed (by its watchdog) when the test binary exits.
    pub fn shared(
        cell: &'static OnceLock<TestServer>,
        env: &[(&str, &str)],
    ) -> &'static TestServer {
        cell.get_or_init(|| TestServer::start(env))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id of the running server (None while it is stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The ports of the server's nodes: its own, and in cluster mode its
    /// peer's.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = vec![self.port];
        ports.extend(self.peer.as_ref().map(|p| p.port));
        ports
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn log_guard(&self) -> LogGuard {
        LogGuard {
            path: self.log_path.clone(),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// A fresh REST client for this server (one per test: reqwest pools
    /// connections per tokio runtime).
    pub fn api(&self) -> Api {
        match &self.peer {
            Some(peer) => Api::over(&[self.port, peer.port]),
            None => Api::new(self.port),
        }
    }

    /// A connected STOMP client; in cluster mode, on each node in turn.
    pub async fn stomp(&self, token: &str) -> Stomp {
        let turn = self.stomp_turn.fetch_add(1, Ordering::Relaxed);
        let port = match &self.peer {
            Some(peer) if turn % 2 == 1 => peer.port,
            _ => self.port,
        };
        Stomp::connect(port, token).await
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.port = free_port();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open server log");
        {
            let mut l = &log;
            let _ = writeln!(
                l,
                "===== test harness: starting herald on 127.0.0.1:{} env={:?} =====",
                self.port, self.env
            );
        }
        let mut cmd = Proc::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HERALD_JWT_SECRET", JWT_SECRET);
        // The tests register and log in many users from 127.0.0.1: no
        // registration or login throttling unless a test sets its own.
        cmd.env("HERALD_REGISTRATIONS_PER_HOUR", "0");
        cmd.env("HERALD_LOGIN_MAX_FAILURES", "0");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the herald binary");
        let pid = child.id();
        self.child = Some(child);
        // The watchdog only deletes the directory if we never dropped the
        // TempDir (static servers); Drop and restarts kill it first.
        let watchdog = Proc::new("sh")
            .arg("-c")
            .arg("read _unused; kill -9 \"$0\" 2>/dev/null; rm -rf \"$1\"")
            .arg(pid.to_string())
            .arg(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn watchdog shell");
        self.watchdog = Some(watchdog);
        self.wait_healthy();
    }

    /// What answers 200 once the server can be used: a cluster node also
    /// waits for its consumers' queues (the broker assigns them at its
    /// next rebalance).
    fn ready_path(&self) -> &'static str {
        if self
            .env
            .iter()
            .any(|(k, v)| k == "HERALD_TOPIC" && v == "rocketmq")
        {
            "/readyz"
        } else {
            "/healthz"
        }
    }

    fn wait_healthy(&mut self) {
        let timeout = if self.ready_path() == "/readyz" {
            CLUSTER_STARTUP_TIMEOUT
        } else {
            STARTUP_TIMEOUT
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "herald exited during startup with {status}\n{}",
                        self.log_tail(60)
                    );
                }
            }
            if raw_http_status(self.port, self.ready_path()) == Some(200) {
                return;
            }
            if Instant::now() > deadline {
                let tail = self.log_tail(60);
                self.kill_all();
                panic!(
                    "herald did not answer GET {} with 200 within {timeout:?}\n{tail}",
                    self.ready_path()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    fn kill_all(&mut self) {
        self.kill_watchdog();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILLs the server (no graceful shutdown) and waits for it to die.
    pub fn kill_9(&mut self) {
        self.kill_watchdog();
        let mut c = self.child.take().expect("server is not running");
        c.kill().expect("SIGKILL the server");
        let status = c.wait().expect("wait for the killed server");
        assert!(!status.success(), "a SIGKILLed server cannot exit cleanly");
    }

    /// Starts the server again on the same data directory (on a new port:
    /// read `port()` again).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill_all();
        }
        self.spawn();
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of the
    /// server's next start (`restart`).
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    /// Sends SIGTERM: the server stops gracefully.
    pub fn terminate(&mut self) {
        let pid = self.pid().expect("server is not running");
        let status = Proc::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "SIGTERM the server: {status}");
    }

    /// Waits until the server exits by itself; panics after `within`.
    /// Async: the test's own tasks (clients of the server) go on meanwhile.
    pub async fn wait_for_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut().expect("server is not running");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.kill_watchdog();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {within:?}\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- server log tail ({}) -----\n{}\n----- end of server log -----",
                self.log_path.display(),
                self.log_tail(80)
            );
        }
        self.kill_all();
        if std::env::var_os("HERALD_TEST_KEEP_DIR").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("keeping {}", d.keep().display());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------

/// A registered and logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub user_id: String,
    pub token: String,
    pub username: String,
    pub password: String,
    pub nickname: String,
}

/// A REST answer: status, raw text and the body parsed as JSON (`Null`
/// when it is not JSON).
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub text: String,
    pub body: Value,
    pub content_type: Option<String>,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// Asserts the status, printing the body on mismatch.
    #[track_caller]
    pub fn expect(&self, status: u16, what: &str) -> &Value {
        assert_eq!(
            self.status, status,
            "{what}: expected HTTP {status}, got {} with body {}",
            self.status, self.text
        );
        &self.body
    }

    /// The `Retry-After` of a 429, in seconds; asserts that it is there
    /// and a whole number of seconds, at least 1.
    #[track_caller]
    pub fn retry_after(&self) -> u64 {
        let raw = self
            .headers
            .get(reqwest::header::RETRY_AFTER)
            .unwrap_or_else(|| panic!("no Retry-After on {} {}", self.status, self.text));
        let secs: u64 = raw
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("Retry-After must be whole seconds, got {raw:?}"));
        assert!(secs >= 1, "Retry-After must be at least 1, got {secs}");
        secs
    }

    /// Asserts an error answer: status and `{code, message}` body.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str, what: &str) {
        self.expect(status, what);
        assert_eq!(
            self.body["code"].as_str(),
            Some(code),
            "{what}: error body must have code {code:?}, got {}",
            self.text
        );
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: error body must have a non-empty message, got {}",
            self.text
        );
    }
}

#[derive(Clone)]
pub struct Api {
    /// The servers asked, in turn (one, or the nodes of a cluster).
    bases: Arc<Vec<String>>,
    turn: Arc<AtomicU64>,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(port: u16) -> Api {
        Api::over(&[port])
    }

    /// A client that sends each request to the next of `ports`.
    pub fn over(ports: &[u16]) -> Api {
        Api {
            bases: Arc::new(
                ports
                    .iter()
                    .map(|p| format!("http://127.0.0.1:{p}"))
                    .collect(),
            ),
            turn: Arc::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("build reqwest client"),
        }
    }

    /// The server the next request goes to.
    fn base(&self) -> &str {
        let n = self.turn.fetch_add(1, Ordering::Relaxed) as usize;
        &self.bases[n % self.bases.len()]
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{}", self.base(), path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        Self::finish(rb, &format!("{method} {path}")).await
    }

    async fn finish(rb: reqwest::RequestBuilder, what: &str) -> Resp {
        let resp = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"));
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            text,
            body,
            content_type,
            headers,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(reqwest::Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.request(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn post_empty(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(reqwest::Method::POST, path, token, None).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(reqwest::Method::DELETE, path, token, None)
            .await
    }

    /// POST `body` as JSON with extra request headers.
    pub async fn post_with_headers(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut rb = self
            .http
            .post(format!("{}{}", self.base(), path))
            .json(body);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        Self::finish(rb, &format!("POST {path}")).await
    }

    /// POST with a raw body and content type (for malformed JSON).
    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: &str) -> Resp {
        let mut rb = self
            .http
            .post(format!("{}{}", self.base(), path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        Self::finish(rb, &format!("POST {path} (raw)")).await
    }

    pub async fn register(&self, username: &str, password: &str, nickname: &str) -> Resp {
        self.post(
            &format!("{API}/auth/register"),
            None,
            &json!({"username": username, "password": password, "nickname": nickname}),
        )
        .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Resp {
        self.post(
            &format!("{API}/auth/login"),
            None,
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// Registers and logs in a fresh random user.
    pub async fn new_user(&self) -> TestUser {
        let username = unique("u");
        let password = "correct-horse-battery".to_string();
        let nickname = format!("Nick {username}");
        let r = self.register(&username, &password, &nickname).await;
        r.expect(201, "register");
        let user_id = assert_id(&r.body["userId"], "register userId");
        let l = self.login(&username, &password).await;
        l.expect(200, "login");
        assert_eq!(l.body["userId"].as_str(), Some(user_id.as_str()));
        let token = l.body["token"]
            .as_str()
            .expect("login token must be a string")
            .to_string();
        TestUser {
            user_id,
            token,
            username,
            password,
            nickname,
        }
    }

    pub async fn new_users(&self, n: usize) -> Vec<TestUser> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.new_user().await);
        }
        v
    }

    /// POST /messages, or `None` if no answer came (the server died).
    pub async fn try_send(&self, from: &TestUser, req: &Value) -> Option<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}{API}/messages", self.base()))
            .bearer_auth(&from.token)
            .json(req)
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Some((status, body))
    }

    /// POST /messages; returns the raw answer.
    pub async fn send(&self, from: &TestUser, req: &Value) -> Resp {
        self.post(&format!("{API}/messages"), Some(&from.token), req)
            .await
    }

    /// Sends a text to a user and asserts 202; returns the SendAck.
    pub async fn send_to_user(&self, from: &TestUser, to: &str, content: &str) -> Value {
        let req = send_req_user(to, content, &unique("c"));
        let r = self.send(from, &req).await;
        r.expect(202, "POST /messages").clone()
    }

    /// Sends a text to a group and asserts 202; returns the SendAck.
    pub async fn send_to_group(&self, from: &TestUser, group_id: &str, content: &str) -> Value {
        let req = send_req_group(group_id, content, &unique("c"));
        let r = self.send(from, &req).await;
        r.expect(202, "POST /messages (group)").clone()
    }

    /// Creates a group owned by `owner` with `members`; returns the group.
    pub async fn create_group(&self, owner: &TestUser, name: &str, members: &[&TestUser]) -> Value {
        let ids: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
        let r = self
            .post(
                &format!("{API}/groups"),
                Some(&owner.token),
                &json!({"name": name, "memberIds": ids}),
            )
            .await;
        r.expect(201, "POST /groups").clone()
    }

    /// Every inbox entry of `user` via `/inbox/sync` paging.
    pub async fn sync_all(&self, user: &TestUser) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = 0i64;
        for _ in 0..10_000 {
            let r = self
                .get(
                    &format!("{API}/inbox/sync?afterInboxSeq={cursor}&limit=500"),
                    Some(&user.token),
                )
                .await;
            let body = r.expect(200, "GET /inbox/sync").clone();
            let msgs = body["messages"].as_array().expect("messages array").clone();
            let last = body["lastInboxSeq"]
                .as_i64()
                .expect("lastInboxSeq must be a number");
            let has_more = body["hasMore"].as_bool().expect("hasMore must be a bool");
            out.extend(msgs);
            if !has_more {
                return out;
            }
            assert!(
                last > cursor,
                "sync cursor must advance ({cursor} -> {last})"
            );
            cursor = last;
        }
        panic!("sync never ended");
    }

    /// Waits until `message_id` shows up in `user`'s `/inbox/sync` (a
    /// `SendAck` means durable, not yet readable); returns the inbox.
    pub async fn wait_visible(&self, user: &TestUser, message_id: &str) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let list = self.sync_all(user).await;
            if list
                .iter()
                .any(|m| m["messageId"].as_str() == Some(message_id))
            {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "message {message_id} not in the inbox of {} within {WAIT:?}",
                user.user_id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `check` on GET `path` until it returns true (or panics after
    /// `timeout`, showing the last body).
    pub async fn poll_until(
        &self,
        path: &str,
        token: Option<&str>,
        timeout: Duration,
        check: impl Fn(&Resp) -> bool,
    ) -> Resp {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.get(path, token).await;
            if check(&r) {
                return r;
            }
            if Instant::now() > deadline {
                panic!(
                    "GET {path}: condition not met within {timeout:?}; last answer {} {}",
                    r.status, r.text
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn send_req_user(to: &str, content: &str, cmid: &str) -> Value {
    json!({
        "toUserId": to,
        "messageType": 1,
        "content": content,
        "clientMessageId": cmid,
        "clientTimestamp": now_ms(),
    })
}

pub fn send_req_group(group_id: &str, content: &str, cmid: &str) -> Value {
    json!({
        "groupId": group_id,
        "messageType": 1,
        "content": content,
        "clientMessageId": cmid,
        "clientTimestamp": now_ms(),
    })
}

// ---------------------------------------------------------------------------
// STOMP over WebSocket
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub enum RecvError {
    Timeout,
    Closed(String),
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A STOMP 1.2 client over one WebSocket connection.
pub struct Stomp {
    ws: Ws,
    decoder: Decoder,
    /// Frames received and not consumed yet, in arrival order.
    queue: VecDeque<Frame>,
    /// When each heart-beat EOL arrived.
    pub heartbeats: Vec<Instant>,
    /// Send WebSocket binary messages instead of text.
    pub binary: bool,
    /// Whether the last WebSocket data message received was binary.
    pub last_rx_binary: Option<bool>,
    /// Message types (true = binary) of every data message received.
    pub rx_kinds: Vec<bool>,
    pub connected: Option<Frame>,
    pub closed: Option<String>,
    /// The code and reason of the server's WebSocket close frame, if any.
    pub close_frame: Option<(u16, String)>,
    next_receipt: u64,
}

pub fn frame(command: Command, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Frame {
    let mut f = Frame::new(command);
    for (k, v) in headers {
        f.push_header(*k, *v);
    }
    f.with_body(body)
}

pub fn encode(f: &Frame) -> Vec<u8> {
    encode_to_vec(f, StompVersion::V1_2)
}

impl Stomp {
    /// Opens the WebSocket (subprotocol `v12.stomp`), no STOMP CONNECT yet.
    pub async fn open(port: u16) -> Stomp {
        Self::open_with_protocol(port, "v12.stomp")
            .await
            .unwrap_or_else(|e| panic!("WebSocket handshake failed: {e}"))
    }

    pub async fn open_with_protocol(port: u16, protocol: &str) -> Result<Stomp, String> {
        let mut req = format!("ws://127.0.0.1:{port}/ws")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).map_err(|e| e.to_string())?,
        );
        let (ws, _resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| "WebSocket handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(Stomp {
            ws,
            decoder: Decoder::new(Limits {
                max_frame_bytes: 64 * 1024 * 1024,
                max_headers: 4096,
                max_header_line_bytes: 1024 * 1024,
            }),
            queue: VecDeque::new(),
            heartbeats: Vec::new(),
            binary: false,
            last_rx_binary: None,
            rx_kinds: Vec::new(),
            connected: None,
            closed: None,
            close_frame: None,
            next_receipt: 0,
        })
    }

    /// Opens a connection and authenticates with `Authorization: Bearer`,
    /// no heart-beats; panics unless CONNECTED arrives.
    pub async fn connect(port: u16, token: &str) -> Stomp {
        let auth = format!("Bearer {token}");
        Self::connect_with(port, &[("Authorization", auth.as_str())]).await
    }

    /// Opens a connection and sends CONNECT with `accept-version:1.2`,
    /// `host`, `heart-beat:0,0` and `extra` headers (extra ones first, so
    /// they win); panics unless CONNECTED arrives.
    pub async fn connect_with(port: u16, extra: &[(&str, &str)]) -> Stomp {
        let mut c = Stomp::open(port).await;
        let f = c.send_connect(extra).await;
        assert_eq!(
            f.command,
            Command::Connected,
            "expected CONNECTED, got {f:?}"
        );
        c
    }

    /// Sends CONNECT (defaults as in `connect_with`) and returns the first
    /// frame received (CONNECTED or ERROR).
    pub async fn send_connect(&mut self, extra: &[(&str, &str)]) -> Frame {
        let mut f = Frame::new(Command::Connect);
        for (k, v) in extra {
            f.push_header(*k, *v);
        }
        for (k, v) in [
            ("accept-version", "1.2"),
            ("host", "127.0.0.1"),
            ("heart-beat", "0,0"),
        ] {
            if f.header(k).is_none() {
                f.push_header(k, v);
            }
        }
        self.send_frame(&f).await;
        let got = self.recv_frame(WAIT).await;
        if got.command == Command::Connected {
            self.decoder.set_version(StompVersion::V1_2);
            self.connected = Some(got.clone());
        }
        got
    }

    /// The `user-name` header of CONNECTED.
    pub fn user_name(&self) -> Option<&str> {
        self.connected.as_ref().and_then(|f| f.header("user-name"))
    }

    pub async fn try_send_bytes(&mut self, bytes: Vec<u8>, binary: bool) -> Result<(), String> {
        let msg = if binary {
            Message::binary(bytes)
        } else {
            Message::text(String::from_utf8(bytes).map_err(|_| {
                "frame is not UTF-8: set `binary` to send it in a binary message".to_string()
            })?)
        };
        match tokio::time::timeout(WAIT, self.ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("WebSocket send timed out".into()),
        }
    }

    /// Sends raw bytes as one WebSocket message.
    pub async fn send_bytes(&mut self, bytes: Vec<u8>, binary: bool) {
        self.try_send_bytes(bytes, binary)
            .await
            .unwrap_or_else(|e| panic!("WebSocket send failed: {e}"));
    }

    pub async fn try_send_frame(&mut self, f: &Frame) -> Result<(), String> {
        let bytes = encode(f);
        let binary = self.binary || std::str::from_utf8(&bytes).is_err();
        self.try_send_bytes(bytes, binary).await
    }

    /// Sends one frame as one WebSocket message (binary if `self.binary` or
    /// if the frame is not UTF-8).
    pub async fn send_frame(&mut self, f: &Frame) {
        self.try_send_frame(f)
            .await
            .unwrap_or_else(|e| panic!("sending {} failed: {e}", f.command));
    }

    pub async fn send_heartbeat(&mut self) {
        let binary = self.binary;
        self.send_bytes(b"\n".to_vec(), binary).await;
    }

    /// Reads one WebSocket message (until `deadline`) into the queue.
    async fn read_more(&mut self, deadline: Instant) -> Result<(), RecvError> {
        if let Some(reason) = &self.closed {
            return Err(RecvError::Closed(reason.clone()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RecvError::Timeout);
        }
        let next = match tokio::time::timeout(left, self.ws.next()).await {
            Err(_) => return Err(RecvError::Timeout),
            Ok(n) => n,
        };
        let (data, binary) = match next {
            None => return Err(self.mark_closed("stream ended".into())),
            Some(Err(e)) => return Err(self.mark_closed(format!("read error: {e}"))),
            Some(Ok(Message::Text(t))) => (Bytes::from(t), false),
            Some(Ok(Message::Binary(b))) => (b, true),
            Some(Ok(Message::Close(c))) => {
                self.close_frame = c
                    .as_ref()
                    .map(|c| (u16::from(c.code), c.reason.to_string()));
                return Err(self.mark_closed(format!("close frame {c:?}")));
            }
            Some(Ok(_)) => return Ok(()), // ping / pong
        };
        self.last_rx_binary = Some(binary);
        self.rx_kinds.push(binary);
        self.decoder.feed(&data);
        loop {
            match self.decoder.next() {
                Ok(Some(Decoded::Frame(f))) => self.queue.push_back(f),
                Ok(Some(Decoded::HeartBeat)) => self.heartbeats.push(Instant::now()),
                Ok(None) => return Ok(()),
                Err(e) => panic!("the server sent bytes the STOMP decoder rejects: {e}"),
            }
        }
    }

    fn mark_closed(&mut self, reason: String) -> RecvError {
        self.closed = Some(reason.clone());
        RecvError::Closed(reason)
    }

    /// The next frame (heart-beats skipped), oldest first.
    pub async fn try_recv_frame(&mut self, timeout: Duration) -> Result<Frame, RecvError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.queue.pop_front() {
                return Ok(f);
            }
            self.read_more(deadline).await?;
        }
    }

    #[track_caller]
    pub fn recv_frame(
        &mut self,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Frame> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            match self.try_recv_frame(timeout).await {
                Ok(f) => f,
                Err(e) => panic!("{caller}: no frame within {timeout:?}: {e:?}"),
            }
        }
    }

    /// The first frame matching `pred`; other frames stay queued.
    pub async fn try_recv_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> Result<Frame, RecvError> {
        let deadline = Instant::now() + timeout;
        let mut scanned = 0;
        loop {
            if let Some(i) = self.queue.iter().skip(scanned).position(&pred) {
                return Ok(self.queue.remove(scanned + i).expect("index within queue"));
            }
            scanned = self.queue.len();
            self.read_more(deadline).await?;
        }
    }

    pub async fn recv_matching(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Frame) -> bool,
    ) -> Frame {
        match self.try_recv_matching(timeout, pred).await {
            Ok(f) => f,
            Err(e) => panic!(
                "no {what} within {timeout:?} ({e:?}); frames received but not matched: {:?}",
                self.queue
            ),
        }
    }

    /// The next MESSAGE on subscription `sub` (other frames stay queued).
    pub async fn recv_message_on(&mut self, sub: &str, timeout: Duration) -> Frame {
        self.recv_matching(timeout, &format!("MESSAGE on subscription {sub:?}"), |f| {
            f.command == Command::Message && f.header("subscription") == Some(sub)
        })
        .await
    }

    pub async fn try_recv_message_on(
        &mut self,
        sub: &str,
        timeout: Duration,
    ) -> Result<Frame, RecvError> {
        self.try_recv_matching(timeout, |f| {
            f.command == Command::Message && f.header("subscription") == Some(sub)
        })
        .await
    }

    /// The next MESSAGE on `sub`, its body parsed as JSON.
    pub async fn recv_json_on(&mut self, sub: &str, timeout: Duration) -> Value {
        let f = self.recv_message_on(sub, timeout).await;
        body_json(&f)
    }

    /// The RECEIPT with `receipt-id` = `id` (other frames stay queued). An
    /// ERROR frame fails the test.
    pub async fn recv_receipt(&mut self, id: &str, timeout: Duration) -> Frame {
        let f = self
            .recv_matching(timeout, &format!("RECEIPT {id:?}"), |f| {
                (f.command == Command::Receipt && f.header("receipt-id") == Some(id))
                    || f.command == Command::Error
            })
            .await;
        assert_eq!(
            f.command,
            Command::Receipt,
            "expected RECEIPT {id:?}, got ERROR {:?} {:?}",
            f.headers,
            f.body_str()
        );
        f
    }

    /// The next ERROR frame (other frames stay queued).
    pub async fn recv_error(&mut self, timeout: Duration) -> Frame {
        self.recv_matching(timeout, "ERROR frame", |f| f.command == Command::Error)
            .await
    }

    /// Reads for `dur`, queueing everything.
    pub async fn pump(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        loop {
            match self.read_more(deadline).await {
                Ok(()) => {}
                Err(_) => return,
            }
        }
    }

    /// Asserts that no frame (heart-beats aside) arrives within `dur`.
    pub async fn expect_no_frame(&mut self, dur: Duration) {
        self.pump(dur).await;
        assert!(
            self.queue.is_empty(),
            "expected no frame for {dur:?}, got {:?}",
            self.queue
        );
    }

    /// Asserts that no MESSAGE for `sub` arrives within `dur` (other frames
    /// stay queued).
    pub async fn expect_no_message_on(&mut self, sub: &str, dur: Duration) {
        self.pump(dur).await;
        let hits: Vec<&Frame> = self
            .queue
            .iter()
            .filter(|f| f.command == Command::Message && f.header("subscription") == Some(sub))
            .collect();
        assert!(
            hits.is_empty(),
            "expected no MESSAGE on {sub:?} for {dur:?}, got {hits:?}"
        );
    }

    /// Drops every queued frame; returns them.
    pub fn drain_queue(&mut self) -> Vec<Frame> {
        self.queue.drain(..).collect()
    }

    pub fn queued(&self) -> &VecDeque<Frame> {
        &self.queue
    }

    pub fn new_receipt_id(&mut self) -> String {
        self.next_receipt += 1;
        format!("r-{}", self.next_receipt)
    }

    /// SUBSCRIBE with a receipt; waits for the RECEIPT (so the subscription
    /// is active when this returns).
    pub async fn subscribe(&mut self, dest: &str, id: &str, ack: &str) {
        let f = self.subscribe_frame(dest, id, ack).await;
        assert_eq!(
            f.command,
            Command::Receipt,
            "SUBSCRIBE {dest} failed: {:?} {:?}",
            f.headers,
            f.body_str()
        );
    }

    /// SUBSCRIBE with a receipt; returns the RECEIPT or ERROR frame.
    pub async fn subscribe_frame(&mut self, dest: &str, id: &str, ack: &str) -> Frame {
        let receipt = self.new_receipt_id();
        let f = frame(
            Command::Subscribe,
            &[
                ("destination", dest),
                ("id", id),
                ("ack", ack),
                ("receipt", receipt.as_str()),
            ],
            Bytes::new(),
        );
        self.send_frame(&f).await;
        self.recv_matching(WAIT, &format!("RECEIPT/ERROR for SUBSCRIBE {dest}"), |f| {
            (f.command == Command::Receipt && f.header("receipt-id") == Some(receipt.as_str()))
                || f.command == Command::Error
        })
        .await
    }

    pub async fn unsubscribe(&mut self, id: &str) {
        let receipt = self.new_receipt_id();
        let f = frame(
            Command::Unsubscribe,
            &[("id", id), ("receipt", receipt.as_str())],
            Bytes::new(),
        );
        self.send_frame(&f).await;
        self.recv_receipt(&receipt, WAIT).await;
    }

    /// SEND to `dest` with `headers` and `body`.
    pub async fn send(&mut self, dest: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) {
        let mut f = Frame::new(Command::Send);
        f.push_header("destination", dest);
        for (k, v) in headers {
            f.push_header(*k, *v);
        }
        let f = f.with_body(body);
        self.send_frame(&f).await;
    }

    /// SEND a JSON body (content-type application/json), with an optional
    /// receipt header.
    pub async fn send_json(&mut self, dest: &str, body: &Value, receipt: Option<&str>) {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(r) = receipt {
            headers.push(("receipt", r));
        }
        self.send(dest, &headers, serde_json::to_vec(body).expect("json"))
            .await;
    }

    /// SEND /app/send with `req` and a receipt; waits for the RECEIPT and
    /// the SendAck on subscription `ack_sub` (which must be subscribed to
    /// /user/queue/ack); returns the SendAck.
    pub async fn send_message(&mut self, req: &Value, ack_sub: &str) -> Value {
        let receipt = self.new_receipt_id();
        self.send_json("/app/send", req, Some(&receipt)).await;
        self.recv_receipt(&receipt, WAIT).await;
        let cmid = req["clientMessageId"].as_str().expect("clientMessageId");
        let f = self
            .recv_matching(WAIT, &format!("SendAck for {cmid}"), |f| {
                f.command == Command::Message
                    && f.header("subscription") == Some(ack_sub)
                    && serde_json::from_slice::<Value>(&f.body)
                        .is_ok_and(|v| v["clientMessageId"].as_str() == Some(cmid))
            })
            .await;
        body_json(&f)
    }

    /// DISCONNECT with a receipt; waits for the RECEIPT.
    pub async fn disconnect(&mut self) {
        let receipt = self.new_receipt_id();
        let f = frame(
            Command::Disconnect,
            &[("receipt", receipt.as_str())],
            Bytes::new(),
        );
        self.send_frame(&f).await;
        self.recv_receipt(&receipt, WAIT).await;
        let _ = self.ws.close(None).await;
    }

    /// Waits until the server closes the connection; true if it did within
    /// `timeout`. Frames received meanwhile stay queued.
    pub async fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_more(deadline).await {
                Ok(()) => {}
                Err(RecvError::Closed(_)) => return true,
                Err(RecvError::Timeout) => return false,
            }
        }
    }

    /// Closes the WebSocket abruptly (no DISCONNECT).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

/// Parses a frame body as JSON (panics with the body on failure).
#[track_caller]
pub fn body_json(f: &Frame) -> Value {
    serde_json::from_slice(&f.body).unwrap_or_else(|e| {
        panic!(
            "frame body is not JSON ({e}): {:?} headers {:?}",
            String::from_utf8_lossy(&f.body),
            f.headers
        )
    })
}

/// Checks the MessageVo shape (ids as digit strings, numbers as numbers).
#[track_caller]
pub fn assert_message_vo(v: &Value) {
    assert!(
        matches!(v["type"].as_str(), Some("message") | Some("recall")),
        "type: {v}"
    );
    assert_id(&v["messageId"], "messageId");
    assert_id(&v["sessionId"], "sessionId");
    assert_id(&v["senderId"], "senderId");
    assert!(
        matches!(v["sessionType"].as_str(), Some("single") | Some("group")),
        "sessionType: {v}"
    );
    assert!(v["seq"].as_i64().is_some_and(|s| s >= 1), "seq: {v}");
    assert!(
        v["inboxSeq"].as_i64().is_some_and(|s| s >= 1),
        "inboxSeq: {v}"
    );
    assert!(v["messageType"].is_i64(), "messageType: {v}");
    assert!(v["content"].is_string(), "content: {v}");
    assert!(v["clientMessageId"].is_string(), "clientMessageId: {v}");
    for k in ["clientTimestamp", "serverTimestamp", "adjustedTimestamp"] {
        assert!(v[k].is_i64(), "{k}: {v}");
    }
    assert!(v["isRecalled"].is_boolean(), "isRecalled: {v}");
    assert!(
        matches!(
            v["status"].as_str(),
            Some("pending") | Some("delivered") | Some("read")
        ),
        "status: {v}"
    );
    if v["sessionType"] == "single" {
        assert_id(&v["toUserId"], "toUserId");
        assert!(v["groupId"].is_null(), "groupId of a single message: {v}");
    } else {
        assert_id(&v["groupId"], "groupId");
    }
}

/// Checks the SendAck shape; returns the messageId.
#[track_caller]
/// Sends accepted one at a time since `started` by a bucket of `burst`
/// refilled at one per second: no more than the burst plus what refilled.
pub fn assert_within_refill(accepted: usize, burst: usize, started: Instant) {
    let allowed = burst + started.elapsed().as_secs_f64().ceil() as usize;
    assert!(
        accepted <= allowed,
        "{accepted} sends accepted, at most {allowed} allowed"
    );
}

pub fn assert_send_ack(v: &Value, cmid: &str) -> String {
    assert_eq!(v["clientMessageId"].as_str(), Some(cmid), "SendAck: {v}");
    assert_eq!(v["status"].as_str(), Some("accepted"), "SendAck: {v}");
    assert_id(&v["sessionId"], "SendAck sessionId");
    assert!(
        v["serverTimestamp"].is_i64(),
        "SendAck serverTimestamp: {v}"
    );
    assert_id(&v["messageId"], "SendAck messageId")
}
