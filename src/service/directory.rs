//! Users, groups and sessions: who exists and who may see what. Hot-path
//! lookups (does this user exist, who is in this session) are cached; users
//! are never deleted and single sessions never change. A group change made
//! here is told to every node, which forget what they cached of it; and a
//! group's members are cached for `GROUP_CACHE_TTL` at most, should such a
//! word be lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::auth::AuthService;
use super::backend::Store;
use super::notices::Notice;
use super::relay::Relay;
use crate::error::{AppError, AppResult};
use crate::model::dto::{GroupVo, LoginReq, LoginResp, RegisterReq, UserVo};
use crate::model::ids::now_ms;
use crate::model::wire::UserIds;
use crate::model::{Group, IdGenerator, SessionInfo, SessionType, User};

pub struct Directory {
    store: Arc<dyn Store>,
    auth: Arc<AuthService>,
    ids: Arc<IdGenerator>,
    relay: Arc<Relay>,
    /// Entries kept per cache before it starts over.
    cache_max: usize,
    known_users: RwLock<HashSet<u64>>,
    /// The single session of each pair (users ordered low, high).
    single_sessions: RwLock<HashMap<(u64, u64), u64>>,
    sessions: RwLock<HashMap<u64, (Arc<SessionInfo>, Instant)>>,
    /// group id -> its session id
    group_sessions: RwLock<HashMap<u64, u64>>,
}

/// Entries a cache holds before it starts over (each costs tens of bytes;
/// without a bound, memory grew with every pair that ever talked).
const CACHE_MAX: usize = 1 << 20;

/// How long a group's members are trusted from the cache.
const GROUP_CACHE_TTL: Duration = Duration::from_secs(10);

/// Inserts into a cache that starts over when full: a miss only costs a
/// lookup in the store, and nothing here is needed for correctness.
fn insert_bounded<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, max: usize, k: K, v: V) {
    if map.len() >= max {
        map.clear();
    }
    map.insert(k, v);
}

pub fn user_vo(u: &User) -> UserVo {
    UserVo {
        user_id: u.user_id.to_string(),
        username: u.username.clone(),
        nickname: u.nickname.clone(),
    }
}

pub fn group_vo(g: &Group) -> GroupVo {
    GroupVo {
        group_id: g.group_id.to_string(),
        session_id: g.session_id.to_string(),
        name: g.name.clone(),
        owner_id: g.owner_id.to_string(),
        member_ids: g.member_ids.iter().map(|m| m.to_string()).collect(),
    }
}

impl Directory {
    pub fn new(
        store: Arc<dyn Store>,
        auth: Arc<AuthService>,
        ids: Arc<IdGenerator>,
        relay: Arc<Relay>,
    ) -> Directory {
        Directory::with_cache_max(store, auth, ids, relay, CACHE_MAX)
    }

    fn with_cache_max(
        store: Arc<dyn Store>,
        auth: Arc<AuthService>,
        ids: Arc<IdGenerator>,
        relay: Arc<Relay>,
        cache_max: usize,
    ) -> Directory {
        Directory {
            store,
            auth,
            ids,
            relay,
            cache_max: cache_max.max(1),
            known_users: RwLock::new(HashSet::new()),
            single_sessions: RwLock::default(),
            sessions: RwLock::new(HashMap::new()),
            group_sessions: RwLock::new(HashMap::new()),
        }
    }

    pub async fn register(&self, req: RegisterReq) -> AppResult<UserVo> {
        // The fields were checked when the request was parsed (`model::wire`).
        let hash = self.auth.hash_password(req.password.into_string()).await?;
        let user = User {
            user_id: self.ids.next_id(),
            username: req.username.into_string(),
            nickname: req.nickname.into_string(),
            password_hash: hash,
            created_at: now_ms(),
        };
        if !self.store.create_user(user.clone()).await? {
            return Err(AppError::Conflict(format!(
                "username {} is taken",
                user.username
            )));
        }
        self.remember_users(&[user.user_id]);
        Ok(user_vo(&user))
    }

    pub async fn login(&self, req: LoginReq) -> AppResult<LoginResp> {
        let user = self.store.user_by_username(&req.username).await?;
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        let user = match (
            self.auth
                .verify_password(req.password.into_string(), hash)
                .await,
            user,
        ) {
            (true, Some(u)) => u,
            _ => {
                return Err(AppError::Unauthenticated(
                    "wrong username or password".into(),
                ))
            }
        };
        // Each token gets the user's next issue number: revocations name
        // tokens by it (see `tokens`).
        let number = self
            .store
            .next_token_number(user.user_id)
            .await?
            .ok_or_else(|| AppError::Unauthenticated("wrong username or password".into()))?;
        let token = self.auth.issue(user.user_id, number)?;
        Ok(LoginResp {
            token: token.token,
            user_id: user.user_id.to_string(),
            expires_at: token.expires_at_ms,
        })
    }

    pub async fn user(&self, user_id: u64) -> AppResult<UserVo> {
        match self.store.user_by_id(user_id).await? {
            Some(u) => Ok(user_vo(&u)),
            None => Err(AppError::not_found(format!("user {user_id} not found"))),
        }
    }

    /// Fails with `not_found` naming the first id that is not a user.
    pub async fn require_users(&self, ids: &[u64]) -> AppResult<()> {
        let unknown: Vec<u64> = {
            let known = self.known_users.read();
            ids.iter()
                .copied()
                .filter(|id| !known.contains(id))
                .collect()
        };
        if unknown.is_empty() {
            return Ok(());
        }
        let found = self.store.existing_users(&unknown).await?;
        self.remember_users(&found);
        match unknown.iter().find(|id| !found.contains(id)) {
            Some(missing) => Err(AppError::not_found(format!("user {missing} not found"))),
            None => Ok(()),
        }
    }

    fn remember_users(&self, ids: &[u64]) {
        let mut known = self.known_users.write();
        if known.len() + ids.len() > self.cache_max {
            known.clear();
        }
        known.extend(ids.iter().copied());
    }

    /// The single session of two users; the store decides a new pair's
    /// id, the same on every node.
    pub async fn single_session(&self, a: u64, b: u64) -> AppResult<u64> {
        let key = (a.min(b), a.max(b));
        if let Some(&id) = self.single_sessions.read().get(&key) {
            return Ok(id);
        }
        let id = self.store.single_session(a, b, self.ids.next_id()).await?;
        insert_bounded(&mut self.single_sessions.write(), self.cache_max, key, id);
        Ok(id)
    }

    /// Who belongs to a session (`not_found` if it does not exist).
    pub async fn session(&self, session_id: u64) -> AppResult<Arc<SessionInfo>> {
        if let Some((s, at)) = self.sessions.read().get(&session_id) {
            let fresh = s.session_type == SessionType::Single || at.elapsed() < GROUP_CACHE_TTL;
            if fresh {
                return Ok(s.clone());
            }
        }
        let info = self
            .store
            .session_info(session_id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("session {session_id} not found")))?;
        let info = Arc::new(info);
        insert_bounded(
            &mut self.sessions.write(),
            self.cache_max,
            session_id,
            (info.clone(), Instant::now()),
        );
        Ok(info)
    }

    /// The session, if `user_id` is one of its members (`forbidden` if not).
    pub async fn member_session(
        &self,
        user_id: u64,
        session_id: u64,
    ) -> AppResult<Arc<SessionInfo>> {
        let s = self.session(session_id).await?;
        if s.members.contains(&user_id) {
            Ok(s)
        } else {
            Err(AppError::forbidden(format!(
                "you are not a member of session {session_id}"
            )))
        }
    }

    /// The session of a group `user_id` belongs to.
    pub async fn group_session_for_member(
        &self,
        user_id: u64,
        group_id: u64,
    ) -> AppResult<Arc<SessionInfo>> {
        let cached = self.group_sessions.read().get(&group_id).copied();
        let session_id = match cached {
            Some(s) => s,
            None => {
                let g = self.load_group(group_id).await?;
                insert_bounded(
                    &mut self.group_sessions.write(),
                    self.cache_max,
                    group_id,
                    g.session_id,
                );
                g.session_id
            }
        };
        let s = self.session(session_id).await?;
        if s.members.contains(&user_id) {
            Ok(s)
        } else {
            Err(AppError::forbidden(format!(
                "you are not a member of group {group_id}"
            )))
        }
    }

    async fn load_group(&self, group_id: u64) -> AppResult<Group> {
        self.store
            .group(group_id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("group {group_id} not found")))
    }

    /// A group's members changed: this node and every other forget them.
    async fn forget_group(&self, g: &Group) {
        self.forget_session(g.session_id);
        self.relay
            .tell_others(Notice::SessionChanged(g.session_id))
            .await;
    }

    /// Forgets what is cached of a session.
    pub fn forget_session(&self, session_id: u64) {
        self.sessions.write().remove(&session_id);
    }

    /// Each id once, in their first order.
    fn distinct(ids: &[u64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    pub async fn create_group(
        &self,
        owner: u64,
        req: crate::model::dto::CreateGroupReq,
    ) -> AppResult<GroupVo> {
        let mut members = vec![owner];
        members.extend_from_slice(req.member_ids.ids());
        let members = Self::distinct(&members);
        self.require_users(&members).await?;
        let group = Group {
            group_id: self.ids.next_id(),
            session_id: self.ids.next_id(),
            name: req.name.into_string(),
            owner_id: owner,
            member_ids: members,
            created_at: now_ms(),
        };
        self.store.create_group(group.clone()).await?;
        Ok(group_vo(&group))
    }

    pub async fn group(&self, user_id: u64, group_id: u64) -> AppResult<GroupVo> {
        let g = self.load_group(group_id).await?;
        if !g.member_ids.contains(&user_id) {
            return Err(AppError::forbidden("only members may see a group"));
        }
        Ok(group_vo(&g))
    }

    pub async fn add_members(
        &self,
        user_id: u64,
        group_id: u64,
        user_ids: &UserIds,
    ) -> AppResult<GroupVo> {
        let g = self.load_group(group_id).await?;
        if g.owner_id != user_id {
            return Err(AppError::forbidden("only the owner may add members"));
        }
        let ids = Self::distinct(user_ids.ids());
        self.require_users(&ids).await?;
        self.store.add_group_members(group_id, &ids).await?;
        self.forget_group(&g).await;
        let g = self.load_group(group_id).await?;
        Ok(group_vo(&g))
    }

    pub async fn remove_member(&self, user_id: u64, group_id: u64, member: u64) -> AppResult<()> {
        let g = self.load_group(group_id).await?;
        if g.owner_id != user_id && member != user_id {
            return Err(AppError::forbidden(
                "only the owner may remove other members",
            ));
        }
        if member == g.owner_id {
            return Err(AppError::Conflict(
                "the owner cannot leave the group".into(),
            ));
        }
        if !self.store.remove_group_member(group_id, member).await? {
            return Err(AppError::not_found(format!(
                "user {member} is not a member"
            )));
        }
        self.forget_group(&g).await;
        Ok(())
    }
}
