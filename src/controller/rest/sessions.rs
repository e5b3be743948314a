//! `GET /sessions`, `GET /sessions/{sessionId}/messages`.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::OpenApi;

use super::error::{MemberErrors, OwnErrors};
use super::{ApiResult, BearerAuth, Ctx};
use crate::model::dto::{HistoryResp, SessionVo};
use crate::model::wire::{Limit, SessionId, MAX_PAGE};

pub struct SessionApi {
    pub(super) ctx: Ctx,
}

fn default_history_limit() -> Limit<MAX_PAGE> {
    Limit::clamped(50)
}

#[OpenApi(tag = "super::ApiTags::Sessions")]
impl SessionApi {
    /// The caller's sessions, most recent first
    #[oai(path = "/sessions", method = "get", operation_id = "listSessions")]
    async fn list(&self, auth: BearerAuth) -> ApiResult<Json<Vec<SessionVo>>, OwnErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        Ok(Json(services.messages.sessions(user_id).await?))
    }

    /// History of a session (members only)
    ///
    /// The page of messages before `beforeSeq` (the newest if absent),
    /// ascending by `seq`; `hasMore` tells whether older ones exist.
    #[oai(
        path = "/sessions/:sessionId/messages",
        method = "get",
        operation_id = "sessionHistory"
    )]
    async fn history(
        &self,
        auth: BearerAuth,
        #[oai(name = "sessionId")] session_id: Path<SessionId>,
        /// Only messages with a smaller `seq`.
        #[oai(name = "beforeSeq")]
        before_seq: Query<Option<i64>>,
        /// Page size (default 50).
        #[oai(default = "default_history_limit")]
        limit: Query<Limit<MAX_PAGE>>,
    ) -> ApiResult<Json<HistoryResp>, MemberErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let page = services
            .messages
            .history(user_id, session_id.get(), before_seq.0, limit.0)
            .await?;
        Ok(Json(page))
    }
}
