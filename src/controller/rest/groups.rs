//! `POST /groups`, `GET /groups/{groupId}`, group membership.

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::{path_id, ApiResult, BearerAuth, Ctx};
use crate::model::dto::{AddMembersReq, CreateGroupReq, GroupVo};

pub struct GroupApi {
    pub(super) ctx: Ctx,
}

#[derive(ApiResponse)]
pub enum CreateGroupResponse {
    /// The new group; the caller is its owner and a member.
    #[oai(status = 201)]
    Created(Json<GroupVo>),
}

#[derive(ApiResponse)]
pub enum RemoveMemberResponse {
    /// The member was removed.
    #[oai(status = 204)]
    NoContent,
}

#[OpenApi(tag = "super::ApiTags::Groups")]
impl GroupApi {
    /// Create a group
    ///
    /// The caller becomes its owner and a member; `memberIds` are the other
    /// initial members.
    #[oai(path = "/groups", method = "post", operation_id = "createGroup")]
    async fn create(
        &self,
        auth: BearerAuth,
        body: Json<CreateGroupReq>,
    ) -> ApiResult<CreateGroupResponse> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let group = services.directory.create_group(user_id, body.0).await?;
        Ok(CreateGroupResponse::Created(Json(group)))
    }

    /// A group (members only)
    #[oai(path = "/groups/:groupId", method = "get", operation_id = "getGroup")]
    async fn get(
        &self,
        auth: BearerAuth,
        #[oai(name = "groupId")] group_id: Path<String>,
    ) -> ApiResult<Json<GroupVo>> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let group_id = path_id("groupId", &group_id)?;
        Ok(Json(services.directory.group(user_id, group_id).await?))
    }

    /// Add members (owner only)
    #[oai(
        path = "/groups/:groupId/members",
        method = "post",
        operation_id = "addGroupMembers"
    )]
    async fn add_members(
        &self,
        auth: BearerAuth,
        #[oai(name = "groupId")] group_id: Path<String>,
        body: Json<AddMembersReq>,
    ) -> ApiResult<Json<GroupVo>> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let group_id = path_id("groupId", &group_id)?;
        let group = services
            .directory
            .add_members(user_id, group_id, &body.user_ids)
            .await?;
        Ok(Json(group))
    }

    /// Remove a member
    ///
    /// The owner may remove anyone but themself; a member may leave.
    #[oai(
        path = "/groups/:groupId/members/:userId",
        method = "delete",
        operation_id = "removeGroupMember"
    )]
    async fn remove_member(
        &self,
        auth: BearerAuth,
        #[oai(name = "groupId")] group_id: Path<String>,
        #[oai(name = "userId")] member_id: Path<String>,
    ) -> ApiResult<RemoveMemberResponse> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let group_id = path_id("groupId", &group_id)?;
        let member_id = path_id("userId", &member_id)?;
        services
            .directory
            .remove_member(user_id, group_id, member_id)
            .await?;
        Ok(RemoveMemberResponse::NoContent)
    }
}
