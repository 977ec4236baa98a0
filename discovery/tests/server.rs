//! The real discovery server on 127.0.0.1:0, driven by the real client and by raw HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_discovery::{
    router, serve, ClientError, DiscoveryClient, DiscoveryState, HeartbeatOutcome, Member,
};
use tally_protocol::cluster_key::ClusterKeys;
use tally_protocol::request_auth::{self, unix_now_ms, RequestParts};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server; `stop` shuts it down gracefully and checks it exited cleanly.
struct TestServer {
    url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tally_discovery::DiscoveryError>>,
}

const CLUSTER_KEY: &str = "discovery-tests-cluster-key";

fn cluster_keys() -> ClusterKeys {
    ClusterKeys::parse(CLUSTER_KEY).unwrap()
}

/// A client of `urls` that signs with the tests' cluster key.
fn signed_client(urls: Vec<String>) -> DiscoveryClient {
    DiscoveryClient::new(urls)
        .unwrap()
        .signed_with(cluster_keys())
}

impl TestServer {
    /// A server that requires the tests' cluster key.
    async fn start(ttl: Duration) -> Self {
        Self::start_with(ttl, Some(cluster_keys())).await
    }

    async fn start_with(ttl: Duration, keys: Option<ClusterKeys>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, ttl, keys, async {
            let _ = stopped.await;
        }));
        Self { url, stop, task }
    }

    fn client(&self) -> DiscoveryClient {
        signed_client(vec![self.url.clone()])
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        exit.expect("server did not shut down").unwrap().unwrap();
    }
}

fn member(id: &str, port: u16) -> Member {
    Member {
        id: id.to_owned(),
        gossip_addr: SocketAddr::from(([127, 0, 0, 1], port)).into(),
        http_addr: SocketAddr::from(([127, 0, 0, 1], port + 1)).into(),
    }
}

/// A port nothing listens on: bind it, then let it go.
async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn post_raw(url: &str, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
    let request = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(body);
    send(request).await
}

/// A raw request signed with `keys`, as the client would sign it.
fn signed_request(
    keys: &ClusterKeys,
    method: reqwest::Method,
    url: &str,
    path: &str,
    body: &str,
) -> reqwest::RequestBuilder {
    let signed = RequestParts {
        method: method.as_str(),
        path_and_query: path,
        body: body.as_bytes(),
    };
    let nonce = rand::random::<[u8; 16]>();
    let headers = request_auth::sign(keys, signed, unix_now_ms(), nonce);
    let mut request = reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request
}

fn assert_json_error(status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "body: {body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "expected a JSON error, got {body}");
}

#[tokio::test]
async fn members_register_heartbeat_list_and_leave() {
    let server = TestServer::start(Duration::from_secs(5)).await;
    let client = server.client();

    client.register(&member("node-b", 7002)).await.unwrap();
    client.register(&member("node-a", 7000)).await.unwrap();
    assert_eq!(
        client.heartbeat("node-a").await.unwrap(),
        HeartbeatOutcome::Known
    );

    let peers = client.peers().await.unwrap();
    let ids: Vec<_> = peers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["node-a", "node-b"]);
    assert_eq!(peers[0].gossip_addr, member("node-a", 7000).gossip_addr);
    assert_eq!(peers[0].http_addr, member("node-a", 7000).http_addr);
    assert!(peers[0].last_seen_ms_ago < 5000);

    for probe in ["/health", "/ready"] {
        let (status, answer) =
            send(reqwest::Client::new().get(format!("{}{probe}", server.url))).await;
        assert_eq!(status, StatusCode::OK, "{probe}");
        assert_eq!(answer, json!({ "status": "ok", "members": 2 }), "{probe}");
    }

    client.deregister("node-b").await.unwrap();
    client.deregister("node-b").await.unwrap(); // idempotent for the client
    let delete_again = signed_request(
        &cluster_keys(),
        reqwest::Method::DELETE,
        &server.url,
        "/peers/node-b",
        "",
    );
    let (status, body) = send(delete_again).await;
    assert_json_error(status, &body, StatusCode::NOT_FOUND);
    assert_eq!(client.peers().await.unwrap().len(), 1);

    server.stop().await;
}

#[tokio::test]
async fn heartbeat_from_an_unknown_member_asks_it_to_register() {
    let server = TestServer::start(Duration::from_secs(5)).await;
    let client = server.client();

    assert_eq!(
        client.heartbeat("newcomer").await.unwrap(),
        HeartbeatOutcome::Unknown
    );
    client.register(&member("newcomer", 7000)).await.unwrap();
    assert_eq!(
        client.heartbeat("newcomer").await.unwrap(),
        HeartbeatOutcome::Known
    );

    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    // Open (`--insecure`), so raw requests reach the parsing being tested.
    let server = TestServer::start_with(Duration::from_secs(5), None).await;
    let url = server.url.as_str();
    let valid =
        json!({ "id": "n1", "gossip_addr": "127.0.0.1:7000", "http_addr": "127.0.0.1:7001" });
    let with = |field: &str, value: &str| {
        let mut body = valid.clone();
        body[field] = json!(value);
        body.to_string()
    };

    let bad_bodies = [
        ("/register", "{not json".to_owned()),
        ("/register", String::new()),
        ("/register", json!({ "id": "n1" }).to_string()),
        ("/register", with("id", "")),
        ("/register", with("gossip_addr", "localhost")),
        ("/register", with("http_addr", "127.0.0.1:99999")),
        ("/heartbeat", "[]".to_owned()),
        ("/heartbeat", json!({ "id": "" }).to_string()),
    ];
    for (path, body) in bad_bodies {
        let (status, answer) = post_raw(url, path, body.clone()).await;
        assert_json_error(status, &answer, StatusCode::BAD_REQUEST);
    }

    let oversized = format!(r#"{{"id":"{}"}}"#, "x".repeat(64 * 1024));
    let (status, answer) = post_raw(url, "/register", oversized).await;
    assert_json_error(status, &answer, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, answer) = send(reqwest::Client::new().get(format!("{url}/nope"))).await;
    assert_json_error(status, &answer, StatusCode::NOT_FOUND);

    let (status, answer) = send(reqwest::Client::new().get(format!("{url}/register"))).await;
    assert_json_error(status, &answer, StatusCode::METHOD_NOT_ALLOWED);
    let (status, answer) = send(reqwest::Client::new().post(format!("{url}/peers"))).await;
    assert_json_error(status, &answer, StatusCode::METHOD_NOT_ALLOWED);

    // None of that registered anything.
    let open_client = DiscoveryClient::new(vec![server.url.clone()]).unwrap();
    assert!(open_client.peers().await.unwrap().is_empty());
    // A well-formed body without a content type is still accepted.
    let plain = reqwest::Client::new()
        .post(format!("{url}/register"))
        .body(valid.to_string());
    assert_eq!(send(plain).await.0, StatusCode::OK);

    server.stop().await;
}

#[tokio::test]
async fn silent_members_expire_after_the_ttl() {
    let ttl = Duration::from_millis(300);
    let server = TestServer::start(ttl).await;
    let client = server.client();
    client.register(&member("quiet", 7000)).await.unwrap();
    assert_eq!(client.peers().await.unwrap().len(), 1);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !client.peers().await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "member never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client.heartbeat("quiet").await.unwrap(),
        HeartbeatOutcome::Unknown
    );

    server.stop().await;
}

#[tokio::test]
async fn client_fails_over_past_a_dead_server() {
    let server = TestServer::start(Duration::from_secs(5)).await;
    let client = signed_client(vec![closed_port_url().await, server.url.clone()]);

    client.register(&member("n1", 7000)).await.unwrap();
    assert_eq!(
        client.heartbeat("n1").await.unwrap(),
        HeartbeatOutcome::Known
    );
    assert_eq!(client.peers().await.unwrap().len(), 1);
    client.deregister("n1").await.unwrap();

    let nobody = DiscoveryClient::new(vec![closed_port_url().await]).unwrap();
    assert!(matches!(
        nobody.peers().await,
        Err(ClientError::Unreachable { .. })
    ));

    server.stop().await;
}

#[tokio::test]
async fn full_registry_answers_503_and_the_client_reports_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = DiscoveryState::with_capacity(Duration::from_secs(5), 1);
    let server = tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let client = DiscoveryClient::new(vec![url]).unwrap();

    client.register(&member("first", 7000)).await.unwrap();
    match client.register(&member("second", 7002)).await {
        Err(ClientError::Rejected {
            status, message, ..
        }) => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(message.contains("full"), "{message}");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // Members already in can still refresh themselves.
    client.register(&member("first", 7004)).await.unwrap();

    server.abort();
}

/// A server whose registry is full from the start: every registration gets a 503.
async fn full_server() -> (String, JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = DiscoveryState::with_capacity(Duration::from_secs(5), 0);
    let task = tokio::spawn(async move { axum::serve(listener, router(state)).await });
    (url, task)
}

#[tokio::test]
async fn client_sticks_to_the_server_that_answered_last() {
    let (full, full_task) = full_server().await;
    let server = TestServer::start(Duration::from_secs(5)).await;
    let client = signed_client(vec![full, server.url.clone()]);

    // The first server refuses (503), so the member lands on the second…
    client.register(&member("n1", 7000)).await.unwrap();
    // …and the heartbeat goes there too: asking the first one again would
    // answer "unknown" (404) and make the node re-register every period.
    assert_eq!(
        client.heartbeat("n1").await.unwrap(),
        HeartbeatOutcome::Known
    );
    assert_eq!(client.peers().await.unwrap().len(), 1);

    full_task.abort();
    server.stop().await;
}

#[tokio::test]
async fn deregister_removes_the_member_from_every_server() {
    let first = TestServer::start(Duration::from_secs(60)).await;
    let second = TestServer::start(Duration::from_secs(60)).await;
    // After a failover a member can be listed by both servers.
    first.client().register(&member("n1", 7000)).await.unwrap();
    second.client().register(&member("n1", 7000)).await.unwrap();
    second.client().register(&member("n2", 7002)).await.unwrap();

    let urls = vec![
        closed_port_url().await,
        first.url.clone(),
        second.url.clone(),
    ];
    signed_client(urls).deregister("n1").await.unwrap();
    assert!(first.client().peers().await.unwrap().is_empty());
    let left: Vec<String> = second
        .client()
        .peers()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(left, ["n2"]);

    let nobody = DiscoveryClient::new(vec![closed_port_url().await]).unwrap();
    assert!(matches!(
        nobody.deregister("n1").await,
        Err(ClientError::Unreachable { .. })
    ));

    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn unsigned_or_wrongly_signed_calls_get_401_and_change_nothing() {
    let server = TestServer::start(Duration::from_secs(60)).await;
    let url = server.url.as_str();
    server.client().register(&member("n1", 7000)).await.unwrap();
    let intruder = ClusterKeys::parse("not-the-cluster-key-at-all").unwrap();
    let register_fake = json!({
        "id": "n1", "gossip_addr": "127.0.0.1:6000", "http_addr": "127.0.0.1:6001"
    })
    .to_string();
    let heartbeat = json!({ "id": "n1" }).to_string();
    let attempts = [
        (reqwest::Method::POST, "/register", register_fake.as_str()),
        (reqwest::Method::POST, "/heartbeat", heartbeat.as_str()),
        (reqwest::Method::DELETE, "/peers/n1", ""),
        (reqwest::Method::GET, "/peers", ""),
    ];
    for (method, path, body) in attempts {
        let unsigned = reqwest::Client::new()
            .request(method.clone(), format!("{url}{path}"))
            .body(body.to_owned());
        let (status, answer) = send(unsigned).await;
        assert_json_error(status, &answer, StatusCode::UNAUTHORIZED);
        let wrong_key = signed_request(&intruder, method, url, path, body);
        let (status, answer) = send(wrong_key).await;
        assert_json_error(status, &answer, StatusCode::UNAUTHORIZED);
    }
    // n1 is still registered, at its own address: nobody took its id over.
    let peers = server.client().peers().await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].gossip_addr, member("n1", 7000).gossip_addr);
    // An unsigned client is told why.
    let unsigned_client = DiscoveryClient::new(vec![server.url.clone()]).unwrap();
    match unsigned_client.peers().await {
        Err(ClientError::Rejected {
            status, message, ..
        }) => {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(message.contains("cluster key"), "{message}");
        }
        other => panic!("expected 401, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_replayed_signed_request_is_refused() {
    let server = TestServer::start(Duration::from_secs(60)).await;
    let path = "/register";
    let body = json!({
        "id": "n1", "gossip_addr": "127.0.0.1:7000", "http_addr": "127.0.0.1:7001"
    })
    .to_string();
    let first = signed_request(
        &cluster_keys(),
        reqwest::Method::POST,
        &server.url,
        path,
        &body,
    );
    let replay = first.try_clone().unwrap();
    assert_eq!(send(first).await.0, StatusCode::OK);
    let (status, answer) = send(replay).await;
    assert_json_error(status, &answer, StatusCode::UNAUTHORIZED);
    assert!(
        answer["error"].as_str().unwrap().contains("replay"),
        "{answer}"
    );
    server.stop().await;
}
