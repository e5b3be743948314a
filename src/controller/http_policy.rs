//! What every HTTP answer says about methods and origins: `Allow` on 405
//! and on `OPTIONS`, CORS for browser apps served from other origins
//! (`corsOrigins`), and `X-Content-Type-Options: nosniff`.

use std::sync::Arc;

use poem::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ALLOW,
    ORIGIN, VARY, X_CONTENT_TYPE_OPTIONS,
};
use poem::http::{HeaderValue, Method, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

/// The methods each path answers, for `Allow`.
#[derive(Debug, Default)]
pub struct AllowedMethods {
    routes: Vec<(Vec<Segment>, String)>,
}

impl AllowedMethods {
    /// The operations of an OpenAPI document (JSON) served under `base`.
    pub fn from_openapi(spec_json: &str, base: &str) -> AllowedMethods {
        let mut allowed = AllowedMethods::default();
        let spec: serde_json::Value = serde_json::from_str(spec_json).unwrap_or_default();
        let Some(paths) = spec.get("paths").and_then(|p| p.as_object()) else {
            return allowed;
        };
        for (path, ops) in paths {
            let methods: Vec<String> = ops
                .as_object()
                .map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect())
                .unwrap_or_default();
            allowed.add(&format!("{base}{path}"), &methods);
        }
        allowed
    }

    /// Adds a path (`{name}` segments are parameters) and its methods;
    /// `HEAD` goes with `GET`, `OPTIONS` with everything.
    pub fn add<S: AsRef<str>>(&mut self, path: &str, methods: &[S]) {
        let mut list: Vec<&str> = methods.iter().map(AsRef::as_ref).collect();
        if list.contains(&"GET") {
            list.push("HEAD");
        }
        list.push("OPTIONS");
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') {
                    Segment::Param
                } else {
                    Segment::Literal(s.to_string())
                }
            })
            .collect();
        self.routes.push((segments, list.join(", ")));
    }

    /// The `Allow` value of a request path, if it is a known path.
    pub fn allow(&self, path: &str) -> Option<&str> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.routes
            .iter()
            .find(|(segs, _)| {
                segs.len() == parts.len()
                    && segs.iter().zip(&parts).all(|(s, p)| match s {
                        Segment::Param => true,
                        Segment::Literal(l) => l == p,
                    })
            })
            .map(|(_, allow)| allow.as_str())
    }
}

/// Origins allowed to call the API from a browser.
#[derive(Debug, Clone, Default)]
pub enum CorsOrigins {
    /// Same-origin only: no CORS headers.
    #[default]
    None,
    Any,
    List(Vec<String>),
}

impl CorsOrigins {
    /// From the setting: empty, `*`, or comma-separated origins.
    pub fn parse(setting: &str) -> CorsOrigins {
        let list: Vec<String> = setting
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();
        if list.is_empty() {
            CorsOrigins::None
        } else if list.iter().any(|o| o == "*") {
            CorsOrigins::Any
        } else {
            CorsOrigins::List(list)
        }
    }

    fn allows(&self, origin: &str) -> bool {
        match self {
            CorsOrigins::None => false,
            CorsOrigins::Any => true,
            CorsOrigins::List(l) => l.iter().any(|o| o == origin),
        }
    }
}

pub struct HttpPolicy {
    pub allowed: AllowedMethods,
    pub cors: CorsOrigins,
}

/// The middleware: answers `OPTIONS` (preflights included), adds `Allow`
/// to 405s and CORS headers to answers for allowed origins.
pub async fn apply<E: Endpoint>(
    policy: Arc<HttpPolicy>,
    ep: Arc<E>,
    req: Request,
) -> poem::Result<Response> {
    let path = req.uri().path().to_string();
    let origin = req
        .headers()
        .get(ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| policy.cors.allows(o))
        .map(str::to_string);
    let options = match policy.allowed.allow(&path) {
        Some(allow) if req.method() == Method::OPTIONS => Some(allow),
        _ => None,
    };
    let mut resp = match options {
        Some(allow) => options_answer(allow, &req, origin.is_some()),
        // Errors become answers here so that they get the headers too.
        None => match ep.call(req).await {
            Ok(r) => r.into_response(),
            Err(e) => e.into_response(),
        },
    };
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(allow) = policy.allowed.allow(&path) {
            set(&mut resp, ALLOW, allow);
        }
    }
    if let Some(origin) = origin {
        set(&mut resp, ACCESS_CONTROL_ALLOW_ORIGIN, &origin);
        set(&mut resp, VARY, "Origin");
        set(
            &mut resp,
            ACCESS_CONTROL_EXPOSE_HEADERS,
            "Retry-After, Location",
        );
    }
    set(&mut resp, X_CONTENT_TYPE_OPTIONS, "nosniff");
    Ok(resp)
}

/// `204` with `Allow`; for a CORS preflight from an allowed origin, also
/// the methods and headers the browser may use.
fn options_answer(allow: &str, req: &Request, cors: bool) -> Response {
    let mut resp = Response::builder().status(StatusCode::NO_CONTENT).finish();
    set(&mut resp, ALLOW, allow);
    if cors && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
        set(&mut resp, ACCESS_CONTROL_ALLOW_METHODS, allow);
        set(
            &mut resp,
            ACCESS_CONTROL_ALLOW_HEADERS,
            "Authorization, Content-Type",
        );
        set(&mut resp, ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE);
    }
    resp
}

fn set(resp: &mut Response, name: poem::http::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_matches_parameters_and_literals() {
        let spec = r#"{"paths": {"/groups/{groupId}": {"get": {}},
            "/groups/{groupId}/members": {"post": {}},
            "/messages/pull": {"get": {}}}}"#;
        let mut a = AllowedMethods::from_openapi(spec, "/api/v1");
        a.add("/healthz", &["GET"]);
        assert_eq!(a.allow("/api/v1/groups/12"), Some("GET, HEAD, OPTIONS"));
        assert_eq!(a.allow("/api/v1/groups/12/members"), Some("POST, OPTIONS"));
        assert_eq!(a.allow("/healthz"), Some("GET, HEAD, OPTIONS"));
        assert_eq!(a.allow("/api/v1/groups"), None);
        assert_eq!(a.allow("/nope"), None);
    }

    #[test]
    fn cors_origins_parse() {
        assert!(matches!(CorsOrigins::parse(""), CorsOrigins::None));
        assert!(matches!(CorsOrigins::parse(" * "), CorsOrigins::Any));
        let l = CorsOrigins::parse("https://a.example/, https://b.example");
        assert!(l.allows("https://a.example"));
        assert!(!l.allows("https://c.example"));
    }
}
