//! Property tests of the CRDT laws (native only: proptest does not run on
//! wasm32; `tests/wasm.rs` runs the same checks there on generated cases).
#![cfg(not(target_arch = "wasm32"))]

#[macro_use]
mod common;

use common::{
    laws,
    scenario::{
        run_map, Scenario, Step, ACTORS_PER_REPLICA, LARGE_AMOUNTS, MAX_REPLICAS, MAX_STEPS, NAMES,
    },
    xorshift::EDGE_TOTALS,
};
use crdt_core::{wire, ActorId, CounterMap, CounterName, Entry, Op, Watermarks, MAX_NAME_LEN};
use proptest::prelude::*;

// The deterministic cases wasm32 runs, run natively too.
common::generated_case_tests!(test);

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 1..=1000u64,
        1 => Just(0u64),
        2 => proptest::sample::select(LARGE_AMOUNTS.to_vec()),
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    (any::<bool>(), amount()).prop_map(|(increment, amount)| {
        if increment {
            Op::Increment(amount)
        } else {
            Op::Decrement(amount)
        }
    })
}

fn step(replicas: usize) -> impl Strategy<Value = Step> {
    let apply = (0..replicas, 0..ACTORS_PER_REPLICA, 0..NAMES.len(), op()).prop_map(
        |(replica, actor, name, op)| Step::Apply {
            replica,
            actor,
            name,
            op,
        },
    );
    let sync = (0..replicas, 0..replicas).prop_map(|(from, to)| Step::Sync { from, to });
    prop_oneof![4 => apply, 1 => sync]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1..=MAX_REPLICAS).prop_flat_map(|replicas| {
        proptest::collection::vec(step(replicas), 0..=MAX_STEPS)
            .prop_map(move |steps| Scenario { replicas, steps })
    })
}

/// Operations one actor might send, biased toward the amounts that used to
/// exhaust `u64` totals (`+i64::MAX`, `−u64::MAX`, `+2^63`).
fn large_op() -> impl Strategy<Value = Op> {
    let amount = prop_oneof![
        3 => proptest::sample::select(LARGE_AMOUNTS.to_vec()),
        2 => Just(1u64 << 63),
        2 => 1..=1000u64,
        1 => any::<u64>(),
    ];
    (any::<bool>(), amount).prop_map(|(increment, amount)| {
        if increment {
            Op::Increment(amount)
        } else {
            Op::Decrement(amount)
        }
    })
}

/// A per-actor total as a damaged or hostile peer might send it.
fn total() -> impl Strategy<Value = u128> {
    prop_oneof![
        2 => proptest::sample::select(EDGE_TOTALS.to_vec()),
        1 => any::<u128>(),
        1 => 0..1000u128,
        1 => any::<u64>().prop_map(u128::from),
    ]
}

fn hostile_entry() -> impl Strategy<Value = laws::HostileEntry> {
    // Never seq 0 (see `xorshift::hostile_entry`).
    let seq = prop_oneof![3 => 1..50u64, 1 => Just(u64::MAX), 1 => 1..=u64::MAX];
    (
        0..MAX_REPLICAS,
        0..NAMES.len(),
        0..3usize,
        total(),
        total(),
        seq,
    )
        .prop_map(|(replica, name, actor, inc, dec, seq)| {
            (
                replica,
                name,
                actor,
                Entry {
                    inc,
                    dec,
                    seq,
                    since: 0,
                },
            )
        })
}

fn local_op() -> impl Strategy<Value = laws::LocalOp> {
    (0..MAX_REPLICAS, 0..NAMES.len(), 0..3usize, op())
}

/// Text that is not a valid name or actor id.
fn invalid_text() -> impl Strategy<Value = String> {
    let control = prop_oneof![
        proptest::char::range('\0', '\u{1f}'),
        proptest::char::range('\u{7f}', '\u{9f}'),
    ];
    prop_oneof![
        Just(String::new()),
        "[a-zé🦀]{129,200}".prop_filter("over 128 bytes", |s| s.len() > MAX_NAME_LEN),
        ("\\PC{0,20}", control, "\\PC{0,20}").prop_map(|(a, c, b)| format!("{a}{c}{b}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Keyed writes applied by several replicas under retries: merge laws
    /// on every state passed through (seeds beyond the deterministic cases).
    #[test]
    fn keyed_merge_laws_hold(seed in any::<u64>()) {
        common::keyed::merge_laws_hold(&common::keyed::run(seed));
    }

    /// ... and each logical write counts once after convergence.
    #[test]
    fn each_keyed_write_counts_once(seed in any::<u64>()) {
        common::keyed::each_write_counts_once(common::keyed::run(seed));
    }

    /// Deletes, resets and expiries racing writes, retries, cancellations
    /// and garbage collection: merge laws on every state passed through.
    #[test]
    fn lifecycle_merge_laws_hold(seed in any::<u64>()) {
        common::lifecycle::merge_laws_hold(&common::lifecycle::run(seed));
    }

    /// ... and, once converged, what a removal saw is gone and nothing else.
    #[test]
    fn removals_are_observed_remove(seed in any::<u64>()) {
        common::lifecycle::removals_are_observed_remove(common::lifecycle::run(seed));
    }

    #[test]
    fn map_merge_is_commutative(s in scenario()) {
        laws::map_merge_commutes(&run_map(&s));
    }

    #[test]
    fn map_merge_is_associative(s in scenario()) {
        laws::map_merge_associates(&run_map(&s));
    }

    #[test]
    fn map_merge_is_idempotent(s in scenario()) {
        laws::map_merge_is_idempotent(&run_map(&s));
    }

    #[test]
    fn map_value_is_conserved(s in scenario()) {
        laws::map_value_is_conserved(&run_map(&s));
    }

    #[test]
    fn map_deltas_merge_like_full_states(s in scenario()) {
        laws::map_deltas_merge_like_states(&run_map(&s));
    }

    #[test]
    fn map_joined_deltas_merge_like_single_deltas(s in scenario()) {
        laws::map_joined_deltas_merge_like_single_ones(&run_map(&s));
    }

    #[test]
    fn map_anti_entropy_is_complete(s in scenario()) {
        laws::map_anti_entropy_is_complete(&run_map(&s));
    }

    #[test]
    fn map_wire_round_trips(s in scenario()) {
        laws::map_wire_round_trips(&run_map(&s));
    }

    #[test]
    fn pn_counter_laws_hold(s in scenario()) {
        laws::check_pn_laws(&s);
    }

    /// "No counter can be frozen": whatever local operations one actor had
    /// accepted, a step of 1 that keeps the value within i64 is accepted.
    #[test]
    fn accepted_local_operations_leave_the_counter_writable(
        ops in proptest::collection::vec(large_op(), 0..64),
    ) {
        laws::counter_stays_writable(&ops);
    }

    #[test]
    fn hostile_totals_never_panic_and_obey_the_laws(
        replicas in 1..=MAX_REPLICAS,
        entries in proptest::collection::vec(hostile_entry(), 0..12),
        ops in proptest::collection::vec(local_op(), 0..8),
    ) {
        laws::hostile_entries_obey_the_laws(replicas, &entries, &ops);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        laws::decoding_never_panics(&bytes);
    }

    #[test]
    fn decoding_damaged_encodings_never_panics(
        s in scenario(),
        damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        laws::damaged_encodings_are_handled(&run_map(&s).union(), &damage);
    }

    #[test]
    fn invalid_names_and_actors_are_rejected(text in invalid_text()) {
        prop_assert!(CounterName::new(&text).is_err());
        prop_assert!(ActorId::new(&text).is_err());
        let entry = Entry { inc: 1, dec: 0, seq: 1, since: 0 };
        let smuggled = vec![(text, vec![("node-1".to_owned(), entry)])];
        prop_assert!(wire::decode::<CounterMap>(&wire::encode(&smuggled)).is_err());
    }

    #[test]
    fn valid_names_are_accepted(text in "\\PC{1,40}".prop_filter("≤ 128 bytes", |s| s.len() <= MAX_NAME_LEN)) {
        let name = CounterName::new(&text).expect("valid name");
        prop_assert_eq!(name.as_str(), text.as_str());
        let decoded: CounterName = wire::decode(&wire::encode(&name)).expect("round trip");
        prop_assert_eq!(decoded, name);
    }
}

fn counter_name(text: &str) -> CounterName {
    CounterName::new(text).expect("valid name")
}

/// Summaries describe a replica only while its knowledge of each actor has
/// no gaps. A replica that merged a later delta before an earlier one (lost
/// or still in flight) reports a summary that hides the gap, so
/// `changes_since` cannot fill it; the digests still differ, which is the
/// signal to fall back to a full-state exchange.
#[test]
fn a_summary_hides_a_gap_that_the_digest_reveals() {
    let actor = ActorId::new("node-1~x").expect("valid actor");
    let mut origin = CounterMap::new();
    let _lost = origin.apply(&actor, &counter_name("c1"), Op::Increment(1));
    let later = origin
        .apply(&actor, &counter_name("c2"), Op::Increment(1))
        .expect("in range");
    let mut peer = CounterMap::new();
    peer.merge(&later);
    assert_eq!(
        origin
            .changes_since(&Watermarks::from_gap_free_summary(peer.summary()))
            .count(),
        0
    );
    assert_ne!(origin.digest(), peer.digest());
    peer.merge(&origin);
    assert_eq!(origin.digest(), peer.digest());
}

// A value beyond i64 is reachable only by merging concurrent operations;
// local operations that move it back toward the range must still be accepted.
#[test]
fn a_decrement_towards_the_i64_range_is_accepted_after_a_merge() {
    let (a, b) = (
        ActorId::new("node-a").expect("valid"),
        ActorId::new("node-b").expect("valid"),
    );
    let name = counter_name("default");
    let (mut left, mut right) = (CounterMap::new(), CounterMap::new());
    left.apply(&a, &name, Op::Increment(i64::MAX as u64))
        .expect("in range");
    right
        .apply(&b, &name, Op::Increment(i64::MAX as u64))
        .expect("in range");
    left.merge(&right);
    assert!(left.apply(&b, &name, Op::Decrement(1)).is_ok());
}

/// Finding (model-based test, seed 2326 with `retire_with_keys`): a keyed
/// write applied by n0, n1 and n2 before they heard of each other (one
/// group), a delete on n2 that saw only n2's application (the group counts
/// zero times; n0's and n1's amounts are re-applications the excess takes
/// back), n1 replaced and its old actor retired into the new one (whose
/// entry in the counter is then only the folded re-application). Once
/// stable, compaction records that survivor's entry as removed (it holds
/// no write) and drops it, then forgets what removals saw of the survivor
/// (no longer named), while the takeover record stays (the departed
/// actor's entry is still held): the departed actor's application now
/// follows the fold to a seq no removal covers and counts as live in the
/// key's excess, with no entry holding its amount. Housekeeping moves that
/// replica's read from 9 to 5 (seed 4051, the same way: from 5 to 6).
#[test]
#[ignore = "finding: compaction drops a survivor's entry while a takeover still routes keyed applications through it"]
fn finding_compaction_after_a_takeover_of_keyed_applications_moves_a_read() {
    let rules = common::model::Rules {
        retire_with_keys: true,
        ..Default::default()
    };
    common::model::play(2326, rules, false);
}

/// Finding (model-based test, seed 4 with `forget_with_partial_holdings`):
/// n3 applies keyed write k6 (+4, its seq 2; the delta to n1 is lost) and a
/// retry of k6 on n0 joins its group; n3 then applies k7 (+2, seq 3), whose
/// delta reaches n1: n3's entry at seq 3 holds both amounts but carries
/// only k7's registration. n3 is forgotten and comes back wiped before any
/// pull from it, so n3's registration of k6 is gone everywhere while its
/// amount lives on in n3's entry: k6 counts twice once converged (every
/// replica reads 8 where the model, and the client, expect 4). An eager
/// delta carries the origin's running totals without the registrations of
/// its earlier keyed writes.
#[test]
#[ignore = "finding: an eager delta carries a keyed write's amount without its registration; the origin wiped, the key counts twice"]
fn finding_a_registration_lost_with_its_origin_counts_a_key_twice() {
    let rules = common::model::Rules {
        forget_with_partial_holdings: true,
        ..Default::default()
    };
    common::model::play(4, rules, false);
}

/// Finding (model-based test, seed 352 with `retry_between_windows`):
/// keyed write k14 (+5) applied on n1 (t=1314) and retried on n2 (t=1384):
/// one group, closing at 1414; a delete saw both (the group counts zero).
/// A retry on n0 at t=1445 (after the group closed, within n2's
/// application's window) is a new logical write (+5). n0 folds the closed,
/// wholly removed group (both registrations). n2's delta for its
/// application was still in flight to n4; it arrives after n4 pulled n1's
/// entry from n0 without the folded registration, above n4's watermark, so
/// n4 keeps it: there it heads a group closing at 1484 that swallows n0's
/// new write, which then counts zero times. Converged, n0 reads 0 (as the
/// model) and n4 reads -5, and they never agree again (n0 skips the folded
/// registration as covered by its watermarks).
#[test]
#[ignore = "finding: a folded group's registration delivered late regroups a later write of the same key; replicas diverge"]
fn finding_a_late_registration_of_a_folded_group_swallows_a_later_write() {
    let rules = common::model::Rules {
        retry_between_windows: true,
        ..Default::default()
    };
    common::model::play(352, rules, false);
}
