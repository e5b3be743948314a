//! Logging (tracing) and metrics (Prometheus exposition at `/metrics`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: sub-millisecond to ten seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SIZE_BUCKETS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];

/// Starts logging to stderr; `HERALD_LOG` or `RUST_LOG` filter it.
pub fn init_logging() {
    let filter = std::env::var("HERALD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        // The RocketMQ client logs every route refresh and rebalance at INFO.
        .unwrap_or_else(|_| {
            "info,rocketmq_client_rust=warn,rocketmq_transport=warn,rocketmq_runtime=warn".into()
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the process-wide metrics recorder once; later calls reuse it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Fails only if another recorder is installed (in-process tests).
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "herald_messages_sent_total",
        "Messages accepted from senders"
    );
    describe_counter!(
        "herald_messages_delivered_total",
        "Pushes written to a device"
    );
    describe_counter!(
        "herald_messages_redelivered_total",
        "Pushes repeated for lack of an ack"
    );
    describe_counter!(
        "herald_messages_dead_lettered_total",
        "Pushes given up after maxRedeliveries"
    );
    describe_counter!(
        "herald_rejected_sends_total",
        "Sends rejected, by error code"
    );
    describe_histogram!(
        "herald_send_to_store_seconds",
        Unit::Seconds,
        "From accepting a send to storing it in the inboxes"
    );
    describe_histogram!(
        "herald_store_to_push_seconds",
        Unit::Seconds,
        "From storing a message to writing its push"
    );
    describe_histogram!(
        "herald_http_request_duration_seconds",
        Unit::Seconds,
        "REST request duration"
    );
    describe_histogram!(
        "herald_store_commit_seconds",
        Unit::Seconds,
        "Duration of one group commit"
    );
    describe_counter!(
        "herald_login_failures_total",
        "Logins refused for a wrong username or password"
    );
    describe_counter!(
        "herald_login_throttled_total",
        "Logins refused with 429, by scope (username or address)"
    );
    describe_counter!(
        "herald_registrations_throttled_total",
        "Registrations refused with 429 (registrationsPerHour)"
    );
    describe_counter!(
        "herald_tokens_rejected_total",
        "Tokens refused, by reason (invalid, expired, not_yet_valid, unknown_user, revoked)"
    );
    describe_counter!(
        "herald_tokens_revoked_total",
        "Revocations, by kind (one: logout, all: logout-all)"
    );
    describe_counter!(
        "herald_connections_revoked_total",
        "STOMP connections closed because their token was revoked"
    );
    describe_counter!(
        "herald_revocations_unconfirmed_total",
        "Revocations some node did not confirm in time"
    );
    describe_gauge!("herald_ws_connections", "Open WebSocket connections");
    describe_gauge!(
        "herald_tcp_connections",
        "Open TCP connections (HTTP and WebSocket)"
    );
    describe_counter!(
        "herald_tcp_connections_refused_total",
        "Connections refused with 503 at accept, by the cap reached (total, per_address)"
    );
    describe_counter!(
        "herald_tcp_connections_evicted_total",
        "Connections closed before their first request to make room for new ones"
    );
    describe_counter!(
        "herald_tcp_accept_errors_total",
        "Failed accepts (e.g. out of file descriptors)"
    );
    describe_gauge!(
        "herald_partial_frame_bytes",
        "Bytes of unfinished STOMP frames held on this node"
    );
    describe_counter!(
        "herald_partial_frames_refused_total",
        "Connections closed for passing the unfinished-frame budget"
    );
    describe_counter!(
        "herald_stalled_frames_total",
        "Connections closed for a frame or WebSocket message not finished in time"
    );
    describe_counter!(
        "herald_stalled_writes_total",
        "Connections closed because a write to them did not finish in frameTimeoutMs"
    );
    describe_counter!(
        "herald_slow_consumers_total",
        "Connections closed because they did not read their pushes"
    );
    describe_counter!(
        "herald_dropped_pushes_total",
        "Pushes not queued to a connection whose queue was full (it is then closed)"
    );
    describe_gauge!("herald_online_users", "Users with at least one connection");
    describe_gauge!(
        "herald_topic_consumer_lag",
        "Records published but not yet consumed"
    );
}
