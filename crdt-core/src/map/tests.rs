//! Unit tests of the map: indexes, digests, anti-entropy, decoding.
use super::*;
use crate::legacy::EntryWithoutRun;
use crate::{Lifecycle, Op, Registration};

fn name(text: &str) -> CounterName {
    CounterName::new(text).unwrap()
}
fn actor(text: &str) -> ActorId {
    ActorId::new(text).unwrap()
}

/// Found by `decoding_damaged_encodings_never_panics`: a damaged byte
/// turned a seq into 0, and the decoded map held an entry its change
/// index could never hand out.
#[cfg(feature = "serde")]
#[test]
fn a_decoded_entry_without_a_seq_is_refused() {
    use crate::wire;
    let at = |seq| Entry {
        inc: 5,
        dec: 0,
        seq,
        since: 0,
    };
    let map_with = |entry: Entry| {
        wire::encode(&alloc::vec![(
            "c1",
            alloc::vec![("n1~a", entry)],
            alloc::vec::Vec::<Registration>::new(),
            Option::<Lifecycle>::None,
        )])
    };
    assert!(wire::decode::<CounterMap>(&map_with(at(1))).is_ok());
    assert_eq!(
        wire::decode::<CounterMap>(&map_with(at(0))),
        Err(CrdtError::Decode("invalid value"))
    );
    // The empty entry is what a change of only registrations carries.
    assert_eq!(
        wire::decode::<Entry>(&wire::encode(&Entry::default())),
        Ok(Entry::default())
    );
    let legacy = wire::encode(&(5u128, 0u128, 0u64));
    assert!(wire::decode::<EntryWithoutRun>(&legacy).is_err());
}

#[test]
fn changes_since_lists_only_what_a_peer_lacks() {
    let mut map = CounterMap::new();
    let a = actor("a");
    for i in 0..10 {
        map.apply(&a, &name(&alloc::format!("c{i}")), Op::Increment(1))
            .unwrap();
    }
    map.apply(&a, &name("c0"), Op::Increment(1)).unwrap();
    let mut known = Watermarks::new();
    known.raise(&a, 8);
    let lacking: Vec<_> = map
        .changes_since(&known)
        .map(|c| (c.name, c.entry.seq))
        .collect();
    assert_eq!(
        lacking,
        [(name("c8"), 9), (name("c9"), 10), (name("c0"), 11)]
    );
    assert_eq!(map.summary().get("a"), Some(&11));
}

#[test]
fn a_taken_over_entry_is_collected_once_stable_and_the_value_stays() {
    let (gone, new, survivor) = (actor("n3~old"), actor("n3~new"), actor("n1~x"));
    let mut map = CounterMap::new();
    map.apply(&gone, &name("default"), Op::Increment(5))
        .unwrap();
    map.apply(&new, &name("default"), Op::Increment(1)).unwrap();
    let (_, left) = map.take_over(&gone, &survivor).unwrap();
    assert_eq!(left, 0);
    let counter = map.get("default").unwrap();
    assert_eq!(counter.value(), 6);
    assert!(map.removed_count() > 0);
    let all: Watermarks = map.summary().into_iter().collect();
    map.drop_removed(&all, u64::MAX, None, 100);
    let counter = map.get("default").unwrap();
    assert_eq!(counter.value(), 6);
    assert_eq!(counter.entry("n3~old"), None);
}

#[test]
fn digest_follows_state_not_history() {
    let (a, b) = (actor("a"), actor("b"));
    let mut left = CounterMap::new();
    left.apply(&a, &name("x"), Op::Increment(2)).unwrap();
    left.apply(&b, &name("y"), Op::Decrement(1)).unwrap();
    let mut right = CounterMap::new();
    right.apply(&b, &name("y"), Op::Decrement(1)).unwrap();
    assert_ne!(left.digest(), right.digest());
    right.apply(&a, &name("x"), Op::Increment(2)).unwrap();
    assert_eq!(left.digest(), right.digest());
    assert_eq!(left, right);
}

#[test]
fn page_respects_prefix_and_cursor() {
    let mut map = CounterMap::new();
    let a = actor("a");
    for text in ["a/1", "a/2", "a/3", "b/1"] {
        map.apply(&a, &name(text), Op::Increment(1)).unwrap();
    }
    let names = |it: &mut dyn Iterator<Item = (&CounterName, &PnCounter)>| {
        it.map(|(n, _)| n.as_str().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(names(&mut map.page("a/", None)), ["a/1", "a/2", "a/3"]);
    assert_eq!(names(&mut map.page("a/", Some("a/1"))), ["a/2", "a/3"]);
    assert_eq!(names(&mut map.page("", Some("a/3"))), ["b/1"]);
}

#[test]
fn a_linked_change_merges_only_on_top_of_the_entry_it_follows() {
    let (a, n) = (actor("a"), name("c"));
    let mut origin = CounterMap::new();
    let key = crate::IdempotencyKey::new("k").unwrap();
    let first = origin
        .apply_keyed(&a, &n, Op::Increment(3), &key, 10, 100)
        .unwrap();
    let second = origin.apply(&a, &n, Op::Increment(1)).unwrap();
    let link = |prev_seq, delta: &CounterMap| {
        let change = delta.all_changes().next().unwrap();
        LinkedChange { prev_seq, change }
    };
    let mut late = CounterMap::new();
    // The keyed write's delta was lost: the next one is not merged alone.
    let (news, skipped) = late.merge_linked([link(1, &second)], &Watermarks::new());
    assert!(skipped && news.is_empty());
    let (_, skipped) = late.merge_linked(
        [link(0, &first.delta), link(1, &second)],
        &Watermarks::new(),
    );
    assert!(!skipped);
    assert_eq!(late, origin, "entry and registration alike");
}
