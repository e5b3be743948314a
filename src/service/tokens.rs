//! Revocable tokens. Each token carries its user's issue number (taken
//! from a counter in the user's record at login); the record keeps
//! `revokedBefore` (logout-all revokes every number below it) and the
//! numbers revoked one by one (logout) until they expire.
//!
//! Checking a token must not cost a store read per request: each node
//! caches users' revocations for [`CACHE_TTL`]. A revocation is written to
//! the store first, then every node is told to forget the user's entry
//! and close the user's connections that use a revoked token. The logout
//! is answered once every node that heard it said it has (or after
//! [`ANSWER_WAIT`]): so a request that follows the answer, on any node,
//! is refused. Should a node miss the word (its channel was down), its
//! entry lapses within `CACHE_TTL`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, Notify};

use super::auth::{rejected, AuthService, Caller};
use super::backend::{AuthState, RevokedToken, Store};
use super::notices::{Notice, Revocation};
use super::relay::Relay;
use crate::error::AppResult;
use crate::model::ids::now_ms;

/// How long a node trusts what it cached of a user's revocations without
/// word from the others.
const CACHE_TTL: Duration = Duration::from_secs(10);
/// Users whose revocations a node caches before the cache starts over.
const CACHE_MAX: usize = 100_000;
/// How long a logout waits for the other nodes to say they forgot.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// Unexpired single revocations kept per user. A user who logs out more
/// often than this within a token's lifetime has the next logout revoke
/// every earlier token instead (so the record cannot grow without bound).
pub const MAX_REVOKED: usize = 256;

pub struct Tokens {
    auth: Arc<AuthService>,
    store: Arc<dyn Store>,
    relay: Arc<Relay>,
    cache: RwLock<HashMap<u64, (Arc<AuthState>, Instant)>>,
    /// Bumped by every forget: a state loaded while it moved may predate
    /// a revocation, so it is used once but not cached.
    forgets: AtomicU64,
    live: Arc<LiveTokens>,
    /// Revocations waiting for other nodes' answers, by answer token.
    waiting: Mutex<HashMap<u64, Waiting>>,
    next_answer: AtomicU64,
}

/// A revocation's answers: how many came, how many are due (once known).
struct Waiting {
    answered: usize,
    due: Option<usize>,
    done: Option<oneshot::Sender<()>>,
}

impl Waiting {
    fn finish_if_complete(&mut self) {
        if self.due.is_some_and(|due| self.answered >= due) {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
    }
}

impl Tokens {
    pub fn new(auth: Arc<AuthService>, store: Arc<dyn Store>, relay: Arc<Relay>) -> Tokens {
        Tokens {
            auth,
            store,
            relay,
            cache: RwLock::new(HashMap::new()),
            forgets: AtomicU64::new(0),
            live: Arc::default(),
            waiting: Mutex::new(HashMap::new()),
            next_answer: AtomicU64::new(1),
        }
    }

    /// The caller of `token` if it is validly signed, within its validity,
    /// of a user who exists, and not revoked.
    pub async fn authenticate(&self, token: &str) -> AppResult<Caller> {
        let caller = self.auth.verify(token)?;
        self.check(caller).await
    }

    /// As [`Tokens::authenticate`], for an `Authorization` header value.
    pub async fn authenticate_bearer(&self, header: Option<&str>) -> AppResult<Caller> {
        let caller = self.auth.verify_bearer(header)?;
        self.check(caller).await
    }

    /// Whether the user of a verified token exists and the token is not
    /// revoked.
    pub async fn check(&self, caller: Caller) -> AppResult<Caller> {
        let state = self
            .state(caller.user_id)
            .await?
            .ok_or_else(|| rejected("unknown_user", "invalid token: no such user"))?;
        if state.revokes(caller.token_number) {
            return Err(rejected("revoked", "token revoked"));
        }
        Ok(caller)
    }

    /// The user's revocations, from the cache or the store; `None` if
    /// there is no such user (not cached: nobody can sign such a token but
    /// this deployment, so these are rare).
    async fn state(&self, user_id: u64) -> AppResult<Option<Arc<AuthState>>> {
        if let Some((state, at)) = self.cache.read().get(&user_id) {
            if at.elapsed() < CACHE_TTL {
                return Ok(Some(state.clone()));
            }
        }
        let before = self.forgets.load(Ordering::Acquire);
        let Some(state) = self.store.auth_state(user_id).await? else {
            return Ok(None);
        };
        let state = Arc::new(state);
        let mut cache = self.cache.write();
        // Checked under the lock `forget` removes under: a forget either
        // came first (and is seen here) or removes this entry after.
        if self.forgets.load(Ordering::Acquire) == before {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(user_id, (state.clone(), Instant::now()));
        }
        Ok(Some(state))
    }

    /// Forgets what this node cached of the user's revocations.
    fn forget(&self, user_id: u64) {
        self.forgets.fetch_add(1, Ordering::AcqRel);
        self.cache.write().remove(&user_id);
    }

    /// `POST /auth/logout`: revokes the caller's token, everywhere, now.
    #[tracing::instrument(skip(self), fields(user_id = caller.user_id, token = caller.token_number))]
    pub async fn logout(&self, caller: Caller) -> AppResult<()> {
        let state = self
            .store
            .auth_state(caller.user_id)
            .await?
            .ok_or_else(|| rejected("unknown_user", "invalid token: no such user"))?;
        let now = now_ms();
        let kept = state
            .revoked
            .iter()
            .filter(|r| r.expires_at_ms > now)
            .count();
        if kept >= MAX_REVOKED {
            tracing::warn!(
                kept,
                "too many single revocations: revoking every earlier token"
            );
            return self.logout_all(caller.user_id).await;
        }
        let token = RevokedToken {
            number: caller.token_number,
            expires_at_ms: caller.expires_at_ms,
        };
        self.store.revoke_token(caller.user_id, token, now).await?;
        metrics::counter!("herald_tokens_revoked_total", "kind" => "one").increment(1);
        self.announce(caller.user_id, Revocation::One(caller.token_number))
            .await;
        Ok(())
    }

    /// `POST /auth/logout-all`: revokes every token issued to the user so
    /// far (by issue number: a login after this works), everywhere, now.
    #[tracing::instrument(skip(self))]
    pub async fn logout_all(&self, user_id: u64) -> AppResult<()> {
        // The number taken here is above every token issued before and
        // below every one issued after.
        let number = self
            .store
            .next_token_number(user_id)
            .await?
            .ok_or_else(|| rejected("unknown_user", "invalid token: no such user"))?;
        self.store.revoke_tokens_before(user_id, number).await?;
        metrics::counter!("herald_tokens_revoked_total", "kind" => "all").increment(1);
        self.announce(user_id, Revocation::Before(number)).await;
        Ok(())
    }

    /// Applies a revocation on this node and tells every other node,
    /// waiting (a bounded time) until they all applied it.
    async fn announce(&self, user_id: u64, revoked: Revocation) {
        self.apply(user_id, revoked);
        let token = self.next_answer.fetch_add(1, Ordering::Relaxed);
        let (done, answered) = oneshot::channel();
        // Registered before the notice goes: answers may come before the
        // count of nodes that heard it.
        self.waiting.lock().insert(
            token,
            Waiting {
                answered: 0,
                due: None,
                done: Some(done),
            },
        );
        let notice = Notice::TokensRevoked {
            user_id,
            revoked,
            answer: Some((token, self.relay.node())),
        };
        let reached = self.relay.tell_others_counted(notice).await;
        if let Some(w) = self.waiting.lock().get_mut(&token) {
            w.due = Some(reached);
            w.finish_if_complete();
        }
        let confirmed = tokio::time::timeout(ANSWER_WAIT, answered).await.is_ok();
        let left = self.waiting.lock().remove(&token);
        if !confirmed {
            let missing = left
                .and_then(|w| w.due.map(|d| d.saturating_sub(w.answered)))
                .unwrap_or(0);
            metrics::counter!("herald_revocations_unconfirmed_total").increment(1);
            tracing::warn!(
                user_id,
                missing,
                "nodes did not confirm a token revocation in time; their caches lapse within {:?}",
                CACHE_TTL
            );
        }
    }

    /// Forgets the user's cached revocations and closes this node's
    /// connections that use a token `revoked` covers.
    fn apply(&self, user_id: u64, revoked: Revocation) {
        self.forget(user_id);
        let closed = self.live.revoke(user_id, revoked);
        if closed > 0 {
            metrics::counter!("herald_connections_revoked_total").increment(closed as u64);
            tracing::info!(user_id, closed, "closing connections of revoked tokens");
        }
    }

    /// Another node revoked tokens: apply it here and answer if asked.
    pub fn revoked_elsewhere(&self, user_id: u64, revoked: Revocation, answer: Option<(u64, u16)>) {
        self.apply(user_id, revoked);
        if let Some((token, node)) = answer {
            let relay = self.relay.clone();
            tokio::spawn(async move {
                relay.tell(node, Notice::TokensForgotten(token)).await;
            });
        }
    }

    /// A node answered a revocation of this one.
    pub fn forgotten_elsewhere(&self, token: u64) {
        if let Some(w) = self.waiting.lock().get_mut(&token) {
            w.answered += 1;
            w.finish_if_complete();
        }
    }

    /// Watches the token a connection authenticated with: the watch fires
    /// when the token is revoked (until it is dropped).
    pub fn watch(&self, caller: &Caller) -> TokenWatch {
        self.live.watch(caller)
    }
}

/// This node's connections, by user, with the token each was opened with.
#[derive(Default)]
struct LiveTokens {
    by_user: Mutex<HashMap<u64, Vec<Watched>>>,
    next_id: AtomicU64,
}

struct Watched {
    id: u64,
    token_number: u64,
    revoked: Arc<Notify>,
}

impl LiveTokens {
    fn watch(self: &Arc<Self>, caller: &Caller) -> TokenWatch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(Notify::new());
        self.by_user
            .lock()
            .entry(caller.user_id)
            .or_default()
            .push(Watched {
                id,
                token_number: caller.token_number,
                revoked: revoked.clone(),
            });
        TokenWatch {
            live: self.clone(),
            user_id: caller.user_id,
            id,
            revoked,
        }
    }

    /// Fires the watches of the tokens `revoked` covers; how many.
    fn revoke(&self, user_id: u64, revoked: Revocation) -> usize {
        let by_user = self.by_user.lock();
        let Some(list) = by_user.get(&user_id) else {
            return 0;
        };
        list.iter()
            .filter(|w| revoked.covers(w.token_number))
            // notify_one keeps a permit: a connection not waiting right
            // now still sees it at its next turn.
            .inspect(|w| w.revoked.notify_one())
            .count()
    }
}

/// A connection's watch on its token; dropping it ends the watch.
pub struct TokenWatch {
    live: Arc<LiveTokens>,
    user_id: u64,
    id: u64,
    revoked: Arc<Notify>,
}

impl TokenWatch {
    /// Notified once the token is revoked.
    pub fn signal(&self) -> Arc<Notify> {
        self.revoked.clone()
    }
}

impl Drop for TokenWatch {
    fn drop(&mut self) {
        let mut by_user = self.live.by_user.lock();
        if let Some(list) = by_user.get_mut(&self.user_id) {
            list.retain(|w| w.id != self.id);
            if list.is_empty() {
                by_user.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(user_id: u64, token_number: u64) -> Caller {
        Caller {
            user_id,
            token_number,
            expires_at_ms: i64::MAX,
        }
    }

    #[tokio::test]
    async fn revocations_fire_the_watches_they_cover() {
        let live = Arc::new(LiveTokens::default());
        let one = live.watch(&caller(1, 1));
        let two = live.watch(&caller(1, 2));
        let other = live.watch(&caller(2, 1));
        assert_eq!(live.revoke(1, Revocation::One(2)), 1);
        let fired = |w: &TokenWatch| {
            let signal = w.signal();
            async move {
                tokio::time::timeout(Duration::from_millis(50), signal.notified())
                    .await
                    .is_ok()
            }
        };
        assert!(fired(&two).await && !fired(&one).await && !fired(&other).await);
        assert_eq!(live.revoke(1, Revocation::Before(3)), 2);
        assert!(fired(&one).await && !fired(&other).await);
        drop((one, two));
        assert!(!live.by_user.lock().contains_key(&1), "dropped watches go");
        assert_eq!(live.revoke(1, Revocation::Before(9)), 0);
    }

    #[test]
    fn states_revoke_by_number() {
        let state = AuthState {
            revoked_before: 3,
            revoked: vec![RevokedToken {
                number: 5,
                expires_at_ms: 1,
            }],
        };
        assert!(state.revokes(0) && state.revokes(2) && state.revokes(5));
        assert!(!state.revokes(3) && !state.revokes(4) && !state.revokes(6));
        assert!(Revocation::Before(3).covers(2) && !Revocation::Before(3).covers(3));
    }
}
