//! A tiny deterministic generator (xorshift64*), so wasm32 — where proptest
//! does not run — still checks the laws on many varied cases, and native
//! runs check the very same cases.
use crdt_core::{Entry, Op};

use super::scenario::{
    Scenario, Step, ACTORS_PER_REPLICA, LARGE_AMOUNTS, MAX_REPLICAS, MAX_STEPS, NAMES,
};

/// xorshift64* by Vigna: fast, tiny, good enough for test cases.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed`; every seed (0 too) gives a distinct non-zero state.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: usize, denominator: usize) -> bool {
        self.below(denominator) < numerator
    }

    pub fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// An amount: mostly small, sometimes zero, large, or anything at all.
pub fn amount(rng: &mut XorShift) -> u64 {
    match rng.below(10) {
        0 => 0,
        1 | 2 => LARGE_AMOUNTS[rng.below(LARGE_AMOUNTS.len())],
        3 => rng.next_u64(),
        _ => 1 + rng.below(1000) as u64,
    }
}

/// Totals at the edges of `u64`, `i128` and `u128`, or anything at all.
pub const EDGE_TOTALS: [u128; 10] = [
    0,
    1,
    u64::MAX as u128,
    1 << 64,
    (1 << 127) - 1,
    1 << 127,
    (1 << 127) + 1,
    u128::MAX - 1,
    u128::MAX,
    u128::MAX / 3,
];

/// A per-actor total as a hostile peer might send it.
pub fn total(rng: &mut XorShift) -> u128 {
    match rng.below(4) {
        0 | 1 => EDGE_TOTALS[rng.below(EDGE_TOTALS.len())],
        2 => u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()),
        _ => rng.below(1000) as u128,
    }
}

/// An entry as a hostile peer might send it, its seq sometimes exhausted.
/// (Never seq 0: no operation has it, and `changes_since` lists only
/// entries above a watermark, so such an entry is outside the laws here.)
pub fn hostile_entry(rng: &mut XorShift) -> Entry {
    let seq = match rng.below(4) {
        0 => u64::MAX,
        1 => rng.next_u64().max(1),
        _ => 1 + rng.below(50) as u64,
    };
    Entry {
        inc: total(rng),
        dec: total(rng),
        seq,
        since: 0,
    }
}

pub fn op(rng: &mut XorShift) -> Op {
    let amount = amount(rng);
    if rng.chance(1, 2) {
        Op::Increment(amount)
    } else {
        Op::Decrement(amount)
    }
}

/// Scenario number `seed`: 1–4 replicas, up to 40 steps, one in five a sync.
pub fn scenario(seed: u64) -> Scenario {
    let mut rng = XorShift::new(seed);
    let replicas = 1 + rng.below(MAX_REPLICAS);
    let steps = (0..rng.below(MAX_STEPS + 1))
        .map(|_| {
            if rng.chance(1, 5) {
                Step::Sync {
                    from: rng.below(replicas),
                    to: rng.below(replicas),
                }
            } else {
                Step::Apply {
                    replica: rng.below(replicas),
                    actor: rng.below(ACTORS_PER_REPLICA),
                    name: rng.below(NAMES.len()),
                    op: op(&mut rng),
                }
            }
        })
        .collect();
    Scenario { replicas, steps }
}
