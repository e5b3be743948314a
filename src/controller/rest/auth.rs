//! `POST /auth/register`, `POST /auth/login`, `POST /auth/logout`,
//! `POST /auth/logout-all`.

use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::error::{LoginErrors, OwnErrors, RegisterErrors};
use super::{ApiResult, BearerAuth, Ctx};
use crate::controller::client_addr::client_addr;
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

#[derive(ApiResponse)]
pub enum LogoutResponse {
    /// Revoked: REST and new STOMP CONNECTs refuse the token(s) from now
    /// on, on every node, and the connections opened with them are closed
    /// (an `ERROR` frame `token revoked`, then the close).
    #[oai(status = 204)]
    NoContent,
}

#[OpenApi(tag = "super::ApiTags::Auth")]
impl AuthApi {
    /// Register a user
    ///
    /// `username`: 3-32 characters of `[A-Za-z0-9_.-]`; `password`: 8-128
    /// characters; `nickname`: 1-64 characters. 409 if the username is taken.
    /// One client address may try `registrationsPerHour` registrations an
    /// hour (default 10); beyond that 429 with `Retry-After`.
    #[oai(path = "/auth/register", method = "post", operation_id = "register")]
    async fn register(
        &self,
        req: &Request,
        body: Json<RegisterReq>,
    ) -> ApiResult<RegisterResponse, RegisterErrors> {
        let services = self.ctx.services()?;
        let user = services.accounts.register(body.0, client_addr(req)).await?;
        Ok(RegisterResponse::Created(Json(user)))
    }

    /// Log in
    ///
    /// Returns a bearer token for REST (`Authorization: Bearer <token>`) and
    /// STOMP CONNECT. 401 on a wrong username or password. After
    /// `loginMaxFailures` (default 5) failures for one username within
    /// `loginFailureWindowMs` (default 15 minutes), its logins get 429 with
    /// `Retry-After` until the window passes, the correct password too (a
    /// success resets the count); one client address gets at most 20
    /// failures per window over all usernames.
    #[oai(path = "/auth/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        req: &Request,
        body: Json<LoginReq>,
    ) -> ApiResult<Json<LoginResp>, LoginErrors> {
        let services = self.ctx.services()?;
        let resp = services.accounts.login(body.0, client_addr(req)).await?;
        Ok(Json(resp))
    }

    /// Log out
    ///
    /// Revokes the token of this request at once: REST and new STOMP
    /// CONNECTs refuse it, and its open STOMP connections are closed. The
    /// user's other tokens stay valid.
    #[oai(path = "/auth/logout", method = "post", operation_id = "logout")]
    async fn logout(&self, auth: BearerAuth) -> ApiResult<LogoutResponse, OwnErrors> {
        let services = self.ctx.services()?;
        services.accounts.logout(auth.0).await?;
        Ok(LogoutResponse::NoContent)
    }

    /// Log out everywhere
    ///
    /// Revokes every token issued to the caller before this call (by issue
    /// order, not by clock: a login right after it works) and closes their
    /// STOMP connections.
    #[oai(path = "/auth/logout-all", method = "post", operation_id = "logoutAll")]
    async fn logout_all(&self, auth: BearerAuth) -> ApiResult<LogoutResponse, OwnErrors> {
        let services = self.ctx.services()?;
        services.accounts.logout_all(auth.0).await?;
        Ok(LogoutResponse::NoContent)
    }
}
