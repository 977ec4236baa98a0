//! When a failed proxied request may go on to another node.
//!
//! A counter cannot tell a retried increment from a new one, so a write
//! moves on to the next node only when it certainly never left (the
//! connection failed before the request was sent). Once a write may have
//! reached a node it is never resent: resending after a timeout could count
//! the same click twice. The client gets 504/502 and decides itself. Reads
//! change nothing, so any failure moves on.
//!
//! Pure (the proxy does the I/O and asks here what next), so these rules —
//! the gateway's most safety-critical — are tested directly.
use std::time::Duration;

use axum::http::{Method, StatusCode};

use crate::error::ApiError;

/// Whether sending the request twice could change what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
}

impl RequestKind {
    /// Only GET and HEAD are reads: any other method may change a counter,
    /// so an unknown one is treated as a write (never retried after sending).
    pub fn of(method: &Method) -> Self {
        match *method {
            Method::GET | Method::HEAD => Self::Read,
            _ => Self::Write,
        }
    }
}

/// How a node failed to answer (the message is for the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The connection failed before the request left: nothing was applied.
    NotSent(String),
    /// The request left, then the answer did not come in time.
    TimedOut,
    /// The request left, then the connection or the answer broke.
    Broken(String),
}

impl Failure {
    /// Whether the node may have applied the request.
    fn may_have_applied(&self) -> bool {
        !matches!(self, Failure::NotSent(_))
    }

    /// The status the client gets when this is the last failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            Failure::NotSent(_) | Failure::Broken(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// What the client sees when this is the last failure; `timeout` is the
    /// request timeout the node missed.
    pub fn into_api_error(self, addr: &str, timeout: Duration) -> ApiError {
        let status = self.status();
        let unknown = self.may_have_applied();
        let mut message = match self {
            Failure::TimedOut => format!("node {addr} did not answer within {timeout:?}"),
            Failure::NotSent(error) | Failure::Broken(error) => {
                format!("node {addr} failed: {error}")
            }
        };
        if unknown {
            message.push_str(
                "; a write may or may not have been applied: retrying it with the same \
                 Idempotency-Key is safe",
            );
        }
        ApiError::new(status, message)
    }
}

/// What the proxy does after a node failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send the request to the next node in the rotation (when none is
    /// left, answer with this failure's status).
    TryNextNode,
    /// Answer the client now with this failure's status.
    Stop,
}

/// The failover rule: see the module documentation.
pub fn after_failure(kind: RequestKind, failure: &Failure) -> Next {
    match (kind, failure.may_have_applied()) {
        (RequestKind::Write, true) => Next::Stop,
        (RequestKind::Write, false) | (RequestKind::Read, _) => Next::TryNextNode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_failure() -> [Failure; 3] {
        [
            Failure::NotSent("connection refused".into()),
            Failure::TimedOut,
            Failure::Broken("connection reset".into()),
        ]
    }

    #[test]
    fn a_write_that_was_not_sent_moves_on() {
        let refused = Failure::NotSent("connection refused".into());
        assert_eq!(
            after_failure(RequestKind::Write, &refused),
            Next::TryNextNode
        );
    }

    #[test]
    fn a_write_that_timed_out_or_broke_after_sending_is_never_retried() {
        assert_eq!(
            after_failure(RequestKind::Write, &Failure::TimedOut),
            Next::Stop
        );
        let broken = Failure::Broken("connection reset".into());
        assert_eq!(after_failure(RequestKind::Write, &broken), Next::Stop);
    }

    #[test]
    fn reads_move_on_after_any_failure() {
        for failure in every_failure() {
            let next = after_failure(RequestKind::Read, &failure);
            assert_eq!(next, Next::TryNextNode, "{failure:?}");
        }
    }

    #[test]
    fn only_get_and_head_are_reads() {
        assert_eq!(RequestKind::of(&Method::GET), RequestKind::Read);
        assert_eq!(RequestKind::of(&Method::HEAD), RequestKind::Read);
        let others = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
        let custom = Method::from_bytes(b"BUMP").unwrap();
        for method in others.into_iter().chain([custom]) {
            assert_eq!(RequestKind::of(&method), RequestKind::Write, "{method}");
        }
    }

    #[test]
    fn a_timeout_answers_504_and_any_other_failure_502() {
        let statuses = every_failure().map(|failure| failure.status());
        let expected = [
            StatusCode::BAD_GATEWAY,
            StatusCode::GATEWAY_TIMEOUT,
            StatusCode::BAD_GATEWAY,
        ];
        assert_eq!(statuses, expected);
    }

    #[test]
    fn the_client_is_told_which_node_failed_and_how() {
        let timeout = Duration::from_millis(300);
        let timed_out = Failure::TimedOut.into_api_error("a:1", timeout);
        assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(timed_out.message.contains("a:1"), "{}", timed_out.message);
        assert!(timed_out.message.contains("300ms"), "{}", timed_out.message);
        let broken = Failure::Broken("connection reset".into()).into_api_error("b:1", timeout);
        assert_eq!(broken.status, StatusCode::BAD_GATEWAY);
        assert!(broken.message.contains("b:1"), "{}", broken.message);
        assert!(
            broken.message.contains("connection reset"),
            "{}",
            broken.message
        );
        assert!(broken.message.contains("same Idempotency-Key is safe"));
        let not_sent = Failure::NotSent("refused".into()).into_api_error("c:1", timeout);
        assert!(
            !not_sent.message.contains("Idempotency-Key"),
            "it never left"
        );
    }
}
