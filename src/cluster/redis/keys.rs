//! Idempotency keys of sends, in front of the store's unique index on
//! (`senderId`, `clientMessageId`): most repeats are answered here at
//! once; the index catches the rest (a key lost with Redis, or a repeat
//! racing its original).
//!
//! A key holds its send's receipt, marked pending (`p`) from the claim
//! until the record is durable in the topic, then done (`d`). A repeat of
//! a done send gets the receipt. A repeat of a pending one waits for it to
//! become done; if it stays pending (its node died between claim and
//! publish), the repeat takes the key over and publishes itself: should
//! the original have been published after all, the store keeps one of the
//! two and reports the other as known.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::scripts::{CLAIM, SWAP};
use super::{redis_error, Names};
use crate::error::BackendResult;

/// How long a send's key is kept.
const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a repeat waits for a pending original, and how often it looks.
const PENDING_WAIT: Duration = Duration::from_secs(5);
const PENDING_POLL: Duration = Duration::from_millis(25);

const PENDING: u8 = b'p';
const DONE: u8 = b'd';

pub struct SendKeys {
    names: Names,
    conn: ConnectionManager,
}

/// What claiming a key found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is this send's now: publish it, then `done`.
    Mine,
    /// The send was published before: its receipt.
    Done(Vec<u8>),
}

fn value(state: u8, receipt: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(receipt.len() + 1);
    v.push(state);
    v.extend_from_slice(receipt);
    v
}

impl SendKeys {
    pub fn new(conn: ConnectionManager, cluster: &str) -> SendKeys {
        SendKeys {
            names: Names::new(cluster),
            conn,
        }
    }

    /// Claims `key` for a send with `receipt`.
    pub async fn claim(&self, key: &str, receipt: &[u8]) -> BackendResult<Claim> {
        let redis_key = self.names.send(key);
        let mine = value(PENDING, receipt);
        let deadline = tokio::time::Instant::now() + PENDING_WAIT;
        let mut conn = self.conn.clone();
        loop {
            let found: Option<Vec<u8>> = CLAIM
                .key(&redis_key)
                .arg(&mine)
                .arg(KEY_TTL.as_millis() as u64)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            let Some(found) = found else {
                return Ok(Claim::Mine);
            };
            match found.split_first() {
                Some((&DONE, receipt)) => return Ok(Claim::Done(receipt.to_vec())),
                _ if tokio::time::Instant::now() >= deadline => {
                    // Its publisher is gone: this send takes over.
                    if self.swap(&redis_key, &found, &mine).await? {
                        return Ok(Claim::Mine);
                    }
                }
                _ => tokio::time::sleep(PENDING_POLL).await,
            }
        }
    }

    /// The claimed send is durable in the topic.
    pub async fn done(&self, key: &str, receipt: &[u8]) -> BackendResult<()> {
        let redis_key = self.names.send(key);
        self.swap(&redis_key, &value(PENDING, receipt), &value(DONE, receipt))
            .await
            .map(|_| ())
    }

    /// The claimed send was not published: the key is free again.
    pub async fn release(&self, key: &str, receipt: &[u8]) -> BackendResult<()> {
        let redis_key = self.names.send(key);
        self.swap(&redis_key, &value(PENDING, receipt), b"")
            .await
            .map(|_| ())
    }

    /// Sets `key` to `new` (deletes it if empty) if it holds `expected`.
    async fn swap(&self, key: &str, expected: &[u8], new: &[u8]) -> BackendResult<bool> {
        let mut conn = self.conn.clone();
        let swapped: i64 = SWAP
            .key(key)
            .arg(expected)
            .arg(new)
            .arg(KEY_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(swapped == 1)
    }
}
