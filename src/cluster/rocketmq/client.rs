//! The RocketMQ client's runtime and errors.
//!
//! The client runs its background work (pulls, heartbeats, rebalances) on
//! a Tokio runtime of its own, not on Herald's; Herald's tasks await its
//! futures. Its errors print a redacted text ("Argument is invalid"): the
//! cause is in their source chain, which `describe` spells out.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rocketmq_client_rust::{ClientError, ClientRuntime, ClientRuntimeConfig};
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner, ShutdownDeadline};

use crate::error::BackendError;

/// How long stopping the client may take.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(5);

/// A client error with its whole cause spelled out.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct RocketError {
    text: String,
    #[source]
    source: Option<ClientError>,
}

/// A client error as a backend error.
pub fn rocket_error(e: ClientError) -> BackendError {
    BackendError::adapter(
        "rocketmq",
        RocketError {
            text: describe(&e),
            source: Some(e),
        },
    )
}

/// A failure the adapter itself names.
pub fn rocket_failure(text: impl Into<String>) -> BackendError {
    BackendError::adapter(
        "rocketmq",
        RocketError {
            text: text.into(),
            source: None,
        },
    )
}

/// The error's code, the broker's response code and every cause.
pub fn describe(e: &ClientError) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    if let Some(code) = e.broker_response_code() {
        s.push_str(&format!(" [broker code {code}]"));
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.shared_error().source();
    while let Some(c) = cause {
        s.push_str(" <- ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Whether the client could not even connect (the broker is down, or the
/// transport's circuit breaker holds the connection shut).
pub fn cannot_connect(e: &ClientError) -> bool {
    e.is(&rocketmq_error::TRANSPORT_CONNECTION_FAILED)
}

/// The client's own runtime, shared by every producer and consumer of the
/// process.
pub struct RocketRuntime {
    owner: Mutex<Option<RuntimeOwner>>,
    client: Arc<ClientRuntime>,
}

impl RocketRuntime {
    pub fn new() -> Result<Arc<RocketRuntime>, BackendError> {
        let runtime_error = |e: &dyn std::fmt::Debug| {
            rocket_failure(format!("cannot start the RocketMQ client runtime: {e:?}"))
        };
        let owner = RuntimeOwner::plan(RuntimeConfig::for_parallelism("rocketmq", 2))
            .map_err(|e| runtime_error(&e))?
            .build()
            .map_err(|e| runtime_error(&e))?;
        let client = ClientRuntime::try_new(
            owner.root_context().component("client"),
            ClientRuntimeConfig::default(),
            rocketmq_observability::TelemetryHandle::noop(),
        )
        .map_err(rocket_error)?;
        Ok(Arc::new(RocketRuntime {
            owner: Mutex::new(Some(owner)),
            client,
        }))
    }

    pub fn client(&self) -> Arc<ClientRuntime> {
        self.client.clone()
    }

    /// Stops every client of the runtime, then the runtime (call once the
    /// producers and consumers were shut down).
    pub async fn shutdown(&self) {
        let _ = self
            .client
            .shutdown_until(ShutdownDeadline::after(SHUTDOWN_WITHIN))
            .await;
        let owner = self.owner.lock().take();
        if let Some(owner) = owner {
            let _ = owner
                .shutdown_tasks_until(ShutdownDeadline::after(SHUTDOWN_WITHIN))
                .await;
            // Dropping a Tokio runtime inside async code panics.
            let _ = owner.shutdown_background();
        }
    }
}
