//! Token issue numbers and revocations (see `service::tokens`), in the
//! user's document: `tokensIssued` (the last number given out),
//! `tokensRevokedBefore` (logout-all) and `revokedTokens`
//! (`[{n, exp}]`, single revocations until their token expires).

use mongodb::options::ReturnDocument;

use super::storing::int;
use super::*;
use crate::service::backend::{AuthState, RevokedToken};

impl MongoStore {
    fn user_docs(&self) -> Collection<Document> {
        self.db.collection::<Document>(USERS)
    }

    pub(super) async fn load_auth_state(&self, user_id: u64) -> BackendResult<Option<AuthState>> {
        let found = self
            .user_docs()
            .find_one(doc! {"_id": id(user_id)})
            .projection(doc! {"tokensRevokedBefore": 1, "revokedTokens": 1})
            .await?;
        let Some(user) = found else {
            return Ok(None);
        };
        let revoked = match user.get("revokedTokens") {
            Some(Bson::Array(entries)) => entries
                .iter()
                .filter_map(Bson::as_document)
                .filter_map(|e| {
                    Some(RevokedToken {
                        number: u64::try_from(int(e.get("n"))?).ok()?,
                        expires_at_ms: int(e.get("exp"))?,
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let revoked_before = int(user.get("tokensRevokedBefore")).unwrap_or(0);
        Ok(Some(AuthState {
            revoked_before: u64::try_from(revoked_before).unwrap_or(0),
            revoked,
        }))
    }

    pub(super) async fn take_token_number(&self, user_id: u64) -> BackendResult<Option<u64>> {
        // One atomic increment: two logins at once get two numbers.
        let updated = self
            .user_docs()
            .find_one_and_update(
                doc! {"_id": id(user_id)},
                doc! {"$inc": {"tokensIssued": 1_i64}},
            )
            .return_document(ReturnDocument::After)
            .projection(doc! {"tokensIssued": 1})
            .await?;
        Ok(updated
            .and_then(|u| int(u.get("tokensIssued")))
            .and_then(|n| u64::try_from(n).ok()))
    }

    pub(super) async fn add_revoked_token(
        &self,
        user_id: u64,
        token: RevokedToken,
        now_ms: i64,
    ) -> BackendResult<()> {
        // Two updates: one may not both pull from and push to an array.
        let users = self.user_docs();
        users
            .update_one(
                doc! {"_id": id(user_id)},
                doc! {"$pull": {"revokedTokens": {"exp": {"$lte": now_ms}}}},
            )
            .await?;
        let entry = doc! {"n": id(token.number), "exp": token.expires_at_ms};
        users
            .update_one(
                doc! {"_id": id(user_id)},
                doc! {"$addToSet": {"revokedTokens": entry}},
            )
            .await?;
        Ok(())
    }

    pub(super) async fn set_revoked_before(&self, user_id: u64, number: u64) -> BackendResult<()> {
        self.user_docs()
            .update_one(
                doc! {"_id": id(user_id)},
                doc! {
                    "$max": {"tokensRevokedBefore": id(number)},
                    // Covered by `tokensRevokedBefore` now.
                    "$pull": {"revokedTokens": {"n": {"$lt": id(number)}}},
                },
            )
            .await?;
        Ok(())
    }
}
