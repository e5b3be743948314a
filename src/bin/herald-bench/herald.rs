//! Herald REST setup: users (register, login, optional cache file),
//! groups, inbox sync.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use rand::distr::{Alphanumeric, SampleString};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A REST client of one herald server.
#[derive(Clone)]
pub struct Rest {
    http: reqwest::Client,
    api: String,
}

/// Credentials of a registered user (what the users file stores).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cred {
    pub username: String,
    pub password: String,
    pub user_id: String,
    /// Last token and its expiry (ms since the epoch): reused while the
    /// server still accepts it, which spares an argon2 login (and keeps the
    /// server's memory baseline clean for `idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub token: String,
    pub expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserVo {
    user_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginResp {
    token: String,
    user_id: String,
    #[serde(default)]
    expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupVo {
    group_id: String,
}

/// One page of `GET /inbox/sync`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncPage {
    pub messages: Vec<SyncedMessage>,
    pub has_more: bool,
    pub last_inbox_seq: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncedMessage {
    #[serde(default)]
    pub inbox_seq: i64,
    #[serde(default)]
    pub content: String,
}

/// The users file: cached credentials per server URL.
#[derive(Default, Serialize, Deserialize)]
struct UsersFile {
    servers: HashMap<String, Vec<Cred>>,
}

enum LoginError {
    Unauthorized,
    Other(anyhow::Error),
}

async fn error_of(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    anyhow!("HTTP {status}: {body}")
}

impl Rest {
    pub fn new(base_url: &str) -> Result<Rest> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Rest {
            http,
            api: format!("{base_url}/api/v1"),
        })
    }

    /// Registers `username`; returns the user id.
    pub async fn register(&self, username: &str, password: &str) -> Result<String> {
        let resp = self
            .http
            .post(format!("{}/auth/register", self.api))
            .json(&json!({"username": username, "password": password, "nickname": username}))
            .send()
            .await
            .with_context(|| format!("POST {}/auth/register failed", self.api))?;
        if resp.status() != StatusCode::CREATED {
            let e = error_of(resp).await;
            return Err(e.context(format!("registering {username}")));
        }
        let vo: UserVo = resp.json().await.context("bad register response")?;
        Ok(vo.user_id)
    }

    async fn try_login(&self, username: &str, password: &str) -> Result<User, LoginError> {
        let resp = self
            .http
            .post(format!("{}/auth/login", self.api))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .with_context(|| format!("POST {}/auth/login failed", self.api))
            .map_err(LoginError::Other)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(LoginError::Unauthorized);
        }
        if !resp.status().is_success() {
            let e = error_of(resp).await;
            return Err(LoginError::Other(e.context(format!("login of {username}"))));
        }
        let r: LoginResp = resp
            .json()
            .await
            .context("bad login response")
            .map_err(LoginError::Other)?;
        Ok(User {
            user_id: r.user_id,
            token: r.token,
            expires_at: r.expires_at,
        })
    }

    /// Whether the server accepts `token` (`GET /users/me`).
    async fn token_works(&self, token: &str) -> bool {
        let resp = self
            .http
            .get(format!("{}/users/me", self.api))
            .bearer_auth(token)
            .send()
            .await;
        matches!(resp, Ok(r) if r.status().is_success())
    }

    /// Logs in with a cached token if it is still good, else with the
    /// password.
    async fn login_cached(
        &self,
        c: &Cred,
        password_logins: &AtomicUsize,
    ) -> Result<User, LoginError> {
        let fresh_enough = c
            .expires_at
            .is_some_and(|e| e > crate::client::unix_ms() as i64 + 3_600_000);
        if let (Some(token), true) = (&c.token, fresh_enough) {
            if self.token_works(token).await {
                return Ok(User {
                    user_id: c.user_id.clone(),
                    token: token.clone(),
                    expires_at: c.expires_at,
                });
            }
        }
        password_logins.fetch_add(1, Ordering::Relaxed);
        self.try_login(&c.username, &c.password).await
    }

    /// Creates a group owned by `token`'s user; returns the group id.
    pub async fn create_group(
        &self,
        token: &str,
        name: &str,
        member_ids: &[String],
    ) -> Result<String> {
        let resp = self
            .http
            .post(format!("{}/groups", self.api))
            .bearer_auth(token)
            .json(&json!({"name": name, "memberIds": member_ids}))
            .send()
            .await
            .context("POST /groups failed")?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await.context("creating the group"));
        }
        let g: GroupVo = resp.json().await.context("bad group response")?;
        Ok(g.group_id)
    }

    pub async fn inbox_sync(&self, token: &str, after: i64, limit: usize) -> Result<SyncPage> {
        let resp = self
            .http
            .get(format!("{}/inbox/sync", self.api))
            .bearer_auth(token)
            .query(&[
                ("afterInboxSeq", after.to_string()),
                ("limit", limit.to_string()),
            ])
            .send()
            .await
            .context("GET /inbox/sync failed")?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await.context("inbox sync"));
        }
        resp.json().await.context("bad inbox sync response")
    }
}

fn new_cred(tag: &str, i: usize) -> Cred {
    Cred {
        username: format!("hb{tag}_{i}"),
        password: Alphanumeric.sample_string(&mut rand::rng(), 16),
        user_id: String::new(),
        token: None,
        expires_at: None,
    }
}

/// Registers and logs in a fresh user.
async fn register_and_login(rest: &Rest, mut cred: Cred) -> Result<(Cred, User)> {
    cred.user_id = rest.register(&cred.username, &cred.password).await?;
    match rest.try_login(&cred.username, &cred.password).await {
        Ok(u) => Ok((cred, u)),
        Err(LoginError::Unauthorized) => bail!("login of the new user {} refused", cred.username),
        Err(LoginError::Other(e)) => Err(e),
    }
}

/// `n` logged-in users: cached ones from `users_file` (cached token if
/// still accepted, else logged in again; a cached user the server does not
/// know is replaced) and new ones
/// registered with `concurrency` requests in flight. Prints progress.
pub async fn ensure_users(
    rest: &Rest,
    base_url: &str,
    n: usize,
    users_file: Option<&Path>,
    concurrency: usize,
) -> Result<(Vec<User>, usize)> {
    let mut file = match users_file {
        Some(p) if p.exists() => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            serde_json::from_str::<UsersFile>(&text)
                .with_context(|| format!("{} is not a herald-bench users file", p.display()))?
        }
        _ => UsersFile::default(),
    };
    let cached: Vec<Cred> = file.servers.get(base_url).cloned().unwrap_or_default();
    let tag = format!("{:08x}", rand::random::<u32>());
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let registered = Arc::new(AtomicUsize::new(0));
    let password_logins = Arc::new(AtomicUsize::new(0));
    let n_cached = cached.len().min(n);
    eprintln!(
        "setting up {n} users ({n_cached} cached; {} to register; argon2 makes this slow)",
        n - n_cached
    );
    let jobs = (0..n).map(|i| {
        let cred = cached.get(i).cloned();
        let rest = rest.clone();
        let tag = tag.clone();
        let done = Arc::clone(&done);
        let registered = Arc::clone(&registered);
        let password_logins = Arc::clone(&password_logins);
        async move {
            let result = match cred {
                Some(c) => match rest.login_cached(&c, &password_logins).await {
                    Ok(u) => Ok((c, u)),
                    Err(LoginError::Unauthorized) => {
                        registered.fetch_add(1, Ordering::Relaxed);
                        register_and_login(&rest, new_cred(&tag, i)).await
                    }
                    Err(LoginError::Other(e)) => Err(e),
                },
                None => {
                    registered.fetch_add(1, Ordering::Relaxed);
                    register_and_login(&rest, new_cred(&tag, i)).await
                }
            };
            done.fetch_add(1, Ordering::Relaxed);
            (i, result)
        }
    });
    let mut stream = futures_util::stream::iter(jobs).buffer_unordered(concurrency.max(1));
    let mut creds: Vec<Option<Cred>> = vec![None; n];
    let mut users: Vec<Option<User>> = vec![None; n];
    let mut first_error = None;
    let mut last_print = Instant::now();
    while let Some((i, r)) = stream.next().await {
        match r {
            Ok((mut c, u)) => {
                c.token = Some(u.token.clone());
                c.expires_at = u.expires_at;
                if let Some(slot) = creds.get_mut(i) {
                    *slot = Some(c);
                }
                if let Some(slot) = users.get_mut(i) {
                    *slot = Some(u);
                }
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            let d = done.load(Ordering::Relaxed);
            eprintln!(
                "  users {d}/{n} ({:.0}/s, {} registered)",
                d as f64 / started.elapsed().as_secs_f64(),
                registered.load(Ordering::Relaxed)
            );
        }
    }
    drop(stream);
    if let Some(p) = users_file {
        // Keep what is known, new users included, even after a failure.
        let mut list = cached;
        for (i, c) in creds.iter().enumerate() {
            if let Some(c) = c {
                if i < list.len() {
                    list[i] = c.clone();
                } else {
                    list.push(c.clone());
                }
            }
        }
        file.servers.insert(base_url.to_string(), list);
        let text = serde_json::to_string_pretty(&file).context("cannot encode the users file")?;
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(e) = first_error {
        return Err(e.context("user setup failed"));
    }
    eprintln!(
        "  users ready: {n} in {:.1} s ({} registered)",
        started.elapsed().as_secs_f64(),
        registered.load(Ordering::Relaxed)
    );
    // Each registration hashes twice (register, login).
    let hashes = 2 * registered.load(Ordering::Relaxed) + password_logins.load(Ordering::Relaxed);
    Ok((users.into_iter().flatten().collect(), hashes))
}

/// Registers and logs in `n` fresh users (no cache), e.g. for an empty inbox.
pub async fn fresh_users(rest: &Rest, n: usize) -> Result<Vec<User>> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (_, u) = register_and_login(rest, new_cred(&tag, i)).await?;
        out.push(u);
    }
    Ok(out)
}
