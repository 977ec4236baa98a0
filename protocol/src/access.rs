//! Who may call what on a node or the gateway: optional API tokens with
//! roles, and the same-origin rule that keeps other web sites out.
//!
//! **Tokens** (`--api-tokens-file`, the same format on nodes and gateways):
//! one `TOKEN ROLE` per line, `#` comments and blank lines ignored, roles
//! `read` < `write` < `admin`. With a file, every request needs
//! `Authorization: Bearer TOKEN` — 401 without a known token, 403 for a role
//! too low. Reads need `read`, writes `write`, `/admin/*` and `/demo/*`
//! `admin`. Browsers cannot set headers on a WebSocket, so `/ws` and
//! `/watch` also take `?access_token=TOKEN`. A request signed with the
//! cluster secret ([`crate::request_auth`]) passes as `admin` when it is a
//! read (the gateway's health checks and stream followers), the one write
//! route built for internal callers, `POST /batch` ([`crate::batch`]), or an
//! operator's `tally admin retire` (`POST /admin/retire/{node}`, which a node
//! without a tokens file also refuses unsigned). A signature covers the
//! body, so that body is read and checked here before the handler sees it.
//! No other write is ever let through by a signature.
//!
//! **Origins**: a request that changes something, or opens a stream, and
//! carries an `Origin` header (every browser sends one on such requests) is
//! refused with 403 unless that origin is listed (`--allowed-origin`) or,
//! with no list, is this server's own (`Origin` host = `Host`). So a page on
//! another site cannot click our buttons or read our streams with a
//! visitor's browser (cross-site request forgery); `curl` and other servers
//! send no `Origin` and are governed by tokens alone.
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::batch::BATCH_PATH;
use crate::http_error::{ApiError, MAX_BODY_BYTES};
use crate::request_auth::server::RequestVerifier;
use crate::request_auth::{RequestParts, SIGNATURE_HEADER};

/// Where `POST /admin/retire/{node}` starts: the admin route an operator's
/// command signs with the cluster secret.
pub const RETIRE_PATH_PREFIX: &str = "/admin/retire/";

/// What a token allows, each role including the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read counters, listings, streams, health and metrics.
    Read,
    /// Also increment and decrement.
    Write,
    /// Also `/admin/*` and `/demo/*`.
    Admin,
}

impl Role {
    fn parse(word: &str) -> Option<Role> {
        match word {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The role a request needs.
    pub fn required_for(method: &Method, path: &str) -> Role {
        if path.starts_with("/admin/") || path.starts_with("/demo/") {
            Role::Admin
        } else if method == Method::GET || method == Method::HEAD {
            Role::Read
        } else {
            Role::Write
        }
    }
}

/// Why a tokens file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct TokensError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong there.
    pub reason: String,
}

/// Shortest token accepted: shorter ones can be guessed online.
pub const MIN_TOKEN_LEN: usize = 16;

/// The API tokens and their roles.
#[derive(Clone, Default)]
pub struct ApiTokens {
    roles: HashMap<String, Role>,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} token(s), redacted)", self.roles.len())
    }
}

impl ApiTokens {
    /// Parses a tokens file.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut roles = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let refuse = |reason: String| TokensError {
                line: index + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let [token, role] = words[..] else {
                return Err(refuse("expected `TOKEN ROLE`".into()));
            };
            let role = Role::parse(role)
                .ok_or_else(|| refuse(format!("unknown role {role:?} (read, write or admin)")))?;
            if token.len() < MIN_TOKEN_LEN {
                return Err(refuse(format!(
                    "token is {} characters; use at least {MIN_TOKEN_LEN}",
                    token.len()
                )));
            }
            if roles.insert(token.to_owned(), role).is_some() {
                return Err(refuse("token listed twice".into()));
            }
        }
        if roles.is_empty() {
            return Err(TokensError {
                line: 0,
                reason: "no tokens in the file".into(),
            });
        }
        Ok(Self { roles })
    }

    /// The role of `token`, if it is one of ours (compared in constant
    /// time per candidate, so timing does not reveal a prefix).
    pub fn role_of(&self, token: &str) -> Option<Role> {
        self.roles
            .iter()
            .find(|(known, _)| same(known.as_bytes(), token.as_bytes()))
            .map(|(_, role)| *role)
    }
}

fn same(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Everything the access check needs; shared by every request of a server.
#[derive(Debug, Default)]
pub struct AccessPolicy {
    /// `None`: no tokens file, every caller may do everything.
    pub tokens: Option<ApiTokens>,
    /// Origins allowed besides none; empty = this server's own origin only.
    pub allowed_origins: Vec<String>,
    /// Verifies requests signed with the cluster secret (internal callers).
    pub internal: Option<Arc<RequestVerifier>>,
}

impl AccessPolicy {
    /// Decides one request from its method, path, query and headers.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        let is_stream = path == "/ws" || path == "/watch";
        let changes_something = method != Method::GET && method != Method::HEAD;
        if changes_something || is_stream {
            self.check_origin(headers)?;
        }
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        // Probes (Kubernetes, Docker, load balancers) carry no token; the
        // answers say only whether the process is up or ready.
        if !changes_something && crate::probes::PROBE_PATHS.contains(&path) {
            return Ok(());
        }
        if !changes_something && self.is_signed_internally(method, path, query, headers) {
            return Ok(());
        }
        let from_query = is_stream
            .then(|| query.and_then(access_token_param))
            .flatten();
        let presented = bearer(headers).map(str::to_owned).or(from_query);
        let Some(token) = presented.as_deref() else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this server needs an API token: Authorization: Bearer TOKEN",
            ));
        };
        let Some(role) = tokens.role_of(token) else {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown API token"));
        };
        let needed = Role::required_for(method, path);
        if role < needed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this token's role ({role:?}) may not do this; it needs {needed:?}")
                    .to_lowercase(),
            ));
        }
        Ok(())
    }

    fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or_default();
        let allowed = if self.allowed_origins.is_empty() {
            let host = headers
                .get(header::HOST)
                .and_then(|host| host.to_str().ok());
            host.is_some_and(|host| origin_authority(origin) == Some(host))
        } else {
            self.allowed_origins.iter().any(|allowed| allowed == origin)
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("cross-origin request from {origin:?} refused"),
            ))
        }
    }

    /// Whether this request asks to pass as a signed write: the batch or
    /// the retire route, carrying a signature, on a server that checks tokens
    /// and knows the cluster secret. Its fate is then the signature's
    /// alone ([`Self::check_signed_write`]).
    fn wants_signed_write(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        self.tokens.is_some()
            && self.internal.is_some()
            && method == Method::POST
            && (path == BATCH_PATH || path.starts_with(RETIRE_PATH_PREFIX))
            && headers.contains_key(SIGNATURE_HEADER)
    }

    /// Checks a signed batch write: origin, then the signature over method,
    /// path and query, and `body`.
    pub fn check_signed_write(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), ApiError> {
        self.check_origin(headers)?;
        let Some(verifier) = &self.internal else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this server checks no cluster signatures",
            ));
        };
        let request = RequestParts {
            method: method.as_str(),
            path_and_query,
            body,
        };
        verifier
            .check(request, headers)
            .map_err(|error| ApiError::new(StatusCode::UNAUTHORIZED, error.to_string()))
    }

    fn is_signed_internally(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> bool {
        let Some(verifier) = &self.internal else {
            return false;
        };
        if !headers.contains_key(SIGNATURE_HEADER) {
            return false;
        }
        let path_and_query = match query {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let request = RequestParts {
            method: method.as_str(),
            path_and_query: &path_and_query,
            body: b"",
        };
        verifier.check(request, headers).is_ok()
    }
}

/// `host:port` of an origin like `http://host:port` (`None` for `null` and the like).
fn origin_authority(origin: &str) -> Option<&str> {
    let (_scheme, rest) = origin.split_once("://")?;
    Some(rest.trim_end_matches('/'))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The `access_token` query parameter, percent-decoded (`None` when absent
/// or not valid UTF-8 once decoded).
fn access_token_param(query: &str) -> Option<String> {
    let encoded = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))?;
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        match byte {
            b'%' if tail.len() >= 2 => {
                let hex = std::str::from_utf8(&tail[..2]).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &tail[2..];
            }
            b'+' => {
                bytes.push(b' ');
                rest = tail;
            }
            _ => {
                bytes.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// Middleware applying an [`AccessPolicy`] to every request.
pub async fn enforce(
    State(policy): State<Arc<AccessPolicy>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let uri = request.uri();
    if policy.wants_signed_write(request.method(), uri.path(), request.headers()) {
        return enforce_signed_write(&policy, request, next).await;
    }
    let decision = policy.check(request.method(), uri.path(), uri.query(), request.headers());
    match decision {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// The signed batch write: its body is signed, so it is read here (at most
/// the body limit, 413 beyond), checked, and handed on unchanged.
async fn enforce_signed_write(
    policy: &AccessPolicy,
    request: Request<Body>,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            .into_response();
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let decision = policy.check_signed_write(&parts.method, path_and_query, &parts.headers, &body);
    match decision {
        Ok(()) => next.run(Request::from_parts(parts, Body::from(body))).await,
        Err(refused) => refused.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const READER: &str = "reader-token-0123456789";
    const WRITER: &str = "writer-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789ab";

    fn policy() -> AccessPolicy {
        let file = format!("# tokens\n{READER} read\n\n{WRITER}  write\n{ADMIN} admin\n");
        AccessPolicy {
            tokens: Some(ApiTokens::parse(&file).unwrap()),
            ..AccessPolicy::default()
        }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn status(result: Result<(), ApiError>) -> u16 {
        result.map_or_else(|e| e.status.as_u16(), |()| 200)
    }

    #[test]
    fn tokens_files_are_checked_line_by_line() {
        assert!(ApiTokens::parse("").is_err());
        let bad_role = ApiTokens::parse(&format!("{READER} root")).unwrap_err();
        assert_eq!(bad_role.line, 1);
        let short = ApiTokens::parse("short read").unwrap_err();
        assert!(short.reason.contains("at least 16"), "{short}");
        let twice = ApiTokens::parse(&format!("{READER} read\n{READER} admin")).unwrap_err();
        assert_eq!(twice.line, 2);
        assert!(!format!("{:?}", policy().tokens).contains("reader-token"));
    }

    #[test]
    fn each_role_gets_401_403_or_through() {
        let policy = policy();
        let as_ = |token: &str| headers(&[(header::AUTHORIZATION, &format!("Bearer {token}"))]);
        let cases = [
            (Method::GET, "/counter", HeaderMap::new(), 401),
            (
                Method::GET,
                "/counter",
                as_("not-a-token-we-know-at-all"),
                401,
            ),
            (Method::GET, "/counter", as_(READER), 200),
            (Method::POST, "/increment", as_(READER), 403),
            (Method::POST, "/increment", as_(WRITER), 200),
            (Method::POST, "/admin/partition", as_(WRITER), 403),
            (Method::DELETE, "/admin/partition", as_(ADMIN), 200),
            (Method::POST, "/demo/nodes/n1/crash", as_(ADMIN), 200),
        ];
        for (method, path, headers, expected) in cases {
            let got = status(policy.check(&method, path, None, &headers));
            assert_eq!(got, expected, "{method} {path}");
        }
    }

    #[test]
    fn streams_take_the_token_from_the_query() {
        let policy = policy();
        let query = format!("prefix=a&access_token={READER}");
        assert_eq!(
            status(policy.check(&Method::GET, "/ws", Some(&query), &HeaderMap::new())),
            200
        );
        assert_eq!(
            status(policy.check(&Method::GET, "/counter", Some(&query), &HeaderMap::new())),
            401,
            "only streams read the query"
        );
    }

    #[test]
    fn a_query_token_is_percent_decoded() {
        assert_eq!(
            access_token_param("a=1&access_token=x%2By%2F%3D").as_deref(),
            Some("x+y/=")
        );
        assert_eq!(access_token_param("access_token=%zz"), None);
        assert_eq!(access_token_param("prefix=a"), None);
    }

    #[test]
    fn cross_site_requests_are_refused_and_same_origin_ones_pass() {
        let open = AccessPolicy::default();
        let from =
            |origin: &str| headers(&[(header::ORIGIN, origin), (header::HOST, "127.0.0.1:8080")]);
        let check = |method: Method, path: &str, headers: &HeaderMap| {
            status(open.check(&method, path, None, headers))
        };
        assert_eq!(
            check(
                Method::POST,
                "/admin/partition",
                &from("http://evil.example")
            ),
            403
        );
        assert_eq!(
            check(Method::POST, "/demo/nodes/n1/crash", &from("null")),
            403
        );
        assert_eq!(check(Method::GET, "/ws", &from("http://evil.example")), 403);
        assert_eq!(
            check(Method::POST, "/increment", &from("http://127.0.0.1:8080")),
            200
        );
        assert_eq!(
            check(Method::GET, "/counter", &from("http://evil.example")),
            200
        );
        assert_eq!(
            check(Method::POST, "/increment", &HeaderMap::new()),
            200,
            "curl"
        );
        let listed = AccessPolicy {
            allowed_origins: vec!["https://dash.example".into()],
            ..AccessPolicy::default()
        };
        let dash = headers(&[(header::ORIGIN, "https://dash.example")]);
        assert_eq!(status(listed.check(&Method::GET, "/ws", None, &dash)), 200);
    }

    fn signed(keys: &str, method: &str, path: &str, body: &[u8]) -> HeaderMap {
        let keys = crate::cluster_key::ClusterKeys::parse(keys).unwrap();
        let request = RequestParts {
            method,
            path_and_query: path,
            body,
        };
        let signed = crate::request_auth::sign(
            &keys,
            request,
            crate::request_auth::unix_now_ms(),
            rand_nonce(),
        );
        let pairs: Vec<(header::HeaderName, &str)> = signed
            .iter()
            .map(|(name, value)| (header::HeaderName::from_static(name), value.as_str()))
            .collect();
        headers(&pairs)
    }

    fn rand_nonce() -> [u8; 16] {
        use std::sync::atomic::{AtomicU8, Ordering};
        static NEXT: AtomicU8 = AtomicU8::new(1);
        [NEXT.fetch_add(1, Ordering::Relaxed); 16]
    }

    const SECRET: &str = "cluster-secret-for-tests";

    fn with_secret() -> AccessPolicy {
        let keys = crate::cluster_key::ClusterKeys::parse(SECRET).unwrap();
        AccessPolicy {
            internal: Some(Arc::new(RequestVerifier::new(keys))),
            ..policy()
        }
    }

    #[test]
    fn a_signed_batch_passes_only_with_its_own_body_and_the_cluster_secret() {
        let policy = with_secret();
        let body = b"items";
        let good = signed(SECRET, "POST", BATCH_PATH, body);
        assert!(policy.wants_signed_write(&Method::POST, BATCH_PATH, &good));
        let check = |headers: &HeaderMap, body: &[u8]| {
            status(policy.check_signed_write(&Method::POST, BATCH_PATH, headers, body))
        };
        assert_eq!(check(&good, body), 200);
        assert_eq!(check(&good, body), 401, "a replay");
        let other_body = signed(SECRET, "POST", BATCH_PATH, body);
        assert_eq!(check(&other_body, b"other items"), 401);
        let wrong_key = signed("another-cluster-secret", "POST", BATCH_PATH, body);
        assert_eq!(check(&wrong_key, body), 401);
    }

    #[test]
    fn a_signed_retire_passes_and_an_admin_token_is_needed_without_one() {
        let policy = with_secret();
        let path = "/admin/retire/n3";
        let good = signed(SECRET, "POST", path, b"");
        assert!(policy.wants_signed_write(&Method::POST, path, &good));
        assert_eq!(
            status(policy.check_signed_write(&Method::POST, path, &good, b"")),
            200
        );
        let as_ = |token: &str| headers(&[(header::AUTHORIZATION, &format!("Bearer {token}"))]);
        let check = |headers: &HeaderMap| status(policy.check(&Method::POST, path, None, headers));
        assert_eq!(check(&as_(ADMIN)), 200);
        assert_eq!(check(&as_(WRITER)), 403);
    }

    #[test]
    fn a_signature_lets_no_other_write_through() {
        let policy = with_secret();
        for path in ["/increment", "/counters/a/increment", "/admin/partition"] {
            let headers = signed(SECRET, "POST", path, b"");
            assert!(!policy.wants_signed_write(&Method::POST, path, &headers));
            let got = status(policy.check(&Method::POST, path, None, &headers));
            assert_eq!(got, 401, "{path}");
        }
        // The batch route itself still takes a write token, and refuses a reader's.
        let as_ = |token: &str| headers(&[(header::AUTHORIZATION, &format!("Bearer {token}"))]);
        let check =
            |headers: &HeaderMap| status(policy.check(&Method::POST, BATCH_PATH, None, headers));
        assert_eq!(check(&as_(WRITER)), 200);
        assert_eq!(check(&as_(READER)), 403);
        assert_eq!(check(&HeaderMap::new()), 401);
        // Without a tokens file there is nothing to prove.
        let open = AccessPolicy::default();
        assert!(!open.wants_signed_write(
            &Method::POST,
            BATCH_PATH,
            &signed(SECRET, "POST", BATCH_PATH, b"")
        ));
    }
}
