//! `GET /users/me`, `GET /users/{userId}`, `GET /presence`.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::OpenApi;

use super::{path_id, ApiResult, BearerAuth, Ctx};
use crate::error::{AppError, AppResult};
use crate::model::dto::{PresenceVo, UserVo};
use crate::model::parse_id;

/// The most user ids one presence query may name.
pub const MAX_PRESENCE_IDS: usize = 100;

pub struct UserApi {
    pub(super) ctx: Ctx,
}

/// Parses a comma-separated list of 1-`max` ids.
fn parse_id_list(field: &str, raw: &str, max: usize) -> AppResult<Vec<u64>> {
    let ids = raw
        .split(',')
        .map(|part| parse_id(field, part.trim()))
        .collect::<AppResult<Vec<u64>>>()?;
    if ids.is_empty() || ids.len() > max {
        return Err(AppError::invalid(format!("{field} must hold 1-{max} ids")));
    }
    Ok(ids)
}

#[OpenApi(tag = "super::ApiTags::Users")]
impl UserApi {
    /// The caller's profile
    #[oai(path = "/users/me", method = "get", operation_id = "getMe")]
    async fn me(&self, auth: BearerAuth) -> ApiResult<Json<UserVo>> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        Ok(Json(services.directory.user(user_id).await?))
    }

    /// A user's public profile
    #[oai(path = "/users/:userId", method = "get", operation_id = "getUser")]
    async fn user(
        &self,
        auth: BearerAuth,
        #[oai(name = "userId")] user_id: Path<String>,
    ) -> ApiResult<Json<UserVo>> {
        let (services, _) = self.ctx.authed(&auth)?;
        let user_id = path_id("userId", &user_id)?;
        Ok(Json(services.directory.user(user_id).await?))
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
        user_ids: Query<String>,
    ) -> ApiResult<Json<Vec<PresenceVo>>> {
        let (services, _) = self.ctx.authed(&auth)?;
        let ids = parse_id_list("userIds", &user_ids, MAX_PRESENCE_IDS)?;
        let presence = services.presence.presence(&ids).await;
        Ok(Json(presence.map_err(AppError::from)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_lists_parse() {
        assert_eq!(
            parse_id_list("userIds", "1, 2,3", 100).unwrap(),
            vec![1, 2, 3]
        );
        assert!(parse_id_list("userIds", "", 100).is_err());
        assert!(parse_id_list("userIds", "1,,2", 100).is_err());
        assert!(parse_id_list("userIds", "1,x", 100).is_err());
        let many = (1..=101)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_id_list("userIds", &many, 100).is_err());
        let max = (1..=100)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_id_list("userIds", &max, 100).unwrap().len(), 100);
    }
}
