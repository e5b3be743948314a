//! One error type for the whole request path, mapped once to the contract's
//! error codes (REST status + `code`, STOMP `/user/queue/errors` payloads).

use thiserror::Error;

/// Errors a client request can end in. Backend failures are `Unavailable`.
#[derive(Debug, Error, Clone)]
pub enum AppError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Too many requests: try again after `retry_after` (sent as
    /// `Retry-After`, in whole seconds, at least 1).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    Unavailable(String),
}

impl AppError {
    /// The contract's snake_case error code.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::InvalidArgument(_) => "invalid_argument",
            AppError::Unauthenticated(_) => "unauthenticated",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound(_) => "not_found",
            AppError::Conflict(_) => "conflict",
            AppError::PayloadTooLarge(_) => "payload_too_large",
            AppError::RateLimited { .. } => "rate_limited",
            AppError::Unavailable(_) => "unavailable",
        }
    }

    /// The HTTP status the contract assigns to this error.
    pub fn http_status(&self) -> u16 {
        match self {
            AppError::InvalidArgument(_) => 400,
            AppError::Unauthenticated(_) => 401,
            AppError::Forbidden(_) => 403,
            AppError::NotFound(_) => 404,
            AppError::Conflict(_) => 409,
            AppError::PayloadTooLarge(_) => 413,
            AppError::RateLimited { .. } => 429,
            AppError::Unavailable(_) => 503,
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        AppError::InvalidArgument(msg.into())
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        AppError::Forbidden(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        AppError::NotFound(msg.into())
    }
    pub fn rate_limited(msg: impl Into<String>, retry_after: std::time::Duration) -> Self {
        AppError::RateLimited {
            message: msg.into(),
            retry_after,
        }
    }

    /// The `Retry-After` of a rate-limited request: whole seconds, rounded
    /// up, at least 1 (a client told 0 would retry at once).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AppError::RateLimited { retry_after, .. } => Some(retry_after_secs(*retry_after)),
            _ => None,
        }
    }
}

/// `wait` as a `Retry-After` value: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Failures of a backend. Each adapter boxes its driver's error with its
/// own name, so nothing above the adapters depends on a driver's types.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("{backend} error: {source}")]
    Adapter {
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("serialization error: {0}")]
    Serde(#[from] serde_json::Error),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("backend is shutting down")]
    Closed,
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    /// A driver's error, named by the adapter that met it.
    pub fn adapter(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> BackendError {
        BackendError::Adapter {
            backend,
            source: source.into(),
        }
    }
}

impl From<BackendError> for AppError {
    fn from(e: BackendError) -> Self {
        // Backend details are logged, not shown to clients.
        tracing::error!(error = %e, "backend failure");
        AppError::Unavailable("backend unavailable, try again".into())
    }
}

pub type AppResult<T> = Result<T, AppError>;
pub type BackendResult<T> = Result<T, BackendError>;
