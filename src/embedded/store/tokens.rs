//! Token issue numbers and revocations (see `service::tokens`), in
//! `user_tokens` (one row per user who logged in) and `revoked_tokens`
//! (single revocations until their token expires).

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::error::BackendResult;
use crate::service::backend::{AuthState, RevokedToken};

impl SqliteStore {
    pub(super) async fn load_auth_state(&self, user_id: u64) -> BackendResult<Option<AuthState>> {
        self.readers
            .read(move |c| {
                let revoked_before: Option<Option<i64>> = c
                    .prepare_cached(
                        "SELECT t.revoked_before FROM users u
                         LEFT JOIN user_tokens t ON t.user_id = u.user_id
                         WHERE u.user_id = ?",
                    )?
                    .query_row([user_id as i64], |r| r.get(0))
                    .optional()?;
                let Some(revoked_before) = revoked_before else {
                    return Ok(None);
                };
                let mut stmt = c.prepare_cached(
                    "SELECT number, expires_at FROM revoked_tokens WHERE user_id = ?",
                )?;
                let revoked = stmt
                    .query_map([user_id as i64], |r| {
                        Ok(RevokedToken {
                            number: r.get::<_, i64>(0)? as u64,
                            expires_at_ms: r.get(1)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Some(AuthState {
                    revoked_before: revoked_before.unwrap_or(0) as u64,
                    revoked,
                }))
            })
            .await
    }

    pub(super) async fn take_token_number(&self, user_id: u64) -> BackendResult<Option<u64>> {
        self.writer
            .write(move |c| {
                let exists = c
                    .prepare_cached("SELECT 1 FROM users WHERE user_id = ?")?
                    .query_row([user_id as i64], |_| Ok(()))
                    .optional()?;
                if exists.is_none() {
                    return Ok(None);
                }
                let number: i64 = c
                    .prepare_cached(
                        "INSERT INTO user_tokens(user_id, issued, revoked_before) VALUES (?, 1, 0)
                         ON CONFLICT(user_id) DO UPDATE SET issued = issued + 1
                         RETURNING issued",
                    )?
                    .query_row([user_id as i64], |r| r.get(0))?;
                Ok(Some(number as u64))
            })
            .await
    }

    pub(super) async fn add_revoked_token(
        &self,
        user_id: u64,
        token: RevokedToken,
        now_ms: i64,
    ) -> BackendResult<()> {
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "DELETE FROM revoked_tokens WHERE user_id = ? AND expires_at <= ?",
                )?
                .execute(params![user_id as i64, now_ms])?;
                c.prepare_cached(
                    "INSERT OR IGNORE INTO revoked_tokens(user_id, number, expires_at)
                     VALUES (?, ?, ?)",
                )?
                .execute(params![
                    user_id as i64,
                    token.number as i64,
                    token.expires_at_ms
                ])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn set_revoked_before(&self, user_id: u64, number: u64) -> BackendResult<()> {
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO user_tokens(user_id, issued, revoked_before) VALUES (?1, 0, ?2)
                     ON CONFLICT(user_id) DO UPDATE SET revoked_before = max(revoked_before, ?2)",
                )?
                .execute(params![user_id as i64, number as i64])?;
                // Covered by `revoked_before` now.
                c.prepare_cached("DELETE FROM revoked_tokens WHERE user_id = ? AND number < ?")?
                    .execute(params![user_id as i64, number as i64])?;
                Ok(())
            })
            .await
    }
}
