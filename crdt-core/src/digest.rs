//! A small, platform-independent 64-bit hash. Digests must agree between
//! x86_64 and wasm32, so nothing here depends on `usize`, endianness or a
//! randomly keyed hasher.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `bytes`, with a length terminator so `"ab"+"c"` ≠ `"a"+"bc"`.
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    mix(hash ^ bytes.len() as u64)
}

/// The splitmix64 finaliser: spreads every input bit over the output.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of one `(actor, inc, dec)` entry of a counter.
pub(crate) fn entry_hash(actor: &str, inc: u64, dec: u64) -> u64 {
    mix(hash_bytes(actor.as_bytes()) ^ mix(inc) ^ mix(dec ^ 0x9e37_79b9_7f4a_7c15).rotate_left(29))
}

/// A counter's contribution to the digest of a whole map.
pub(crate) fn named_hash(name: &str, counter_digest: u64) -> u64 {
    mix(hash_bytes(name.as_bytes()).wrapping_add(counter_digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_values_are_fixed_across_platforms() {
        // Pinned values: the wasm32 tests assert the same numbers.
        assert_eq!(hash_bytes(b""), 0xf52a_15e9_a9b5_e89b);
        assert_ne!(entry_hash("a", 1, 0), entry_hash("a", 0, 1));
    }
}
