//! Equality that goes beyond `==`: equal states must also agree on every
//! field kept incrementally (digest, sums, summary, change index).
use crdt_core::{CounterMap, PnCounter, Summary, Watermarks};

/// `left` and `right` are the same state, down to their derived fields.
#[track_caller]
pub fn assert_maps_same(left: &CounterMap, right: &CounterMap, context: &str) {
    assert_eq!(left, right, "{context}");
    assert_eq!(left.digest(), right.digest(), "{context}: digests differ");
    assert_eq!(
        left.summary(),
        right.summary(),
        "{context}: summaries differ"
    );
    assert_eq!(
        left.entry_count(),
        right.entry_count(),
        "{context}: entry counts differ"
    );
    for (name, counter) in left.counters() {
        assert_eq!(
            (counter.value(), counter.is_visible(), counter.expiry()),
            (right
                .get(name.as_str())
                .map(|c| (c.value(), c.is_visible(), c.expiry())))
            .unwrap_or_default(),
            "{context}: {name:?}"
        );
        assert!(counter.cache_is_fresh(), "{context}: {name:?}: stale sums");
    }
}

/// Every incrementally kept field of `map` matches a recomputation from its entries.
#[track_caller]
pub fn assert_map_consistent(map: &CounterMap) {
    let entries: Vec<_> = map.all_changes().collect();
    assert_eq!(map.entry_count(), entries.len(), "entry count");

    // Rebuilding in the opposite order must land on the same digest: it
    // depends on the state, not on the history.
    let rebuilt: CounterMap = entries.iter().rev().cloned().collect();
    assert_eq!(&rebuilt, map);
    assert_eq!(rebuilt.digest(), map.digest(), "digest depends on history");

    for (_, counter) in map.counters() {
        assert_counter_consistent(counter);
    }

    let mut highest_seq = Summary::new();
    for change in &entries {
        let seq = highest_seq.entry(change.actor.clone()).or_default();
        *seq = (*seq).max(change.entry.seq);
    }
    assert_eq!(map.summary(), highest_seq, "summary");

    // The change index must reach every entry, or anti-entropy would miss it.
    let everything: Vec<_> = map.changes_since(&Watermarks::new()).collect();
    assert_eq!(
        everything.len(),
        entries.len(),
        "change index misses entries"
    );
}

/// `left` and `right` are the same counter, down to their derived fields.
#[track_caller]
pub fn assert_counters_same(left: &PnCounter, right: &PnCounter, context: &str) {
    assert_eq!(left, right, "{context}");
    assert_eq!(left.digest(), right.digest(), "{context}: digests differ");
    assert_eq!(left.value(), right.value(), "{context}: values differ");
    assert_counter_consistent(left);
}

/// The counter's O(1) value is the sum of its entries (clamped to `i128`).
#[track_caller]
pub fn assert_counter_consistent(counter: &PnCounter) {
    let entries = counter.entries().map(|(_, entry)| (entry.inc, entry.dec));
    assert_eq!(
        counter.value(),
        expected_value(entries),
        "value is not Σinc − Σdec"
    );
    assert_eq!(counter.actors(), counter.entries().count());
}

/// `Σinc − Σdec` over `(inc, dec)` totals, clamped to `i128`: the oracle
/// for `PnCounter::value`, computed another way (a signed 256-bit
/// accumulator, `high · 2^128 + low`).
pub fn expected_value(totals: impl IntoIterator<Item = (u128, u128)>) -> i128 {
    let (mut high, mut low) = (0i128, 0u128);
    for (inc, dec) in totals {
        let (sum, carry) = low.overflowing_add(inc);
        high += i128::from(carry);
        let (difference, borrow) = sum.overflowing_sub(dec);
        high -= i128::from(borrow);
        low = difference;
    }
    match high {
        0 => i128::try_from(low).unwrap_or(i128::MAX),
        // high · 2^128 + low = low − 2^128: in i128 when low ≥ 2^127.
        -1 if low >= 1 << 127 => low as i128,
        high if high < 0 => i128::MIN,
        _ => i128::MAX,
    }
}
