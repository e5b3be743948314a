//! The REST API (PROTOCOL.md section 3), served under `/api/v1`.
//!
//! One poem-openapi API per area; handlers map DTOs and call one service
//! method each. Every error is `{code, message}` JSON (see [`error`]).
//!
//! Every route is wrapped by [`rest_op`] (1 MiB body limit, JSON errors for
//! whatever fails before or in the handler) and carries the token verifier
//! that the [`BearerAuth`] checker uses.
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

use std::collections::HashMap;
use std::sync::Arc;

use poem::endpoint::BoxEndpoint;
use poem::http::Method;
use poem::{EndpointExt, Request};
use poem_openapi::auth::Bearer;
use poem_openapi::registry::{MetaApi, Registry};
use poem_openapi::{OpenApi, OpenApiService, SecurityScheme, Tags};

use crate::error::{AppError, AppResult};
use crate::model::dto::SendReq;
use crate::service::auth::Caller;
#[cfg(test)]
use crate::service::AuthService;
use crate::service::{Services, Tokens};

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

/// What the bearer checker verifies tokens with, put into the request data
/// of every operation by [`Apis::add_routes`].
#[derive(Clone)]
enum TokenVerifier {
    /// A serving API: signature and validity, then the user's existence
    /// and revocations.
    Full(Arc<Tokens>),
    /// The spec-only API of unit tests: signature and validity only (it
    /// has no store to ask, and every operation answers 503 anyway).
    #[cfg(test)]
    SignatureOnly(Arc<AuthService>),
}

/// `Authorization: Bearer <token>`, with the token of `POST /auth/login`.
/// Yields the caller (user id and token); a missing, bad, expired or
/// revoked token, or one of an unknown user, is `401 unauthenticated`.
#[derive(SecurityScheme)]
#[oai(
    rename = "BearerAuth",
    ty = "bearer",
    bearer_format = "JWT",
    checker = "verify_bearer"
)]
pub struct BearerAuth(pub Caller);

async fn verify_bearer(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let verifier = req
        .data::<TokenVerifier>()
        .ok_or_else(|| AppError::Unavailable(SPEC_ONLY.into()))?;
    let caller = match verifier {
        TokenVerifier::Full(tokens) => tokens.authenticate(&bearer.token).await?,
        #[cfg(test)]
        TokenVerifier::SignatureOnly(auth) => auth.verify(&bearer.token)?,
    };
    Ok(caller)
}

const SPEC_ONLY: &str = "this API instance only describes the spec";

/// What every API object holds: the services, absent in a spec-only API.
#[derive(Clone)]
pub(crate) struct Ctx {
    services: Option<Services>,
}

// These answer `AppResult`: `?` turns an `AppError` into the `ApiError`
// of any operation, whatever statuses it documents.
impl Ctx {
    fn services(&self) -> AppResult<&Services> {
        self.services
            .as_ref()
            .ok_or_else(|| AppError::Unavailable(SPEC_ONLY.into()))
    }

    /// The services and the caller's user id.
    fn authed(&self, auth: &BearerAuth) -> AppResult<(&Services, u64)> {
        Ok((self.services()?, auth.0.user_id))
    }
}

type AreaApis = (
    auth::AuthApi,
    users::UserApi,
    groups::GroupApi,
    messages::MessageApi,
    sessions::SessionApi,
);

/// Every area API, each route wrapped by [`rest_op`] (body limit, JSON
/// errors) and given the token verifier of [`BearerAuth`].
pub struct Apis {
    areas: AreaApis,
    verifier: Option<TokenVerifier>,
}

impl OpenApi for Apis {
    fn meta() -> Vec<MetaApi> {
        AreaApis::meta()
    }

    fn register(registry: &mut Registry) {
        AreaApis::register(registry);
        SendReq::refine_schema(registry);
    }

    fn add_routes(self, route_table: &mut HashMap<String, HashMap<Method, BoxEndpoint<'static>>>) {
        let mut routes = HashMap::new();
        self.areas.add_routes(&mut routes);
        for (path, methods) in routes {
            let entry = route_table.entry(path).or_default();
            for (method, ep) in methods {
                let ep = match &self.verifier {
                    Some(v) => ep.data(v.clone()).boxed(),
                    None => ep,
                };
                entry.insert(method, rest_op(ep).boxed());
            }
        }
    }
}

fn service(services: Option<Services>) -> OpenApiService<Apis, ()> {
    let verifier = services
        .as_ref()
        .map(|s| TokenVerifier::Full(s.tokens.clone()));
    build(services, verifier)
}

fn build(services: Option<Services>, verifier: Option<TokenVerifier>) -> OpenApiService<Apis, ()> {
    let ctx = Ctx { services };
    let areas = (
        auth::AuthApi { ctx: ctx.clone() },
        users::UserApi { ctx: ctx.clone() },
        groups::GroupApi { ctx: ctx.clone() },
        messages::MessageApi { ctx: ctx.clone() },
        sessions::SessionApi { ctx },
    );
    OpenApiService::new(
        Apis { areas, verifier },
        "Herald",
        env!("CARGO_PKG_VERSION"),
    )
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

#[cfg(test)]
mod tests {
    use poem::http::header::{AUTHORIZATION, CONTENT_TYPE};
    use poem::http::StatusCode;
    use poem::{Body, Endpoint, Response, Route};

    use super::*;
    use crate::model::dto::ErrorBody;

    /// The spec-only API, with a token verifier (no other services).
    async fn call(method: Method, uri: &str, headers: &[(&str, &str)], body: Body) -> Response {
        let verifier =
            TokenVerifier::SignatureOnly(Arc::new(AuthService::new(SECRET, 60).unwrap()));
        let app = json_errors(Route::new().nest(BASE_PATH, build(None, Some(verifier))));
        let mut req = Request::builder().method(method).uri_str(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        app.get_response(req.body(body)).await
    }

    async fn error(resp: Response, status: StatusCode) -> ErrorBody {
        assert_eq!(resp.status(), status);
        assert_eq!(
            resp.headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(error::JSON_CONTENT_TYPE)
        );
        resp.into_body().into_json().await.unwrap()
    }

    const JSON: (&str, &str) = ("content-type", "application/json");
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token() -> String {
        let token = AuthService::new(SECRET, 60)
            .unwrap()
            .issue(7, 1)
            .unwrap()
            .token;
        format!("Bearer {token}")
    }

    #[tokio::test]
    async fn bad_tokens_are_401() {
        for bad in ["Bearer abc", "Bearer ", "Token abc"] {
            let headers = [("authorization", bad)];
            let resp = call(Method::GET, "/api/v1/users/me", &headers, Body::empty()).await;
            assert_eq!(
                error(resp, StatusCode::UNAUTHORIZED).await.code,
                "unauthenticated"
            );
            // Authentication comes before parameter checks.
            let resp = call(
                Method::GET,
                "/api/v1/messages/pull",
                &headers,
                Body::empty(),
            )
            .await;
            assert_eq!(
                error(resp, StatusCode::UNAUTHORIZED).await.code,
                "unauthenticated"
            );
        }
    }

    #[tokio::test]
    async fn spec_only_api_without_verifier_answers_503() {
        let app = json_errors(Route::new().nest(BASE_PATH, service(None)));
        let req = Request::builder()
            .uri_str("/api/v1/sessions")
            .header(AUTHORIZATION, token())
            .finish();
        let resp = app.get_response(req).await;
        assert_eq!(
            error(resp, StatusCode::SERVICE_UNAVAILABLE).await.code,
            "unavailable"
        );
    }

    #[tokio::test]
    async fn missing_token_is_401() {
        let resp = call(Method::GET, "/api/v1/users/me", &[], Body::empty()).await;
        assert_eq!(
            error(resp, StatusCode::UNAUTHORIZED).await.code,
            "unauthenticated"
        );
        let basic = [(AUTHORIZATION.as_str(), "Basic YTpi")];
        let resp = call(Method::GET, "/api/v1/sessions", &basic, Body::empty()).await;
        assert_eq!(
            error(resp, StatusCode::UNAUTHORIZED).await.code,
            "unauthenticated"
        );
    }

    #[tokio::test]
    async fn spec_only_api_answers_503() {
        let token = token();
        let headers = [("authorization", token.as_str())];
        for uri in [
            "/api/v1/users/me",
            "/api/v1/users/12",
            "/api/v1/presence?userIds=1,2",
            "/api/v1/messages/pull?sessionId=1",
            "/api/v1/messages/pull?sessionId=1&size=200&markRead=false&lastMessageId=3",
            "/api/v1/messages/unread",
            "/api/v1/inbox/sync",
            "/api/v1/sessions/5/messages?beforeSeq=10",
        ] {
            let resp = call(Method::GET, uri, &headers, Body::empty()).await;
            let body = error(resp, StatusCode::SERVICE_UNAVAILABLE).await;
            assert_eq!(body.code, "unavailable", "{uri}");
        }
        let body = Body::from_string(r#"{"username":"a","password":"b"}"#.into());
        let resp = call(Method::POST, "/api/v1/auth/login", &[JSON], body).await;
        assert_eq!(
            error(resp, StatusCode::SERVICE_UNAVAILABLE).await.code,
            "unavailable"
        );
    }

    #[tokio::test]
    async fn malformed_bodies_are_400() {
        for (headers, body) in [
            (vec![JSON], "{not json"),
            (vec![JSON], r#"{"username": 1}"#),
            (vec![JSON], ""),
            (
                vec![("content-type", "text/plain")],
                r#"{"username":"a","password":"b"}"#,
            ),
            (vec![], r#"{"username":"a","password":"b"}"#),
        ] {
            let body = Body::from_string(body.into());
            let resp = call(Method::POST, "/api/v1/auth/login", &headers, body).await;
            assert_eq!(
                error(resp, StatusCode::BAD_REQUEST).await.code,
                "invalid_argument"
            );
        }
    }

    #[tokio::test]
    async fn bad_query_parameters_are_400() {
        let token = token();
        let headers = [("authorization", token.as_str())];
        for uri in [
            "/api/v1/messages/pull",
            "/api/v1/messages/pull?sessionId=1&size=abc",
            "/api/v1/messages/pull?sessionId=1&size=0",
            "/api/v1/messages/pull?sessionId=1&size=201",
            "/api/v1/messages/pull?sessionId=1&markRead=maybe",
            "/api/v1/messages/unread?limit=-1",
            "/api/v1/inbox/sync?afterInboxSeq=x",
            "/api/v1/presence",
        ] {
            let resp = call(Method::GET, uri, &headers, Body::empty()).await;
            let body = error(resp, StatusCode::BAD_REQUEST).await;
            assert_eq!(body.code, "invalid_argument", "{uri}");
        }
    }

    #[tokio::test]
    async fn unknown_routes_and_methods() {
        let resp = call(Method::GET, "/api/v1/nope", &[], Body::empty()).await;
        assert_eq!(error(resp, StatusCode::NOT_FOUND).await.code, "not_found");
        let resp = call(Method::PUT, "/api/v1/auth/login", &[], Body::empty()).await;
        error(resp, StatusCode::METHOD_NOT_ALLOWED).await;
    }

    #[tokio::test]
    async fn large_bodies_are_413() {
        let big = format!(
            r#"{{"username":"{}","password":"b"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        let len = big.len().to_string();
        let headers = [JSON, ("content-length", len.as_str())];
        let resp = call(
            Method::POST,
            "/api/v1/auth/login",
            &headers,
            Body::from_string(big),
        )
        .await;
        let body = error(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
        assert_eq!(body.code, "payload_too_large");
    }

    #[test]
    fn spec_covers_the_contract() {
        let spec = openapi_spec_yaml();
        for path in [
            "/auth/register:",
            "/auth/login:",
            "/auth/logout:",
            "/auth/logout-all:",
            "/users/me:",
            "/users/{userId}:",
            "/presence:",
            "/groups:",
            "/groups/{groupId}:",
            "/groups/{groupId}/members:",
            "/groups/{groupId}/members/{userId}:",
            "/messages:",
            "/messages/pull:",
            "/messages/unread:",
            "/inbox/sync:",
            "/messages/ack:",
            "/messages/mark-read:",
            "/messages/{messageId}/recall:",
            "/sessions:",
            "/sessions/{sessionId}/messages:",
        ] {
            assert!(spec.contains(&format!("\n  {path}\n")), "missing {path}");
        }
        assert!(spec.contains("BearerAuth"));
        assert!(spec.contains("ErrorBody"));
        assert_eq!(spec, openapi_spec_yaml(), "the spec must be deterministic");
    }
}
