//! Sending, recalling and reading messages.

use std::sync::Arc;

use async_trait::async_trait;

use super::acks::AckService;
use super::backend::{
    Durable, DurableTopic, KeyHistory, PublishOnce, Quotas, RecallOutcome, Store,
};
use super::directory::Directory;
use super::mailbox::{SendWaiters, StoredAs};
use super::notices::RoutedEvent;
use super::relay::Relay;
use crate::config::Config;
use crate::error::{AppError, AppResult, BackendResult};
use crate::model::dto::{
    HistoryResp, MessageVo, PullResp, SendAck, SendReq, SessionVo, SyncResp, UnreadResp,
};
use crate::model::ids::now_ms;
use crate::model::wire::{AckType, Limit, MessageIds, Seq, MAX_BATCH, MAX_PAGE};
use crate::model::{
    AcceptedSend, AckCommand, IdGenerator, InboxMessage, InboxStatus, SendRecord, SessionType,
};

/// Longest wait for the inbox write before a durable send is answered.
const STORED_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub struct MessageService {
    config: Arc<Config>,
    ids: Arc<IdGenerator>,
    store: Arc<dyn Store>,
    topic: Arc<dyn DurableTopic>,
    directory: Arc<Directory>,
    acks: Arc<AckService>,
    relay: Arc<Relay>,
    quotas: Arc<dyn Quotas>,
    sends: Arc<SendWaiters>,
}

/// What a `MessageService` works with besides its configuration.
pub struct MessageDeps {
    pub ids: Arc<IdGenerator>,
    pub store: Arc<dyn Store>,
    pub topic: Arc<dyn DurableTopic>,
    pub directory: Arc<Directory>,
    pub acks: Arc<AckService>,
    pub relay: Arc<Relay>,
    pub quotas: Arc<dyn Quotas>,
    pub sends: Arc<SendWaiters>,
}

/// A send that is queued on the session topic; awaiting it yields the
/// `SendAck` once the message is durable.
pub type PendingSend =
    std::pin::Pin<Box<dyn std::future::Future<Output = AppResult<SendAck>> + Send>>;

/// The idempotency keys of sends whose records left the session topic:
/// the stored messages answer for them.
pub struct StoredSends(pub Arc<dyn Store>);

#[async_trait]
impl KeyHistory for StoredSends {
    async fn receipt(&self, key: &str) -> BackendResult<Option<Vec<u8>>> {
        let Some((sender_id, client_message_id)) = AcceptedSend::parse_key(key) else {
            return Ok(None);
        };
        match self.0.sent_message(sender_id, client_message_id).await? {
            Some(accepted) => Ok(Some(serde_json::to_vec(&accepted)?)),
            None => Ok(None),
        }
    }
}

pub fn send_ack(a: &AcceptedSend) -> SendAck {
    SendAck {
        client_message_id: a.client_message_id.clone(),
        message_id: a.message_id.to_string(),
        session_id: a.session_id.to_string(),
        server_timestamp: a.server_ts,
        status: "accepted".into(),
    }
}

/// Waits for the session consumer to store a published send: read your
/// writes. Bounded: the send is durable already, so a slow consumer
/// delays the answer but never loses it.
async fn answer_stored(
    accepted: AcceptedSend,
    stored: tokio::sync::oneshot::Receiver<StoredAs>,
) -> AppResult<SendAck> {
    let how = tokio::time::timeout(STORED_WAIT, stored).await;
    if !matches!(how, Ok(Ok(StoredAs::Original(_)))) {
        metrics::counter!("herald_messages_sent_total").increment(1);
    }
    match how {
        Ok(Ok(StoredAs::Itself)) => Ok(send_ack(&accepted)),
        Ok(Ok(StoredAs::Original(original))) => {
            // A repeat that only the store caught.
            metrics::counter!("herald_duplicate_sends_total").increment(1);
            Ok(send_ack(&original))
        }
        _ => {
            tracing::warn!(
                message_id = accepted.message_id,
                "answering a send before its inbox write"
            );
            Ok(send_ack(&accepted))
        }
    }
}

fn vos(list: &[InboxMessage]) -> Vec<MessageVo> {
    list.iter().map(MessageVo::from).collect()
}

impl MessageService {
    pub fn new(config: Arc<Config>, deps: MessageDeps) -> MessageService {
        let MessageDeps {
            ids,
            store,
            topic,
            directory,
            acks,
            relay,
            quotas,
            sends,
        } = deps;
        MessageService {
            config,
            ids,
            store,
            topic,
            directory,
            acks,
            relay,
            quotas,
            sends,
        }
    }

    /// Validates, authorizes, deduplicates and queues a send. The first
    /// await fixes its place in the session topic; the returned future
    /// resolves once it is durable.
    #[tracing::instrument(skip_all, fields(sender = sender_id, cmid = %req.client_message_id))]
    pub async fn send(
        &self,
        sender_id: u64,
        req: SendReq,
        origin_conn: Option<u64>,
    ) -> AppResult<PendingSend> {
        // The field rules were checked when the request was parsed (see
        // `model::wire`); the content's size depends on the configuration.
        if req.content.len() > self.config.max_content_bytes {
            return Err(AppError::PayloadTooLarge(format!(
                "content is larger than {} bytes",
                self.config.max_content_bytes
            )));
        }
        if !self.quotas.take_send(sender_id).await? {
            // The bucket holds one more send after 1/rate seconds.
            let refill = std::time::Duration::from_secs_f64(
                1.0 / f64::from(self.config.send_rate_per_sec.max(1)),
            );
            return Err(AppError::rate_limited(
                "too many messages, slow down",
                refill,
            ));
        }
        let (session_id, session_type, to_user_id, group_id) =
            match (&req.to_user_id, &req.group_id) {
                (Some(to), None) => {
                    let to = to.get();
                    if to == sender_id {
                        return Err(AppError::forbidden(
                            "you cannot send a single-chat message to yourself",
                        ));
                    }
                    self.directory.require_users(&[to]).await?;
                    let sid = self.directory.single_session(sender_id, to).await?;
                    (sid, SessionType::Single, Some(to), None)
                }
                (None, Some(g)) => {
                    let g = g.get();
                    let s = self
                        .directory
                        .group_session_for_member(sender_id, g)
                        .await?;
                    (s.session_id, SessionType::Group, None, Some(g))
                }
                _ => {
                    return Err(AppError::invalid(
                        "exactly one of toUserId and groupId is required",
                    ))
                }
            };
        let now = now_ms();
        let client_ts = req.client_timestamp.unwrap_or(now);
        let adjusted_ts = if (client_ts - now).abs() > self.config.max_clock_skew_ms {
            now
        } else {
            client_ts
        };
        let record = SendRecord {
            origin_node: self.relay.node(),
            origin_conn,
            message_id: self.ids.next_id(),
            session_id,
            session_type,
            sender_id,
            to_user_id,
            group_id,
            message_type: req.message_type.get(),
            content: req.content.into_string(),
            client_message_id: req.client_message_id.into_string(),
            client_ts,
            server_ts: now,
            adjusted_ts,
        };
        let accepted = AcceptedSend {
            client_message_id: record.client_message_id.clone(),
            message_id: record.message_id,
            session_id,
            server_ts: now,
        };
        let key = AcceptedSend::key(sender_id, &record.client_message_id);
        let payload =
            serde_json::to_vec(&record).map_err(|e| AppError::Unavailable(e.to_string()))?;
        let receipt =
            serde_json::to_vec(&accepted).map_err(|e| AppError::Unavailable(e.to_string()))?;
        let message_id = record.message_id;
        // Expected before the publish: the consumer may store it first.
        let stored = self.sends.expect(message_id);
        let durable = self
            .topic
            .publish_once(session_id, key, payload, receipt)
            .await;
        let durable: Durable<PublishOnce> = match durable {
            Ok(d) => d,
            Err(e) => {
                self.sends.forget(message_id);
                return Err(e.into());
            }
        };
        let sends = self.sends.clone();
        Ok(Box::pin(async move {
            let published = durable.await;
            if !matches!(published, Ok(PublishOnce::Published(_))) {
                sends.forget(message_id);
            }
            match published? {
                PublishOnce::Published(_) => {
                    let answer = answer_stored(accepted, stored).await;
                    sends.forget(message_id);
                    answer
                }
                PublishOnce::Duplicate(original) => {
                    metrics::counter!("herald_duplicate_sends_total").increment(1);
                    let original: AcceptedSend =
                        serde_json::from_slice(&original).map_err(|e| {
                            AppError::Unavailable(format!("corrupt idempotency record: {e}"))
                        })?;
                    Ok(send_ack(&original))
                }
            }
        }))
    }

    /// Recalls a message of the caller's within the recall window, and tells
    /// every recipient's online devices.
    #[tracing::instrument(skip(self))]
    pub async fn recall(&self, user_id: u64, message_id: u64) -> AppResult<MessageVo> {
        let not_before = now_ms() - self.config.recall_window_ms;
        let doc = match self.store.recall(message_id, user_id, not_before).await? {
            RecallOutcome::Recalled(doc) => doc,
            RecallOutcome::NotFound => {
                return Err(AppError::not_found(format!(
                    "message {message_id} not found"
                )))
            }
            RecallOutcome::NotSender => {
                return Err(AppError::forbidden("only the sender may recall a message"))
            }
            RecallOutcome::TooLate => {
                return Err(AppError::forbidden(format!(
                    "the recall window of {} ms has passed",
                    self.config.recall_window_ms
                )))
            }
        };
        let session = self.directory.session(doc.session_id).await?;
        let mut own = None;
        let mut events = Vec::with_capacity(session.members.len());
        for &member in &session.members {
            let Some(entry) = self
                .store
                .inbox_messages(member, &[message_id])
                .await?
                .pop()
            else {
                continue;
            };
            let mut vo = MessageVo::from(&entry);
            if member == user_id {
                own = Some(vo.clone());
            }
            vo.kind = "recall".into();
            let body =
                serde_json::to_string(&vo).map_err(|e| AppError::Unavailable(e.to_string()))?;
            events.push(RoutedEvent {
                user_id: member,
                message_id,
                inbox_seq: entry.inbox_seq,
                body,
                pending: false,
                redelivery: false,
            });
        }
        self.relay.push_events(events).await;
        own.ok_or_else(|| AppError::not_found(format!("message {message_id} not found")))
    }

    /// Pull of one session after `lastMessageId`; marks what it returns
    /// `read` (or `delivered` with `markRead=false`).
    #[tracing::instrument(skip(self))]
    pub async fn pull(
        &self,
        user_id: u64,
        session_id: u64,
        last_message_id: Option<u64>,
        size: Limit<MAX_PAGE>,
        mark_read: bool,
    ) -> AppResult<PullResp> {
        let size = size.get();
        self.directory.member_session(user_id, session_id).await?;
        self.acks.settle_for(user_id).await;
        let after_seq = match last_message_id {
            None => 0,
            Some(mid) => match self.store.message(mid).await? {
                Some(doc) if doc.session_id == session_id => doc.seq,
                _ => {
                    return Err(AppError::not_found(format!(
                        "message {mid} not found in session"
                    )))
                }
            },
        };
        let mut page = self
            .store
            .pull(user_id, session_id, after_seq, size + 1)
            .await?;
        let has_more = page.len() > size;
        page.truncate(size);
        let status = if mark_read {
            InboxStatus::Read
        } else {
            InboxStatus::Delivered
        };
        self.mark(user_id, &mut page, status).await?;
        Ok(PullResp {
            messages: vos(&page),
            has_more,
        })
    }

    /// Raises the status of returned entries (through the ack path, so
    /// redelivery stops too) and reflects it in the answer.
    async fn mark(
        &self,
        user_id: u64,
        page: &mut [InboxMessage],
        status: InboxStatus,
    ) -> AppResult<()> {
        let ids: Vec<u64> = page
            .iter()
            .filter(|m| m.status < status)
            .map(|m| m.doc.message_id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.acks
            .apply(
                user_id,
                AckCommand::Messages {
                    message_ids: ids,
                    status,
                },
            )
            .await?;
        for m in page.iter_mut() {
            m.status = m.status.max(status);
        }
        Ok(())
    }

    pub async fn unread(&self, user_id: u64, limit: Limit<MAX_BATCH>) -> AppResult<UnreadResp> {
        self.acks.settle_for(user_id).await;
        let limit = limit.get();
        let (page, total) = self.store.unread(user_id, limit).await?;
        Ok(UnreadResp {
            messages: vos(&page),
            total,
        })
    }

    pub async fn sync(
        &self,
        user_id: u64,
        after_inbox_seq: Seq,
        limit: Limit<MAX_BATCH>,
    ) -> AppResult<SyncResp> {
        self.acks.settle_for(user_id).await;
        let (after_inbox_seq, limit) = (after_inbox_seq.get(), limit.get());
        let mut page = self.store.sync(user_id, after_inbox_seq, limit + 1).await?;
        let has_more = page.len() > limit;
        page.truncate(limit);
        let last_inbox_seq = page.last().map(|m| m.inbox_seq).unwrap_or(after_inbox_seq);
        Ok(SyncResp {
            messages: vos(&page),
            has_more,
            last_inbox_seq,
        })
    }

    pub async fn history(
        &self,
        user_id: u64,
        session_id: u64,
        before_seq: Option<i64>,
        limit: Limit<MAX_PAGE>,
    ) -> AppResult<HistoryResp> {
        let limit = limit.get();
        self.directory.member_session(user_id, session_id).await?;
        self.acks.settle_for(user_id).await;
        let mut page = self
            .store
            .history(user_id, session_id, before_seq, limit + 1)
            .await?;
        let has_more = page.len() > limit;
        if has_more {
            page.remove(0);
        }
        Ok(HistoryResp {
            messages: vos(&page),
            has_more,
        })
    }

    pub async fn sessions(&self, user_id: u64) -> AppResult<Vec<SessionVo>> {
        self.acks.settle_for(user_id).await;
        let list = self.store.sessions(user_id).await?;
        Ok(list
            .iter()
            .map(|s| SessionVo {
                session_id: s.session_id.to_string(),
                session_type: s.session_type.as_str().into(),
                peer_id: s.peer_id.map(|p| p.to_string()),
                group_id: s.group_id.map(|g| g.to_string()),
                name: s.name.clone(),
                last_message: s.last_message.as_ref().map(MessageVo::from),
                unread_count: s.unread_count,
                updated_at: s.updated_at,
            })
            .collect())
    }

    /// `ackType` for message ids: only the caller's own entries change.
    pub async fn ack(
        &self,
        user_id: u64,
        message_ids: &MessageIds,
        ack_type: AckType,
    ) -> AppResult<u64> {
        let outcome = self
            .acks
            .apply(
                user_id,
                AckCommand::Messages {
                    message_ids: message_ids.ids().to_vec(),
                    status: ack_type.status(),
                },
            )
            .await?;
        Ok(outcome.updated)
    }

    pub async fn mark_read(
        &self,
        user_id: u64,
        session_id: u64,
        up_to_seq: Option<Seq>,
    ) -> AppResult<u64> {
        let up_to_seq = up_to_seq.map(Seq::get);
        self.directory.member_session(user_id, session_id).await?;
        let outcome = self
            .acks
            .apply(
                user_id,
                AckCommand::SessionRead {
                    session_id,
                    up_to_seq,
                },
            )
            .await?;
        Ok(outcome.updated)
    }

    /// Pushes these messages again to the user's devices (or to one), if
    /// their entries are still `pending`; returns the ids that are not
    /// (acked meanwhile), which need no more redelivery.
    pub async fn redeliver(
        &self,
        user_id: u64,
        message_ids: &[u64],
        conn: Option<u64>,
    ) -> AppResult<Vec<u64>> {
        let entries = self.store.inbox_messages(user_id, message_ids).await?;
        let mut settled: Vec<u64> = message_ids
            .iter()
            .copied()
            .filter(|id| !entries.iter().any(|e| e.doc.message_id == *id))
            .collect();
        let mut events = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.status != InboxStatus::Pending {
                settled.push(entry.doc.message_id);
                continue;
            }
            let body = serde_json::to_string(&MessageVo::from(&entry))
                .map_err(|e| AppError::Unavailable(e.to_string()))?;
            events.push(RoutedEvent {
                user_id,
                message_id: entry.doc.message_id,
                inbox_seq: entry.inbox_seq,
                body,
                pending: true,
                redelivery: true,
            });
        }
        let redelivered = events.len() as u64;
        match conn {
            // A NACK: to the connection that asked (on this node).
            Some(c) => {
                let hub = self.relay.hub();
                for e in events {
                    hub.push_to_conn(user_id, c, &e.into_user_event());
                }
            }
            // To the user's devices on every node; this node's clock
            // keeps following them (the others do not track redeliveries).
            None => self.relay.push_events(events).await,
        }
        metrics::counter!("herald_messages_redelivered_total").increment(redelivered);
        Ok(settled)
    }
}
