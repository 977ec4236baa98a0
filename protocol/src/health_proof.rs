//! How a node proves to the gateway that it holds the cluster secret, so
//! that only real members of the cluster are ever put in the rotation.
//!
//! ```text
//! gateway → node   GET /health          x-tally-challenge: <16 random bytes, hex>
//! node → gateway   200 {"node": id, …}  x-tally-proof: hex HMAC(health key, challenge ‖ id)
//! ```
//!
//! A fresh challenge per check means an old answer is worth nothing, and the
//! id inside the proof means a node cannot vouch for another's id.
use crate::cluster_key::{ClusterKeys, Purpose};
use crate::hex;

/// Header carrying the gateway's challenge.
pub const CHALLENGE_HEADER: &str = "x-tally-challenge";
/// Header carrying the node's proof.
pub const PROOF_HEADER: &str = "x-tally-proof";
/// Longest challenge a node answers (a longer one gets no proof).
pub const MAX_CHALLENGE_LEN: usize = 64;

/// A fresh challenge from 16 random bytes.
pub fn challenge(random: [u8; 16]) -> String {
    hex::encode(&random)
}

/// The node's proof for `challenge`, or `None` for an unreasonable challenge.
pub fn prove(keys: &ClusterKeys, challenge: &str, node_id: &str) -> Option<String> {
    if challenge.is_empty() || challenge.len() > MAX_CHALLENGE_LEN {
        return None;
    }
    let tag = keys.sign(
        Purpose::HealthProof,
        &[challenge.as_bytes(), node_id.as_bytes()],
    );
    Some(hex::encode(&tag))
}

/// True when `proof` answers `challenge` for `node_id` under an accepted key.
pub fn verify(keys: &ClusterKeys, challenge: &str, node_id: &str, proof: &str) -> bool {
    let Some(tag) = hex::decode::<32>(proof) else {
        return false;
    };
    keys.verify(
        Purpose::HealthProof,
        &[challenge.as_bytes(), node_id.as_bytes()],
        &tag,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_holder_of_the_secret_answers_for_its_own_id() {
        let keys = ClusterKeys::parse("health-proof-test-secret").unwrap();
        let other = ClusterKeys::parse("some-other-cluster-secret").unwrap();
        let challenge = challenge([9; 16]);
        let proof = prove(&keys, &challenge, "n1").unwrap();
        assert!(verify(&keys, &challenge, "n1", &proof));
        assert!(!verify(&keys, &challenge, "n2", &proof), "another id");
        assert!(
            !verify(&keys, &super::challenge([8; 16]), "n1", &proof),
            "another challenge"
        );
        let forged = prove(&other, &challenge, "n1").unwrap();
        assert!(!verify(&keys, &challenge, "n1", &forged), "another secret");
        assert!(!verify(&keys, &challenge, "n1", "not hex"));
        assert_eq!(prove(&keys, &"x".repeat(65), "n1"), None);
    }
}
