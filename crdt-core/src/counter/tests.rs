//! Unit tests of the counter: sums, ranges, hostile totals.
use super::*;
use crate::{CrdtError, Op};

fn actor(id: &str) -> ActorId {
    ActorId::new(id).unwrap()
}

#[test]
fn value_is_increments_minus_decrements() {
    let mut counter = PnCounter::new();
    counter.increment(&actor("a"), 5).unwrap();
    counter.decrement(&actor("b"), 2).unwrap();
    counter.increment(&actor("a"), 1).unwrap();
    assert_eq!(counter.value(), 4);
    assert_eq!(
        counter.entry("a"),
        Some(&Entry {
            inc: 6,
            dec: 0,
            seq: 2,
            since: 1
        })
    );
}

#[test]
fn overflow_and_zero_are_refused_without_change() {
    let mut counter = PnCounter::new();
    counter.increment(&actor("a"), i64::MAX as u64).unwrap();
    let before = counter.clone();
    assert_eq!(counter.increment(&actor("b"), 1), Err(CrdtError::Overflow));
    assert_eq!(
        counter.increment(&actor("a"), 0),
        Err(CrdtError::ZeroAmount)
    );
    assert_eq!(counter, before);
    assert_eq!(counter.digest(), before.digest());
}

/// The issue "No counter can be frozen": `+i64::MAX`, `−u64::MAX`,
/// `+2^63` by one actor filled both of its `u64` totals, after which
/// every write to the counter by that actor was refused forever.
#[test]
fn no_counter_can_be_frozen() {
    let a = actor("a");
    let mut counter = PnCounter::new();
    counter.increment(&a, i64::MAX as u64).unwrap();
    counter.decrement(&a, u64::MAX).unwrap();
    counter.increment(&a, 1 << 63).unwrap();
    assert_eq!(counter.value(), 0);
    let full = u128::from(u64::MAX);
    assert_eq!(
        counter.entry("a").map(|e| (e.inc, e.dec)),
        Some((full, full))
    );

    counter.increment(&a, 1).unwrap();
    counter.decrement(&a, 3).unwrap();
    counter.increment(&a, u64::MAX >> 1).unwrap();
    assert_eq!(counter.value(), i128::from(i64::MAX) - 2);
    assert_eq!(
        counter.entry("a"),
        Some(&Entry {
            inc: full + 1 + u128::from(u64::MAX >> 1),
            dec: full + 3,
            seq: 6,
            since: 1
        })
    );
}

#[test]
fn values_beyond_i128_saturate_and_stay_order_independent() {
    let huge = Entry {
        inc: u128::MAX,
        dec: 0,
        seq: 1,
        since: 0,
    };
    let mut up = PnCounter::new();
    up.merge_entry(&actor("a"), huge);
    assert_eq!(up.value(), i128::MAX);
    up.merge_entry(&actor("b"), huge);
    assert_eq!(up.value(), i128::MAX, "2 · u128::MAX saturates");
    // Σdec = u128::MAX cancels one of the two, exactly.
    up.merge_entry(
        &actor("c"),
        Entry {
            inc: 5,
            dec: u128::MAX,
            seq: 1,
            since: 0,
        },
    );
    assert_eq!(up.value(), i128::MAX);
    up.merge_entry(
        &actor("d"),
        Entry {
            inc: 0,
            dec: u128::MAX - 10,
            seq: 1,
            since: 0,
        },
    );
    assert_eq!(up.value(), 15);

    // Merged in the opposite order, the same entries read the same.
    let mut reversed = PnCounter::new();
    for (id, entry) in up.entries().collect::<Vec<_>>().into_iter().rev() {
        reversed.merge_entry(id, *entry);
    }
    assert_eq!(reversed, up);
    assert_eq!(reversed.value(), 15);
    assert_eq!(reversed.digest(), up.digest());

    let mut down = PnCounter::new();
    down.merge_entry(
        &actor("a"),
        Entry {
            inc: 0,
            dec: u128::MAX,
            seq: 1,
            since: 0,
        },
    );
    assert_eq!(down.value(), i128::MIN);
    down.merge_entry(
        &actor("b"),
        Entry {
            inc: 0,
            dec: 1 << 127,
            seq: 1,
            since: 0,
        },
    );
    assert_eq!(down.value(), i128::MIN);
    let mut edge = PnCounter::new();
    edge.merge_entry(
        &actor("a"),
        Entry {
            inc: 0,
            dec: 1 << 127,
            seq: 1,
            since: 0,
        },
    );
    assert_eq!(edge.value(), i128::MIN, "−2^127 is exactly i128::MIN");
    edge.merge_entry(
        &actor("b"),
        Entry {
            inc: 1,
            dec: 0,
            seq: 1,
            since: 0,
        },
    );
    assert_eq!(edge.value(), i128::MIN + 1);
}

#[test]
fn hostile_entries_refuse_local_operations_without_panicking() {
    let a = actor("a");
    let mut counter = PnCounter::new();
    counter.merge_entry(
        &a,
        Entry {
            inc: u128::MAX,
            dec: 0,
            seq: u64::MAX,
            since: 0,
        },
    );
    let before = counter.clone();
    // The seq cannot grow, whatever the direction.
    assert_eq!(counter.decrement(&a, 1), Err(CrdtError::Overflow));
    assert_eq!(counter.increment(&a, 1), Err(CrdtError::Overflow));
    // A fresh seq, but the u128 total is exhausted, or the value would
    // move further beyond i64.
    assert_eq!(
        counter.prepare("a", Op::Increment(1), 7),
        Err(CrdtError::Overflow)
    );
    assert_eq!(
        counter.prepare("b", Op::Increment(1), 7),
        Err(CrdtError::Overflow)
    );
    // Toward the range is still fine, even from a saturated value.
    assert!(counter.prepare("b", Op::Decrement(u64::MAX), 7).is_ok());
    assert_eq!(counter, before);
    assert_eq!(counter.digest(), before.digest());
}

#[test]
fn delta_merges_like_the_state() {
    let mut left = PnCounter::new();
    let delta = left.increment(&actor("a"), 3).unwrap();
    let mut right = PnCounter::new();
    assert!(right.merge(&delta));
    assert!(!right.merge(&delta));
    assert_eq!(left, right);
    assert_eq!(left.digest(), right.digest());
}
