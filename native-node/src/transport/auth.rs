//! HMAC-SHA256 proofs and per-frame MACs.
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of MAC appended to every frame (128 bits is plenty against forgery).
pub const FRAME_MAC_LEN: usize = 16;

/// The shared secret of a cluster. Without `--cluster-key` it is empty:
/// nodes still run the same handshake, so a keyed node rejects them.
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl ClusterKey {
    /// A key from the operator's secret (empty = unauthenticated cluster).
    pub fn new(secret: &[u8]) -> Self {
        Self(secret.to_vec())
    }

    /// True when no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// HMAC of the concatenated `parts` under this key.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        mac_with(&self.0, parts)
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// HMAC-SHA256 of the concatenated `parts`.
pub fn mac_with(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time comparison, so a forger learns nothing from timing.
pub fn same(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Seals and opens frames of one direction of one connection.
pub struct FrameSealer {
    session_key: [u8; 32],
    direction: u8,
    counter: u64,
}

impl FrameSealer {
    /// A sealer for one direction (0 = dialer→acceptor, 1 = acceptor→dialer).
    pub fn new(session_key: [u8; 32], direction: u8) -> Self {
        Self {
            session_key,
            direction,
            counter: 0,
        }
    }

    /// The MAC for the next frame in this direction.
    pub fn next_mac(&mut self, body: &[u8]) -> [u8; FRAME_MAC_LEN] {
        let tag = mac_with(
            &self.session_key,
            &[&[self.direction], &self.counter.to_le_bytes(), body],
        );
        self.counter += 1;
        let mut short = [0; FRAME_MAC_LEN];
        short.copy_from_slice(&tag[..FRAME_MAC_LEN]);
        short
    }
}
