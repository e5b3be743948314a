//! REST errors: every non-2xx answer carries an [`ErrorBody`] JSON body.
//!
//! - [`ApiError`] is what handlers return; it documents the error statuses
//!   in the OpenAPI spec.
//! - [`error_from_poem`] turns any `poem::Error` (a malformed body, a bad
//!   query parameter, a missing token, an unknown route ...) into the same
//!   JSON shape, and [`json_errors`] applies it to a whole endpoint.

use std::fmt;
use std::marker::PhantomData;

use poem::error::ResponseError;
use poem::http::header::{CONTENT_TYPE, RETRY_AFTER};
use poem::http::{HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::error::{AuthorizationError, ContentTypeError};
use poem_openapi::payload::Json;
use poem_openapi::registry::{
    MetaHeader, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry,
};
use poem_openapi::{ApiResponse, ResponseContent};

use crate::error::AppError;
use crate::model::dto::ErrorBody;

/// The content type of every JSON body of the REST API.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// A JSON error response: `{"code": code, "message": message}` with `status`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        code: code.to_owned(),
        message: message.to_owned(),
    };
    // Serializing two strings cannot fail; fall back to a fixed body anyway.
    let json = serde_json::to_string(&body)
        .unwrap_or_else(|_| format!(r#"{{"code":"{code}","message":"error"}}"#));
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE))
        .body(json)
}

/// The JSON response of an [`AppError`], with the contract's status and
/// code; a 429 says when to try again (`Retry-After`, seconds).
pub fn app_error_response(err: &AppError) -> Response {
    let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut resp = error_response(status, err.code(), &err.to_string());
    if let Some(secs) = err.retry_after_secs() {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Lets code outside the REST layer turn an `AppError` into a `poem::Error`
/// (`?` in a plain poem handler) that renders as the JSON error body.
impl ResponseError for AppError {
    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    }

    fn as_response(&self) -> Response {
        app_error_response(self)
    }
}

/// The status and contract code a poem-level failure maps to. Client
/// mistakes (malformed JSON, bad parameters, wrong content type ...) are all
/// `400 invalid_argument`; nothing a client sends yields a 500.
fn classify(status: StatusCode) -> (StatusCode, &'static str) {
    match status.as_u16() {
        401 => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        403 => (StatusCode::FORBIDDEN, "forbidden"),
        404 => (StatusCode::NOT_FOUND, "not_found"),
        405 => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        409 => (StatusCode::CONFLICT, "conflict"),
        413 => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        429 => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        503 => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        400..=499 => (StatusCode::BAD_REQUEST, "invalid_argument"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// Converts any `poem::Error` into a JSON error response. Errors that
/// already render our body (from an [`AppError`] or [`ApiError`]) are kept.
pub fn error_from_poem(err: poem::Error) -> Response {
    if err.is::<AppError>() {
        return err.into_response();
    }
    let message = if err.is::<AuthorizationError>() {
        "missing or malformed Authorization header: expected `Bearer <token>`".to_owned()
    } else if err.is::<ContentTypeError>() {
        format!("{err}; expected `application/json`")
    } else {
        err.to_string()
    };
    let (status, code) = classify(err.status());
    if status.is_server_error() {
        tracing::error!(error = %err, "request failed");
    }
    error_response(status, code, &message)
}

/// Endpoint that answers every error of `inner` with a JSON error body.
pub struct JsonErrors<E> {
    inner: E,
}

impl<E: Endpoint> Endpoint for JsonErrors<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        match self.inner.call(req).await {
            Ok(out) => Ok(out.into_response()),
            Err(err) => Ok(error_from_poem(err)),
        }
    }
}

/// Wraps `ep` so that every `poem::Error` it fails with (unknown route,
/// method not allowed, extractor failures ...) becomes a JSON error body.
pub fn json_errors<E: Endpoint>(ep: E) -> impl Endpoint<Output = Response> {
    JsonErrors { inner: ep }
}

/// The error of a REST operation: an [`AppError`] rendered as
/// `{code, message}` with the status of `AppError::http_status()`. `S`
/// names the statuses the operation documents in the spec (every one by
/// default).
pub struct ApiError<S = AnyError>(pub AppError, PhantomData<fn() -> S>);

impl ApiError {
    pub fn new(e: AppError) -> Self {
        ApiError(e, PhantomData)
    }
}

impl<S> fmt::Debug for ApiError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ApiError").field(&self.0).finish()
    }
}

impl<S> From<AppError> for ApiError<S> {
    fn from(e: AppError) -> Self {
        ApiError(e, PhantomData)
    }
}

impl<S> From<ApiError<S>> for poem::Error {
    fn from(e: ApiError<S>) -> Self {
        poem::Error::from(e.0)
    }
}

impl<S> IntoResponse for ApiError<S> {
    fn into_response(self) -> Response {
        app_error_response(&self.0)
    }
}

/// What each error status means, in the spec.
fn error_description(status: u16) -> &'static str {
    match status {
        400 => "`invalid_argument`: malformed or invalid input",
        401 => "`unauthenticated`: missing, invalid, expired or revoked token",
        403 => "`forbidden`: not allowed for this user",
        404 => "`not_found`: no such user, group, session or message",
        409 => "`conflict`: conflicts with the current state",
        413 => "`payload_too_large`: body or content too large",
        429 => "`rate_limited`: too many requests; `Retry-After` says when to try again",
        _ => "`unavailable`: a backend is unavailable, retry later",
    }
}

/// The error statuses one operation documents.
pub trait ErrorSet: Send + Sync + 'static {
    const STATUSES: &'static [u16];
}

/// Defines error sets. Every operation may answer 400 (a malformed
/// request, e.g. its `Content-Length`), 413 (a body over the limit), 429
/// (the HTTP rate limit) and 503 (a backend down): those are in each.
macro_rules! error_sets {
    ($($(#[$doc:meta])* $name:ident: [$($status:literal),*];)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl ErrorSet for $name {
            const STATUSES: &'static [u16] = &[400, $($status,)* 413, 429, 503];
        }
    )*};
}

error_sets! {
    /// Any error at all: the default.
    AnyError: [401, 403, 404, 409];
    /// `POST /auth/register`: a taken username.
    RegisterErrors: [409];
    /// `POST /auth/login`: a wrong username or password.
    LoginErrors: [401];
    /// An operation on the caller's own data.
    OwnErrors: [401];
    /// A lookup by id of something any user may see.
    LookupErrors: [401, 404];
    /// An operation on something only some users may touch.
    MemberErrors: [401, 403, 404];
    /// `MemberErrors`, and a change that may conflict with the state.
    ChangeErrors: [401, 403, 404, 409];
}

fn retry_after_header() -> MetaHeader {
    MetaHeader {
        name: "Retry-After".into(),
        description: Some("Seconds to wait before trying again.".into()),
        required: true,
        deprecated: false,
        schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("integer", "uint64"))),
    }
}

impl<S: ErrorSet> ApiResponse for ApiError<S> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: S::STATUSES
                .iter()
                .map(|&status| MetaResponse {
                    description: error_description(status),
                    status: Some(status),
                    status_range: None,
                    content: <Json<ErrorBody> as ResponseContent>::media_types(),
                    headers: if status == 429 {
                        vec![retry_after_header()]
                    } else {
                        vec![]
                    },
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        <Json<ErrorBody> as ResponseContent>::register(registry);
    }
}

/// The result of a REST operation; `S` is its documented error statuses.
pub type ApiResult<T, S = AnyError> = Result<T, ApiError<S>>;

#[cfg(test)]
mod tests {
    use poem::http::Method;
    use poem::web::Query;
    use poem::{handler, Route};
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Params {
        #[allow(dead_code)]
        size: u32,
    }

    #[handler]
    fn with_query(Query(_params): Query<Params>) -> &'static str {
        "ok"
    }

    #[handler]
    fn app_error() -> poem::Result<()> {
        Err(ApiError::new(AppError::Conflict("taken".into())).into())
    }

    async fn get(uri: &str) -> Response {
        let app = json_errors(Route::new().at("/q", with_query).at("/conflict", app_error));
        let req = Request::builder().method(Method::GET).uri_str(uri).finish();
        app.get_response(req).await
    }

    async fn body(resp: Response) -> ErrorBody {
        assert_eq!(
            resp.headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(JSON_CONTENT_TYPE)
        );
        resp.into_body().into_json().await.unwrap()
    }

    #[tokio::test]
    async fn query_parse_errors_are_400_invalid_argument() {
        let resp = get("/q?size=abc").await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let b = body(resp).await;
        assert_eq!(b.code, "invalid_argument");
        assert!(!b.message.is_empty());
        assert_eq!(get("/q?size=1").await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn unknown_routes_are_404_not_found() {
        let resp = get("/nope").await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(body(resp).await.code, "not_found");
    }

    #[tokio::test]
    async fn app_errors_keep_their_status_and_code() {
        let resp = get("/conflict").await;
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        let b = body(resp).await;
        assert_eq!(b.code, "conflict");
        assert_eq!(b.message, "taken");
    }

    #[tokio::test]
    async fn poem_openapi_errors_are_mapped() {
        let resp = error_from_poem(AuthorizationError.into());
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(body(resp).await.code, "unauthenticated");
        let resp = error_from_poem(ContentTypeError::ExpectContentType.into());
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body(resp).await.code, "invalid_argument");
    }

    #[test]
    fn statuses_map_to_contract_codes() {
        assert_eq!(
            classify(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (StatusCode::BAD_REQUEST, "invalid_argument")
        );
        assert_eq!(
            classify(StatusCode::LENGTH_REQUIRED),
            (StatusCode::BAD_REQUEST, "invalid_argument")
        );
        assert_eq!(classify(StatusCode::UNAUTHORIZED).1, "unauthenticated");
        assert_eq!(
            classify(StatusCode::PAYLOAD_TOO_LARGE).1,
            "payload_too_large"
        );
        assert_eq!(classify(StatusCode::SERVICE_UNAVAILABLE).1, "unavailable");
    }

    #[test]
    fn every_app_error_renders_its_status() {
        for e in [
            AppError::InvalidArgument("a".into()),
            AppError::Unauthenticated("a".into()),
            AppError::Forbidden("a".into()),
            AppError::NotFound("a".into()),
            AppError::Conflict("a".into()),
            AppError::PayloadTooLarge("a".into()),
            AppError::rate_limited("a", std::time::Duration::from_millis(1500)),
            AppError::Unavailable("a".into()),
        ] {
            let status = e.http_status();
            let resp = error_from_poem(poem::Error::from(ApiError::new(e)));
            assert_eq!(resp.status().as_u16(), status);
            let retry_after = resp.headers().get(RETRY_AFTER);
            if status == 429 {
                assert_eq!(retry_after.and_then(|v| v.to_str().ok()), Some("2"));
            } else {
                assert!(retry_after.is_none());
            }
        }
    }
}
