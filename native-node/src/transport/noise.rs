//! The cryptographic channel between two nodes: a Noise handshake keyed by
//! the cluster secret, then authenticated encryption of every frame.
//!
//! Pattern `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` (the Noise Protocol
//! Framework, rev. 34, via the `snow` crate): both sides send an ephemeral
//! X25519 key, the pre-shared key (derived from the cluster secret, see
//! `tally_protocol::cluster_key`) is mixed in before anything else, so
//!
//! * only a holder of the secret can produce a first message the acceptor
//!   decrypts, or an answer the dialer decrypts (mutual authentication);
//! * each side's `Hello` rides encrypted inside its handshake message and is
//!   part of the transcript hash, so nobody can alter or swap an
//!   introduction (identities and addresses are bound to the session);
//! * fresh ephemeral keys give every connection new session keys (forward
//!   secrecy against a later leak of the secret, for recorded traffic).
//!
//! After the handshake a frame body is one or more Noise transport messages
//! (ChaCha20-Poly1305, ≤ 65,535 bytes each, 16-byte tag) with implicit,
//! per-direction counters as nonces: a frame cannot be read, forged,
//! replayed, reordered or dropped without the peer noticing.
//!
//! Several secrets are accepted during a rotation: the dialer uses the
//! current one; the acceptor tries each accepted one on the first message.
use std::sync::Arc;

use snow::{HandshakeState, StatelessTransportState};
use tally_protocol::cluster_key::{ClusterKeys, Purpose};

use super::TransportError;

const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into every handshake: a peer speaking anything else fails it.
const PROLOGUE: &[u8] = b"tally gossip / noise v2";
/// Largest Noise message, tag included.
const NOISE_MAX: usize = 65_535;
/// Bytes of authentication tag per Noise message.
pub const TAG_LEN: usize = 16;
/// Plaintext carried per Noise message.
const CHUNK: usize = NOISE_MAX - TAG_LEN;
/// An ephemeral public key in a handshake message.
const EPHEMERAL_LEN: usize = 32;

/// The pre-shared keys this node accepts, the current one first.
#[derive(Clone)]
pub struct GossipKeys {
    accepted: Vec<[u8; 32]>,
}

impl GossipKeys {
    /// The gossip keys of a cluster secret.
    pub fn from_cluster(keys: &ClusterKeys) -> Self {
        Self {
            accepted: keys.accepted(Purpose::GossipPsk).collect(),
        }
    }

    /// `--insecure`: a well-known all-zero key. Traffic is still encrypted
    /// against passive listeners, but anyone can join, and nodes with a real
    /// secret refuse such peers.
    pub fn insecure() -> Self {
        Self {
            accepted: vec![[0; 32]],
        }
    }

    fn current(&self) -> &[u8; 32] {
        &self.accepted[0]
    }
}

impl std::fmt::Debug for GossipKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GossipKeys({} accepted, redacted)", self.accepted.len())
    }
}

fn handshake(psk: &[u8; 32], initiator: bool) -> Result<HandshakeState, TransportError> {
    let params = PATTERN.parse().map_err(noise_error)?;
    let builder = snow::Builder::new(params)
        .prologue(PROLOGUE)
        .map_err(noise_error)?
        .psk(0, psk)
        .map_err(noise_error)?;
    let state = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    };
    state.map_err(noise_error)
}

fn noise_error(error: snow::Error) -> TransportError {
    TransportError::Malformed(format!("noise: {error}"))
}

/// The dialer's side, before the acceptor answered.
pub struct Initiator(HandshakeState);

impl Initiator {
    /// Starts a handshake with the current key; returns the first message,
    /// which carries `hello` encrypted.
    pub fn start(keys: &GossipKeys, hello: &[u8]) -> Result<(Self, Vec<u8>), TransportError> {
        let mut state = handshake(keys.current(), true)?;
        let mut message = vec![0; EPHEMERAL_LEN + hello.len() + TAG_LEN];
        let len = state
            .write_message(hello, &mut message)
            .map_err(noise_error)?;
        message.truncate(len);
        Ok((Self(state), message))
    }

    /// Reads the acceptor's answer; returns its hello and the session.
    pub fn finish(mut self, answer: &[u8]) -> Result<(Vec<u8>, Session), TransportError> {
        let mut hello = vec![0; answer.len()];
        let len = self.0.read_message(answer, &mut hello).map_err(|_| {
            TransportError::Unauthenticated("acceptor does not hold the cluster key")
        })?;
        hello.truncate(len);
        Ok((hello, Session::new(self.0)?))
    }
}

/// The acceptor's side, after reading the first message.
pub struct Responder(HandshakeState);

impl Responder {
    /// Reads the dialer's first message with each accepted key in turn;
    /// returns the dialer's hello.
    pub fn read(keys: &GossipKeys, first: &[u8]) -> Result<(Self, Vec<u8>), TransportError> {
        for psk in &keys.accepted {
            let mut state = handshake(psk, false)?;
            let mut hello = vec![0; first.len()];
            if let Ok(len) = state.read_message(first, &mut hello) {
                hello.truncate(len);
                return Ok((Self(state), hello));
            }
        }
        Err(TransportError::Unauthenticated(
            "dialer does not hold the cluster key",
        ))
    }

    /// Answers with our `hello`; returns the answer and the session.
    pub fn answer(mut self, hello: &[u8]) -> Result<(Vec<u8>, Session), TransportError> {
        let mut message = vec![0; EPHEMERAL_LEN + hello.len() + TAG_LEN];
        let len = self
            .0
            .write_message(hello, &mut message)
            .map_err(noise_error)?;
        message.truncate(len);
        Ok((message, Session::new(self.0)?))
    }
}

/// The keys of an established session, shared by the two halves of a
/// connection (each keeps its own direction's counter).
#[derive(Clone)]
pub struct Session(Arc<StatelessTransportState>);

impl Session {
    fn new(state: HandshakeState) -> Result<Self, TransportError> {
        let transport = state.into_stateless_transport_mode().map_err(noise_error)?;
        Ok(Self(Arc::new(transport)))
    }

    /// A sealer for our direction.
    pub fn sealer(&self) -> Sealer {
        Sealer {
            session: self.clone(),
            next_nonce: 0,
        }
    }

    /// An opener for the peer's direction.
    pub fn opener(&self) -> Opener {
        Opener {
            session: self.clone(),
            next_nonce: 0,
        }
    }
}

/// Bytes on the wire for `plaintext` bytes of frame body.
pub fn sealed_len(plaintext: usize) -> usize {
    let messages = plaintext.div_ceil(CHUNK).max(1);
    plaintext + messages * TAG_LEN
}

/// Encrypts frames in our direction.
pub struct Sealer {
    session: Session,
    next_nonce: u64,
}

impl Sealer {
    /// `plaintext` as one frame body: Noise messages of at most 65,535 bytes.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, TransportError> {
        let mut sealed = vec![0; sealed_len(plaintext.len())];
        let mut written = 0;
        let mut chunks: Vec<&[u8]> = plaintext.chunks(CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let end = written + chunk.len() + TAG_LEN;
            let len = self
                .session
                .0
                .write_message(self.next_nonce, chunk, &mut sealed[written..end])
                .map_err(noise_error)?;
            self.next_nonce += 1;
            written += len;
        }
        sealed.truncate(written);
        Ok(sealed)
    }
}

/// Decrypts and checks frames from the peer.
pub struct Opener {
    session: Session,
    next_nonce: u64,
}

impl Opener {
    /// The plaintext of one frame body; any tampering, replay, reordering
    /// or truncation fails.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, TransportError> {
        if sealed.len() < TAG_LEN {
            return Err(TransportError::Malformed(format!(
                "frame of {} bytes is shorter than its tag",
                sealed.len()
            )));
        }
        let mut plaintext = vec![0; sealed.len()];
        let mut read = 0;
        for message in sealed.chunks(NOISE_MAX) {
            let len = self
                .session
                .0
                .read_message(self.next_nonce, message, &mut plaintext[read..])
                .map_err(|_| TransportError::Unauthenticated("frame fails decryption"))?;
            self.next_nonce += 1;
            read += len;
        }
        plaintext.truncate(read);
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> GossipKeys {
        GossipKeys::from_cluster(&ClusterKeys::parse(secret).unwrap())
    }

    fn connect(
        dialer: &GossipKeys,
        acceptor: &GossipKeys,
    ) -> Result<(Session, Session), TransportError> {
        let (initiator, first) = Initiator::start(dialer, b"dialer hello")?;
        let (responder, hello) = Responder::read(acceptor, &first)?;
        assert_eq!(hello, b"dialer hello");
        let (answer, accepted) = responder.answer(b"acceptor hello")?;
        let (hello, dialed) = initiator.finish(&answer)?;
        assert_eq!(hello, b"acceptor hello");
        Ok((dialed, accepted))
    }

    #[test]
    fn frames_of_any_size_round_trip_in_order() {
        let secret = keys("noise-test-cluster-secret");
        let (dialed, accepted) = connect(&secret, &secret).unwrap();
        let (mut sealer, mut opener) = (dialed.sealer(), accepted.opener());
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7, 1 << 20] {
            let plaintext: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let sealed = sealer.seal(&plaintext).unwrap();
            assert_eq!(sealed.len(), sealed_len(size));
            assert_eq!(opener.open(&sealed).unwrap(), plaintext, "size {size}");
        }
    }

    #[test]
    fn a_wrong_secret_fails_the_handshake() {
        let result = connect(
            &keys("noise-test-cluster-secret"),
            &keys("another-cluster-secret!!"),
        );
        assert!(matches!(result, Err(TransportError::Unauthenticated(_))));
    }

    #[test]
    fn during_a_rotation_either_secret_is_accepted() {
        let (old, new) = ("the-old-cluster-secret", "the-new-cluster-secret");
        let rotating =
            GossipKeys::from_cluster(&ClusterKeys::parse(&format!("{new},{old}")).unwrap());
        assert!(connect(&keys(old), &rotating).is_ok(), "old dialer");
        assert!(
            connect(&rotating, &keys(old)).is_err(),
            "new dialer, old-only acceptor"
        );
        assert!(connect(&rotating, &keys(new)).is_ok());
    }

    #[test]
    fn a_tampered_hello_fails_the_handshake() {
        let secret = keys("noise-test-cluster-secret");
        let (_, mut first) = Initiator::start(&secret, b"id n1").unwrap();
        let last = first.len() - 1;
        first[last] ^= 1;
        assert!(Responder::read(&secret, &first).is_err());
    }

    #[test]
    fn tampered_replayed_or_reordered_frames_are_refused() {
        let secret = keys("noise-test-cluster-secret");
        let (dialed, accepted) = connect(&secret, &secret).unwrap();
        let mut sealer = dialed.sealer();
        let (one, two) = (sealer.seal(b"one").unwrap(), sealer.seal(b"two").unwrap());
        let mut tampered = one.clone();
        tampered[0] ^= 1;
        assert!(accepted.opener().open(&tampered).is_err(), "tampered");
        assert!(accepted.opener().open(&two).is_err(), "reordered");
        let mut opener = accepted.opener();
        opener.open(&one).unwrap();
        assert!(opener.open(&one).is_err(), "replayed");
    }

    #[test]
    fn sealed_frames_hide_their_contents() {
        let secret = keys("noise-test-cluster-secret");
        let (dialed, _) = connect(&secret, &secret).unwrap();
        let plaintext = b"counter-name-visible-in-clear-text 12345";
        let sealed = dialed.sealer().seal(plaintext).unwrap();
        assert!(!sealed.windows(12).any(|window| window == &plaintext[..12]));
    }
}
