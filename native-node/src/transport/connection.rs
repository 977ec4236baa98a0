//! One authenticated connection, split into a reader and a writer half so a
//! peer can be read and written concurrently.
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::auth::{same, FrameSealer, FRAME_MAC_LEN};
use super::TransportError;
use crate::protocol::Message;

/// Time allowed to write one frame before the peer is considered stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

/// A framed stream before authentication: the handshake speaks over it.
pub(super) struct RawFramed<S> {
    pub reader: FramedRead<ReadHalf<S>, LengthDelimitedCodec>,
    pub writer: FramedWrite<WriteHalf<S>, LengthDelimitedCodec>,
    pub max_frame: usize,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> RawFramed<S> {
    pub fn new(stream: S, max_frame: usize) -> Self {
        let (read, write) = tokio::io::split(stream);
        Self {
            reader: FramedRead::new(read, codec(max_frame)),
            writer: FramedWrite::new(write, codec(max_frame)),
            max_frame,
        }
    }

    pub async fn send_raw(&mut self, body: Bytes) -> Result<(), TransportError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.writer.send(body)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(TransportError::Timeout("write")),
        }
    }

    pub async fn recv_raw(&mut self, idle: Duration) -> Result<BytesMut, TransportError> {
        match tokio::time::timeout(idle, self.reader.next()).await {
            Err(_) => Err(TransportError::Timeout("read")),
            Ok(None) => Err(TransportError::Closed),
            Ok(Some(frame)) => Ok(frame?),
        }
    }
}

/// An authenticated connection to one peer.
pub struct Connection<S> {
    /// Receives messages.
    pub reader: ConnectionReader<S>,
    /// Sends messages.
    pub writer: ConnectionWriter<S>,
}

/// The receiving half: checks every frame's MAC before decoding it.
pub struct ConnectionReader<S> {
    frames: FramedRead<ReadHalf<S>, LengthDelimitedCodec>,
    opener: FrameSealer,
    idle_timeout: Duration,
}

/// The sending half: seals every frame with a MAC.
pub struct ConnectionWriter<S> {
    frames: FramedWrite<WriteHalf<S>, LengthDelimitedCodec>,
    sealer: FrameSealer,
    max_frame: usize,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Connection<S> {
    pub(super) fn new(
        raw: RawFramed<S>,
        sealer: FrameSealer,
        opener: FrameSealer,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            reader: ConnectionReader {
                frames: raw.reader,
                opener,
                idle_timeout,
            },
            writer: ConnectionWriter {
                frames: raw.writer,
                sealer,
                max_frame: raw.max_frame,
            },
        }
    }
}

impl<S: AsyncRead + Send + 'static> ConnectionReader<S> {
    /// The next message, with the frame size it had on the wire.
    pub async fn recv(&mut self) -> Result<(Message, usize), TransportError> {
        let frame = match tokio::time::timeout(self.idle_timeout, self.frames.next()).await {
            Err(_) => return Err(TransportError::Timeout("read")),
            Ok(None) => return Err(TransportError::Closed),
            Ok(Some(frame)) => frame?,
        };
        let size = frame.len();
        if size < FRAME_MAC_LEN {
            return Err(TransportError::Malformed(format!(
                "frame of {size} bytes is shorter than its MAC"
            )));
        }
        let (body, tag) = frame.split_at(size - FRAME_MAC_LEN);
        if !same(&self.opener.next_mac(body), tag) {
            return Err(TransportError::Unauthenticated("bad frame MAC"));
        }
        let message =
            crdt_core::wire::decode(body).map_err(|e| TransportError::Malformed(e.to_string()))?;
        Ok((message, size))
    }
}

impl<S: AsyncWrite + Send + 'static> ConnectionWriter<S> {
    /// Sends one message; returns the frame size on the wire.
    pub async fn send(&mut self, message: &Message) -> Result<usize, TransportError> {
        let mut body = crdt_core::wire::encode(message);
        let tag = self.sealer.next_mac(&body);
        body.extend_from_slice(&tag);
        let size = body.len();
        if size > self.max_frame {
            // Checked before the codec sees it: its error would close the connection.
            return Err(TransportError::TooLarge(size));
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.frames.send(Bytes::from(body))).await {
            Ok(result) => result?,
            Err(_) => return Err(TransportError::Timeout("write")),
        }
        Ok(size)
    }
}
