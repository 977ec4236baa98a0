//! A keyspace of many counters: what anti-entropy relies on when the number
//! of counters grows while the number of actors stays small.
//! - a replica's [`Summary`] has one entry per actor, whatever the counters;
//! - `changes_since` lists exactly the entries a peer lacks, so an idle
//!   exchange lists nothing and one write lists one entry;
//! - a follower that holds every operation up to its summary, merged with
//!   `changes_since(its summary)`, ends equal to the source;
//! - encoded entries stay within the size estimate gossip chunks by;
//! - paging walks the whole keyspace in order, once.
#![cfg(not(target_arch = "wasm32"))]

use crdt_core::{wire, ActorId, CounterMap, CounterName, Entry, Op, Watermarks, MAX_NAME_LEN};
use proptest::prelude::*;

fn name(text: &str) -> CounterName {
    CounterName::new(text).expect("valid name")
}

fn actor(text: &str) -> ActorId {
    ActorId::new(text).expect("valid actor")
}

/// `count` counters `k<i>`, written round robin by `actors`.
fn keyspace(count: usize, actors: &[ActorId]) -> CounterMap {
    let mut map = CounterMap::new();
    for i in 0..count {
        let writer = &actors[i % actors.len()];
        map.apply(writer, &name(&format!("k{i:06}")), Op::Increment(1))
            .expect("increment");
    }
    map
}

#[test]
fn an_idle_exchange_lists_nothing_and_one_write_lists_one_entry() {
    let actors = [actor("n1~a"), actor("n2~b"), actor("n3~c")];
    let mut map = keyspace(100_000, &actors);
    let summary = map.summary();
    assert_eq!(summary.len(), actors.len(), "one watermark per actor");
    assert_eq!(
        map.changes_since(&Watermarks::from_gap_free_summary(summary.clone()))
            .count(),
        0
    );

    map.apply(&actors[1], &name("k000042"), Op::Decrement(3))
        .expect("decrement");
    let lacking: Vec<_> = map
        .changes_since(&Watermarks::from_gap_free_summary(summary.clone()))
        .collect();
    assert_eq!(lacking.len(), 1);
    let change = &lacking[0];
    assert_eq!(
        (change.name.as_str(), change.actor.as_str()),
        ("k000042", "n2~b")
    );
    assert_eq!((change.entry.inc, change.entry.dec), (0, 3));
    assert_eq!(map.summary().len(), actors.len());
}

#[test]
fn a_counter_written_many_times_is_listed_once() {
    let writer = actor("n1~a");
    let mut map = CounterMap::new();
    for _ in 0..10_000 {
        map.apply(&writer, &name("hot"), Op::Increment(1))
            .expect("increment");
    }
    let everything: Vec<_> = map.changes_since(&Watermarks::new()).collect();
    assert_eq!(
        everything.len(),
        1,
        "only the latest entry per (counter, actor)"
    );
    assert_eq!(everything[0].entry.inc, 10_000);
    assert_eq!(everything[0].entry.seq, 10_000);
}

/// One operation: (actor index, counter index, op).
type Step = (usize, usize, Op);

fn step() -> impl Strategy<Value = Step> {
    let op = (any::<bool>(), 1..=1000u64).prop_map(|(increment, amount)| {
        if increment {
            Op::Increment(amount)
        } else {
            Op::Decrement(amount)
        }
    });
    (0..3usize, 0..200usize, op)
}

proptest! {
    /// The follower received, per actor, every operation up to some seq (what
    /// its watermarks claim); `changes_since` must make up the rest exactly.
    #[test]
    fn changes_since_a_followers_summary_completes_it(
        steps in prop::collection::vec(step(), 1..400),
        received in prop::collection::vec(0.0..=1.0f64, 3),
    ) {
        let actors = [actor("n1~a"), actor("n2~b"), actor("n3~c")];
        let mut source = CounterMap::new();
        let mut history: Vec<(usize, CounterMap)> = Vec::new();
        for (who, counter, op) in steps {
            if let Ok(delta) = source.apply(&actors[who], &name(&format!("c{counter}")), op) {
                history.push((who, delta));
            }
        }
        let mut follower = CounterMap::new();
        for (who, share) in received.iter().enumerate() {
            let own: Vec<&CounterMap> = history.iter().filter(|(w, _)| *w == who).map(|(_, d)| d).collect();
            let upto = (own.len() as f64 * share) as usize;
            for delta in &own[..upto] {
                follower.merge(delta);
            }
        }
        let known = follower.summary();
        let lacking: Vec<_> = source.changes_since(&Watermarks::from_gap_free_summary(known.clone())).collect();
        // Exactly the (counter, actor) entries whose latest seq is past the watermark.
        let expected = source
            .counters()
            .flat_map(|(_, c)| c.entries().map(|(a, e): (&ActorId, &Entry)| (a.clone(), e.seq)))
            .filter(|(a, seq)| *seq > known.get(a).copied().unwrap_or(0))
            .count();
        prop_assert_eq!(lacking.len(), expected);
        follower.merge_changed(lacking);
        prop_assert_eq!(follower.digest(), source.digest());
        prop_assert!(follower == source);
        prop_assert_eq!(follower.summary(), source.summary());
    }
}

#[test]
fn encoded_entries_fit_the_gossip_size_estimate() {
    // Gossip cuts pull answers into chunks by estimating each entry at
    // `name + actor + 40` bytes; the worst-case encoding must stay below it.
    let longest_name = "é".repeat(MAX_NAME_LEN / 2);
    let writers = [actor(&"a".repeat(128)), actor("b")];
    let worst = Entry {
        inc: u128::MAX,
        dec: u128::MAX,
        seq: u64::MAX,
        since: 0,
    };
    let mut chunk = CounterMap::new();
    let mut estimate = 0;
    for i in 0..500 {
        let counter = name(&format!("{i:03}{}", &longest_name[..MAX_NAME_LEN - 4]));
        for writer in &writers {
            chunk.merge_entry(&counter, writer, worst);
            estimate += counter.as_str().len() + writer.as_str().len() + 40;
        }
    }
    let encoded = wire::encode(&chunk).len();
    assert!(
        encoded <= estimate,
        "{encoded} encoded bytes exceed the estimate of {estimate}"
    );
}

#[test]
fn pages_walk_the_whole_keyspace_in_order_once() {
    let writer = actor("n1~a");
    let mut map = CounterMap::new();
    let mut names: Vec<String> = Vec::new();
    for i in 0..3_000 {
        for shape in ["a/{}", "a{}", "ab/{}", "é/{}", "z{}"] {
            names.push(shape.replace("{}", &i.to_string()));
        }
    }
    names.extend(["a", "a/", "é"].map(str::to_owned));
    for text in &names {
        map.apply(&writer, &name(text), Op::Increment(1))
            .expect("increment");
    }
    names.sort();
    for prefix in ["", "a", "a/", "ab/", "é", "é/", "zz", "b"] {
        for page_size in [1, 7, 1000] {
            let mut walked: Vec<String> = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page: Vec<String> = map
                    .page(prefix, after.as_deref())
                    .take(page_size)
                    .map(|(n, _)| n.as_str().to_owned())
                    .collect();
                match page.last() {
                    Some(last) => after = Some(last.clone()),
                    None => break,
                }
                walked.extend(page);
            }
            let expected: Vec<&String> = names.iter().filter(|n| n.starts_with(prefix)).collect();
            assert_eq!(
                walked.iter().collect::<Vec<_>>(),
                expected,
                "prefix {prefix:?}, page {page_size}"
            );
        }
    }
    // A cursor below the prefix starts at it; one above it ends the walk.
    assert_eq!(
        map.page("ab/", Some("a")).next().map(|(n, _)| n.as_str()),
        Some("ab/0")
    );
    assert_eq!(
        map.page("ab/", Some("ac")).next().map(|(n, _)| n.as_str()),
        None
    );
}

#[test]
fn names_are_bounded_in_bytes_and_free_of_control_characters() {
    assert!(CounterName::new(&"é".repeat(64)).is_ok(), "128 bytes");
    assert!(
        CounterName::new(&format!("{}x", "é".repeat(64))).is_err(),
        "129 bytes"
    );
    assert!(
        CounterName::new(&"€".repeat(43)).is_err(),
        "129 bytes in 43 characters"
    );
    for bad in [
        "",
        "a\u{0}",
        "a\tb",
        "\u{1b}[31m",
        "a\u{7f}",
        "next\u{85}line",
    ] {
        assert!(CounterName::new(bad).is_err(), "{bad:?}");
    }
    for good in [
        "page/views",
        "ünïcode",
        "with space",
        "emoji 🎉",
        "a\u{200b}b",
    ] {
        assert!(CounterName::new(good).is_ok(), "{good:?}");
    }
}
