//! Connection set-up: each side introduces itself inside a Noise handshake
//! keyed by the cluster secret ([`super::noise`]).
//!
//! ```text
//! dialer → acceptor   noise msg 1 (e, psk) + encrypted Hello { version, cluster, member }
//! acceptor → dialer   noise msg 2 (e, ee)  + encrypted Hello { version, cluster, member }
//! ```
//!
//! Only a holder of the secret can write a first message the acceptor can
//! read, or an answer the dialer can read. The `Hello`s are part of the
//! handshake transcript, so the id and addresses each side announces are the
//! ones the session is bound to: a member record about the peer itself is
//! taken only from its own `Hello` or frames of this session.
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Connection, RawFramed};
use super::noise::{GossipKeys, Initiator, Responder};
use super::TransportError;
use crate::protocol::{MemberRecord, PROTOCOL_VERSION};

/// Time allowed for the whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The introduction each side sends, encrypted, in its handshake message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Cluster name; peers of another cluster are refused.
    pub cluster: String,
    /// Who the sender is.
    pub member: MemberRecord,
}

/// What the local side needs to run a handshake.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// Cluster name.
    pub cluster: String,
    /// The pre-shared keys derived from the cluster secret.
    pub keys: GossipKeys,
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
        let (initiator, first) = Initiator::start(&me.keys, &encode(&hello(me)))?;
        raw.send_raw(Bytes::from(first)).await?;
        let answer = raw.recv_raw(HANDSHAKE_TIMEOUT).await?;
        let (theirs, session) = initiator.finish(&answer)?;
        let theirs = check_hello(&theirs, me)?;
        Ok((Connection::new(raw, session, me.idle_timeout), theirs))
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
        let first = raw.recv_raw(HANDSHAKE_TIMEOUT).await?;
        let (responder, theirs) = Responder::read(&me.keys, &first)?;
        let theirs = check_hello(&theirs, me)?;
        let (answer, session) = responder.answer(&encode(&hello(me)))?;
        raw.send_raw(Bytes::from(answer)).await?;
        Ok((Connection::new(raw, session, me.idle_timeout), theirs))
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
    Hello {
        version: PROTOCOL_VERSION,
        cluster: me.cluster.clone(),
        member: me.member.clone(),
    }
}

fn encode(hello: &Hello) -> Vec<u8> {
    crdt_core::wire::encode(hello)
}

/// Decodes the peer's (already authenticated) hello and checks it fits us.
fn check_hello(bytes: &[u8], me: &PeerIdentity) -> Result<Hello, TransportError> {
    let theirs: Hello = crdt_core::wire::decode(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Message;

    fn identity(id: &str, secret: &str) -> PeerIdentity {
        let keys = tally_protocol::cluster_key::ClusterKeys::parse(secret).unwrap();
        PeerIdentity {
            cluster: "test".into(),
            keys: GossipKeys::from_cluster(&keys),
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
        let (a, b) = (
            identity("a", "the-test-cluster-secret"),
            identity("b", "the-test-cluster-secret"),
        );
        let (dialed, accepted) = tokio::join!(dial(left, &a), accept(right, &b));
        let (mut dialed, hello_b) = dialed.unwrap();
        let (mut accepted, hello_a) = accepted.unwrap();
        assert_eq!(
            (hello_a.member.id.as_str(), hello_b.member.id.as_str()),
            ("a", "b")
        );
        let ack = Message::Ack;
        dialed.writer.send(&ack).await.unwrap();
        assert_eq!(accepted.reader.recv().await.unwrap().0, ack);
        accepted.writer.send(&ack).await.unwrap();
        assert_eq!(dialed.reader.recv().await.unwrap().0, ack);
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_not_sent_and_the_link_goes_on() {
        let (left, right) = tokio::io::duplex(1 << 16);
        let (a, b) = (
            identity("a", "the-test-cluster-secret"),
            identity("b", "the-test-cluster-secret"),
        );
        let (dialed, accepted) = tokio::join!(dial(left, &a), accept(right, &b));
        let (mut dialed, _) = dialed.unwrap();
        let (mut accepted, _) = accepted.unwrap();
        let member = a.member.clone();
        let record = crate::protocol::MemberUpdate {
            record: member,
            status: crate::protocol::Status::Alive,
        };
        let huge = Message::Members {
            records: vec![record; (1 << 16) / 4],
        };
        assert!(matches!(
            dialed.writer.send(&huge).await,
            Err(TransportError::TooLarge(_))
        ));
        // The dropped message took no frame number: the next one still authenticates.
        let ack = Message::Ack;
        dialed.writer.send(&ack).await.unwrap();
        assert_eq!(accepted.reader.recv().await.unwrap().0, ack);
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused_on_both_sides() {
        let (left, right) = tokio::io::duplex(1 << 16);
        let (a, b) = (
            identity("a", "the-right-cluster-secret"),
            identity("b", "the-wrong-cluster-secret"),
        );
        let (dialed, accepted) = tokio::join!(dial(left, &a), accept(right, &b));
        assert!(dialed.is_err());
        assert!(matches!(accepted, Err(TransportError::Unauthenticated(_))));
    }
}
