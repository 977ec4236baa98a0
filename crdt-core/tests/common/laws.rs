//! The laws, as checks over the result of playing a scenario.
use std::collections::BTreeMap;

use crdt_core::{
    wire, ActorId, CounterMap, CounterName, CrdtError, Entry, Op, PnCounter, Watermarks,
    DEFAULT_COUNTER,
};

use super::{
    assertions::{assert_counters_same, assert_map_consistent, assert_maps_same, expected_value},
    scenario::{counter_name, expected_refusal, run_map, run_pn, MapRun, PnRun, Scenario, NAMES},
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
        // (A counter holding only hostile all-zero entries has no write
        // and reads as absent; its value is still the sum.)
        let value = union.get(name).map(crdt_core::PnCounter::value);
        assert_eq!(value, Some(*sum), "value of {name:?}");
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

/// Local operations by one actor on one counter, refused or accepted as
/// the oracle says; after each, the counter stays writable: every step of 1
/// that keeps the value within `i64` is accepted ("No counter can be
/// frozen": with `u64` totals, `+i64::MAX`, `−u64::MAX`, `+2^63` left
/// neither direction open).
pub fn counter_stays_writable(ops: &[Op]) {
    let actor = ActorId::new("node-1~a").expect("valid actor");
    let name = CounterName::new(DEFAULT_COUNTER).expect("valid name");
    let mut map = CounterMap::new();
    let mut expected: i128 = 0;
    for &op in ops {
        let before = map.clone();
        let refusal = expected_refusal(&before, &actor, &name, op);
        match (map.apply(&actor, &name, op), refusal) {
            (Ok(_), None) => expected += op.signed(),
            (Err(error), Some(refusal)) => {
                assert_eq!(error, refusal, "{op:?}");
                assert_maps_same(&map, &before, "a refused operation changes nothing");
            }
            (result, refusal) => panic!("{op:?}: got {result:?}, expected {refusal:?}"),
        }
        let value = map.value(DEFAULT_COUNTER).unwrap_or(0);
        assert_eq!(value, expected, "the value reads every accepted operation");
        assert!(
            i64::try_from(value).is_ok(),
            "one actor keeps the value in i64"
        );
        let next_seq = map.last_seq(actor.as_str()) + 1;
        let open = |probe: Op| map.prepare(&actor, &name, probe, next_seq);
        if value < i128::from(i64::MAX) {
            assert!(
                open(Op::Increment(1)).is_ok(),
                "frozen upwards at {value} by {ops:?}"
            );
        }
        if value > i128::from(i64::MIN) {
            assert!(
                open(Op::Decrement(1)).is_ok(),
                "frozen downwards at {value} by {ops:?}"
            );
        }
    }
    assert_map_consistent(&map);
}

/// One entry as a damaged or hostile peer might send it:
/// `(replica, counter index in NAMES, actor index, entry)`.
pub type HostileEntry = (usize, usize, usize, Entry);
/// One local operation: `(replica, counter index in NAMES, actor index, op)`.
pub type LocalOp = (usize, usize, usize, Op);

/// The actor with index `index` in hostile cases.
fn hostile_actor(index: usize) -> ActorId {
    ActorId::new(&format!("node-{index}~h")).expect("valid actor")
}

/// Replicas that merged arbitrary entries (totals anywhere up to
/// `u128::MAX`, any seq), then applied local operations: nothing panics,
/// refusals match the oracle, and every merge law still holds, with values
/// read as the clamped exact `Σinc − Σdec`.
pub fn hostile_entries_obey_the_laws(replicas: usize, entries: &[HostileEntry], ops: &[LocalOp]) {
    let replicas = replicas.max(1);
    let mut maps = vec![CounterMap::new(); replicas];
    let mut deltas = Vec::new();
    for &(replica, name, actor, entry) in entries {
        let (name, actor) = (counter_name(name % NAMES.len()), hostile_actor(actor));
        maps[replica % replicas].merge_entry(&name, &actor, entry);
        deltas.push(CounterMap::single(&name, &actor, entry));
    }
    for &(replica, name, actor, op) in ops {
        let (name, actor) = (counter_name(name % NAMES.len()), hostile_actor(actor));
        let map = &mut maps[replica % replicas];
        let before = map.clone();
        let refusal = expected_refusal(&before, &actor, &name, op);
        match (map.apply(&actor, &name, op), refusal) {
            (Ok(delta), None) => deltas.push(delta),
            (Err(error), Some(refusal)) => {
                assert_eq!(error, refusal, "{op:?} on {name:?} by {actor:?}");
                assert_maps_same(map, &before, "a refused operation changes nothing");
            }
            (result, refusal) => {
                panic!("{op:?} on {name:?} by {actor:?}: got {result:?}, expected {refusal:?}")
            }
        }
        assert_map_consistent(map);
    }

    // The oracle: per (counter, actor) the per-field maximum of everything
    // merged or applied anywhere, then the clamped Σinc − Σdec per counter.
    let mut joined: BTreeMap<(String, String), Entry> = BTreeMap::new();
    for delta in &deltas {
        for change in delta.all_changes() {
            let slot = joined
                .entry((
                    change.name.as_str().to_owned(),
                    change.actor.as_str().to_owned(),
                ))
                .or_default();
            *slot = slot.join(change.entry);
        }
    }
    let mut totals: BTreeMap<String, Vec<(u128, u128)>> = BTreeMap::new();
    for ((name, _), entry) in joined {
        if entry != Entry::default() {
            totals.entry(name).or_default().push((entry.inc, entry.dec));
        }
    }
    let expected = totals
        .into_iter()
        .map(|(name, totals)| (name, expected_value(totals)))
        .collect();

    for map in &maps {
        assert_map_consistent(map);
    }
    let run = MapRun {
        replicas: maps,
        deltas,
        expected,
        older_copies: Vec::new(),
    };
    map_merge_commutes(&run);
    map_merge_associates(&run);
    map_merge_is_idempotent(&run);
    map_value_is_conserved(&run);
    map_deltas_merge_like_states(&run);
    map_joined_deltas_merge_like_single_ones(&run);
    map_wire_round_trips(&run);

    // The same laws on the PnCounters alone.
    let counters: Vec<PnCounter> = run
        .replicas
        .iter()
        .map(|map| map.get(DEFAULT_COUNTER).cloned().unwrap_or_default())
        .collect();
    let pn = PnRun {
        deltas: counters.clone(),
        expected: run.expected.get(DEFAULT_COUNTER).copied().unwrap_or(0),
        replicas: counters,
    };
    pn_merge_commutes(&pn);
    pn_merge_associates(&pn);
    pn_merge_is_idempotent(&pn);
    pn_value_is_conserved(&pn);
    pn_deltas_merge_like_states(&pn);

    // Whatever the union holds, local operations on it return, never panic.
    let mut union = run.union();
    for &(_, name, actor, op) in ops {
        let (name, actor) = (counter_name(name % NAMES.len()), hostile_actor(actor));
        let refusal = expected_refusal(&union, &actor, &name, op);
        let result = union.apply(&actor, &name, op).map(|_| ());
        match refusal {
            Some(refusal) => assert_eq!(result, Err(refusal)),
            None => assert_eq!(result, Ok::<(), CrdtError>(())),
        }
    }
    assert_map_consistent(&union);
}

/// Merge is commutative, associative and idempotent over every window of
/// three consecutive `states`, reads agree whichever way two are merged,
/// and the wire keeps everything (registrations, lifecycles).
pub fn merge_laws_hold_over(states: &[CounterMap]) {
    let merged = |a: &CounterMap, b: &CounterMap| {
        let mut out = a.clone();
        out.merge(b);
        out
    };
    let reads = |map: &CounterMap| -> Vec<(String, Option<i128>)> {
        map.counters()
            .map(|(name, _)| (name.to_string(), map.value(name.as_str())))
            .collect()
    };
    for window in states.windows(3) {
        let [a, b, c] = window else { continue };
        assert_eq!(merged(a, b), merged(b, a), "merge commutes");
        assert_eq!(
            merged(&merged(a, b), c),
            merged(a, &merged(b, c)),
            "merge associates"
        );
        assert_eq!(merged(a, a), *a, "merge is idempotent");
        let ab = merged(a, b);
        assert_eq!(reads(&ab), reads(&merged(b, a)));
        let decoded: CounterMap = wire::decode(&wire::encode(&ab)).expect("round trip");
        assert_eq!(decoded, ab, "the wire keeps registrations and lifecycles");
        assert_eq!(decoded.digest(), ab.digest());
    }
}
