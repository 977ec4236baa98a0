//! The checks every platform runs on the same deterministic cases.
use crdt_core::{wire, ActorId, CounterMap, CounterName, CrdtError, Entry, Op};

use super::{
    assertions::assert_maps_same,
    laws,
    scenario::{run_map, LARGE_AMOUNTS, MAX_REPLICAS, NAMES},
    xorshift::{hostile_entry, op, scenario, total, XorShift},
};

/// How many generated scenarios each law runs on.
const CASES: u64 = 96;

pub fn map_laws_hold_on_generated_cases() {
    for seed in 0..CASES {
        laws::check_map_laws(&scenario(seed));
    }
}

pub fn pn_counter_laws_hold_on_generated_cases() {
    for seed in 0..CASES {
        laws::check_pn_laws(&scenario(seed));
    }
}

pub fn keyed_merge_laws_hold_on_generated_cases() {
    for seed in 0..CASES {
        super::keyed::merge_laws_hold(&super::keyed::run(seed));
    }
}

pub fn lifecycle_merge_laws_hold_on_generated_cases() {
    for seed in 0..CASES {
        super::lifecycle::merge_laws_hold(&super::lifecycle::run(seed));
    }
}

pub fn removals_are_observed_remove_on_generated_cases() {
    for seed in 0..CASES {
        super::lifecycle::removals_are_observed_remove(super::lifecycle::run(seed));
    }
}

pub fn each_keyed_write_counts_once_on_generated_cases() {
    for seed in 0..CASES {
        super::keyed::each_write_counts_once(super::keyed::run(seed));
    }
}

/// How many histories the model-based test plays (see `model.rs`).
const MODEL_CASES: u64 = 300;

/// Random histories over 3–5 replicas agree with the reference model once
/// converged, and merge laws hold over every state they pass through.
pub fn replicas_agree_with_the_model_on_generated_cases() {
    let mut exercised = super::model::Coverage::default();
    for seed in 0..MODEL_CASES {
        let run = super::model::run(seed);
        super::model::merge_laws_hold(&run);
        exercised.add(&run.coverage);
    }
    exercised.assert_every_step_happened();
}

/// Maps with many different valid names and actors survive the wire.
pub fn wire_round_trips_on_generated_cases() {
    const ALPHABET: [char; 8] = ['a', 'Z', '/', ' ', 'é', '✓', '🦀', '~'];
    let mut rng = XorShift::new(7);
    for _ in 0..CASES {
        let mut map = CounterMap::new();
        for _ in 0..rng.below(8) {
            let text: String = (0..1 + rng.below(30))
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect();
            let (Ok(name), Ok(actor)) = (CounterName::new(&text), ActorId::new(&text)) else {
                panic!("{text:?} is a valid name and actor id");
            };
            let entry = Entry {
                inc: total(&mut rng),
                dec: total(&mut rng),
                seq: rng.next_u64(),
                since: 0,
            };
            map.merge_entry(&name, &actor, entry);
        }
        laws::map_round_trips(&map);
    }
}

pub fn decoding_garbage_never_panics_on_generated_cases() {
    let mut rng = XorShift::new(11);
    for seed in 0..CASES * 4 {
        laws::decoding_never_panics(&rng.bytes(64));
        let union = run_map(&scenario(seed)).union();
        let damage: Vec<(usize, u8)> = (0..1 + rng.below(3))
            .map(|_| (rng.below(1 << 16), rng.next_u64() as u8))
            .collect();
        laws::damaged_encodings_are_handled(&union, &damage);
    }
}

/// Texts every name and actor check must refuse.
fn invalid_texts() -> Vec<String> {
    let mut texts = vec![
        String::new(),
        "x".repeat(129),
        "é".repeat(65), // 130 bytes in 65 characters
        "🦀".repeat(33),
    ];
    let controls = ('\0'..='\u{1f}').chain('\u{7f}'..='\u{9f}');
    texts.extend(controls.map(|control| format!("before{control}after")));
    texts.push("\n".to_owned());
    texts.push("trailing\u{0}".to_owned());
    texts
}

pub fn names_and_actors_are_validated() {
    for text in invalid_texts() {
        assert!(CounterName::new(&text).is_err(), "name {text:?} accepted");
        assert!(ActorId::new(&text).is_err(), "actor {text:?} accepted");
        // The wire applies the same checks: a peer cannot smuggle one in.
        let entry = Entry {
            inc: 1,
            dec: 0,
            seq: 1,
            since: 0,
        };
        let bad_name = vec![(text.clone(), vec![("node-1".to_owned(), entry)])];
        let bad_actor = vec![("default".to_owned(), vec![(text.clone(), entry)])];
        for bytes in [wire::encode(&bad_name), wire::encode(&bad_actor)] {
            assert!(matches!(
                wire::decode::<CounterMap>(&bytes),
                Err(CrdtError::Decode(_))
            ));
        }
    }
    for text in [
        "x".repeat(128),
        "é".repeat(64),
        "a".to_owned(),
        "a b/c ✓".to_owned(),
    ] {
        assert!(CounterName::new(&text).is_ok(), "name {text:?} refused");
        assert!(ActorId::new(&text).is_ok(), "actor {text:?} refused");
    }
}

/// Applies `op`, expecting `outcome`; a refusal must leave the map untouched.
#[track_caller]
fn expect(map: &mut CounterMap, actor: &ActorId, op: Op, outcome: Result<i128, CrdtError>) {
    let name = CounterName::new("default").expect("valid");
    let before = map.clone();
    match (map.apply(actor, &name, op), outcome) {
        (Ok(_), Ok(value)) => assert_eq!(map.value("default"), Some(value), "{op:?}"),
        (Err(error), Err(expected)) => {
            assert_eq!(error, expected, "{op:?}");
            assert_maps_same(map, &before, "refused operation");
        }
        (result, outcome) => panic!("{op:?}: got {result:?}, expected {outcome:?}"),
    }
}

pub fn overflow_is_refused_without_change() {
    const MAX: u64 = i64::MAX as u64;
    let (a, b) = (
        ActorId::new("node-a").expect("valid"),
        ActorId::new("node-b").expect("valid"),
    );
    let mut map = CounterMap::new();
    expect(&mut map, &a, Op::Increment(0), Err(CrdtError::ZeroAmount));
    expect(
        &mut map,
        &a,
        Op::Increment(u64::MAX),
        Err(CrdtError::Overflow),
    );
    expect(&mut map, &a, Op::Increment(MAX), Ok(i128::from(i64::MAX)));
    expect(&mut map, &b, Op::Increment(1), Err(CrdtError::Overflow));
    expect(&mut map, &a, Op::Decrement(MAX), Ok(0));
    expect(
        &mut map,
        &b,
        Op::Decrement(MAX + 1),
        Ok(i128::from(i64::MIN)),
    );
    expect(&mut map, &a, Op::Decrement(1), Err(CrdtError::Overflow));
    expect(&mut map, &b, Op::Increment(MAX), Ok(-1));
    // a's increment total is i64::MAX; one more i64::MAX takes it to
    // u64::MAX - 1 while the value stays in range.
    expect(
        &mut map,
        &a,
        Op::Increment(MAX),
        Ok(i128::from(i64::MAX) - 1),
    );
    expect(&mut map, &a, Op::Decrement(MAX), Ok(-1));
    // Totals are u128, so going past u64 is fine (it used to be refused):
    // only the value's range limits local operations.
    expect(&mut map, &a, Op::Increment(2), Ok(1));
    expect(&mut map, &a, Op::Increment(1), Ok(2));
    let a_entry = map.get("default").and_then(|c| c.entry("node-a")).copied();
    assert_eq!(a_entry.map(|e| e.inc), Some(u128::from(u64::MAX) + 2));

    // Merging is never refused: values beyond i64 are kept exactly.
    let (mut left, mut right) = (CounterMap::new(), CounterMap::new());
    expect(&mut left, &a, Op::Increment(MAX), Ok(i128::from(i64::MAX)));
    expect(&mut right, &b, Op::Increment(MAX), Ok(i128::from(i64::MAX)));
    left.merge(&right);
    assert_eq!(left.value("default"), Some(2 * i128::from(i64::MAX)));
    expect(&mut left, &b, Op::Increment(1), Err(CrdtError::Overflow));
}

/// The issue "No counter can be frozen": `+i64::MAX`, `−u64::MAX`, `+2^63`
/// by one actor used to fill both of its `u64` totals, after which every
/// write to that counter on that node was refused forever.
pub fn no_counter_can_be_frozen() {
    const MAX: u64 = i64::MAX as u64;
    let a = ActorId::new("node-a").expect("valid");
    let mut map = CounterMap::new();
    expect(&mut map, &a, Op::Increment(MAX), Ok(i128::from(i64::MAX)));
    expect(
        &mut map,
        &a,
        Op::Decrement(u64::MAX),
        Ok(i128::from(i64::MIN)),
    );
    expect(&mut map, &a, Op::Increment(MAX + 1), Ok(0));
    let entry = |map: &CounterMap| {
        *map.get("default")
            .and_then(|c| c.entry("node-a"))
            .expect("written")
    };
    let full = u128::from(u64::MAX);
    assert_eq!((entry(&map).inc, entry(&map).dec), (full, full));

    // Still writable, both ways, and the value reads correctly.
    expect(&mut map, &a, Op::Increment(1), Ok(1));
    expect(&mut map, &a, Op::Decrement(2), Ok(-1));
    expect(
        &mut map,
        &a,
        Op::Increment(MAX),
        Ok(i128::from(i64::MAX) - 1),
    );
    expect(
        &mut map,
        &a,
        Op::Decrement(u64::MAX - 1),
        Ok(i128::from(i64::MIN)),
    );
    // Only leaving i64 is refused.
    expect(&mut map, &a, Op::Decrement(1), Err(CrdtError::Overflow));
    expect(
        &mut map,
        &a,
        Op::Increment(u64::MAX),
        Ok(i128::from(i64::MAX)),
    );
    expect(&mut map, &a, Op::Increment(1), Err(CrdtError::Overflow));
    assert_eq!(
        entry(&map),
        Entry {
            inc: full + 1 + u128::from(MAX) + full,
            dec: full + 2 + full - 1,
            seq: 8,
            since: 1
        }
    );
    // The totals are past u64, yet the entry still survives the wire and a
    // peer merging it reads the same value.
    laws::map_round_trips(&map);
    let mut peer = CounterMap::new();
    peer.merge(&map);
    assert_eq!(peer.value("default"), Some(i128::from(i64::MAX)));

    // Many more rounds of the same: totals far beyond u64, still writable.
    for _ in 0..64 {
        expect(
            &mut map,
            &a,
            Op::Decrement(u64::MAX),
            Ok(i128::from(i64::MIN)),
        );
        expect(
            &mut map,
            &a,
            Op::Increment(u64::MAX),
            Ok(i128::from(i64::MAX)),
        );
    }
    assert_eq!(entry(&map).inc, 66 * full + 1 + u128::from(MAX));
    laws::counter_stays_writable(&[
        Op::Increment(MAX),
        Op::Decrement(u64::MAX),
        Op::Increment(MAX + 1),
        Op::Increment(1),
        Op::Decrement(1),
    ]);
}

/// Sequences of local operations by one actor, mostly large amounts: each
/// leaves the counter writable.
pub fn counters_stay_writable_on_generated_cases() {
    let mut rng = XorShift::new(13);
    for _ in 0..CASES {
        let ops: Vec<Op> = (0..rng.below(64))
            .map(|_| {
                let amount = LARGE_AMOUNTS[rng.below(LARGE_AMOUNTS.len())];
                match rng.below(4) {
                    0 => op(&mut rng),
                    1 => Op::Increment(amount),
                    2 => Op::Decrement(amount),
                    _ => Op::Increment(1 << 63),
                }
            })
            .collect();
        laws::counter_stays_writable(&ops);
    }
}

/// Entries with totals up to `u128::MAX` and exhausted seqs, as a damaged
/// or hostile peer might send them: merge, value, digest, decode and local
/// operations never panic, and the laws hold.
pub fn hostile_totals_never_panic_on_generated_cases() {
    let mut rng = XorShift::new(17);
    for _ in 0..CASES {
        let replicas = 1 + rng.below(MAX_REPLICAS);
        let entries: Vec<laws::HostileEntry> = (0..rng.below(12))
            .map(|_| {
                (
                    rng.below(replicas),
                    rng.below(NAMES.len()),
                    rng.below(3),
                    hostile_entry(&mut rng),
                )
            })
            .collect();
        let ops: Vec<laws::LocalOp> = (0..rng.below(8))
            .map(|_| {
                (
                    rng.below(replicas),
                    rng.below(NAMES.len()),
                    rng.below(3),
                    op(&mut rng),
                )
            })
            .collect();
        laws::hostile_entries_obey_the_laws(replicas, &entries, &ops);
        let damage: Vec<(usize, u8)> = (0..1 + rng.below(3))
            .map(|_| (rng.below(1 << 16), rng.next_u64() as u8))
            .collect();
        let mut map = CounterMap::new();
        for (_, name, actor, entry) in &entries {
            let actor = ActorId::new(&format!("a{actor}")).expect("valid");
            map.merge_entry(
                &CounterName::new(NAMES[*name]).expect("valid"),
                &actor,
                *entry,
            );
        }
        laws::damaged_encodings_are_handled(&map, &damage);
    }
}
