//! The REST API (PROTOCOL.md section 3), served under `/api/v1`.
//!
//! One poem-openapi API per area; handlers map DTOs and call one service
//! method each. Every error is `{code, message}` JSON (see [`error`]).
//!
//! The API objects hold an `Option<Services>` so the OpenAPI document can be
//! built without any backend ([`openapi_spec_yaml`]); a spec-only API
//! answers `503 unavailable` if it is ever served.

pub mod auth;
pub mod error;
pub mod groups;
pub mod messages;
pub mod middleware;
pub mod sessions;
pub mod users;

use poem_openapi::auth::Bearer;
use poem_openapi::{OpenApi, OpenApiService, SecurityScheme, Tags};

use crate::error::AppError;
use crate::model::parse_id;
use crate::service::Services;

pub use error::{error_from_poem, error_response, json_errors, ApiError, ApiResult};
pub use middleware::{rest_op, MAX_BODY_BYTES};

/// The URL prefix the API is mounted at.
pub const BASE_PATH: &str = "/api/v1";

#[derive(Tags)]
enum ApiTags {
    /// Registration and login.
    Auth,
    /// User profiles and presence.
    Users,
    /// Group chats and their members.
    Groups,
    /// Sending, pulling, syncing, acking and recalling messages.
    Messages,
    /// The caller's conversations and their history.
    Sessions,
}

/// `Authorization: Bearer <token>`, with the token of `POST /auth/login`.
#[derive(SecurityScheme)]
#[oai(rename = "BearerAuth", ty = "bearer", bearer_format = "JWT")]
pub struct BearerAuth(Bearer);

/// What every API object holds: the services, absent in a spec-only API.
#[derive(Clone)]
pub(crate) struct Ctx {
    services: Option<Services>,
}

impl Ctx {
    fn services(&self) -> ApiResult<&Services> {
        self.services
            .as_ref()
            .ok_or_else(|| ApiError(AppError::Unavailable("this API instance only describes the spec".into())))
    }

    /// The services and the caller's user id, from a verified bearer token.
    fn authed(&self, auth: &BearerAuth) -> ApiResult<(&Services, u64)> {
        let services = self.services()?;
        let user_id = services.auth.verify(&auth.0.token)?;
        Ok((services, user_id))
    }
}

/// Parses a path id (a string of decimal digits) as `400 invalid_argument`.
fn path_id(field: &str, raw: &str) -> ApiResult<u64> {
    Ok(parse_id(field, raw)?)
}

type Apis = (
    auth::AuthApi,
    users::UserApi,
    groups::GroupApi,
    messages::MessageApi,
    sessions::SessionApi,
);

fn service(services: Option<Services>) -> OpenApiService<Apis, ()> {
    let ctx = Ctx { services };
    let apis = (
        auth::AuthApi { ctx: ctx.clone() },
        users::UserApi { ctx: ctx.clone() },
        groups::GroupApi { ctx: ctx.clone() },
        messages::MessageApi { ctx: ctx.clone() },
        sessions::SessionApi { ctx },
    );
    OpenApiService::new(apis, "Herald", env!("CARGO_PKG_VERSION"))
        .description(
            "Herald instant-messaging REST API. Ids are decimal strings; errors are \
             `{\"code\", \"message\"}` JSON with the statuses listed per operation.",
        )
        .server(BASE_PATH)
}

/// The REST API to mount at [`BASE_PATH`] (`/api/v1`). Also gives
/// `spec_endpoint_yaml()` and `swagger_ui()`.
pub fn api(services: Services) -> OpenApiService<impl OpenApi, ()> {
    service(Some(services))
}

/// The OpenAPI document (YAML) of [`api`], built without any backend.
pub fn openapi_spec_yaml() -> String {
    service(None).spec_yaml()
}
