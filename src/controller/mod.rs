//! Entry points: the REST API (`rest`), STOMP over WebSocket (`stomp`), and
//! the operational endpoints (health, readiness, metrics, docs, web client).

pub mod admission;
pub mod client_addr;
pub mod http_policy;
pub mod http_server;
pub mod rest;
pub mod stomp;
mod web_client;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use poem::http::StatusCode;
use poem::web::Data;
use poem::{
    get, handler, Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response, Route,
};
use tracing::Instrument;

use crate::error::AppError;
use crate::service::rate_limit::RateLimiter;
use crate::service::Services;
use client_addr::{find_client_addr, ClientAddr, TrustedProxies};

/// The whole HTTP application of one node.
pub fn routes(services: Services, metrics: PrometheusHandle) -> impl Endpoint<Output = Response> {
    let limiter = Arc::new(RateLimiter::new(
        services.config.http_rate_per_sec,
        services.config.http_rate_per_sec.saturating_mul(2),
    ));
    let limited = services.config.http_rate_per_sec > 0;
    // Validated when the configuration was loaded; should it fail anyway,
    // no proxy is trusted (every client is its socket's peer).
    let proxies = Arc::new(
        TrustedProxies::parse(&services.config.trusted_proxies).unwrap_or_else(|e| {
            tracing::error!(error = %e, "trusted_proxies is invalid: trusting no proxy");
            TrustedProxies::default()
        }),
    );
    let api = rest::api(services.clone());
    let spec = api.spec_yaml();
    let policy = Arc::new(http_policy::HttpPolicy {
        allowed: allowed_methods(&api.spec()),
        cors: http_policy::CorsOrigins::parse(&services.config.cors_origins),
    });
    let ui = api.swagger_ui();
    Route::new()
        .nest(
            rest::BASE_PATH,
            rest::json_errors(api.into_endpoint()).around(move |ep, mut req| {
                let limiter = limiter.clone();
                let client = find_client_addr(&req, &proxies);
                if let Some(ip) = client {
                    req.set_data(ClientAddr(ip));
                }
                async move { limit_per_address(limited, &limiter, client, ep, req).await }
            }),
        )
        .at("/ws", get(stomp::ws_endpoint))
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics_text))
        .at(
            "/openapi.yaml",
            get(poem::endpoint::make_sync(move |_| {
                Response::builder()
                    .content_type("application/yaml")
                    .body(spec.clone())
            })),
        )
        .nest("/docs", ui)
        .at("/", get(web_client::page))
        .data(services)
        .data(metrics)
        .around(move |ep, req| http_policy::apply(policy.clone(), ep, req))
        .around(observe)
}

/// The methods of every route, for `Allow`.
fn allowed_methods(spec_json: &str) -> http_policy::AllowedMethods {
    let mut allowed = http_policy::AllowedMethods::from_openapi(spec_json, rest::BASE_PATH);
    for path in [
        "/",
        "/ws",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.yaml",
        "/docs",
    ] {
        allowed.add(path, &["GET"]);
    }
    allowed
}

/// A tracing span and the duration histogram for every request.
async fn observe<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let method = req.method().to_string();
    let path = route_label(req.uri().path());
    let span = tracing::info_span!("http", %method, path = %req.uri().path());
    let started = Instant::now();
    let resp = async { ep.call(req).await.map(IntoResponse::into_response) }
        .instrument(span)
        .await;
    let status = match &resp {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status().as_u16(),
    };
    metrics::histogram!("herald_http_request_duration_seconds",
        "method" => method, "path" => path, "status" => status.to_string())
    .record(started.elapsed().as_secs_f64());
    resp
}

/// Per-address REST rate limit (`http_rate_per_sec`, burst twice that),
/// by the client address.
async fn limit_per_address<E: Endpoint>(
    enabled: bool,
    limiter: &RateLimiter<IpAddr>,
    client: Option<IpAddr>,
    ep: Arc<E>,
    req: Request,
) -> poem::Result<Response> {
    if enabled {
        if let Some(ip) = client {
            if let Err(wait) = limiter.try_acquire_or_wait(ip) {
                let refused = AppError::rate_limited("too many requests, slow down", wait);
                return Ok(rest::error::app_error_response(&refused));
            }
        }
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

/// The path with ids replaced, so the label set stays small.
fn route_label(path: &str) -> String {
    if path.starts_with("/docs") {
        return "/docs".into();
    }
    path.split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
async fn readyz(services: Data<&Services>) -> Response {
    // A stopping node takes no new clients: balancers should route around it.
    if services.connections.stopping() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: stopping").into_response();
    }
    match services.readiness.check(&services.backends).await {
        Ok(()) => "ready".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")).into_response(),
    }
}

#[handler]
fn metrics_text(handle: Data<&PrometheusHandle>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_labels_hide_ids() {
        assert_eq!(
            super::route_label("/api/v1/groups/123/members/45"),
            "/api/v1/groups/{id}/members/{id}"
        );
        assert_eq!(super::route_label("/docs/index.css"), "/docs");
    }
}
