//! The seq counters of the documents store, kept in memory so that most
//! messages get their `seq` and `inboxSeq` without the writer thread.
//!
//! Storing a message used to wait for the writer: for its turn behind the
//! open transaction's commit, then for its inserts. Yet the only thing the
//! push needs from the store is the numbers, and those follow from the
//! topic order alone. When every counter a batch needs is cached, the
//! session consumer assigns them here and queues the inserts without
//! waiting (`Writer::apply_detached`): the topic holds the messages
//! durably, and a restart replays them in the same order from the same
//! counters, so the same numbers come out. Anything else (a group, a
//! counter not cached, a batch the store may have seen) takes the writer.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{InboxRef, MessageDoc, SendRecord, SessionType, StoredMessage};
use crate::service::backend::Checkpoint;

/// Entries kept per map before the cache starts over.
pub const SEQ_CACHE_MAX: usize = 1 << 20;

/// The last `seq` of each session and `inboxSeq` of each user as the store
/// assigned them, with what it takes to trust a session id without a
/// lookup. Everything is dropped together (see `validate`): the maps only
/// mean something as a whole.
#[derive(Default)]
pub struct SeqCache {
    rollbacks_seen: u64,
    /// How often the cache started over, and the last time a lookup made
    /// sure the writer committed what it knew before (see `pair_session`).
    epoch: u64,
    settled_epoch: u64,
    pub session_seq: HashMap<u64, i64>,
    pub inbox_seq: HashMap<u64, i64>,
    /// The single session stored for each pair (low, high user) since the
    /// cache started: a second id for a pair must go to the writer, which
    /// files its messages under the first.
    pairs: HashMap<(u64, u64), u64>,
    /// Ids the directory gave new pairs, nothing stored under them yet
    /// (session id -> pair): their first seq is 1 without a lookup.
    allocated: HashMap<u64, (u64, u64)>,
    /// Per consumer, the last topic offset stored since the cache started:
    /// a batch after it holds nothing stored yet.
    applied_through: HashMap<&'static str, u64>,
}

/// See `SeqCache::pair_session`.
pub enum PairLookup {
    Found(u64),
    Committed,
    Settle(u64),
}

/// A message numbered here, for the writer to insert.
pub struct Planned {
    pub doc: Arc<MessageDoc>,
    /// The sender's entry and the peer's.
    pub recipients: [InboxRef; 2],
    /// The pair whose session this first message creates.
    pub new_session: Option<(u64, u64)>,
}

pub fn pair(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

impl SeqCache {
    /// Forgets everything if the writer rolled back since the last use (the
    /// counters may hold numbers that never committed) or if a map is full.
    pub fn validate(&mut self, rollbacks: u64) {
        let full = [
            self.session_seq.len(),
            self.inbox_seq.len(),
            self.pairs.len(),
            self.allocated.len(),
        ]
        .into_iter()
        .any(|n| n > SEQ_CACHE_MAX);
        if rollbacks != self.rollbacks_seen || full {
            self.start_over(rollbacks);
        }
    }

    /// Numbers assigned by `plan` will not be written: start over.
    pub fn forget(&mut self) {
        self.start_over(self.rollbacks_seen);
    }

    fn start_over(&mut self, rollbacks: u64) {
        *self = SeqCache {
            rollbacks_seen: rollbacks,
            epoch: self.epoch + 1,
            settled_epoch: self.settled_epoch,
            ..SeqCache::default()
        };
    }

    /// Where to find the session of a pair: `Found` if it was stored since
    /// the cache started (committed or not), otherwise in the committed
    /// database, after the writer committed what it holds if the cache
    /// started over since (`Settle` with the epoch to report to `settled`).
    pub fn pair_session(&self, pair: (u64, u64)) -> PairLookup {
        match self.pairs.get(&pair) {
            Some(&id) => PairLookup::Found(id),
            None if self.epoch != self.settled_epoch => PairLookup::Settle(self.epoch),
            None => PairLookup::Committed,
        }
    }

    /// Everything written before the cache started over (at `epoch`) is
    /// committed now.
    pub fn settled(&mut self, epoch: u64) {
        self.settled_epoch = self.settled_epoch.max(epoch);
    }

    /// The directory gave the new pair `a`, `b` the id `session_id`.
    pub fn allocated(&mut self, session_id: u64, a: u64, b: u64) {
        self.allocated.insert(session_id, pair(a, b));
    }

    /// The writer stored `session_id` for its pair (and maybe under
    /// another id than the record's, `given`).
    pub fn resolved(&mut self, given: u64, pair: (u64, u64), session_id: u64) {
        self.allocated.remove(&given);
        self.pairs.insert(pair, session_id);
    }

    /// The writer stored a batch up to `applied`.
    pub fn stored_through(&mut self, applied: Checkpoint) {
        let last = self.applied_through.entry(applied.consumer).or_default();
        *last = (*last).max(applied.last);
    }

    /// Numbers every record of the batch from memory, or gives the records
    /// back untouched if one of them needs the database.
    pub fn plan(
        &mut self,
        records: Vec<SendRecord>,
        applied: Checkpoint,
    ) -> Result<Vec<(Planned, StoredMessage)>, Vec<SendRecord>> {
        let unseen = self
            .applied_through
            .get(applied.consumer)
            .is_some_and(|&through| applied.first > through);
        if !unseen || !records.iter().all(|r| self.can_plan(r)) {
            return Err(records);
        }
        self.stored_through(applied);
        Ok(records.into_iter().map(|r| self.assign(r)).collect())
    }

    /// A single chat between users whose inbox counters are cached, in a
    /// session that is cached or that the directory just gave the pair.
    fn can_plan(&self, r: &SendRecord) -> bool {
        let (SessionType::Single, Some(to)) = (r.session_type, r.to_user_id) else {
            return false;
        };
        let session_known = self.session_seq.contains_key(&r.session_id)
            || self
                .allocated
                .get(&r.session_id)
                .is_some_and(|p| !self.pairs.contains_key(p));
        session_known
            && self.inbox_seq.contains_key(&r.sender_id)
            && self.inbox_seq.contains_key(&to)
    }

    /// Assigns the numbers of a record `can_plan` accepted.
    fn assign(&mut self, r: SendRecord) -> (Planned, StoredMessage) {
        let new_session = match self.allocated.remove(&r.session_id) {
            Some(p) if !self.session_seq.contains_key(&r.session_id) => {
                self.pairs.insert(p, r.session_id);
                Some(p)
            }
            _ => None,
        };
        let seq = next(&mut self.session_seq, r.session_id);
        let sender = r.sender_id;
        let to = r.to_user_id.unwrap_or(sender);
        let accepted_at_ms = r.server_ts;
        let doc = Arc::new(MessageDoc::from_record(r, seq));
        let recipients = [sender, to].map(|user_id| {
            InboxRef::new_entry(user_id, sender, next(&mut self.inbox_seq, user_id))
        });
        let planned = Planned {
            doc: doc.clone(),
            recipients,
            new_session,
        };
        let stored = StoredMessage {
            doc,
            recipients: recipients.to_vec(),
            accepted_at_ms,
        };
        (planned, stored)
    }
}

/// The next number of a counter (`can_plan` checked it is cached; a new
/// session's starts at 0).
fn next(counters: &mut HashMap<u64, i64>, key: u64) -> i64 {
    let v = counters.entry(key).or_insert(0);
    *v += 1;
    *v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_starting_over_a_pair_lookup_first_waits_for_the_writer() {
        let mut cache = SeqCache::default();
        cache.resolved(7, (1, 2), 7);
        assert!(matches!(cache.pair_session((1, 2)), PairLookup::Found(7)));
        assert!(matches!(cache.pair_session((1, 3)), PairLookup::Committed));
        // A rollback: what the cache knew of uncommitted pairs is gone.
        cache.validate(1);
        let PairLookup::Settle(epoch) = cache.pair_session((1, 2)) else {
            panic!("a lookup must wait for the writer's commit");
        };
        cache.settled(epoch);
        assert!(matches!(cache.pair_session((1, 2)), PairLookup::Committed));
        // Numbers assigned and then not written start it over as well.
        cache.forget();
        cache.validate(1);
        assert!(matches!(cache.pair_session((1, 2)), PairLookup::Settle(_)));
    }
}
