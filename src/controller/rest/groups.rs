//! `POST /groups`, `GET /groups/{groupId}`, group membership.

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::error::{ChangeErrors, LookupErrors, MemberErrors};
use super::{ApiResult, BearerAuth, Ctx};
use crate::model::dto::{AddMembersReq, CreateGroupReq, GroupVo};
use crate::model::wire::{GroupId, UserId};

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
    ) -> ApiResult<CreateGroupResponse, LookupErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let group = services.directory.create_group(user_id, body.0).await?;
        Ok(CreateGroupResponse::Created(Json(group)))
    }

    /// A group (members only)
    #[oai(path = "/groups/:groupId", method = "get", operation_id = "getGroup")]
    async fn get(
        &self,
        auth: BearerAuth,
        #[oai(name = "groupId")] group_id: Path<GroupId>,
    ) -> ApiResult<Json<GroupVo>, MemberErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        Ok(Json(
            services.directory.group(user_id, group_id.get()).await?,
        ))
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
        #[oai(name = "groupId")] group_id: Path<GroupId>,
        body: Json<AddMembersReq>,
    ) -> ApiResult<Json<GroupVo>, MemberErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        let group = services
            .directory
            .add_members(user_id, group_id.get(), &body.user_ids)
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
        #[oai(name = "groupId")] group_id: Path<GroupId>,
        #[oai(name = "userId")] member_id: Path<UserId>,
    ) -> ApiResult<RemoveMemberResponse, ChangeErrors> {
        let (services, user_id) = self.ctx.authed(&auth)?;
        services
            .directory
            .remove_member(user_id, group_id.get(), member_id.get())
            .await?;
        Ok(RemoveMemberResponse::NoContent)
    }
}
