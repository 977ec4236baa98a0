//! The checks every platform runs on the same deterministic cases.
use crdt_core::{wire, ActorId, CounterMap, CounterName, CrdtError, Entry, Op};

use super::{
    assertions::assert_maps_same,
    laws,
    scenario::run_map,
    xorshift::{scenario, XorShift},
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
                inc: rng.next_u64(),
                dec: rng.next_u64(),
                seq: rng.next_u64(),
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
    // a's increment total is i64::MAX; one more i64::MAX fills u64 to
    // u64::MAX - 1 while the value stays in range; then 2 more overflows u64.
    expect(
        &mut map,
        &a,
        Op::Increment(MAX),
        Ok(i128::from(i64::MAX) - 1),
    );
    expect(&mut map, &a, Op::Decrement(MAX), Ok(-1));
    expect(&mut map, &a, Op::Increment(2), Err(CrdtError::Overflow));
    expect(&mut map, &a, Op::Increment(1), Ok(0));
    expect(&mut map, &a, Op::Increment(1), Err(CrdtError::Overflow));

    // Merging is never refused: values beyond i64 are kept exactly.
    let (mut left, mut right) = (CounterMap::new(), CounterMap::new());
    expect(&mut left, &a, Op::Increment(MAX), Ok(i128::from(i64::MAX)));
    expect(&mut right, &b, Op::Increment(MAX), Ok(i128::from(i64::MAX)));
    left.merge(&right);
    assert_eq!(left.value("default"), Some(2 * i128::from(i64::MAX)));
    expect(&mut left, &b, Op::Increment(1), Err(CrdtError::Overflow));
}
