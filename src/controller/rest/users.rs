//! `GET /users/me`, `GET /users/{userId}`, `GET /presence`.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::OpenApi;

use super::error::{LookupErrors, OwnErrors};
use super::{ApiResult, BearerAuth, Ctx};
use crate::error::AppError;
use crate::model::dto::{PresenceVo, UserVo};
use crate::model::wire::{UserId, UserIdList};

pub struct UserApi {
    pub(super) ctx: Ctx,
}

#[OpenApi(tag = "super::ApiTags::Users")]
impl UserApi {
    /// The caller's profile
    #[oai(path = "/users/me", method = "get", operation_id = "getMe")]
    async fn me(&self, auth: BearerAuth) -> ApiResult<Json<UserVo>, LookupErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        Ok(Json(services.directory.user(user_id).await?))
    }

    /// A user's public profile
    #[oai(path = "/users/:userId", method = "get", operation_id = "getUser")]
    async fn user(
        &self,
        auth: BearerAuth,
        #[oai(name = "userId")] user_id: Path<UserId>,
    ) -> ApiResult<Json<UserVo>, LookupErrors> {
        let (services, _) = self.ctx.authed(&auth)?;
        Ok(Json(services.directory.user(user_id.get()).await?))
    }

    /// Presence of users
    ///
    /// `online` while any device of the user is connected; `lastSeenAt`
    /// (null if never seen) is when the last one disconnected.
    #[oai(path = "/presence", method = "get", operation_id = "getPresence")]
    async fn presence(
        &self,
        auth: BearerAuth,
        /// 1-100 comma-separated user ids.
        #[oai(name = "userIds")]
        user_ids: Query<UserIdList>,
    ) -> ApiResult<Json<Vec<PresenceVo>>, OwnErrors> {
        let (services, _) = self.ctx.authed(&auth)?;
        let presence = services.presence.presence(user_ids.ids()).await;
        Ok(Json(presence.map_err(AppError::from)?))
    }
}
