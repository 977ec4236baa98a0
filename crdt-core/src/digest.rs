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
///
/// Totals are `u128`, but they were `u64` when digests were first pinned and
/// digests are compared across nodes, releases and platforms: an entry whose
/// totals both fit in `u64` hashes exactly as before. The high halves are
/// folded in only when one is nonzero, so only totals ≥ 2^64 (which the old
/// format could not hold) hash differently from the `u64` formula.
fn totals_hash(actor: &str, inc: u128, dec: u128) -> u64 {
    // Truncation is the point: the low and high 64-bit halves of each total.
    let (inc_low, inc_high) = (inc as u64, (inc >> 64) as u64);
    let (dec_low, dec_high) = (dec as u64, (dec >> 64) as u64);
    let mut hash = hash_bytes(actor.as_bytes())
        ^ mix(inc_low)
        ^ mix(dec_low ^ 0x9e37_79b9_7f4a_7c15).rotate_left(29);
    if inc_high != 0 || dec_high != 0 {
        hash ^= mix(mix(inc_high ^ 0x6a09_e667_f3bc_c909)
            ^ mix(dec_high ^ 0xbb67_ae85_84ca_a73b).rotate_left(43));
    }
    mix(hash)
}

/// Hash of one actor's entry: its totals ([`totals_hash`]), its seq and
/// its run. The seq matters since removals: a delete changes the remover's
/// seq and nothing else of its entry, and two replicas that differ by a
/// delete must not agree.
pub(crate) fn entry_hash(actor: &str, entry: &crate::Entry) -> u64 {
    let totals = totals_hash(actor, entry.inc, entry.dec);
    mix(totals
        ^ mix(entry.seq ^ 0x3c6e_f372_fe94_f82b).rotate_left(17)
        ^ mix(entry.since ^ 0xa54f_f53a_5f1d_36f1).rotate_left(53))
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
        assert_ne!(totals_hash("a", 1, 0), totals_hash("a", 0, 1));
    }

    #[test]
    fn seq_and_run_change_the_hash() {
        let entry = crate::Entry {
            inc: 5,
            dec: 7,
            seq: 3,
            since: 1,
        };
        let base = entry_hash("a", &entry);
        assert_ne!(base, entry_hash("a", &crate::Entry { seq: 4, ..entry }));
        assert_ne!(base, entry_hash("a", &crate::Entry { since: 2, ..entry }));
    }

    #[test]
    fn high_halves_of_the_totals_change_the_hash() {
        const HIGH: u128 = 1 << 64;
        let base = totals_hash("a", 5, 7);
        let variants = [
            totals_hash("a", 5 + HIGH, 7),
            totals_hash("a", 5, 7 + HIGH),
            totals_hash("a", 5 + HIGH, 7 + HIGH),
            totals_hash("a", 5 + (HIGH << 1), 7),
            totals_hash("a", u128::MAX, u128::MAX),
        ];
        for (index, variant) in variants.iter().enumerate() {
            assert_ne!(*variant, base, "variant {index}");
            for other in &variants[index + 1..] {
                assert_ne!(variant, other);
            }
        }
        // Swapping the high halves between inc and dec changes the hash too.
        assert_ne!(totals_hash("a", HIGH, 0), totals_hash("a", 0, HIGH));
    }
}
