//! The embedded bundle: the topics as logs and the documents in SQLite
//! under the data directory, presence in memory. One process, no other.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;

use super::{AppliedPositions, Embedded, LocalPresence, LocalQuotas, SqliteStore};
use crate::config::Config;
use crate::error::BackendResult;
use crate::service::backend::{Backends, DurableTopic, Store};
use crate::service::messages::StoredSends;

#[async_trait]
impl AppliedPositions for SqliteStore {
    async fn applied(&self, group: &str) -> BackendResult<Option<u64>> {
        self.applied_position(group).await
    }

    fn durable(&self, group: &str) -> u64 {
        self.durable_position(group)
    }
}

/// Opens the embedded backends in the data directory.
pub fn open_backends(cfg: &Config) -> anyhow::Result<Backends> {
    let db = Embedded::open(
        &cfg.data_dir,
        cfg.durability == "full",
        cfg.commit_batch_max,
    )
    .with_context(|| format!("cannot open the store in {}", cfg.data_dir.display()))?;
    let sqlite = Arc::new(SqliteStore::new(&db.documents));
    let store: Arc<dyn Store> = sqlite.clone();
    let history = Arc::new(StoredSends(store.clone()));
    let positions: Arc<dyn AppliedPositions> = sqlite;
    let session_topic: Arc<dyn DurableTopic> =
        Arc::new(db.open_topic("session", Some(history), Some(positions.clone()))?);
    let ack_topic: Arc<dyn DurableTopic> = Arc::new(db.open_topic("ack", None, Some(positions))?);
    Ok(Backends {
        mode: "embedded",
        store,
        session_topic,
        ack_topic,
        presence: Arc::new(LocalPresence::new(cfg.node_id)),
        quotas: Arc::new(LocalQuotas::new(cfg.send_rate_per_sec, cfg.send_burst)),
        jwt_secret: jwt_secret(cfg)?,
        replay_before_serving: true,
    })
}

/// Reads the JWT secret from config, or from `<data-dir>/jwt.secret`
/// (created once with 32 random bytes), so restarts keep tokens valid.
fn jwt_secret(cfg: &Config) -> anyhow::Result<Vec<u8>> {
    if !cfg.jwt_secret.is_empty() {
        return Ok(cfg.jwt_secret.as_bytes().to_vec());
    }
    let path = cfg.data_dir.join("jwt.secret");
    if let Ok(existing) = std::fs::read(&path) {
        if existing.len() >= 32 {
            return Ok(existing);
        }
    }
    let secret: [u8; 32] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, hex.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(hex.into_bytes())
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}
