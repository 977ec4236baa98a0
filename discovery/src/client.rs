//! Client used by nodes and the gateway. It knows several discovery servers and
//! uses the first one that answers, so one server going down is not an outage.
//!
//! The client sticks to the server that answered last: a dead server is paid for
//! once (at failover), not on every request. That matters when a dead server
//! swallows packets instead of refusing them: paying the connect timeout on
//! every heartbeat could outlast the TTL and make a healthy node expire.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode, Url};
use serde_json::Value;
use tally_protocol::cluster_key::ClusterKeys;
use tally_protocol::request_auth::{self, unix_now_ms, RequestParts};

use crate::{Member, Peer};

/// Per-request limit (connect + answer): discovery is on the critical path of startup.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a heartbeat found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// The server knows the member and refreshed it.
    Known,
    /// The server does not know the member (expired, restarted, or another server): re-register.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no discovery URLs given")]
    NoUrls,
    #[error("invalid discovery URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("could not build HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    #[error("discovery server {url} unreachable: {source}")]
    Unreachable { url: Url, source: reqwest::Error },
    #[error("discovery server {url} answered {status}: {message}")]
    Rejected {
        url: Url,
        status: StatusCode,
        message: String,
    },
    #[error("unreadable answer from discovery server {url}: {source}")]
    BadResponse { url: Url, source: reqwest::Error },
}

/// Talks to a list of discovery servers, failing over on network errors and 5xx.
/// Clones share the memory of which server answered last.
#[derive(Debug, Clone)]
pub struct DiscoveryClient {
    http: Client,
    bases: Vec<Url>,
    /// Signs every request when set (servers refuse unsigned ones).
    keys: Option<ClusterKeys>,
    /// Index into `bases` of the server that answered last; tried first.
    preferred: Arc<AtomicUsize>,
}

impl DiscoveryClient {
    /// `urls` are base URLs such as `http://127.0.0.1:8000`.
    pub fn new(urls: Vec<String>) -> Result<Self, ClientError> {
        Self::with_timeout(urls, DEFAULT_TIMEOUT)
    }

    pub fn with_timeout(urls: Vec<String>, timeout: Duration) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::NoUrls);
        }
        let bases = urls
            .iter()
            .map(|url| parse_base(url))
            .collect::<Result<_, _>>()?;
        let http = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Discovery runs inside the cluster; an ambient HTTP_PROXY must not reroute it.
            .no_proxy()
            .build()
            .map_err(ClientError::Build)?;
        Ok(Self {
            http,
            bases,
            keys: None,
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Signs every request with the current cluster secret.
    pub fn signed_with(mut self, keys: ClusterKeys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The servers this client knows, in the order given (it starts with the one that answered last).
    pub fn urls(&self) -> &[Url] {
        &self.bases
    }

    /// Announces (or re-announces) `member`.
    pub async fn register(&self, member: &Member) -> Result<(), ClientError> {
        let (url, response) = self
            .first_answer(Method::POST, &["register"], Some(json_body(member)))
            .await?;
        expect_success(url, response).await.map(drop)
    }

    /// Keeps `id` alive; [`HeartbeatOutcome::Unknown`] means "register again".
    pub async fn heartbeat(&self, id: &str) -> Result<HeartbeatOutcome, ClientError> {
        let body = json_body(&serde_json::json!({ "id": id }));
        let (url, response) = self
            .first_answer(Method::POST, &["heartbeat"], Some(body))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(HeartbeatOutcome::Unknown);
        }
        expect_success(url, response).await?;
        Ok(HeartbeatOutcome::Known)
    }

    /// Live members according to the first reachable server.
    pub async fn peers(&self) -> Result<Vec<Peer>, ClientError> {
        let (url, response) = self.first_answer(Method::GET, &["peers"], None).await?;
        let response = expect_success(url.clone(), response).await?;
        response
            .json()
            .await
            .map_err(|source| ClientError::BadResponse { url, source })
    }

    /// Removes `id` from every server at once: after failovers a member may be
    /// listed by a server it no longer heartbeats. Idempotent: a server that does
    /// not know `id` counts as done. Succeeds when at least one server confirmed.
    pub async fn deregister(&self, id: &str) -> Result<(), ClientError> {
        let mut requests = tokio::task::JoinSet::new();
        for base in &self.bases {
            let url = endpoint(base, &["peers", id]);
            let request = self.request(Method::DELETE, url.clone(), None);
            requests.spawn(async move { confirm_removal(url, request.send().await).await });
        }
        let mut outcome = Err(ClientError::NoUrls);
        while let Some(joined) = requests.join_next().await {
            match joined {
                Ok(Ok(())) => outcome = Ok(()),
                Ok(Err(error)) if outcome.is_err() => outcome = Err(error),
                Ok(Err(_)) => {}
                // A request task cannot panic short of a reqwest bug; treat it as unreachable.
                Err(join_error) => tracing::debug!(%join_error, "deregistration task failed"),
            }
        }
        outcome
    }

    /// Sends the request to each server in turn, starting with the one that
    /// answered last; returns the first answer that is not a server error, or
    /// the last failure if none qualifies.
    async fn first_answer(
        &self,
        method: Method,
        path: &[&str],
        body: Option<Vec<u8>>,
    ) -> Result<(Url, Response), ClientError> {
        let mut last_error = ClientError::NoUrls;
        let start = self.preferred.load(Ordering::Relaxed);
        for index in (0..self.bases.len()).map(|i| (start + i) % self.bases.len()) {
            let url = endpoint(&self.bases[index], path);
            let request = self.request(method.clone(), url.clone(), body.clone());
            match request.send().await {
                Ok(response) if response.status().is_server_error() => {
                    last_error = rejection(url, response).await;
                }
                Ok(response) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((url, response));
                }
                Err(source) => last_error = ClientError::Unreachable { url, source },
            }
            tracing::debug!(error = %last_error, "discovery server failed, trying the next");
        }
        Err(last_error)
    }
}

impl DiscoveryClient {
    /// A request with an optional JSON body, signed when the client has keys.
    fn request(&self, method: Method, url: Url, body: Option<Vec<u8>>) -> RequestBuilder {
        let body = body.unwrap_or_default();
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(keys) = &self.keys {
            let path_and_query = match url.query() {
                Some(query) => format!("{}?{query}", url.path()),
                None => url.path().to_owned(),
            };
            let signed = RequestParts {
                method: method.as_str(),
                path_and_query: &path_and_query,
                body: &body,
            };
            let nonce = rand::random::<[u8; 16]>();
            for (name, value) in request_auth::sign(keys, signed, unix_now_ms(), nonce) {
                request = request.header(name, value);
            }
        }
        if body.is_empty() {
            request
        } else {
            request.header(CONTENT_TYPE, "application/json").body(body)
        }
    }
}

/// Our own types always serialise.
fn json_body(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// A deregistration answer: removed (2xx) or never known there (404) both count as done.
async fn confirm_removal(
    url: Url,
    sent: Result<Response, reqwest::Error>,
) -> Result<(), ClientError> {
    let response = sent.map_err(|source| ClientError::Unreachable {
        url: url.clone(),
        source,
    })?;
    if response.status() == StatusCode::NOT_FOUND {
        return Ok(());
    }
    expect_success(url, response).await.map(drop)
}

fn parse_base(url: &str) -> Result<Url, ClientError> {
    let invalid = |reason: String| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let parsed = Url::parse(url).map_err(|err| invalid(err.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(invalid(
            "expected an http:// or https:// base URL".to_owned(),
        ));
    }
    Ok(parsed)
}

/// `base` + path segments, each percent-encoded (ids may hold `/` or spaces).
fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

async fn expect_success(url: Url, response: Response) -> Result<Response, ClientError> {
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(rejection(url, response).await)
    }
}

/// Turns a non-success answer into an error, keeping the server's `{"error"}` message.
async fn rejection(url: Url, response: Response) -> ClientError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|json| json.get("error")?.as_str().map(str::to_owned))
        .unwrap_or(body);
    ClientError::Rejected {
        url,
        status,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_join_and_encode_segments() {
        let base = parse_base("http://127.0.0.1:8000/").unwrap();
        assert_eq!(
            endpoint(&base, &["peers", "a/b c"]).as_str(),
            "http://127.0.0.1:8000/peers/a%2Fb%20c"
        );
        let nested = parse_base("http://host:1/disc").unwrap();
        assert_eq!(
            endpoint(&nested, &["peers"]).as_str(),
            "http://host:1/disc/peers"
        );
    }

    #[test]
    fn bad_base_urls_are_refused() {
        assert!(matches!(
            DiscoveryClient::new(vec![]),
            Err(ClientError::NoUrls)
        ));
        for bad in ["127.0.0.1:8000", "ftp://host", "not a url"] {
            let result = DiscoveryClient::new(vec![bad.to_owned()]);
            assert!(
                matches!(result, Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}
