//! The cluster secret: what every node, discovery server and gateway of one
//! cluster shares, and the keys derived from it.
//!
//! Operators give one or more secrets (`--cluster-key`, `TALLY_CLUSTER_KEY`,
//! `--cluster-key-file`; several separated by commas or newlines). The first
//! is *current*: everything this process sends is keyed with it. All of them
//! are *accepted*: a proof made with any one verifies. Rotating without
//! downtime is therefore three rolling restarts (as memberlist's keyring):
//! add the new secret second everywhere, move it first everywhere, drop the
//! old one.
//!
//! The raw secret is never used directly: each use gets its own key through
//! HKDF-SHA256 with a purpose label, so a key that leaks from one use (say,
//! a request signature's key) says nothing about another (gossip's Noise PSK).
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest secret accepted, in bytes: below this a secret can be guessed
/// offline from one captured request signature.
pub const MIN_SECRET_LEN: usize = 16;

/// What a derived key is for. Each purpose yields an unrelated key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The pre-shared key of gossip's Noise handshake.
    GossipPsk,
    /// Signatures on requests between processes (discovery, gateway → node).
    RequestSignature,
    /// A node's answer to a gateway's health challenge.
    HealthProof,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::GossipPsk => b"tally/v2/gossip-noise-psk",
            Purpose::RequestSignature => b"tally/v2/request-signature",
            Purpose::HealthProof => b"tally/v2/health-proof",
        }
    }
}

/// Why a cluster key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Nothing but separators.
    #[error("the cluster key is empty")]
    Empty,
    /// A secret under [`MIN_SECRET_LEN`] bytes.
    #[error("cluster key #{position} is {len} bytes; use at least {MIN_SECRET_LEN} (e.g. `openssl rand -hex 32`)")]
    TooShort {
        /// 1-based position in the list.
        position: usize,
        /// Its length.
        len: usize,
    },
}

/// The accepted secrets of a cluster, current first.
#[derive(Clone)]
pub struct ClusterKeys {
    secrets: Vec<Vec<u8>>,
}

impl ClusterKeys {
    /// Parses secrets separated by commas or newlines (surrounding blanks
    /// trimmed, empty items skipped).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let secrets: Vec<Vec<u8>> = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|secret| !secret.is_empty())
            .map(|secret| secret.as_bytes().to_vec())
            .collect();
        if secrets.is_empty() {
            return Err(KeyError::Empty);
        }
        if let Some((index, short)) = secrets
            .iter()
            .enumerate()
            .find(|(_, secret)| secret.len() < MIN_SECRET_LEN)
        {
            return Err(KeyError::TooShort {
                position: index + 1,
                len: short.len(),
            });
        }
        Ok(Self { secrets })
    }

    /// How many secrets are accepted.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Never true: parsing refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The current secret's key for `purpose`: what this process sends with.
    pub fn current(&self, purpose: Purpose) -> [u8; 32] {
        derive(&self.secrets[0], purpose)
    }

    /// Every accepted secret's key for `purpose`, current first.
    pub fn accepted(&self, purpose: Purpose) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.secrets
            .iter()
            .map(move |secret| derive(secret, purpose))
    }

    /// HMAC-SHA256 of `parts` (each length-prefixed, so no two different
    /// lists of parts collide) under the current key for `purpose`.
    pub fn sign(&self, purpose: Purpose, parts: &[&[u8]]) -> [u8; 32] {
        mac(&self.current(purpose), parts)
    }

    /// True when `tag` is the MAC of `parts` under any accepted key for
    /// `purpose` (compared in constant time).
    pub fn verify(&self, purpose: Purpose, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.accepted(purpose).any(|key| {
            let mut check =
                <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes keys of any length");
            feed(&mut check, parts);
            check.verify_slice(tag).is_ok()
        })
    }
}

impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKeys({} secret(s), redacted)", self.secrets.len())
    }
}

fn derive(secret: &[u8], purpose: Purpose) -> [u8; 32] {
    let mut key = [0; 32];
    Hkdf::<Sha256>::new(Some(b"tally cluster key"), secret)
        .expand(purpose.label(), &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    feed(&mut mac, parts);
    mac.finalize().into_bytes().into()
}

fn feed(mac: &mut Hmac<Sha256>, parts: &[&[u8]]) {
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "old-secret-0123456789";
    const NEW: &str = "new-secret-0123456789";

    #[test]
    fn lists_parse_with_commas_or_newlines_current_first() {
        let keys = ClusterKeys::parse(&format!(" {NEW} ,\n{OLD}\n")).unwrap();
        assert_eq!(keys.len(), 2);
        let only_new = ClusterKeys::parse(NEW).unwrap();
        assert_eq!(
            keys.current(Purpose::GossipPsk),
            only_new.current(Purpose::GossipPsk)
        );
    }

    #[test]
    fn empty_and_short_secrets_are_refused() {
        assert_eq!(ClusterKeys::parse(" , \n").unwrap_err(), KeyError::Empty);
        let error = ClusterKeys::parse(&format!("{NEW},short")).unwrap_err();
        assert_eq!(
            error,
            KeyError::TooShort {
                position: 2,
                len: 5
            }
        );
    }

    #[test]
    fn purposes_get_unrelated_keys() {
        let keys = ClusterKeys::parse(NEW).unwrap();
        assert_ne!(
            keys.current(Purpose::GossipPsk),
            keys.current(Purpose::RequestSignature)
        );
    }

    #[test]
    fn a_proof_made_with_any_accepted_secret_verifies() {
        let old = ClusterKeys::parse(OLD).unwrap();
        let rotating = ClusterKeys::parse(&format!("{NEW},{OLD}")).unwrap();
        let new = ClusterKeys::parse(NEW).unwrap();
        let parts: [&[u8]; 2] = [b"GET", b"/peers"];
        let by_old = old.sign(Purpose::RequestSignature, &parts);
        assert!(rotating.verify(Purpose::RequestSignature, &parts, &by_old));
        assert!(!new.verify(Purpose::RequestSignature, &parts, &by_old));
        assert!(!rotating.verify(Purpose::HealthProof, &parts, &by_old));
    }

    #[test]
    fn parts_are_not_ambiguous() {
        let keys = ClusterKeys::parse(NEW).unwrap();
        let split_one_way = keys.sign(Purpose::RequestSignature, &[b"ab", b"c"]);
        assert!(!keys.verify(Purpose::RequestSignature, &[b"a", b"bc"], &split_one_way));
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let keys = ClusterKeys::parse(NEW).unwrap();
        assert!(!format!("{keys:?}").contains("new-secret"));
    }
}
