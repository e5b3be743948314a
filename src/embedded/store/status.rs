//! Status changes: acks raise inbox entries (never back), recalls mark a
//! message recalled.

use super::rows::{message_from_row, MESSAGE_COLUMNS};
use super::*;

/// Where a message sits in every inbox: (session id, seq).
fn message_position(c: &Connection, message_id: u64) -> BackendResult<Option<(i64, i64)>> {
    Ok(
        c.prepare_cached("SELECT session_id, seq FROM messages WHERE message_id = ?")?
            .query_row([message_id as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    )
}

/// The UPDATE raising the entry named by `key` (parameters ?2 to ?4) to
/// `status` (?1) if its status is ?5: one indexed write per ack instead of
/// a read and a write. `unread` is only written by a raise to read: an
/// update naming it rewrites the unread index's entry (see
/// `schema::add_inbox_unread`). Static text: it is looked up per ack.
macro_rules! raise_status_sql {
    ($status:expr, $key:literal) => {
        if $status.is_unread() {
            concat!(
                "UPDATE inbox SET status = ?1 WHERE ",
                $key,
                " AND status = ?5"
            )
        } else {
            concat!(
                "UPDATE inbox SET status = ?1, unread = 0 WHERE ",
                $key,
                " AND status = ?5"
            )
        }
    };
}

/// Raises one entry (`key`: its three key parameters) to `status` and
/// counts it in `out`: tried from each lower status in turn, so the first
/// update that matches also tells which status it left.
fn raise_entry(
    upd: &mut rusqlite::CachedStatement<'_>,
    out: &mut AckOutcome,
    message_id: u64,
    status: InboxStatus,
    key: [i64; 3],
) -> BackendResult<()> {
    for old in [InboxStatus::Pending, InboxStatus::Delivered] {
        if old >= status {
            break;
        }
        if upd.execute(params![status.code(), key[0], key[1], key[2], old.code()])? == 1 {
            out.raise(message_id, old, status);
            break;
        }
    }
    Ok(())
}

pub(super) fn apply_ack(c: &Connection, ack: &AckRecord) -> BackendResult<AckOutcome> {
    let mut out = AckOutcome::default();
    let user = ack.user_id as i64;
    match &ack.command {
        AckCommand::Messages {
            message_ids,
            status,
        } => {
            let mut upd = c.prepare_cached(raise_status_sql!(
                status,
                "user_id = ?2 AND session_id = ?3 AND seq = ?4"
            ))?;
            for &mid in message_ids {
                let Some((session, seq)) = message_position(c, mid)? else {
                    continue;
                };
                raise_entry(&mut upd, &mut out, mid, *status, [user, session, seq])?;
            }
        }
        AckCommand::Entries { entries, status } => {
            // The message id must match too: an entry is only ever acked as
            // it was pushed to this user.
            let mut upd = c.prepare_cached(raise_status_sql!(
                status,
                "user_id = ?2 AND inbox_seq = ?3 AND message_id = ?4"
            ))?;
            for &(mid, inbox_seq) in entries {
                raise_entry(
                    &mut upd,
                    &mut out,
                    mid,
                    *status,
                    [user, inbox_seq, mid as i64],
                )?;
            }
        }
        AckCommand::SessionRead {
            session_id,
            up_to_seq,
        } => {
            let up_to = up_to_seq.unwrap_or(i64::MAX);
            let mut sel = c.prepare_cached(
                "SELECT message_id, status FROM inbox WHERE user_id = ? AND session_id = ? AND seq <= ? AND unread = 1",
            )?;
            let rows = sel.query_map(params![user, *session_id as i64, up_to], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (mid, status) = row?;
                out.updated += 1;
                if status == InboxStatus::Pending.code() {
                    out.no_longer_pending.push(mid);
                }
            }
            c.prepare_cached(
                "UPDATE inbox SET status = 2, unread = 0 \
                 WHERE user_id = ? AND session_id = ? AND seq <= ? AND unread = 1",
            )?
            .execute(params![user, *session_id as i64, up_to])?;
        }
    }
    Ok(out)
}

pub(super) fn recall_in(
    c: &Connection,
    message_id: u64,
    sender_id: u64,
    not_before: i64,
) -> BackendResult<RecallOutcome> {
    let doc = c
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.message_id = ?"
        ))?
        .query_row([message_id as i64], |r| message_from_row(r, 0))
        .optional()?;
    let doc = match RecallOutcome::judge(doc, sender_id, not_before) {
        RecallStep::Write(recalled) => recalled,
        RecallStep::Answer(outcome) => return Ok(outcome),
    };
    c.prepare_cached("UPDATE messages SET recalled = 1, content = '' WHERE message_id = ?")?
        .execute([message_id as i64])?;
    Ok(RecallOutcome::Recalled(doc))
}
