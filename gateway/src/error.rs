//! The gateway's errors: [`GatewayError`] for `serve` itself, [`ApiError`]
//! for what a client sees (always a JSON body `{"error": "..."}`).
use axum::http::StatusCode;
use thiserror::Error;

/// Why [`crate::serve`] stopped.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The HTTP server failed (accepting or serving connections).
    #[error("gateway server failed: {0}")]
    Serve(#[from] std::io::Error),
    /// The HTTP client for talking to nodes could not be built.
    #[error("cannot build the node HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The discovery URLs are unusable.
    #[error("bad discovery settings: {0}")]
    Discovery(#[from] tally_discovery::ClientError),
}

/// What a client sees: the cluster's one JSON error answer.
pub use tally_protocol::http_error::ApiError;

/// 503 when the rotation is empty.
pub fn no_healthy_node() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy node")
}
