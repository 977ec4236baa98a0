//! Connection set-up: both sides introduce themselves, then each proves it
//! holds the cluster key without revealing it.
//!
//! ```text
//! dialer → acceptor   Hello { version, cluster, member, nonce_d }
//! acceptor → dialer   Hello { version, cluster, member, nonce_a }
//! dialer → acceptor   HMAC(key, "tally/dialer"   ‖ nonce_d ‖ nonce_a ‖ cluster)
//! acceptor → dialer   HMAC(key, "tally/acceptor" ‖ nonce_a ‖ nonce_d ‖ cluster)
//! session key = HMAC(key, "tally/session" ‖ nonce_d ‖ nonce_a)
//! ```
//! Fresh random nonces on both sides make every session key new, so frames
//! recorded on one connection are worthless on another.
use std::time::Duration;

use bytes::Bytes;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::auth::{same, ClusterKey, FrameSealer};
use super::connection::{Connection, RawFramed};
use super::TransportError;
use crate::protocol::{MemberRecord, PROTOCOL_VERSION};

/// Time allowed for the whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The introduction each side sends first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Cluster name; peers of another cluster are refused.
    pub cluster: String,
    /// Who the sender is.
    pub member: MemberRecord,
    /// Fresh randomness for this connection.
    pub nonce: [u8; 16],
}

/// What the local side needs to run a handshake.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// Cluster name.
    pub cluster: String,
    /// Cluster key (possibly empty).
    pub key: ClusterKey,
    /// This node as a member.
    pub member: MemberRecord,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// A connection with no frame for this long is closed.
    pub idle_timeout: Duration,
}

/// Dials done: runs the dialer's side of the handshake over `stream`.
pub async fn dial<S>(stream: S, me: &PeerIdentity) -> Result<(Connection<S>, Hello), TransportError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    timed(async {
        let mut raw = RawFramed::new(stream, me.max_frame);
        let mine = hello(me);
        raw.send_raw(encode(&mine)).await?;
        let theirs = read_hello(&mut raw, me).await?;
        raw.send_raw(Bytes::copy_from_slice(&proof(
            me,
            b"tally/dialer",
            &mine.nonce,
            &theirs.nonce,
        )))
        .await?;
        let their_proof = raw.recv_raw(HANDSHAKE_TIMEOUT).await?;
        if !same(
            &their_proof,
            &proof(me, b"tally/acceptor", &theirs.nonce, &mine.nonce),
        ) {
            return Err(TransportError::Unauthenticated(
                "acceptor does not hold the cluster key",
            ));
        }
        let session = me.key.mac(&[b"tally/session", &mine.nonce, &theirs.nonce]);
        Ok((
            Connection::new(
                raw,
                FrameSealer::new(session, 0),
                FrameSealer::new(session, 1),
                me.idle_timeout,
            ),
            theirs,
        ))
    })
    .await
}

/// Runs the acceptor's side of the handshake over an inbound `stream`.
pub async fn accept<S>(
    stream: S,
    me: &PeerIdentity,
) -> Result<(Connection<S>, Hello), TransportError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    timed(async {
        let mut raw = RawFramed::new(stream, me.max_frame);
        let theirs = read_hello(&mut raw, me).await?;
        let mine = hello(me);
        raw.send_raw(encode(&mine)).await?;
        let their_proof = raw.recv_raw(HANDSHAKE_TIMEOUT).await?;
        if !same(
            &their_proof,
            &proof(me, b"tally/dialer", &theirs.nonce, &mine.nonce),
        ) {
            return Err(TransportError::Unauthenticated(
                "dialer does not hold the cluster key",
            ));
        }
        raw.send_raw(Bytes::copy_from_slice(&proof(
            me,
            b"tally/acceptor",
            &mine.nonce,
            &theirs.nonce,
        )))
        .await?;
        let session = me.key.mac(&[b"tally/session", &theirs.nonce, &mine.nonce]);
        Ok((
            Connection::new(
                raw,
                FrameSealer::new(session, 1),
                FrameSealer::new(session, 0),
                me.idle_timeout,
            ),
            theirs,
        ))
    })
    .await
}

async fn timed<T>(
    work: impl std::future::Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .map_err(|_| TransportError::Timeout("handshake"))?
}

fn hello(me: &PeerIdentity) -> Hello {
    let mut nonce = [0; 16];
    rand::thread_rng().fill_bytes(&mut nonce);
    Hello {
        version: PROTOCOL_VERSION,
        cluster: me.cluster.clone(),
        member: me.member.clone(),
        nonce,
    }
}

fn encode(hello: &Hello) -> Bytes {
    Bytes::from(crdt_core::wire::encode(hello))
}

async fn read_hello<S>(raw: &mut RawFramed<S>, me: &PeerIdentity) -> Result<Hello, TransportError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let frame = raw.recv_raw(HANDSHAKE_TIMEOUT).await?;
    let theirs: Hello = crdt_core::wire::decode(&frame)
        .map_err(|e| TransportError::Malformed(format!("hello: {e}")))?;
    if theirs.version != PROTOCOL_VERSION {
        return Err(TransportError::Incompatible(format!(
            "protocol version {} (ours is {PROTOCOL_VERSION})",
            theirs.version
        )));
    }
    if theirs.cluster != me.cluster {
        return Err(TransportError::Incompatible(format!(
            "cluster {:?} (ours is {:?})",
            theirs.cluster, me.cluster
        )));
    }
    if theirs.member.id == me.member.id {
        return Err(TransportError::Incompatible(
            "peer has our own node id".into(),
        ));
    }
    Ok(theirs)
}

fn proof(me: &PeerIdentity, role: &[u8], own_nonce: &[u8; 16], their_nonce: &[u8; 16]) -> [u8; 32] {
    me.key
        .mac(&[role, own_nonce, their_nonce, me.cluster.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Message;

    fn identity(id: &str, key: &[u8]) -> PeerIdentity {
        PeerIdentity {
            cluster: "test".into(),
            key: ClusterKey::new(key),
            member: MemberRecord {
                id: id.into(),
                gossip_addr: "a".into(),
                http_addr: "b".into(),
                heartbeat: 1,
            },
            max_frame: 1 << 16,
            idle_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn peers_with_the_same_key_exchange_messages() {
        let (left, right) = tokio::io::duplex(1 << 16);
        let (a, b) = (identity("a", b"k"), identity("b", b"k"));
        let (dialed, accepted) = tokio::join!(dial(left, &a), accept(right, &b));
        let (mut dialed, hello_b) = dialed.unwrap();
        let (mut accepted, hello_a) = accepted.unwrap();
        assert_eq!(
            (hello_a.member.id.as_str(), hello_b.member.id.as_str()),
            ("a", "b")
        );
        let ack = Message::Ack { members: vec![] };
        dialed.writer.send(&ack).await.unwrap();
        assert_eq!(accepted.reader.recv().await.unwrap().0, ack);
        accepted.writer.send(&ack).await.unwrap();
        assert_eq!(dialed.reader.recv().await.unwrap().0, ack);
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_not_sent_and_the_link_goes_on() {
        let (left, right) = tokio::io::duplex(1 << 16);
        let (a, b) = (identity("a", b"k"), identity("b", b"k"));
        let (dialed, accepted) = tokio::join!(dial(left, &a), accept(right, &b));
        let (mut dialed, _) = dialed.unwrap();
        let (mut accepted, _) = accepted.unwrap();
        let member = a.member.clone();
        let huge = Message::Ack {
            members: vec![member; (1 << 16) / 4],
        };
        assert!(matches!(
            dialed.writer.send(&huge).await,
            Err(TransportError::TooLarge(_))
        ));
        // The dropped message took no frame number: the next one still authenticates.
        let ack = Message::Ack { members: vec![] };
        dialed.writer.send(&ack).await.unwrap();
        assert_eq!(accepted.reader.recv().await.unwrap().0, ack);
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused_on_both_sides() {
        let (left, right) = tokio::io::duplex(1 << 16);
        let (a, b) = (identity("a", b"right"), identity("b", b"wrong"));
        let (dialed, accepted) = tokio::join!(dial(left, &a), accept(right, &b));
        assert!(dialed.is_err());
        assert!(matches!(accepted, Err(TransportError::Unauthenticated(_))));
    }
}
