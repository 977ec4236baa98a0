//! The laws, as checks over the result of playing a scenario.
use crdt_core::{wire, CounterMap, PnCounter, Watermarks};

use super::{
    assertions::{assert_counters_same, assert_map_consistent, assert_maps_same},
    scenario::{run_map, run_pn, MapRun, PnRun, Scenario},
};

fn merged(left: &CounterMap, right: &CounterMap) -> CounterMap {
    let mut result = left.clone();
    result.merge(right);
    result
}

fn merged_counter(left: &PnCounter, right: &PnCounter) -> PnCounter {
    let mut result = left.clone();
    result.merge(right);
    result
}

/// Every `CounterMap` law on one scenario.
pub fn check_map_laws(scenario: &Scenario) {
    let run = run_map(scenario);
    map_merge_commutes(&run);
    map_merge_associates(&run);
    map_merge_is_idempotent(&run);
    map_value_is_conserved(&run);
    map_deltas_merge_like_states(&run);
    map_joined_deltas_merge_like_single_ones(&run);
    map_anti_entropy_is_complete(&run);
    map_wire_round_trips(&run);
}

/// Every `PnCounter` law on one scenario.
pub fn check_pn_laws(scenario: &Scenario) {
    let run = run_pn(scenario);
    pn_merge_commutes(&run);
    pn_merge_associates(&run);
    pn_merge_is_idempotent(&run);
    pn_value_is_conserved(&run);
    pn_deltas_merge_like_states(&run);
}

pub fn map_merge_commutes(run: &MapRun) {
    for left in &run.replicas {
        for right in &run.replicas {
            assert_maps_same(&merged(left, right), &merged(right, left), "a∪b = b∪a");
        }
    }
}

pub fn map_merge_associates(run: &MapRun) {
    for a in &run.replicas {
        for b in &run.replicas {
            for c in &run.replicas {
                let left_first = merged(&merged(a, b), c);
                let right_first = merged(a, &merged(b, c));
                assert_maps_same(&left_first, &right_first, "(a∪b)∪c = a∪(b∪c)");
            }
        }
    }
}

pub fn map_merge_is_idempotent(run: &MapRun) {
    for a in &run.replicas {
        let mut again = a.clone();
        assert!(
            !again.merge(a),
            "merging a state into itself reports no change"
        );
        assert_maps_same(&again, a, "a∪a = a");
        for b in &run.replicas {
            let once = merged(a, b);
            let mut twice = once.clone();
            assert!(!twice.merge(b), "re-merging b reports no change");
            assert_maps_same(&twice, &once, "(a∪b)∪b = a∪b");
        }
    }
}

/// After every replica has merged every other, each counter's value is the
/// sum of the operations accepted anywhere — whatever the merge order.
pub fn map_value_is_conserved(run: &MapRun) {
    let union = run.union();
    let names: Vec<&str> = union.counters().map(|(name, _)| name.as_str()).collect();
    let expected_names: Vec<&str> = run.expected.keys().map(String::as_str).collect();
    assert_eq!(names, expected_names, "exactly the written counters exist");
    for (name, sum) in &run.expected {
        assert_eq!(union.value(name), Some(*sum), "value of {name:?}");
    }

    let mut backwards = CounterMap::new();
    for replica in run.replicas.iter().rev() {
        backwards.merge(replica);
    }
    assert_maps_same(&backwards, &union, "merge order does not matter");

    // A full round of gossip brings every replica to the union.
    for replica in &run.replicas {
        assert_maps_same(&merged(replica, &union), &union, "replica after full sync");
    }
}

/// The deltas `apply` returned carry everything: merged into an empty map,
/// in any order, they give the same state as merging the replicas.
pub fn map_deltas_merge_like_states(run: &MapRun) {
    let union = run.union();
    let mut forwards = CounterMap::new();
    for delta in &run.deltas {
        forwards.merge(delta);
    }
    assert_maps_same(&forwards, &union, "Σdeltas = ∪states");
    let mut backwards = CounterMap::new();
    for delta in run.deltas.iter().rev() {
        backwards.merge(delta);
    }
    assert_maps_same(&backwards, &union, "deltas in reverse order");
}

/// Joining deltas into one before shipping (batching) changes nothing.
pub fn map_joined_deltas_merge_like_single_ones(run: &MapRun) {
    let mut joined = CounterMap::new();
    for delta in &run.deltas {
        joined.merge(delta);
    }
    let empty = CounterMap::new();
    for target in run.replicas.iter().chain([&empty]) {
        let mut one_by_one = target.clone();
        for delta in &run.deltas {
            one_by_one.merge(delta);
        }
        assert_maps_same(&merged(target, &joined), &one_by_one, "joined deltas");

        let mut via_changes = target.clone();
        let news = via_changes.merge_changed(joined.all_changes());
        assert_maps_same(&via_changes, &one_by_one, "merge_changed");
        assert_maps_same(&merged(target, &news), &one_by_one, "news cover the change");
    }
}

/// `changes_since(peer.summary())` is exactly what the peer lacks, when the
/// peer's knowledge of each actor is a prefix of that actor's history (an
/// older copy, or anything built from full-state merges).
pub fn map_anti_entropy_is_complete(run: &MapRun) {
    for (index, older) in &run.older_copies {
        let current = &run.replicas[*index];
        let mut caught_up = older.clone();
        let sent: Vec<_> = current
            .changes_since(&Watermarks::from_gap_free_summary(older.summary()))
            .collect();
        let news = caught_up.merge_changed(sent.iter().cloned());
        assert_maps_same(&caught_up, current, "older copy after anti-entropy");
        assert_eq!(
            news.entry_count(),
            sent.len(),
            "only what the peer lacked is sent"
        );
    }
    for source in &run.replicas {
        assert_eq!(
            source
                .changes_since(&Watermarks::from_gap_free_summary(source.summary()))
                .count(),
            0
        );
        for peer in &run.replicas {
            let mut caught_up = peer.clone();
            caught_up.merge_changed(
                source.changes_since(&Watermarks::from_gap_free_summary(peer.summary())),
            );
            assert_maps_same(&caught_up, &merged(peer, source), "peer after anti-entropy");
        }
    }
}

/// Every replica and delta survives the wire.
pub fn map_wire_round_trips(run: &MapRun) {
    for map in run.replicas.iter().chain(&run.deltas) {
        map_round_trips(map);
    }
}

/// `map` decodes to itself.
pub fn map_round_trips(map: &CounterMap) {
    let decoded: CounterMap = wire::decode(&wire::encode(map)).expect("own encoding decodes");
    assert_maps_same(&decoded, map, "wire round trip");
    assert_map_consistent(&decoded);
}

/// Decoding `bytes` as a map returns, never panics; whatever decodes
/// is a consistent state that round-trips.
pub fn decoding_never_panics(bytes: &[u8]) {
    if let Ok(map) = wire::decode::<CounterMap>(bytes) {
        assert_map_consistent(&map);
        map_round_trips(&map);
    }
}

/// A valid encoding with bytes overwritten still decodes without panicking,
/// and no strict prefix of a valid encoding decodes.
pub fn damaged_encodings_are_handled(map: &CounterMap, damage: &[(usize, u8)]) {
    let encoded = wire::encode(map);
    for end in 0..encoded.len() {
        assert!(
            wire::decode::<CounterMap>(&encoded[..end]).is_err(),
            "a truncated encoding decoded"
        );
    }
    let mut damaged = encoded.clone();
    if !damaged.is_empty() {
        for &(position, byte) in damage {
            let position = position % damaged.len();
            damaged[position] = byte;
        }
    }
    decoding_never_panics(&damaged);
}

pub fn pn_merge_commutes(run: &PnRun) {
    for left in &run.replicas {
        for right in &run.replicas {
            let (lr, rl) = (merged_counter(left, right), merged_counter(right, left));
            assert_counters_same(&lr, &rl, "a∪b = b∪a");
        }
    }
}

pub fn pn_merge_associates(run: &PnRun) {
    for a in &run.replicas {
        for b in &run.replicas {
            for c in &run.replicas {
                let left_first = merged_counter(&merged_counter(a, b), c);
                let right_first = merged_counter(a, &merged_counter(b, c));
                assert_counters_same(&left_first, &right_first, "(a∪b)∪c = a∪(b∪c)");
            }
        }
    }
}

pub fn pn_merge_is_idempotent(run: &PnRun) {
    for a in &run.replicas {
        let mut again = a.clone();
        assert!(
            !again.merge(a),
            "merging a counter into itself reports no change"
        );
        assert_counters_same(&again, a, "a∪a = a");
    }
}

pub fn pn_value_is_conserved(run: &PnRun) {
    let mut union = PnCounter::new();
    for replica in &run.replicas {
        union.merge(replica);
    }
    assert_eq!(union.value(), run.expected, "value after full sync");
    let mut backwards = PnCounter::new();
    for replica in run.replicas.iter().rev() {
        backwards.merge(replica);
    }
    assert_counters_same(&backwards, &union, "merge order does not matter");
}

pub fn pn_deltas_merge_like_states(run: &PnRun) {
    let mut union = PnCounter::new();
    for replica in &run.replicas {
        union.merge(replica);
    }
    let mut from_deltas = PnCounter::new();
    for delta in run.deltas.iter().rev() {
        from_deltas.merge(delta);
    }
    assert_counters_same(&from_deltas, &union, "Σdeltas = ∪states");
}
