//! Users, groups and their members, and the sessions' directory: the
//! single session of a pair, who belongs to a session.

use std::collections::HashSet;
use std::future::IntoFuture;

use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};

use super::*;
use crate::model::{SessionType, User};

impl MongoStore {
    pub(super) async fn create_user_doc(&self, user: User) -> BackendResult<bool> {
        match self.users().insert_one(UserDoc::new(user)).await {
            Ok(_) => Ok(true),
            // The username (in any ASCII case), or the id, is taken.
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The ids of `user_ids` that are users, in the order asked.
    pub(super) async fn existing(&self, user_ids: &[u64]) -> BackendResult<Vec<u64>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<u64> = {
            let mut seen = HashSet::new();
            user_ids
                .iter()
                .copied()
                .filter(|u| seen.insert(*u))
                .collect()
        };
        let found: Vec<Document> = find_in(
            &self.db.collection::<Document>(USERS),
            Document::new(),
            "_id",
            ids(wanted),
            Some(doc! {"_id": 1}),
        )
        .await?;
        let found: HashSet<i64> = found.iter().filter_map(|d| d.get_i64("_id").ok()).collect();
        Ok(user_ids
            .iter()
            .copied()
            .filter(|u| found.contains(&(*u as i64)))
            .collect())
    }

    /// The group, its session and its members, together (as the embedded
    /// store's one transaction): members in the order given, the first
    /// joined at `created_at`, the next one millisecond later, and so on.
    pub(super) async fn create_group_docs(&self, group: Group) -> BackendResult<()> {
        let group_doc = GroupDoc {
            id: group.group_id,
            session_id: group.session_id,
            name: group.name.clone(),
            owner_id: group.owner_id,
            created_at: group.created_at,
        };
        let session = SessionDoc::group(group.session_id, group.group_id, group.created_at);
        let mut seen = HashSet::new();
        let members: Vec<MemberDoc> = group
            .member_ids
            .iter()
            .enumerate()
            .filter(|(_, m)| seen.insert(**m))
            .map(|(i, m)| MemberDoc::new(group.group_id, *m, group.created_at + i as i64))
            .collect();
        let mut s = self.client.start_session().await?;
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            s.start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(majority())
                .await?;
            let written: Result<(), MError> = async {
                self.groups().insert_one(&group_doc).session(&mut s).await?;
                self.sessions_coll()
                    .insert_one(&session)
                    .session(&mut s)
                    .await?;
                if !members.is_empty() {
                    self.members().insert_many(&members).session(&mut s).await?;
                }
                Ok(())
            }
            .await;
            let failed = match written {
                Ok(()) => match commit(&mut s).await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                },
                Err(e) => {
                    let _ = s.abort_transaction().await;
                    DbError::from(e)
                }
            };
            // (A duplicate key is not tried again: the group exists.)
            if failed.is_duplicate_key() || !try_again(&failed, attempt, started) {
                return Err(failed.into());
            }
            backoff(attempt).await;
        }
    }

    pub(super) async fn load_group(&self, group_id: u64) -> BackendResult<Option<Group>> {
        let groups = self.groups();
        let (group, members) = futures_util::future::try_join(
            groups.find_one(doc! {"_id": id(group_id)}).into_future(),
            self.group_members(group_id),
        )
        .await?;
        Ok(group.map(|g| g.into_group(members)))
    }

    /// The members of a group, in the order they joined.
    pub(super) async fn group_members(&self, group_id: u64) -> Result<Vec<u64>, MError> {
        let members = find_all(&self.members(), doc! {"groupId": id(group_id)}, None).await?;
        Ok(ordered_members(members))
    }

    /// Adds the users not in the group yet, joined now.
    pub(super) async fn add_members(&self, group_id: u64, user_ids: &[u64]) -> BackendResult<()> {
        // After every member there (a group's first members are stamped
        // created_at + i, which may be later than now): members list in
        // the order they joined.
        let latest = self
            .members()
            .find(doc! {"groupId": id(group_id)})
            .await?
            .try_collect::<Vec<MemberDoc>>()
            .await?
            .iter()
            .map(|m| m.joined_at)
            .max()
            .unwrap_or(0);
        let from = crate::model::ids::now_ms().max(latest + 1);
        let mut seen = HashSet::new();
        let members: Vec<MemberDoc> = user_ids
            .iter()
            .filter(|u| seen.insert(**u))
            .enumerate()
            .map(|(i, u)| MemberDoc::new(group_id, *u, from + i as i64))
            .collect();
        if members.is_empty() {
            return Ok(());
        }
        // Unordered: a member already there is refused alone and the
        // others are inserted.
        match self.members().insert_many(members).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) if only_duplicates(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The pair's single session, created with `candidate` as its id if it
    /// has none: the unique index on the pair makes every node agree.
    pub(super) async fn pair_session(&self, a: u64, b: u64, candidate: u64) -> BackendResult<u64> {
        let pair = (a.min(b), a.max(b));
        if let Some(found) = self.find_pair(pair).await? {
            return Ok(found);
        }
        let doc = SessionDoc::single(candidate, pair, crate::model::ids::now_ms());
        match self.sessions_coll().insert_one(doc).await {
            Ok(_) => Ok(candidate),
            // Another caller created the pair's session first.
            Err(e) if is_duplicate_key(&e) => match self.find_pair(pair).await? {
                Some(found) => Ok(found),
                None => Err(BackendError::Other(format!(
                    "session id {candidate} is taken by another session"
                ))),
            },
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn find_pair(&self, (lo, hi): (u64, u64)) -> Result<Option<u64>, MError> {
        let found = self
            .sessions_coll()
            .find_one(doc! {"userLo": id(lo), "userHi": id(hi), "type": SINGLE})
            .await?;
        Ok(found.map(|s| s.id))
    }

    pub(super) async fn load_session_info(
        &self,
        session_id: u64,
    ) -> BackendResult<Option<SessionInfo>> {
        let Some(session) = self
            .sessions_coll()
            .find_one(doc! {"_id": id(session_id)})
            .await?
        else {
            return Ok(None);
        };
        let session_type = session.session_type();
        let members = match (session_type, session.group_id) {
            (SessionType::Group, Some(g)) => self.group_members(g).await?,
            _ => [session.user_lo, session.user_hi]
                .into_iter()
                .flatten()
                .collect(),
        };
        Ok(Some(SessionInfo {
            session_id,
            session_type,
            members,
            group_id: session.group_id,
        }))
    }
}

/// Whether every write error of an unordered insert is a duplicate key.
fn only_duplicates(e: &MError) -> bool {
    match &*e.kind {
        ErrorKind::InsertMany(im) => {
            im.write_concern_error.is_none()
                && im
                    .write_errors
                    .iter()
                    .flatten()
                    .all(|w| w.code == DUPLICATE_KEY)
        }
        _ => is_duplicate_key(e),
    }
}

/// A transaction's write concern: majority, journaled (a transaction
/// takes its own, not the client's default).
pub(super) fn majority() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build()
}

/// Commits the session's transaction, again while its outcome is unknown.
pub(super) async fn commit(s: &mut ClientSession) -> Result<(), DbError> {
    let mut unknown = 0;
    loop {
        match s.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let e = DbError::from(e);
                if e.is_unknown_commit() && unknown < 3 {
                    unknown += 1;
                    continue;
                }
                return Err(e);
            }
        }
    }
}
