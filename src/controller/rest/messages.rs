//! Sending, pulling, syncing, acking, marking read and recalling messages.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::error::{MemberErrors, OwnErrors};
use super::{ApiResult, BearerAuth, Ctx};
use crate::model::dto::{
    AckReq, MarkReadReq, MessageVo, PullResp, SendAck, SendReq, SyncResp, UnreadResp, UpdatedResp,
};
use crate::model::wire::{Limit, MessageId, Seq, SessionId, MAX_BATCH, MAX_PAGE};

pub struct MessageApi {
    pub(super) ctx: Ctx,
}

#[derive(ApiResponse)]
pub enum SendResponse {
    /// The message is durably accepted.
    #[oai(status = 202)]
    Accepted(Json<SendAck>),
}

fn default_pull_size() -> Limit<MAX_PAGE> {
    Limit::clamped(20)
}

fn default_true() -> bool {
    true
}

fn default_batch() -> Limit<MAX_BATCH> {
    Limit::clamped(100)
}

#[OpenApi(tag = "super::ApiTags::Messages")]
impl MessageApi {
    /// Send a message
    ///
    /// Exactly one of `toUserId` and `groupId`. Idempotent on
    /// `clientMessageId`: a repeat answers the original's `SendAck`. Answers
    /// once the message is durable.
    #[oai(path = "/messages", method = "post", operation_id = "sendMessage")]
    async fn send(
        &self,
        auth: BearerAuth,
        body: Json<SendReq>,
    ) -> ApiResult<SendResponse, MemberErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let pending = services.messages.send(user_id, body.0, None).await?;
        Ok(SendResponse::Accepted(Json(pending.await?)))
    }

    /// Pull a session's messages
    ///
    /// Messages after `lastMessageId` (from the start if absent), ascending
    /// by `seq`. Returned entries become `read` (`delivered` with
    /// `markRead=false`).
    #[oai(path = "/messages/pull", method = "get", operation_id = "pullMessages")]
    async fn pull(
        &self,
        auth: BearerAuth,
        #[oai(name = "sessionId")] session_id: Query<SessionId>,
        /// Return messages after this one (of this session).
        #[oai(name = "lastMessageId")]
        last_message_id: Query<Option<MessageId>>,
        /// Page size (default 20).
        #[oai(default = "default_pull_size")]
        size: Query<Limit<MAX_PAGE>>,
        /// Mark returned messages `read` (else `delivered`).
        #[oai(name = "markRead", default = "default_true")]
        mark_read: Query<bool>,
    ) -> ApiResult<Json<PullResp>, MemberErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let page = services
            .messages
            .pull(
                user_id,
                session_id.get(),
                last_message_id.0.map(MessageId::get),
                size.0,
                mark_read.0,
            )
            .await?;
        Ok(Json(page))
    }

    /// Unread messages of all sessions
    ///
    /// Oldest first; `total` counts every unread message of the caller.
    #[oai(
        path = "/messages/unread",
        method = "get",
        operation_id = "unreadMessages"
    )]
    async fn unread(
        &self,
        auth: BearerAuth,
        /// Page size (default 100).
        #[oai(default = "default_batch")]
        limit: Query<Limit<MAX_BATCH>>,
    ) -> ApiResult<Json<UnreadResp>, OwnErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        Ok(Json(services.messages.unread(user_id, limit.0).await?))
    }

    /// Multi-device sync by inbox cursor
    ///
    /// The caller's inbox entries after `afterInboxSeq`, by `inboxSeq`; pass
    /// `lastInboxSeq` as the next cursor.
    #[oai(path = "/inbox/sync", method = "get", operation_id = "syncInbox")]
    async fn sync(
        &self,
        auth: BearerAuth,
        /// The cursor: the last `inboxSeq` already seen (0: from the start).
        #[oai(name = "afterInboxSeq", default)]
        after_inbox_seq: Query<Seq>,
        /// Page size (default 100).
        #[oai(default = "default_batch")]
        limit: Query<Limit<MAX_BATCH>>,
    ) -> ApiResult<Json<SyncResp>, OwnErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let page = services
            .messages
            .sync(user_id, after_inbox_seq.0, limit.0)
            .await?;
        Ok(Json(page))
    }

    /// Acknowledge messages
    ///
    /// `ackType` `received` or `read`; only the caller's own inbox entries
    /// change, and never backwards.
    #[oai(path = "/messages/ack", method = "post", operation_id = "ackMessages")]
    async fn ack(
        &self,
        auth: BearerAuth,
        body: Json<AckReq>,
    ) -> ApiResult<Json<UpdatedResp>, OwnErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let updated = services
            .messages
            .ack(user_id, &body.message_ids, body.ack_type)
            .await?;
        Ok(Json(UpdatedResp { updated }))
    }

    /// Mark a session read
    ///
    /// Up to `upToSeq`, or all of it if absent.
    #[oai(
        path = "/messages/mark-read",
        method = "post",
        operation_id = "markRead"
    )]
    async fn mark_read(
        &self,
        auth: BearerAuth,
        body: Json<MarkReadReq>,
    ) -> ApiResult<Json<UpdatedResp>, MemberErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let updated = services
            .messages
            .mark_read(user_id, body.session_id.get(), body.up_to_seq)
            .await?;
        Ok(Json(UpdatedResp { updated }))
    }

    /// Recall a message
    ///
    /// The sender only, within the recall window; recipients get a `recall`
    /// event. Answers the recalled message.
    #[oai(
        path = "/messages/:messageId/recall",
        method = "post",
        operation_id = "recallMessage"
    )]
    async fn recall(
        &self,
        auth: BearerAuth,
        #[oai(name = "messageId")] message_id: Path<MessageId>,
    ) -> ApiResult<Json<MessageVo>, MemberErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let message = services.messages.recall(user_id, message_id.get()).await?;
        Ok(Json(message))
    }
}
