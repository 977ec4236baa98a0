//! One authenticated connection, split into a reader and a writer half so a
//! peer can be read and written concurrently.
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

use super::noise::{self, Opener, Sealer, Session};
use super::TransportError;
use crate::protocol::Message;

/// Time allowed to write one frame before the peer is considered stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of the length prefix in front of every frame (u32, big-endian).
const LENGTH_PREFIX: usize = 4;

/// Frames on the wire: `u32 BE length ‖ body`, the body at most `max_frame`.
///
/// What a peer sends wrong comes out as [`TransportError::Malformed`], which
/// the node counts as a rejected frame: a length prefix over the limit (seen
/// as soon as the prefix arrives, before any of the body is buffered) and a
/// stream that ends part-way through a frame.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = TransportError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, TransportError> {
        let Some(prefix) = src.get(..LENGTH_PREFIX) else {
            return Ok(None);
        };
        let length = u32::from_be_bytes(prefix.try_into().expect("four bytes")) as usize;
        if length > self.max_frame {
            return Err(TransportError::Malformed(format!(
                "frame of {length} bytes exceeds the {}-byte limit",
                self.max_frame
            )));
        }
        if src.len() < LENGTH_PREFIX + length {
            src.reserve(LENGTH_PREFIX + length - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX);
        Ok(Some(src.split_to(length)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, TransportError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(TransportError::Malformed(format!(
                "stream ended {} bytes into a frame",
                src.len()
            ))),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = TransportError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), TransportError> {
        let length = u32::try_from(body.len())
            .ok()
            .filter(|&length| length as usize <= self.max_frame)
            .ok_or(TransportError::TooLarge(body.len()))?;
        dst.reserve(LENGTH_PREFIX + body.len());
        dst.put_u32(length);
        dst.extend_from_slice(&body);
        Ok(())
    }
}

/// A framed stream before authentication: the handshake speaks over it.
pub(super) struct RawFramed<S> {
    pub reader: FramedRead<ReadHalf<S>, FrameCodec>,
    pub writer: FramedWrite<WriteHalf<S>, FrameCodec>,
    pub max_frame: usize,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> RawFramed<S> {
    pub fn new(stream: S, max_frame: usize) -> Self {
        let (read, write) = tokio::io::split(stream);
        Self {
            reader: FramedRead::new(read, FrameCodec::new(max_frame)),
            writer: FramedWrite::new(write, FrameCodec::new(max_frame)),
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

/// The receiving half: decrypts and authenticates every frame before decoding it.
pub struct ConnectionReader<S> {
    frames: FramedRead<ReadHalf<S>, FrameCodec>,
    opener: Opener,
    idle_timeout: Duration,
}

/// The sending half: encrypts every frame.
pub struct ConnectionWriter<S> {
    frames: FramedWrite<WriteHalf<S>, FrameCodec>,
    sealer: Sealer,
    max_frame: usize,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Connection<S> {
    pub(super) fn new(raw: RawFramed<S>, session: Session, idle_timeout: Duration) -> Self {
        Self {
            reader: ConnectionReader {
                frames: raw.reader,
                opener: session.opener(),
                idle_timeout,
            },
            writer: ConnectionWriter {
                frames: raw.writer,
                sealer: session.sealer(),
                max_frame: raw.max_frame,
            },
        }
    }
}

impl<S: AsyncRead + Send + 'static> ConnectionReader<S> {
    /// Changes how long [`ConnectionReader::recv`] waits for a frame before
    /// giving up on the connection.
    pub fn set_idle_timeout(&mut self, idle_timeout: Duration) {
        self.idle_timeout = idle_timeout;
    }

    /// The next message, with the frame size it had on the wire.
    pub async fn recv(&mut self) -> Result<(Message, usize), TransportError> {
        let frame = match tokio::time::timeout(self.idle_timeout, self.frames.next()).await {
            Err(_) => return Err(TransportError::Timeout("read")),
            Ok(None) => return Err(TransportError::Closed),
            Ok(Some(frame)) => frame?,
        };
        let size = frame.len();
        let body = self.opener.open(&frame)?;
        let message =
            crdt_core::wire::decode(&body).map_err(|e| TransportError::Malformed(e.to_string()))?;
        Ok((message, size))
    }
}

impl<S: AsyncWrite + Send + 'static> ConnectionWriter<S> {
    /// Sends one message; returns the frame size on the wire.
    pub async fn send(&mut self, message: &Message) -> Result<usize, TransportError> {
        self.send_encoded(&crdt_core::wire::encode(message)).await
    }

    /// Sends a message already encoded with `crdt_core::wire` (one encoding
    /// can then serve many links); returns the frame size on the wire.
    pub async fn send_encoded(&mut self, body: &[u8]) -> Result<usize, TransportError> {
        let size = noise::sealed_len(body.len());
        if size > self.max_frame {
            // Checked before sealing: sealing takes nonces, and the peer
            // would then refuse every later frame of this link.
            return Err(TransportError::TooLarge(size));
        }
        let body = self.sealer.seal(body)?;
        match tokio::time::timeout(WRITE_TIMEOUT, self.frames.send(Bytes::from(body))).await {
            Ok(result) => result?,
            Err(_) => return Err(TransportError::Timeout("write")),
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(max_frame: usize, wire: &[u8]) -> Result<Vec<BytesMut>, TransportError> {
        let mut codec = FrameCodec::new(max_frame);
        let mut buffer = BytesMut::from(wire);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode_eof(&mut buffer)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn frames_round_trip_up_to_the_limit() {
        let mut codec = FrameCodec::new(8);
        let mut wire = BytesMut::new();
        for body in [&b""[..], b"abc", b"12345678"] {
            codec
                .encode(Bytes::copy_from_slice(body), &mut wire)
                .unwrap();
        }
        let frames = decode_all(8, &wire).unwrap();
        assert_eq!(frames, [&b""[..], b"abc", b"12345678"]);
        assert!(matches!(
            codec.encode(Bytes::from_static(b"123456789"), &mut BytesMut::new()),
            Err(TransportError::TooLarge(9))
        ));
    }

    #[test]
    fn a_length_prefix_over_the_limit_is_malformed_at_once() {
        let mut codec = FrameCodec::new(8);
        // The prefix alone is enough: no body is waited for or buffered.
        let mut buffer = BytesMut::from(&[0, 0, 0, 9][..]);
        assert!(matches!(
            codec.decode(&mut buffer),
            Err(TransportError::Malformed(_))
        ));
        assert!(matches!(
            decode_all(8, &[0xff, 0xff, 0xff, 0xff]),
            Err(TransportError::Malformed(_))
        ));
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_malformed() {
        assert!(matches!(
            decode_all(1024, &[0, 0, 0, 200, 1, 2, 3]),
            Err(TransportError::Malformed(_))
        ));
        assert!(matches!(
            decode_all(1024, &[0, 0]),
            Err(TransportError::Malformed(_))
        ));
        assert!(decode_all(1024, &[]).unwrap().is_empty());
    }
}
