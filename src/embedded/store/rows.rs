//! Reading rows into documents: messages, inbox entries, users, groups and
//! the session list.

use super::*;

pub(super) const MESSAGE_COLUMNS: &str =
    "m.message_id, m.session_id, m.seq, m.session_type, m.sender_id, \
     m.to_user_id, m.group_id, m.message_type, m.content, m.client_message_id, m.client_ts, \
     m.server_ts, m.adjusted_ts, m.recalled";

pub(super) fn opt_id(v: Option<i64>) -> Option<u64> {
    v.map(|x| x as u64)
}

/// Reads the `MESSAGE_COLUMNS` starting at column `at`.
pub(super) fn message_from_row(r: &Row, at: usize) -> rusqlite::Result<MessageDoc> {
    Ok(MessageDoc {
        message_id: r.get::<_, i64>(at)? as u64,
        session_id: r.get::<_, i64>(at + 1)? as u64,
        seq: r.get(at + 2)?,
        session_type: SessionType::from_code(r.get(at + 3)?),
        sender_id: r.get::<_, i64>(at + 4)? as u64,
        to_user_id: opt_id(r.get(at + 5)?),
        group_id: opt_id(r.get(at + 6)?),
        message_type: r.get(at + 7)?,
        content: r.get(at + 8)?,
        client_message_id: r.get(at + 9)?,
        client_ts: r.get(at + 10)?,
        server_ts: r.get(at + 11)?,
        adjusted_ts: r.get(at + 12)?,
        recalled: r.get::<_, i64>(at + 13)? != 0,
    })
}

/// Rows of `SELECT i.inbox_seq, i.status, <MESSAGE_COLUMNS> FROM inbox i JOIN messages m ...`.
pub(super) fn inbox_query(
    c: &Connection,
    where_and_order: &str,
    args: &[&dyn rusqlite::ToSql],
) -> BackendResult<Vec<InboxMessage>> {
    let sql = format!(
        "SELECT i.inbox_seq, i.status, {MESSAGE_COLUMNS} FROM inbox i \
         JOIN messages m ON m.message_id = i.message_id {where_and_order}"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(args, |r| {
        Ok(InboxMessage {
            inbox_seq: r.get(0)?,
            status: InboxStatus::from_code(r.get(1)?),
            doc: Arc::new(message_from_row(r, 2)?),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn user_from_row(r: &Row) -> rusqlite::Result<User> {
    Ok(User {
        user_id: r.get::<_, i64>(0)? as u64,
        username: r.get(1)?,
        nickname: r.get(2)?,
        password_hash: r.get(3)?,
        created_at: r.get(4)?,
    })
}

pub(super) fn group_members(c: &Connection, group_id: u64) -> BackendResult<Vec<u64>> {
    let mut stmt = c.prepare_cached(
        "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY joined_at, user_id",
    )?;
    let rows = stmt.query_map([group_id as i64], |r| r.get::<_, i64>(0))?;
    Ok(rows
        .map(|r| r.map(|v| v as u64))
        .collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn load_group(c: &Connection, group_id: u64) -> BackendResult<Option<Group>> {
    let row = c
        .prepare_cached("SELECT group_id, session_id, name, owner_id, created_at FROM groups_ WHERE group_id = ?")?
        .query_row([group_id as i64], |r| {
            Ok(Group {
                group_id: r.get::<_, i64>(0)? as u64,
                session_id: r.get::<_, i64>(1)? as u64,
                name: r.get(2)?,
                owner_id: r.get::<_, i64>(3)? as u64,
                created_at: r.get(4)?,
                member_ids: Vec::new(),
            })
        })
        .optional()?;
    match row {
        Some(mut g) => {
            g.member_ids = group_members(c, group_id)?;
            Ok(Some(g))
        }
        None => Ok(None),
    }
}

pub(super) fn sessions_of(c: &Connection, user_id: u64) -> BackendResult<Vec<SessionSummary>> {
    let uid = user_id as i64;
    let mut stmt = c.prepare_cached(
        "SELECT s.session_id, s.session_type, s.user_lo, s.user_hi, s.group_id, s.updated_at, g.name, u.nickname
         FROM sessions s
         LEFT JOIN groups_ g ON g.group_id = s.group_id
         LEFT JOIN users u ON s.session_type = 1 AND u.user_id = (CASE WHEN s.user_lo = ?1 THEN s.user_hi ELSE s.user_lo END)
         WHERE (s.session_type = 1 AND (s.user_lo = ?1 OR s.user_hi = ?1) AND s.last_message_id IS NOT NULL)
            OR (s.session_type = 2 AND s.group_id IN (SELECT group_id FROM group_members WHERE user_id = ?1))
         ORDER BY s.updated_at DESC, s.session_id DESC",
    )?;
    let rows = stmt.query_map([uid], |r| {
        let session_type = SessionType::from_code(r.get(1)?);
        let lo: Option<i64> = r.get(2)?;
        let hi: Option<i64> = r.get(3)?;
        let peer = match (lo, hi) {
            (Some(lo), Some(hi)) => Some(if lo == uid { hi } else { lo } as u64),
            _ => None,
        };
        let group_name: Option<String> = r.get(6)?;
        let peer_name: Option<String> = r.get(7)?;
        Ok(SessionSummary {
            session_id: r.get::<_, i64>(0)? as u64,
            session_type,
            peer_id: peer,
            group_id: opt_id(r.get(4)?),
            name: group_name.or(peer_name),
            last_message: None,
            unread_count: 0,
            updated_at: r.get(5)?,
        })
    })?;
    let mut sessions = rows.collect::<Result<Vec<_>, _>>()?;
    let mut unread: HashMap<u64, i64> = HashMap::new();
    {
        let mut st = c.prepare_cached(
            "SELECT session_id, count(*) FROM inbox WHERE user_id = ? AND unread = 1 GROUP BY session_id",
        )?;
        let rows = st.query_map([uid], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (sid, n) = row?;
            unread.insert(sid, n);
        }
    }
    for s in &mut sessions {
        s.unread_count = unread.get(&s.session_id).copied().unwrap_or(0);
        s.last_message = inbox_query(
            c,
            "WHERE i.user_id = ?1 AND i.session_id = ?2 ORDER BY i.seq DESC LIMIT 1",
            &[&uid, &(s.session_id as i64)],
        )?
        .pop();
    }
    Ok(sessions)
}
