//! Registration and login, throttled as PROTOCOL.md section 6 says, and
//! logout. The counts live in `Quotas`: in memory for an embedded node,
//! in Redis for a cluster (so every node counts the same attempts).
//!
//! A login attempt is counted for its username before its password is
//! checked, and taken back if it succeeds: counting only after the check
//! let an attacker run a hundred guesses in parallel past a limit of five.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use validator::Validate;

use super::auth::Caller;
use super::backend::{Quotas, Tally};
use super::directory::Directory;
use super::tokens::Tokens;
use crate::config::Config;
use crate::error::{AppError, AppResult};
use crate::model::dto::{validation_message, LoginReq, LoginResp, RegisterReq, UserVo};

/// Failed logins one client address may have per window, over every
/// username (PROTOCOL.md section 6).
pub const LOGIN_FAILURES_PER_ADDRESS: u64 = 20;
/// The window of `registrations_per_hour`.
const REGISTRATION_WINDOW: Duration = Duration::from_secs(3600);

/// The limits of [`Accounts`], from the configuration (0 = no limit).
#[derive(Debug, Clone, Copy)]
pub struct AccountLimits {
    pub registrations_per_hour: u32,
    pub login_max_failures: u32,
    pub login_failure_window: Duration,
}

impl AccountLimits {
    pub fn of(cfg: &Config) -> AccountLimits {
        AccountLimits {
            registrations_per_hour: cfg.registrations_per_hour,
            login_max_failures: cfg.login_max_failures,
            login_failure_window: Duration::from_millis(cfg.login_failure_window_ms),
        }
    }
}

pub struct Accounts {
    directory: Arc<Directory>,
    tokens: Arc<Tokens>,
    quotas: Arc<dyn Quotas>,
    limits: AccountLimits,
}

/// A login attempt's tallies: its username's (counted already, taken
/// back if it succeeds) and its address's (counted if it fails).
struct Attempt {
    username: Option<Tally>,
    address: Option<Tally>,
}

impl Accounts {
    pub fn new(
        directory: Arc<Directory>,
        tokens: Arc<Tokens>,
        quotas: Arc<dyn Quotas>,
        limits: AccountLimits,
    ) -> Accounts {
        Accounts {
            directory,
            tokens,
            quotas,
            limits,
        }
    }

    /// `POST /auth/register` from `client`: every attempt counts against
    /// the address's `registrations_per_hour` (each costs a password hash).
    #[tracing::instrument(skip_all, fields(client = ?client))]
    pub async fn register(&self, req: RegisterReq, client: Option<IpAddr>) -> AppResult<UserVo> {
        let limit = u64::from(self.limits.registrations_per_hour);
        if let (Some(ip), true) = (client, limit > 0) {
            let tally = Tally::Registrations(tally_addr(ip));
            let window = self.quotas.count(&tally, REGISTRATION_WINDOW).await?;
            if window.count > limit {
                metrics::counter!("herald_registrations_throttled_total").increment(1);
                return Err(AppError::rate_limited(
                    format!(
                        "too many registrations from this address (at most {limit} an hour), \
                         try again later"
                    ),
                    window.resets_in,
                ));
            }
        }
        self.directory.register(req).await
    }

    /// `POST /auth/login` from `client`, throttled per username and per
    /// address; the correct password is refused too while throttled.
    #[tracing::instrument(skip_all, fields(client = ?client))]
    pub async fn login(&self, req: LoginReq, client: Option<IpAddr>) -> AppResult<LoginResp> {
        req.validate()
            .map_err(|e| AppError::InvalidArgument(validation_message(&e)))?;
        let attempt = self.begin_login(&req.username, client).await?;
        let result = self.directory.login(req).await;
        match &result {
            // A success resets the username's count. The address's
            // failures stay: one good account must not clear them.
            Ok(_) => self.take_back(attempt.username.as_ref(), true).await,
            Err(AppError::Unauthenticated(_)) => {
                metrics::counter!("herald_login_failures_total").increment(1);
                if let Some(address) = &attempt.address {
                    let window = self.limits.login_failure_window;
                    if let Err(e) = self.quotas.count(address, window).await {
                        tracing::warn!(error = %e, "a failed login was not counted for its address");
                    }
                }
            }
            // Not a wrong password (a backend failed): nothing to count.
            Err(_) => self.take_back(attempt.username.as_ref(), false).await,
        }
        result
    }

    /// Refuses the attempt (429) if its address has its failures already,
    /// else counts it for its username (before the password is checked),
    /// refusing it if that is over the limit. `login_max_failures` 0 turns
    /// both off.
    ///
    /// The address is only looked at here, and a failure counted once
    /// known: a burst of good logins from one office behind NAT must not
    /// look like failures while its passwords are being checked. A burst
    /// of bad ones can pass the address's limit by what is in flight, but
    /// each of its usernames holds to its own.
    async fn begin_login(&self, username: &str, client: Option<IpAddr>) -> AppResult<Attempt> {
        let max = u64::from(self.limits.login_max_failures);
        if max == 0 {
            return Ok(Attempt {
                username: None,
                address: None,
            });
        }
        let address = client.map(|ip| Tally::LoginFailuresFrom(tally_addr(ip)));
        if let Some(address) = &address {
            let failed = self.quotas.peek(address).await?;
            if failed.count >= LOGIN_FAILURES_PER_ADDRESS {
                return Err(throttled(
                    "address",
                    "too many failed logins from this address, try again later",
                    failed.resets_in,
                ));
            }
        }
        let tally = Tally::LoginFailures(username.to_ascii_lowercase());
        let counted = self
            .quotas
            .count(&tally, self.limits.login_failure_window)
            .await?;
        if counted.count > max {
            return Err(throttled(
                "username",
                "too many failed logins for this username, try again later",
                counted.resets_in,
            ));
        }
        Ok(Attempt {
            username: Some(tally),
            address,
        })
    }

    /// Takes back an attempt counted (`clear`: ends the whole window).
    /// Failing to is logged: the attempt then counts as a failure.
    async fn take_back(&self, tally: Option<&Tally>, clear: bool) {
        let Some(tally) = tally else { return };
        let done = if clear {
            self.quotas.clear(tally).await
        } else {
            self.quotas.uncount(tally).await
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, ?tally, "a login attempt could not be taken back");
        }
    }

    /// `POST /auth/logout`.
    pub async fn logout(&self, caller: Caller) -> AppResult<()> {
        self.tokens.logout(caller).await
    }

    /// `POST /auth/logout-all`.
    pub async fn logout_all(&self, caller: Caller) -> AppResult<()> {
        self.tokens.logout_all(caller.user_id).await
    }
}

fn throttled(scope: &'static str, message: &str, retry_after: Duration) -> AppError {
    metrics::counter!("herald_login_throttled_total", "scope" => scope).increment(1);
    AppError::rate_limited(message, retry_after)
}

/// The address a per-address count is kept under: an IPv6 client by its
/// /64 (one subscriber usually holds a whole /64, and would otherwise get
/// a fresh count from every address in it).
pub fn tally_addr(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(tally_addr(a), tally_addr(b));
        assert_ne!(tally_addr(a), tally_addr(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(tally_addr(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(tally_addr(mapped), v4);
    }
}
