//! Signed requests between the cluster's own processes: a node or the
//! gateway calling discovery, the gateway checking a node.
//!
//! A signed request carries three headers:
//!
//! ```text
//! x-tally-date:      <unix time, ms>
//! x-tally-nonce:     <16 random bytes, hex>
//! x-tally-signature: hex HMAC-SHA256(request key,
//!                        method ‖ path and query ‖ date ‖ nonce ‖ SHA-256(body))
//! ```
//!
//! (each part length-prefixed, the key derived from the cluster secret for
//! this purpose alone; see [`crate::cluster_key`]). The server accepts it when
//! the signature verifies under any accepted secret, the date is within
//! [`MAX_SKEW`] of its own clock, and the nonce was not seen in that window
//! ([`ReplayGuard`]) — so a captured request can be neither altered nor
//! replayed. Requests are not encrypted: they carry addresses and ids, no
//! counter data.
use std::collections::{HashSet, VecDeque};

use sha2::{Digest, Sha256};

use crate::cluster_key::{ClusterKeys, Purpose};
use crate::hex;

/// Header holding the signing time (unix ms).
pub const DATE_HEADER: &str = "x-tally-date";
/// Header holding the request's random nonce (hex).
pub const NONCE_HEADER: &str = "x-tally-nonce";
/// Header holding the signature (hex).
pub const SIGNATURE_HEADER: &str = "x-tally-signature";
/// Largest accepted difference between a request's date and the server's
/// clock, either way: the replay window.
pub const MAX_SKEW_MS: u64 = 30_000;
/// Most nonces remembered at once; more signed requests than this within
/// one window are refused rather than remembered without bound.
pub const REPLAY_GUARD_CAPACITY: usize = 100_000;

/// What a request must be signed over.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// Path and query, exactly as sent (`/peers/n1?x=1`).
    pub path_and_query: &'a str,
    /// The body bytes (empty for none).
    pub body: &'a [u8],
}

/// The three headers of a signed request, as `(name, value)` pairs.
pub fn sign(
    keys: &ClusterKeys,
    request: RequestParts<'_>,
    now_ms: u64,
    nonce: [u8; 16],
) -> [(&'static str, String); 3] {
    let date = now_ms.to_string();
    let nonce = hex::encode(&nonce);
    let signature = keys.sign(
        Purpose::RequestSignature,
        &signed_parts(request, &date, &nonce, &Sha256::digest(request.body).into()),
    );
    [
        (DATE_HEADER, date),
        (NONCE_HEADER, nonce),
        (SIGNATURE_HEADER, hex::encode(&signature)),
    ]
}

/// Why a request's signature was refused (the message is the 401's body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A header is absent.
    #[error("request is not signed with the cluster key (missing {0} header)")]
    Missing(&'static str),
    /// A header does not parse.
    #[error("malformed {0} header")]
    Malformed(&'static str),
    /// The date is outside the window.
    #[error("request date is more than 30 s from the server's clock")]
    Stale,
    /// The signature does not verify under any accepted key.
    #[error("request signature does not verify with the cluster key")]
    BadSignature,
    /// The nonce was used before.
    #[error("request was already used (replay)")]
    Replayed,
    /// Too many signed requests within one window to remember them all.
    #[error("too many signed requests; try again shortly")]
    Overloaded,
}

/// The three headers as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// `x-tally-date`.
    pub date: Option<&'a str>,
    /// `x-tally-nonce`.
    pub nonce: Option<&'a str>,
    /// `x-tally-signature`.
    pub signature: Option<&'a str>,
}

/// Checks a request's signature, freshness and nonce; remembers the nonce.
pub fn verify(
    keys: &ClusterKeys,
    request: RequestParts<'_>,
    presented: Presented<'_>,
    now_ms: u64,
    guard: &mut ReplayGuard,
) -> Result<(), AuthError> {
    let date = presented.date.ok_or(AuthError::Missing(DATE_HEADER))?;
    let nonce_text = presented.nonce.ok_or(AuthError::Missing(NONCE_HEADER))?;
    let signature = presented
        .signature
        .ok_or(AuthError::Missing(SIGNATURE_HEADER))?;
    let signed_at: u64 = date
        .parse()
        .map_err(|_| AuthError::Malformed(DATE_HEADER))?;
    let nonce: [u8; 16] = hex::decode(nonce_text).ok_or(AuthError::Malformed(NONCE_HEADER))?;
    let tag: [u8; 32] = hex::decode(signature).ok_or(AuthError::Malformed(SIGNATURE_HEADER))?;
    if signed_at.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(AuthError::Stale);
    }
    let body_hash: [u8; 32] = Sha256::digest(request.body).into();
    let parts = signed_parts(request, date, nonce_text, &body_hash);
    if !keys.verify(Purpose::RequestSignature, &parts, &tag) {
        return Err(AuthError::BadSignature);
    }
    guard.admit(nonce, signed_at, now_ms)
}

fn signed_parts<'a>(
    request: RequestParts<'a>,
    date: &'a str,
    nonce: &'a str,
    body_hash: &'a [u8; 32],
) -> [&'a [u8]; 5] {
    [
        request.method.as_bytes(),
        request.path_and_query.as_bytes(),
        date.as_bytes(),
        nonce.as_bytes(),
        body_hash,
    ]
}

/// The nonces of the signed requests accepted within the replay window.
///
/// Pure state: time is passed in. Entries leave once their date is older
/// than the window (a request that old is refused as stale anyway).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashSet<[u8; 16]>,
    /// `(date, nonce)` in admission order; dates are within one window of
    /// each other, so the front is always among the oldest.
    by_age: VecDeque<(u64, [u8; 16])>,
}

impl ReplayGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits `nonce` signed at `signed_at`, refusing one seen before.
    pub fn admit(&mut self, nonce: [u8; 16], signed_at: u64, now_ms: u64) -> Result<(), AuthError> {
        self.forget_older_than(now_ms.saturating_sub(2 * MAX_SKEW_MS));
        if self.seen.contains(&nonce) {
            return Err(AuthError::Replayed);
        }
        if self.seen.len() >= REPLAY_GUARD_CAPACITY {
            return Err(AuthError::Overloaded);
        }
        self.seen.insert(nonce);
        self.by_age.push_back((signed_at, nonce));
        Ok(())
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Drops nonces signed before `cutoff`. Dates inside the deque are
    /// only roughly ordered (clocks differ by up to the window), so this
    /// keeps any nonce whose date is still recent: it may keep a few too
    /// long, never forget one too early.
    fn forget_older_than(&mut self, cutoff: u64) {
        while let Some(&(date, nonce)) = self.by_age.front() {
            if date >= cutoff {
                break;
            }
            self.by_age.pop_front();
            self.seen.remove(&nonce);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> ClusterKeys {
        ClusterKeys::parse(text).unwrap()
    }

    const KEY: &str = "cluster-secret-for-tests";
    const NOW: u64 = 1_800_000_000_000;

    fn register(body: &[u8]) -> RequestParts<'_> {
        RequestParts {
            method: "POST",
            path_and_query: "/register",
            body,
        }
    }

    fn presented<'a>(headers: &'a [(&'static str, String); 3]) -> Presented<'a> {
        Presented {
            date: Some(&headers[0].1),
            nonce: Some(&headers[1].1),
            signature: Some(&headers[2].1),
        }
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let keys = keys(KEY);
        let headers = sign(&keys, register(b"{}"), NOW, [7; 16]);
        let mut guard = ReplayGuard::new();
        let check = |guard: &mut ReplayGuard| {
            verify(&keys, register(b"{}"), presented(&headers), NOW + 5, guard)
        };
        assert_eq!(check(&mut guard), Ok(()));
        assert_eq!(check(&mut guard), Err(AuthError::Replayed));
    }

    #[test]
    fn any_change_to_the_request_breaks_the_signature() {
        let keys = keys(KEY);
        let headers = sign(&keys, register(b"{\"id\":\"n1\"}"), NOW, [1; 16]);
        let altered = [
            register(b"{\"id\":\"n2\"}"),
            RequestParts {
                method: "DELETE",
                ..register(b"{\"id\":\"n1\"}")
            },
            RequestParts {
                path_and_query: "/heartbeat",
                ..register(b"{\"id\":\"n1\"}")
            },
        ];
        for request in altered {
            let mut guard = ReplayGuard::new();
            let result = verify(&keys, request, presented(&headers), NOW, &mut guard);
            assert_eq!(result, Err(AuthError::BadSignature), "{request:?}");
        }
    }

    #[test]
    fn a_wrong_key_stale_date_or_missing_header_is_refused() {
        let signed_elsewhere = sign(&keys("another-cluster-secret"), register(b""), NOW, [2; 16]);
        let mut guard = ReplayGuard::new();
        let ours = keys(KEY);
        let check = |headers: Presented<'_>, now, guard: &mut ReplayGuard| {
            verify(&ours, register(b""), headers, now, guard)
        };
        assert_eq!(
            check(presented(&signed_elsewhere), NOW, &mut guard),
            Err(AuthError::BadSignature)
        );
        let old = sign(&ours, register(b""), NOW - MAX_SKEW_MS - 1, [3; 16]);
        assert_eq!(
            check(presented(&old), NOW, &mut guard),
            Err(AuthError::Stale)
        );
        assert_eq!(
            check(Presented::default(), NOW, &mut guard),
            Err(AuthError::Missing(DATE_HEADER))
        );
        let mut garbled = presented(&old);
        garbled.nonce = Some("zz");
        assert_eq!(
            check(garbled, NOW, &mut guard),
            Err(AuthError::Malformed(NONCE_HEADER))
        );
    }

    #[test]
    fn the_guard_forgets_nonces_once_they_are_past_the_window() {
        let mut guard = ReplayGuard::new();
        guard.admit([1; 16], NOW, NOW).unwrap();
        assert_eq!(guard.admit([1; 16], NOW, NOW + 1), Err(AuthError::Replayed));
        guard
            .admit([2; 16], NOW + 3 * MAX_SKEW_MS, NOW + 3 * MAX_SKEW_MS)
            .unwrap();
        assert_eq!(guard.len(), 1, "the first nonce is forgotten");
    }
}

pub use crate::clock::now_ms as unix_now_ms;

/// The server side for axum: a verifier to share between handlers, and a
/// middleware that answers 401 (JSON) to any request it refuses.
#[cfg(feature = "http")]
pub mod server {
    use std::sync::{Arc, Mutex, PoisonError};

    use axum::body::{to_bytes, Body};
    use axum::extract::{Request, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::middleware::Next;
    use axum::response::{IntoResponse, Response};

    use super::*;
    use crate::http_error::{ApiError, MAX_BODY_BYTES};

    /// Checks signed requests against a cluster's keys, remembering nonces.
    #[derive(Debug)]
    pub struct RequestVerifier {
        keys: ClusterKeys,
        guard: Mutex<ReplayGuard>,
    }

    impl RequestVerifier {
        /// A verifier accepting signatures by any of `keys`.
        pub fn new(keys: ClusterKeys) -> Self {
            Self {
                keys,
                guard: Mutex::new(ReplayGuard::new()),
            }
        }

        /// Verifies one request now.
        pub fn check(
            &self,
            request: RequestParts<'_>,
            headers: &HeaderMap,
        ) -> Result<(), AuthError> {
            let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
            let presented = Presented {
                date: header(DATE_HEADER),
                nonce: header(NONCE_HEADER),
                signature: header(SIGNATURE_HEADER),
            };
            // The guard is a plain set; a panic elsewhere cannot leave it half-updated.
            let mut guard = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
            verify(&self.keys, request, presented, unix_now_ms(), &mut guard)
        }
    }

    /// Middleware: passes a request on only when its signature verifies
    /// (401 otherwise, 413 for a body over the limit). The body is read
    /// here, since it is signed, and handed on unchanged.
    pub async fn require_signature(
        State(verifier): State<Arc<RequestVerifier>>,
        request: Request,
        next: Next,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let body = match to_bytes(body, MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(_) => {
                return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                    .into_response()
            }
        };
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let signed = RequestParts {
            method: parts.method.as_str(),
            path_and_query,
            body: &body,
        };
        if let Err(error) = verifier.check(signed, &parts.headers) {
            return ApiError::new(StatusCode::UNAUTHORIZED, error.to_string()).into_response();
        }
        next.run(Request::from_parts(parts, Body::from(body))).await
    }
}
