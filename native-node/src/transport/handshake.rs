//! Connection set-up: each side introduces itself inside a Noise handshake
//! keyed by the cluster secret ([`super::noise`]).
//!
//! ```text
//! dialer → acceptor   noise msg 1 (e, psk) + encrypted Hello { version, cluster, member, actor, retired }
//! acceptor → dialer   noise msg 2 (e, ee)  + encrypted Hello { …, refused }
//! ```
//!
//! Each side then judges the other ([`Retirement::judge`]): the copy of a
//! retired actor is refused (the acceptor tells the dialer why in
//! `refused`), and a node that finds itself stale stops. Both happen before
//! any data flows.
//!
//! Only a holder of the secret can write a first message the acceptor can
//! read, or an answer the dialer can read. The `Hello`s are part of the
//! handshake transcript, so the id and addresses each side announces are the
//! ones the session is bound to: a member record about the peer itself is
//! taken only from its own `Hello` or frames of this session.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Connection, RawFramed};
use super::noise::{GossipKeys, Initiator, Responder};
use super::TransportError;
use tally_protocol::clock::{now_ms, skew_ms};

use crate::forgotten::{Forgotten, ForgottenNode, PeerData};
use crate::protocol::{MemberRecord, PROTOCOL_VERSION};
use crate::retirement::{PeerWord, Refusal, RetiredActor, Retirement};

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
    /// The CRDT actor the sender writes as.
    pub actor: String,
    /// The newest retired actors the sender knows of ([`crate::retirement`]).
    pub retired: Vec<RetiredActor>,
    /// When the sender's data directory was created (ms since the epoch).
    pub created_ms: u64,
    /// The newest members the sender forgot ([`crate::forgotten`]).
    pub forgotten: Vec<ForgottenNode>,
    /// The sender's clock when it sent this (ms since the epoch): peers
    /// further apart than `--max-clock-skew` do not connect.
    pub clock_ms: u64,
    /// Only from an acceptor: why it refuses the dialer.
    pub refused: Option<String>,
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
    /// The actor this node writes as, and the retired set it guards.
    pub retirement: Arc<Retirement>,
    /// The members this node forgot, and when its data directory was created.
    pub forgotten: Arc<Forgotten>,
    /// How far a peer's clock may be from ours (`--max-clock-skew`).
    pub max_clock_skew_ms: u64,
}

/// Dials done: runs the dialer's side of the handshake over `stream`.
pub async fn dial<S>(stream: S, me: &PeerIdentity) -> Result<(Connection<S>, Hello), TransportError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    timed(async {
        let mut raw = RawFramed::new(stream, me.max_frame);
        let (initiator, first) = Initiator::start(&me.keys, &encode(&hello(me, None)))?;
        let sent_ms = now_ms();
        raw.send_raw(Bytes::from(first)).await?;
        let answer = raw.recv_raw(HANDSHAKE_TIMEOUT).await?;
        let answered_ms = now_ms();
        let (theirs, session) = initiator.finish(&answer)?;
        let theirs = check_hello(&theirs, me)?;
        check_clock(&theirs, me.max_clock_skew_ms, sent_ms..=answered_ms)?;
        if let Some(reason) = &theirs.refused {
            return Err(TransportError::RefusedUs(format!(
                "node {} refuses this node: {reason}",
                theirs.member.id
            )));
        }
        match judge(me, &theirs) {
            Ok(()) => {}
            Err(Refusal::Peer(reason)) => return Err(TransportError::Incompatible(reason)),
            Err(Refusal::Us(reason)) => return Err(TransportError::RefusedUs(reason)),
        }
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
        let judged = judge(me, &theirs);
        let refused = match &judged {
            Err(Refusal::Peer(reason)) => Some(reason.clone()),
            _ => None,
        };
        let (answer, session) = responder.answer(&encode(&hello(me, refused)))?;
        raw.send_raw(Bytes::from(answer)).await?;
        // The clock is judged by the dialer, which alone can bound the
        // delay of the exchange (the answer carries our clock).
        match judged {
            Ok(()) => Ok((Connection::new(raw, session, me.idle_timeout), theirs)),
            Err(Refusal::Peer(reason)) => Err(TransportError::Incompatible(reason)),
            Err(Refusal::Us(reason)) => Err(TransportError::RefusedUs(reason)),
        }
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

fn hello(me: &PeerIdentity, refused: Option<String>) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        cluster: me.cluster.clone(),
        member: me.member.clone(),
        actor: me.retirement.actor(),
        retired: me.retirement.for_hello(),
        created_ms: me.forgotten.created_ms(),
        forgotten: me.forgotten.listed(),
        clock_ms: now_ms(),
        refused,
    }
}

/// Refuses (as the dialer) a peer whose clock is further from ours than
/// the cluster allows: stamps it makes (removal marks, keyed writes,
/// expiries) would win or age wrongly everywhere. The peer read its clock
/// between our sending and our receiving its answer (`exchange`, on our
/// clock), so only its distance from that span counts: a slow exchange
/// (a busy node) is not taken for skew. Neither side stops: the node whose
/// clock is wrong is refused by every peer it dials and that dials it.
fn check_clock(
    theirs: &Hello,
    max_skew_ms: u64,
    exchange: std::ops::RangeInclusive<u64>,
) -> Result<(), TransportError> {
    let nearest = theirs.clock_ms.clamp(*exchange.start(), *exchange.end());
    let skew = skew_ms(nearest, theirs.clock_ms);
    if skew > max_skew_ms {
        return Err(TransportError::Incompatible(format!(
            "the clock of node {} is {skew} ms away from ours, more than the {max_skew_ms} ms the cluster allows (--max-clock-skew); fix the clock that is wrong (NTP)",
            theirs.member.id
        )));
    }
    Ok(())
}

/// Whether the peer's data may meet ours: neither a forgotten member's old
/// data nor a retired actor's copy, on either side.
fn judge(me: &PeerIdentity, theirs: &Hello) -> Result<(), Refusal> {
    me.forgotten.judge(PeerData {
        id: &theirs.member.id,
        created_ms: theirs.created_ms,
        forgotten: &theirs.forgotten,
    })?;
    me.retirement.judge(word(theirs))
}

fn word(hello: &Hello) -> PeerWord<'_> {
    PeerWord {
        id: &hello.member.id,
        actor: &hello.actor,
        retired: &hello.retired,
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
    use tally_protocol::clock::MAX_CLOCK_SKEW_MS;

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
            retirement: Retirement::for_actor(&format!("{id}~1")),
            forgotten: Arc::new(Forgotten::in_memory(id, 1)),
            max_clock_skew_ms: MAX_CLOCK_SKEW_MS,
        }
    }

    #[test]
    fn a_hello_with_the_most_retired_actors_of_the_longest_ids_fits_a_noise_message() {
        let me = identity(&"n".repeat(64), "the-test-cluster-secret");
        let incarnation = "z".repeat(12);
        me.retirement.learn((0..1_000u64).map(|i| {
            let id = format!("{i:0>64}");
            (format!("{id}~{incarnation}"), u64::MAX - i)
        }));
        let bytes = encode(&hello(&me, Some("r".repeat(300))));
        assert!(bytes.len() < 60_000, "{} bytes", bytes.len());
    }

    #[tokio::test]
    async fn the_copy_of_a_retired_actor_is_refused_and_told_why() {
        let (left, right) = tokio::io::duplex(1 << 16);
        let (old, b) = (
            identity("old", "the-test-cluster-secret"),
            identity("b", "the-test-cluster-secret"),
        );
        b.retirement.learn([("old~1".to_owned(), 7)]);
        let (dialed, accepted) = tokio::join!(dial(left, &old), accept(right, &b));
        assert!(matches!(accepted, Err(TransportError::Incompatible(_))));
        let Err(TransportError::RefusedUs(reason)) = dialed else {
            panic!("the retired dialer was not told it is refused");
        };
        assert!(reason.contains("old~1 of node old was retired"), "{reason}");
    }

    #[tokio::test]
    async fn a_forgotten_members_old_data_is_refused_and_told_why() {
        let (left, right) = tokio::io::duplex(1 << 16);
        let (old, b) = (
            identity("old", "the-test-cluster-secret"),
            identity("b", "the-test-cluster-secret"),
        );
        b.forgotten.learn([("old".to_owned(), 7)]);
        let (dialed, accepted) = tokio::join!(dial(left, &old), accept(right, &b));
        assert!(matches!(accepted, Err(TransportError::Incompatible(_))));
        let Err(TransportError::RefusedUs(reason)) = dialed else {
            panic!("the forgotten dialer was not told it is refused");
        };
        assert!(
            reason.contains("node old was forgotten") && reason.contains("wipe"),
            "{reason}"
        );
    }

    #[test]
    fn a_peer_whose_clock_is_too_far_off_is_refused() {
        let me = identity("a", "the-test-cluster-secret");
        let mut theirs = hello(&me, None);
        let now = now_ms();
        let exchange = || now - 10..=now + 10;
        theirs.clock_ms = now;
        assert!(check_clock(&theirs, MAX_CLOCK_SKEW_MS, exchange()).is_ok());
        theirs.clock_ms = now + 60_000;
        assert!(
            check_clock(&theirs, MAX_CLOCK_SKEW_MS, now..=now + 59_000).is_ok(),
            "read during a slow exchange: no skew"
        );
        theirs.clock_ms = now - MAX_CLOCK_SKEW_MS - 5_000;
        let Err(TransportError::Incompatible(reason)) =
            check_clock(&theirs, MAX_CLOCK_SKEW_MS, exchange())
        else {
            panic!("a clock 35 s behind was accepted");
        };
        assert!(reason.contains("ms away from ours"), "{reason}");
        theirs.clock_ms = now + MAX_CLOCK_SKEW_MS + 5_000;
        assert!(
            check_clock(&theirs, MAX_CLOCK_SKEW_MS, exchange()).is_err(),
            "nor one ahead"
        );
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
