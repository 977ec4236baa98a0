//! The one HTTP server loop of every Tally process (node, discovery,
//! gateway), in place of a bare `axum::serve`: every resource a client can
//! hold is bounded.
//!
//! * **Connections**: at most [`ServerLimits::max_connections`] at once
//!   (a semaphore); one more is closed as soon as it is accepted and counted
//!   in [`ConnectionStats::refused`]. A connection's slot lives as long as
//!   its socket, WebSocket upgrades included.
//! * **Request headers** must arrive within
//!   [`ServerLimits::header_timeout`] (hyper's `header_read_timeout`): the
//!   timer starts when the connection is opened and again each time a
//!   keep-alive connection waits for its next request, so it is also the
//!   idle keep-alive timeout between requests (slowloris).
//! * **Request bodies** must arrive within [`ServerLimits::body_timeout`]
//!   of the headers: later, the request is answered `408` with
//!   `Connection: close`, whatever the handler made of the cut body.
//! * **Idle connections**: a connection that moves no byte in either
//!   direction for [`ServerLimits::idle_timeout`] is closed, even in the
//!   middle of a request (a client that stops reading its answer).
//! * **Shutdown**: when the `shutdown` future completes, no connection is
//!   accepted any more, idle connections close, and requests in flight
//!   finish (each still bounded by the limits above) before [`serve`]
//!   returns. Upgraded connections (WebSockets) are the handlers' own.
//!
//! HTTP/1.1 only, as before (axum is built without HTTP/2): hyper's
//! `http1` connection with upgrades, which is what hyper-util's
//! `auto::Builder::serve_connection_with_upgrades` runs after sniffing for
//! the HTTP/2 preface, minus that sniffing, which runs before the header
//! timer starts and has no deadline of its own.
//!
//! Handlers see the peer's address as [`ConnectInfo<SocketAddr>`] in the
//! request's extensions; [`PerIpLimit`] bounds what one address may hold.
use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::http_error::ApiError;

/// Connections a node or a gateway serves at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Connections a discovery server serves at once by default.
pub const DISCOVERY_MAX_CONNECTIONS: usize = 1_000;
/// Default time for a request's headers to arrive (and for a keep-alive
/// connection to start its next request).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time for a request's body to arrive, counted from its headers.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a connection may move no byte at all.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What one server lets its clients hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections at most (upgraded ones included); more are closed at once.
    pub max_connections: usize,
    /// Time for a request's headers to arrive; also the idle keep-alive
    /// time between requests.
    pub header_timeout: Duration,
    /// Time for a request's body to arrive after its headers (then 408).
    pub body_timeout: Duration,
    /// A connection moving no byte this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl ServerLimits {
    /// The defaults with another connection cap.
    pub fn with_max_connections(max_connections: usize) -> Self {
        Self {
            max_connections,
            ..Self::default()
        }
    }
}

/// Connection counts of one server, for metrics.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl ConnectionStats {
    /// Connections open now (upgraded WebSockets included).
    pub fn open(&self) -> u64 {
        self.open.load(Relaxed)
    }

    /// Connections accepted and served since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Relaxed)
    }

    /// Connections closed at once because the cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes, then lets requests in flight finish (see the module docs).
///
/// Only a failure to set up fails; errors accepting one connection (the
/// process out of file descriptors, a peer that reset) are logged and the
/// loop goes on.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    // Tells every connection to finish up; each holds a `done` receiver,
    // so the sender sees "closed" once every connection is gone.
    let (stop, stopping) = watch::channel(false);
    let (done, all_done) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut last_refusal_warning: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !is_per_connection(&error) {
                        // Out of file descriptors and the like: the queued
                        // connections wait, and so does the loop, briefly.
                        tracing::warn!(%error, "cannot accept an HTTP connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            stats.refused.fetch_add(1, Relaxed);
            let now = Instant::now();
            if last_refusal_warning.is_none_or(|at| now - at >= Duration::from_secs(10)) {
                last_refusal_warning = Some(now);
                tracing::warn!(
                    max = limits.max_connections,
                    refused_so_far = stats.refused(),
                    "HTTP connection cap reached: closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Relaxed);
        let connection = Connection {
            stream,
            peer,
            slot: Slot::new(slot, Arc::clone(&stats)),
        };
        let task = connection.serve(
            builder.clone(),
            router.clone(),
            limits.clone(),
            stopping.clone(),
            all_done.clone(),
        );
        tokio::spawn(task);
    }
    drop(listener);
    drop(all_done);
    let _ = stop.send(true);
    done.closed().await;
    Ok(())
}

/// Errors that concern one connection only (it was reset before we took it).
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// One accepted connection, before it is served.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
}

impl Connection {
    async fn serve(
        self,
        builder: hyper::server::conn::http1::Builder,
        router: Router,
        limits: ServerLimits,
        mut stopping: watch::Receiver<bool>,
        done: watch::Receiver<()>,
    ) {
        let Connection { stream, peer, slot } = self;
        let activity = Arc::new(Activity::new());
        let io = TrackedIo {
            stream,
            activity: Arc::clone(&activity),
            _slot: slot,
        };
        let body_timeout = limits.body_timeout;
        let service = hyper::service::service_fn(move |request| {
            answer(router.clone(), request, peer, body_timeout)
        });
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut connection = pin!(connection);
        let mut draining = false;
        loop {
            let idle_until = activity.last() + limits.idle_timeout;
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%peer, %error, "HTTP connection ended");
                    }
                    break;
                }
                _ = stopping.wait_for(|stop| *stop), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep_until(idle_until) => {
                    if activity.last() + limits.idle_timeout <= Instant::now() {
                        tracing::debug!(%peer, "closing an HTTP connection idle for too long");
                        break;
                    }
                }
            }
        }
        drop(done);
    }
}

/// Answers one request: the peer's address goes into the extensions, the
/// body gets its deadline, and a request whose body missed it gets 408.
async fn answer(
    router: Router,
    request: Request<Incoming>,
    peer: SocketAddr,
    body_timeout: Duration,
) -> Result<Response, Infallible> {
    let missed = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + body_timeout;
    let mut request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline,
            sleep: None,
            missed: Arc::clone(&missed),
        })
    });
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = router.oneshot(request).await?;
    if missed.load(Relaxed) {
        return Ok(body_too_slow(body_timeout));
    }
    Ok(response)
}

/// 408, and the connection closes after it (the rest of the body is unread).
fn body_too_slow(body_timeout: Duration) -> Response {
    let message = format!("request body not received within {body_timeout:?}");
    let mut response = ApiError::new(StatusCode::REQUEST_TIMEOUT, message).into_response();
    (response.headers_mut()).insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The error a body gives once its deadline passed.
#[derive(Debug)]
pub struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body not received in time")
    }
}

impl StdError for BodyTimeout {}

/// A request body that fails with [`BodyTimeout`] once `deadline` passes
/// before its end, and says so in `missed`.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Started on the first wait, so a body that is already complete costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    missed: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep =
            (this.sleep).get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        this.missed.store(true, Relaxed);
        Poll::Ready(Some(Err(Box::new(BodyTimeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Relaxed))
    }
}

/// A connection's slot under the cap; counted open while it lives.
struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnectionStats>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, stats: Arc<ConnectionStats>) -> Self {
        stats.open.fetch_add(1, Relaxed);
        Self {
            _permit: permit,
            stats,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
    }
}

/// The socket, noting every byte moved, and holding the connection's slot
/// for as long as it is open (through a WebSocket upgrade too).
struct TrackedIo {
    stream: TcpStream,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        read
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Bounds what one client address may hold at once (e.g. live streams),
/// besides a server's global cap. IPv6 addresses count per /64 (one
/// host's usual allotment); IPv4-mapped ones as their IPv4 address.
#[derive(Debug)]
pub struct PerIpLimit {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIpLimit {
    /// At most `max` held per address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::default(),
        })
    }

    /// The most one address may hold.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for `ip`, or `None` when it already holds `max`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = per_ip_key(ip);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key).or_insert(0);
        if *count >= self.max {
            if *count == 0 {
                held.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(IpSlot {
            limit: Arc::clone(self),
            key,
        })
    }

    /// Slots `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&per_ip_key(ip)).copied().unwrap_or(0)
    }
}

/// One slot of a [`PerIpLimit`], given back on drop.
#[derive(Debug)]
pub struct IpSlot {
    limit: Arc<PerIpLimit>,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut held = (self.limit.held.lock()).unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The address a client is counted under.
fn per_ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn app() -> Router {
        Router::new()
            .route("/", get(|| async { "hello" }))
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/echo",
                post(
                    |body: Result<Bytes, axum::extract::rejection::BytesRejection>| async move {
                        match body {
                            Ok(body) => (StatusCode::OK, body).into_response(),
                            Err(rejection) => ApiError::from(rejection).into_response(),
                        }
                    },
                ),
            )
    }

    struct Server {
        addr: SocketAddr,
        stats: Arc<ConnectionStats>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Server {
        async fn start(limits: ServerLimits) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stats = Arc::new(ConnectionStats::default());
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let shutdown = async move {
                let _ = stopped.await;
            };
            let task = tokio::spawn(serve(listener, app(), limits, Arc::clone(&stats), shutdown));
            Self {
                addr,
                stats,
                stop: Some(stop),
                task,
            }
        }

        async fn connect(&self) -> TcpStream {
            TcpStream::connect(self.addr).await.unwrap()
        }

        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            let stopped = tokio::time::timeout(Duration::from_secs(5), self.task).await;
            stopped.expect("the server stopped").unwrap().unwrap();
        }
    }

    /// Sends a request, reads the answer until the server closes or `within` passes.
    async fn exchange(stream: &mut TcpStream, request: &str, within: Duration) -> String {
        stream.write_all(request.as_bytes()).await.unwrap();
        read_until_closed(stream, within).await.0
    }

    /// What the server sent, and whether it closed the connection within `within`.
    async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&answer).into(), true),
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => return (String::from_utf8_lossy(&answer).into(), false),
            }
        }
    }

    fn short(header: u64, body: u64, idle: u64) -> ServerLimits {
        ServerLimits {
            max_connections: 100,
            header_timeout: Duration::from_millis(header),
            body_timeout: Duration::from_millis(body),
            idle_timeout: Duration::from_millis(idle),
        }
    }

    #[tokio::test]
    async fn requests_are_answered_and_see_the_peer_address() {
        let server = Server::start(ServerLimits::default()).await;
        let mut stream = server.connect().await;
        let local = stream.local_addr().unwrap();
        let request = "GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        let answer = exchange(&mut stream, request, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&local.to_string()), "{answer}");
        server.stop().await;
    }

    #[tokio::test]
    async fn partial_headers_and_silent_connections_are_closed_after_the_header_timeout() {
        let server = Server::start(short(300, 10_000, 10_000)).await;
        let mut silent = server.connect().await;
        let mut partial = server.connect().await;
        partial.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
        let started = Instant::now();
        for stream in [&mut silent, &mut partial] {
            let (_, closed) = read_until_closed(stream, Duration::from_secs(3)).await;
            assert!(closed, "a connection outlived the header timeout");
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
        // Meanwhile and after, a normal request is answered.
        let mut normal = server.connect().await;
        let answer = exchange(
            &mut normal,
            "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(3),
        )
        .await;
        assert!(answer.ends_with("hello"), "{answer}");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_keep_alive_connection_closes_when_its_next_request_does_not_come() {
        let server = Server::start(short(300, 10_000, 10_000)).await;
        let mut stream = server.connect().await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
        assert!(answer.ends_with("hello"), "{answer}");
        assert!(closed, "an idle keep-alive connection stayed open");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_slow_body_gets_408_and_the_connection_closes() {
        let server = Server::start(short(5_000, 300, 10_000)).await;
        let mut stream = server.connect().await;
        let started = Instant::now();
        let request = "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc";
        let answer = exchange(&mut stream, request, Duration::from_secs(3)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"error\""), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
        // A body that arrives in time is answered normally.
        let mut stream = server.connect().await;
        let request =
            "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc";
        let answer = exchange(&mut stream, request, Duration::from_secs(3)).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("abc"),
            "{answer}"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn a_connection_that_stops_reading_mid_request_is_closed_when_idle() {
        // Headers within their timeout, a body that never ends: the body
        // deadline is long, the idle timeout short.
        let server = Server::start(short(5_000, 10_000, 300)).await;
        let mut stream = server.connect().await;
        let request = "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nab";
        stream.write_all(request.as_bytes()).await.unwrap();
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
        assert!(closed, "an idle connection stayed open");
        server.stop().await;
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once_and_counted() {
        let limits = ServerLimits {
            max_connections: 3,
            ..ServerLimits::default()
        };
        let server = Server::start(limits).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(server.connect().await);
        }
        let open = || server.stats.open();
        for _ in 0..100 {
            if open() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(open(), 3);
        let mut extra = server.connect().await;
        let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(2)).await;
        assert!(closed && answer.is_empty(), "{answer:?}");
        assert_eq!(server.stats.refused(), 1);
        drop(held);
        // Service resumes once the held connections are gone.
        let mut ok = false;
        for _ in 0..100 {
            let mut stream = server.connect().await;
            let answer = exchange(
                &mut stream,
                "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                Duration::from_secs(2),
            )
            .await;
            if answer.ends_with("hello") {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "service did not resume under the cap");
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_lets_a_request_in_flight_finish() {
        let server = Server::start(ServerLimits::default()).await;
        let mut stream = server.connect().await;
        // The headers are in; the body is still coming when shutdown starts.
        let head = "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nab";
        stream.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Server {
            stop, task, addr, ..
        } = server;
        let _ = stop.unwrap().send(());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !task.is_finished(),
            "the server did not wait for the request"
        );
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
        let answer = exchange(&mut stream, "cde", Duration::from_secs(3)).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("abcde"),
            "{answer}"
        );
        let stopped = tokio::time::timeout(Duration::from_secs(3), task).await;
        stopped.expect("the server stopped").unwrap().unwrap();
    }

    #[tokio::test]
    async fn websocket_upgrades_work_and_outlive_the_http_timeouts() {
        use axum::extract::ws::{Message, WebSocketUpgrade};
        let echo = get(|upgrade: WebSocketUpgrade| async move {
            upgrade.on_upgrade(|mut socket| async move {
                while let Some(Ok(Message::Text(text))) = socket.recv().await {
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
            })
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ConnectionStats::default());
        let limits = short(200, 200, 200);
        let router = Router::new().route("/ws", echo);
        let pending = std::future::pending();
        tokio::spawn(serve(listener, router, limits, Arc::clone(&stats), pending));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request =
            "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
            sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 1024];
        let n = stream.read(&mut head).await.unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // Quiet for longer than every HTTP timeout: the stream is not HTTP any more.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(stats.open(), 1);
        // A masked text frame "hi"; the echo comes back unmasked.
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 2];
        frame.extend_from_slice(&mask);
        frame.extend(b"hi".iter().zip(mask).map(|(byte, key)| byte ^ key));
        stream.write_all(&frame).await.unwrap();
        let mut echo = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut echo))
            .await
            .expect("an echo")
            .unwrap();
        assert_eq!(echo, [0x81, 2, b'h', b'i']);
        drop(stream);
        for _ in 0..100 {
            if stats.open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            stats.open(),
            0,
            "a closed WebSocket kept its connection slot"
        );
    }

    #[test]
    fn per_ip_slots_are_bounded_and_given_back() {
        let limit = PerIpLimit::new(2);
        let one = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let two = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let a = limit.try_acquire(one).unwrap();
        let _b = limit.try_acquire(one).unwrap();
        assert!(limit.try_acquire(one).is_none());
        let _c = limit.try_acquire(two).unwrap();
        drop(a);
        assert_eq!(limit.held(one), 1);
        assert!(limit.try_acquire(one).is_some());
        let none = PerIpLimit::new(0);
        assert!(none.try_acquire(one).is_none());
        assert!(none.held.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_hosts_count_per_64_and_mapped_ipv4_as_ipv4() {
        let limit = PerIpLimit::new(1);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = limit.try_acquire(a).unwrap();
        assert!(limit.try_acquire(b).is_none());
        assert!(limit.try_acquire(other).is_some());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let _v4 = limit.try_acquire(v4).unwrap();
        assert!(limit.try_acquire(mapped).is_none());
    }
}
