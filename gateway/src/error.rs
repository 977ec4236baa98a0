//! The gateway's errors: [`GatewayError`] for `serve` itself, [`ApiError`]
//! for what a client sees (always a JSON body `{"error": "..."}`).
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
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

/// An HTTP error answer with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn no_healthy_node() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy node")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}
