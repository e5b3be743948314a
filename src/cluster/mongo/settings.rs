//! Settings every node of a cluster must share, kept in the `settings`
//! collection: the first node to start writes them, the others read them.

use mongodb::bson::{doc, Document};

use super::{is_duplicate_key, MongoStore};
use crate::error::{BackendError, BackendResult};

const SETTINGS: &str = "settings";
const JWT_SECRET: &str = "jwtSecret";

impl MongoStore {
    /// The secret tokens are signed with: `candidate` if no node stored
    /// one yet, else the stored one (so a token of one node is valid on
    /// every other).
    pub async fn shared_secret(&self, candidate: &str) -> BackendResult<Vec<u8>> {
        let settings = self.db.collection::<Document>(SETTINGS);
        let inserted = settings
            .insert_one(doc! {"_id": JWT_SECRET, "value": candidate})
            .await;
        match inserted {
            Ok(_) => return Ok(candidate.as_bytes().to_vec()),
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let stored = settings
            .find_one(doc! {"_id": JWT_SECRET})
            .await?
            .and_then(|d| d.get_str("value").ok().map(str::to_string));
        stored
            .map(String::into_bytes)
            .ok_or_else(|| BackendError::Other("the stored token secret is unreadable".into()))
    }
}
