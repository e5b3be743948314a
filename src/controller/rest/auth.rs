//! `POST /auth/register`, `POST /auth/login`.

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::{ApiResult, Ctx};
use crate::model::dto::{LoginReq, LoginResp, RegisterReq, UserVo};

pub struct AuthApi {
    pub(super) ctx: Ctx,
}

#[derive(ApiResponse)]
pub enum RegisterResponse {
    /// The new user.
    #[oai(status = 201)]
    Created(Json<UserVo>),
}

#[OpenApi(tag = "super::ApiTags::Auth")]
impl AuthApi {
    /// Register a user
    ///
    /// `username`: 3-32 characters of `[A-Za-z0-9_.-]`; `password`: 8-128
    /// characters; `nickname`: 1-64 characters. 409 if the username is taken.
    #[oai(path = "/auth/register", method = "post", operation_id = "register")]
    async fn register(&self, body: Json<RegisterReq>) -> ApiResult<RegisterResponse> {
        let services = self.ctx.services()?;
        let user = services.directory.register(body.0).await?;
        Ok(RegisterResponse::Created(Json(user)))
    }

    /// Log in
    ///
    /// Returns a bearer token for REST (`Authorization: Bearer <token>`) and
    /// STOMP CONNECT. 401 on a wrong username or password.
    #[oai(path = "/auth/login", method = "post", operation_id = "login")]
    async fn login(&self, body: Json<LoginReq>) -> ApiResult<Json<LoginResp>> {
        let services = self.ctx.services()?;
        Ok(Json(services.directory.login(body.0).await?))
    }
}
