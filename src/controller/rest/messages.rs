//! Sending, pulling, syncing, acking, marking read and recalling messages.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::{path_id, ApiResult, BearerAuth, Ctx};
use crate::model::dto::{
    AckReq, MarkReadReq, MessageVo, PullResp, SendAck, SendReq, SyncResp, UnreadResp, UpdatedResp,
};

pub struct MessageApi {
    pub(super) ctx: Ctx,
}

#[derive(ApiResponse)]
pub enum SendResponse {
    /// The message is durably accepted.
    #[oai(status = 202)]
    Accepted(Json<SendAck>),
}

fn default_pull_size() -> u32 {
    20
}

fn default_true() -> bool {
    true
}

fn default_page_limit() -> u32 {
    100
}

#[OpenApi(tag = "super::ApiTags::Messages")]
impl MessageApi {
    /// Send a message
    ///
    /// Exactly one of `toUserId` and `groupId`. Idempotent on
    /// `clientMessageId`: a repeat answers the original's `SendAck`. Answers
    /// once the message is durable.
    #[oai(path = "/messages", method = "post", operation_id = "sendMessage")]
    async fn send(&self, auth: BearerAuth, body: Json<SendReq>) -> ApiResult<SendResponse> {
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
        #[oai(name = "sessionId")] session_id: Query<String>,
        /// Return messages after this one.
        #[oai(name = "lastMessageId")]
        last_message_id: Query<Option<String>>,
        /// Page size, 1-200.
        #[oai(
            default = "default_pull_size",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        size: Query<u32>,
        /// Mark returned messages `read` (else `delivered`).
        #[oai(name = "markRead", default = "default_true")]
        mark_read: Query<bool>,
    ) -> ApiResult<Json<PullResp>> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let page = services
            .messages
            .pull(
                user_id,
                &session_id,
                last_message_id.as_deref(),
                size.0 as usize,
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
        /// Page size, 1-500.
        #[oai(
            default = "default_page_limit",
            validator(minimum(value = "1"), maximum(value = "500"))
        )]
        limit: Query<u32>,
    ) -> ApiResult<Json<UnreadResp>> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        Ok(Json(
            services.messages.unread(user_id, limit.0 as usize).await?,
        ))
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
        #[oai(name = "afterInboxSeq", default, validator(minimum(value = "0")))]
        after_inbox_seq: Query<i64>,
        /// Page size, 1-500.
        #[oai(
            default = "default_page_limit",
            validator(minimum(value = "1"), maximum(value = "500"))
        )]
        limit: Query<u32>,
    ) -> ApiResult<Json<SyncResp>> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let page = services
            .messages
            .sync(user_id, after_inbox_seq.0, limit.0 as usize)
            .await?;
        Ok(Json(page))
    }

    /// Acknowledge messages
    ///
    /// `ackType` `received` or `read`; only the caller's own inbox entries
    /// change, and never backwards.
    #[oai(path = "/messages/ack", method = "post", operation_id = "ackMessages")]
    async fn ack(&self, auth: BearerAuth, body: Json<AckReq>) -> ApiResult<Json<UpdatedResp>> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let updated = services
            .messages
            .ack(user_id, &body.message_ids, &body.ack_type)
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
    ) -> ApiResult<Json<UpdatedResp>> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let updated = services
            .messages
            .mark_read(user_id, &body.session_id, body.up_to_seq)
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
        #[oai(name = "messageId")] message_id: Path<String>,
    ) -> ApiResult<Json<MessageVo>> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let message_id = path_id("messageId", &message_id)?;
        Ok(Json(services.messages.recall(user_id, message_id).await?))
    }
}
