//! Encrypted, mutually authenticated, framed, persistent connections
//! between peers.
//!
//! A connection is a TCP stream carrying length-prefixed frames (u32
//! big-endian length, then the body) of at most `max_frame` bytes. It opens
//! with a Noise handshake keyed by the cluster secret ([`handshake`],
//! [`noise`]) in which both sides introduce themselves; after that every
//! frame body is `postcard(Message)` encrypted and authenticated with the
//! session's keys and per-direction counters, so frames cannot be read,
//! forged, replayed or reordered. Anything malformed (a frame over `max_frame` included) closes
//! that one connection as [`TransportError::Malformed`]; the node goes on.
//!
//! The [`Network`] trait lets the same code run over real TCP or over a
//! deterministic simulated network (turmoil) in tests.
mod connection;
mod handshake;
mod noise;

use std::{future::Future, io, net::SocketAddr};

use tokio::io::{AsyncRead, AsyncWrite};

pub use connection::{Connection, ConnectionReader, ConnectionWriter};
pub use handshake::{accept, dial, Hello, PeerIdentity};
pub use noise::GossipKeys;

/// Default largest frame: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// What went wrong on one connection.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer took too long.
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// A message of ours encodes larger than the frame limit; it was not sent.
    #[error("message of {0} bytes exceeds the frame limit")]
    TooLarge(usize),
    /// A frame or handshake field that does not decode, a length prefix
    /// over the frame limit, or a stream that ends inside a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The peer could not prove it holds the cluster key, or a frame's MAC is wrong.
    #[error("authentication failed: {0}")]
    Unauthenticated(&'static str),
    /// The peer speaks another protocol version or belongs to another cluster.
    #[error("incompatible peer: {0}")]
    Incompatible(String),
    /// This node may not take part any more: a peer refused it as the copy
    /// of a retired actor, or it found its own data older than the
    /// cluster's ([`crate::retirement`]). The node stops.
    #[error("{0}")]
    RefusedUs(String),
}

/// A way to open and accept byte streams: real TCP, or a simulation.
pub trait Network: Clone + Send + Sync + 'static {
    /// A connected stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A bound listener.
    type Listener: Send + Sync + 'static;

    /// Connects to `addr` (`host:port`).
    fn connect(&self, addr: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// Waits for the next inbound stream.
    fn accept(
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
}

/// The real network: tokio TCP with `TCP_NODELAY` (gossip frames are small and latency-bound).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

impl Network for Tcp {
    type Stream = tokio::net::TcpStream;
    type Listener = tokio::net::TcpListener;

    async fn connect(&self, addr: &str) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }
}
