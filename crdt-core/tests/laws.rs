//! Property tests of the CRDT laws (native only: proptest does not run on
//! wasm32; `tests/wasm.rs` runs the same checks there on generated cases).
#![cfg(not(target_arch = "wasm32"))]

#[macro_use]
mod common;

use common::{
    laws,
    model::{self, Rules},
    scenario::{
        run_map, Scenario, Step, ACTORS_PER_REPLICA, LARGE_AMOUNTS, MAX_REPLICAS, MAX_STEPS, NAMES,
    },
    xorshift::EDGE_TOTALS,
};
use crdt_core::{
    wire, ActorId, Change, CounterMap, CounterName, Entry, IdempotencyKey, KeyCheck, LinkedChange,
    Op, RemovalKind, Watermarks, MAX_NAME_LEN,
};
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

/// The rules a finding of the model-based test was found under: every
/// other restriction kept, eager deltas unlinked as they were then. With
/// these a seed replays, step for step, the history that broke.
fn as_found(lifted: Rules) -> Rules {
    Rules {
        unlinked_deltas: true,
        ..lifted
    }
}

fn actor(id: &str) -> ActorId {
    ActorId::new(id).expect("valid actor")
}

fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::new(text).expect("valid key")
}

/// One replica in the interleavings below, as a node keeps it.
#[derive(Clone, Default)]
struct Peer {
    map: CounterMap,
    marks: Watermarks,
}

impl Peer {
    /// A local operation of `actor` (`op` applies it), linked as a node
    /// sends it eagerly: each change with the seq its entry had before.
    fn local(
        &mut self,
        actor: &ActorId,
        name: &str,
        op: impl FnOnce(&mut CounterMap) -> CounterMap,
    ) -> Vec<LinkedChange> {
        let prev_seq = self.map.entry_seq(name, actor.as_str());
        let delta = op(&mut self.map);
        let seq = self.map.last_seq(actor.as_str());
        self.marks.raise(actor, seq);
        (delta.all_changes())
            .map(|change| LinkedChange { prev_seq, change })
            .collect()
    }

    fn write(&mut self, actor: &ActorId, name: &str, amount: i64) -> Vec<LinkedChange> {
        let op = signed(amount);
        self.local(actor, name, |map| {
            map.apply(actor, &counter_name(name), op).expect("in range")
        })
    }

    /// A keyed write the node applies as new (no open attempt here).
    fn keyed(&mut self, actor: &ActorId, name: &str, amount: i64, k: &str, at_ms: u64) {
        let (op, name_) = (signed(amount), counter_name(name));
        let check = self.map.check_key(&key(k), &name_, op, at_ms);
        assert!(matches!(check, KeyCheck::New), "{k} at {at_ms}: {check:?}");
        self.local(actor, name, |map| {
            (map.apply_keyed(actor, &name_, op, &key(k), at_ms, 100))
                .expect("in range")
                .delta
        });
    }

    fn remove(&mut self, actor: &ActorId, name: &str, kind: RemovalKind) -> Vec<LinkedChange> {
        self.local(actor, name, |map| {
            (map.remove(actor, &counter_name(name), kind, 0))
                .expect("in range")
                .expect("present")
        })
    }

    /// Eager changes from a peer.
    fn hear(&mut self, linked: Vec<LinkedChange>) -> bool {
        let (_, skipped) = self.map.merge_linked(linked, &self.marks.clone());
        !skipped
    }

    /// A complete pull from `from`: what it holds above this replica's
    /// watermarks, then its watermarks.
    fn pull(&mut self, from: &Peer) {
        self.pull_some(from, |_| true);
        self.marks.raise_all(&from.marks);
    }

    /// A pull cut short: only the bundles `kept` lets through arrive.
    fn pull_some(&mut self, from: &Peer, kept: impl Fn(&Change) -> bool) {
        let marks = self.marks.clone();
        let answer = from.map.changes_since(&marks).filter(|c| kept(c));
        self.map.merge_news(answer.collect::<Vec<_>>(), &marks);
    }
}

fn signed(amount: i64) -> Op {
    if amount < 0 {
        Op::Decrement(amount.unsigned_abs())
    } else {
        Op::Increment(amount as u64)
    }
}

/// Regression (model-based test, seed 2326 with `retire_with_keys`; seed
/// 4051 the same way): a keyed write applied by n0, n1 and n2 before they
/// heard of each other (one group), a delete on n2 that saw only n2's
/// application (the group counts zero times; n0's and n1's amounts are
/// re-applications the excess takes back), n1 replaced and its old actor
/// retired into the new one (whose entry in the counter is then only the
/// folded re-application). Once stable, compaction recorded that
/// survivor's entry as removed (it holds no write) and dropped it, then
/// forgot what removals saw of the survivor (no longer named), while the
/// takeover record stayed (the departed actor's entry still held): the
/// departed actor's application then followed the fold to a seq no removal
/// covered and counted as live in the key's excess, with no entry holding
/// its amount. Housekeeping moved that replica's read from 9 to 5 (seed
/// 4051: from 5 to 6). Compaction now keeps the entries of the survivors
/// that hold a registration's amount. Each seed is replayed as found, and
/// under the default rules.
#[test]
fn compaction_keeps_the_entry_of_a_survivor_that_holds_a_keyed_amount() {
    let lifted = Rules {
        retire_with_keys: true,
        ..Rules::RESTRICTED
    };
    for seed in [2326, 4051] {
        let run = model::play(seed, as_found(lifted), false);
        assert!(run.coverage.retired_with_keys > 0, "seed {seed}");
        model::run(seed);
    }
}

/// Regression (model-based test, seed 4 with
/// `forget_with_partial_holdings`): n3 applied keyed write k6 (+4, its seq
/// 2; the delta to n1 was lost) and a retry of k6 on n0 joined its group;
/// n3 then applied k7 (+2, seq 3), whose delta reached n1: n3's entry at
/// seq 3 held both amounts but carried only k7's registration. n3 was
/// forgotten and came back wiped before any pull from it, so n3's
/// registration of k6 was gone everywhere while its amount lived on in
/// n3's entry: k6 counted twice once converged (every replica read 8
/// where the model, and the client, expected 4). Eager deltas are now
/// linked: k7's change merges only on top of n3's entry at seq 2, which
/// n1 does not hold, so n1 skips it. Under linked delivery seed 4 plays
/// another history (skips change what follows), so the interleaving is
/// replayed here step for step too.
#[test]
fn a_keyed_amount_travels_eagerly_only_with_its_registration() {
    let lifted = Rules {
        forget_with_partial_holdings: true,
        ..Rules::RESTRICTED
    };
    let run = model::play(4, lifted, false);
    assert!(run.coverage.deltas_skipped > 0);
    model::run(4);

    let (a0, a3) = (actor("n0~0"), actor("n3~g1"));
    let (mut n0, mut n1, mut n3) = (Peer::default(), Peer::default(), Peer::default());
    // n3 applies k6; its delta to n1 is lost. A retry on n0 joins k6's group.
    n3.keyed(&a3, "b", 4, "k6", 1334);
    n0.keyed(&a0, "b", 4, "k6", 1397);
    // n3 writes +2: its entry now holds k6's amount too, not k6's registration.
    let after_k6 = n3.write(&a3, "b", 2);
    assert_eq!(after_k6[0].prev_seq, 1);
    assert!(
        !n1.hear(after_k6.clone()),
        "it waits for the entry it follows"
    );
    assert_eq!(n1.map.value("b"), None);
    // Had n1 pulled from n3, k6 would count once, and the +2 too.
    let mut repaired = n1.clone();
    repaired.pull(&n3);
    repaired.pull(&n0);
    assert!(repaired.hear(after_k6), "held, a late change merges");
    assert_eq!(repaired.map.value("b"), Some(6));
    // n3 is wiped before any pull from it: its +2 never happened, k6 counts once.
    n1.pull(&n0);
    n0.pull(&n1);
    assert_eq!((n0.map.value("b"), n1.map.value("b")), (Some(4), Some(4)));
}

/// Regression (model-based test, seed 352 with `retry_between_windows`):
/// keyed write k14 (+5) applied on n1 (t=1314) and retried on n2
/// (t=1384): one group, closing at 1414; a delete saw both (the group
/// counts zero). A retry on n0 at t=1445 (after the group closed, within
/// n2's application's window) is a new logical write (+5). n0 folded the
/// closed, wholly removed group (both registrations). n2's delta for its
/// application was still in flight to n4; it arrived after n4 pulled n1's
/// entry from n0 without the folded registration, above n4's watermark,
/// so n4 kept it: there it headed a group closing at 1484 that swallowed
/// n0's new write, which then counted zero times. Converged, n0 read 0
/// (as the model) and n4 read -5, and they never agreed again. A group now
/// folds only once every replica holds every application of it
/// (`seen_by_all`). Replayed as found, and under the default rules.
#[test]
fn a_key_group_folds_only_once_every_replica_holds_it() {
    let lifted = Rules {
        retry_between_windows: true,
        ..Rules::RESTRICTED
    };
    let run = model::play(352, as_found(lifted), false);
    assert!(run.coverage.retries_between_windows > 0);
    model::run(352);
}

/// Finding (model sweep, default rules: seeds 2992, 4516, 19269, 36445,
/// 39318, 47847; 4516 also with `forget_with_partial_holdings` alone):
/// departed actor A (n1~0) wrote +5 (run since 1), which a delete by n0
/// saw; A wrote +4 (a new run, since 2); n1 was replaced, and its new
/// actor R deleted the counter having seen A's second run: R's change,
/// whose lifecycle records A's run since 2 as removed, reached n3 eagerly.
/// n1 was forgotten and wiped before anyone pulled A's seq 2. n3, holding
/// A's entry of the first run (since 1) and a removal record of the
/// second, read the counter as deleted (the record's later run shows the
/// first one over). Then n3 retired A: the takeover folded A's entry
/// (+5, since 1) into n3's own, and `live_with_takeovers` subtracts what
/// removals saw of the departed actor only from a record of the *same*
/// run (`saw.since == base.since`); a record of a later run subtracts
/// nothing, so the +5 counts again: n3, and every replica after it, read
/// Some(5) where the model (both writes deleted) reads None. In the seeds
/// the takeover comes from retiring the departed (after convergence, or
/// in the steps); e.g. seed 2992 reads [6, 10] for the model's [-1, 10]
/// after replica 0 retires n0~0 (entry since 1, record since 7), seed
/// 4516 [18, -8] for [13, -8] once converged.
#[test]
fn a_takeover_of_a_run_a_later_removal_covered_counts_nothing() {
    let (a, r, s, d) = (actor("n1~0"), actor("n1~g2"), actor("n3~0"), actor("n0~0"));
    let (mut n0, mut n1, mut n3) = (Peer::default(), Peer::default(), Peer::default());
    n1.write(&a, "a", 5);
    n0.pull(&n1);
    n3.pull(&n1);
    n0.remove(&d, "a", RemovalKind::Delete);
    n1.pull(&n0);
    n3.pull(&n0);
    n1.write(&a, "a", 4);
    assert_eq!(
        n1.map
            .get("a")
            .and_then(|c| c.entry("n1~0"))
            .map(|e| e.since),
        Some(2)
    );
    // n1 is replaced: R deletes, having seen A's second run; n3 hears it eagerly.
    let deleted = n1.remove(&r, "a", RemovalKind::Delete);
    assert!(n3.hear(deleted));
    assert_eq!(n3.map.value("a"), None);
    // n1 is forgotten and wiped. n3 retires A after a pull from every live
    // member (n0): what it holds of A is all there will ever be.
    n3.pull(&n0);
    let last = n3.map.last_seq(a.as_str());
    n3.marks.raise(&a, last);
    let (_fold, _) = n3.map.take_over(&a, &s).expect("in range");
    n0.pull(&n3);
    assert_eq!(
        (n3.map.value("a"), n0.map.value("a")),
        (None, None),
        "both of A's writes were deleted"
    );
    for seed in [2992, 4516, 19269, 36445, 39318, 47847] {
        model::run(seed);
    }
}

/// Finding (model sweep, default rules: seeds 16743, 37259, 49787; with
/// `retry_between_windows` alone: seeds 20123, 49787): n0 applies keyed write k (-1) at
/// t=1266, its group closing at 1366; n2, not having heard of it, applies
/// a retry at 1339 (in that group) and deletes the counter having seen
/// only its own application: the group counts zero times. n3, having
/// heard of neither, applies a retry at 1390: after the group closed,
/// within n2's application's window, a new logical write (-1) heading a
/// group of its own. n3 then hears n2 (not n0): to n3, n2's application
/// heads a group closing at 1439 that holds n3's, and the delete removed
/// it, so n3's entry holds no write and n3's next write (+1) starts a new
/// run (`run_is_over`: `written == 0`), which removes its k application
/// for good. Once n0's registration is everywhere, n3's application heads
/// its own group again, yet removed: k counts zero times, every replica
/// reads Some(1) where the model reads Some(0) (-1 + 1). Without n3's
/// second write every replica reads the model's -1. Seed 16743 reads [None,
/// -3] for [None, -4] once converged.
#[test]
fn a_run_restarts_only_when_removed_not_on_a_partial_view_of_a_keys_groups() {
    let (p, q, s) = (actor("n0~g1"), actor("n2~0"), actor("n3~0"));
    let (mut n0, mut n2, mut n3) = (Peer::default(), Peer::default(), Peer::default());
    n0.keyed(&p, "b", -1, "k4", 1266);
    n2.keyed(&q, "b", -1, "k4", 1339);
    n2.remove(&q, "b", RemovalKind::Delete);
    n3.keyed(&s, "b", -1, "k4", 1390);
    n3.pull(&n2);
    assert_eq!(
        n3.map.value("b"),
        None,
        "to n3, its write joined the removed group"
    );
    n3.write(&s, "b", 1);
    for _ in 0..2 {
        n0.pull(&n2);
        n0.pull(&n3);
        n2.pull(&n0);
        n3.pull(&n0);
    }
    let reads = [&n0, &n2, &n3].map(|peer| peer.map.value("b"));
    assert_eq!(reads, [Some(0); 3], "k's write at 1390 counts once, and +1");
    for seed in [16743, 37259, 49787] {
        model::run(seed);
    }
    let lifted = Rules {
        retry_between_windows: true,
        ..Rules::RESTRICTED
    };
    model::play(20123, lifted, false);
}

/// Finding (model sweep: seeds 41642 and 42157 under the default rules;
/// with `forget_with_partial_holdings` alone: seeds 16935, 21881, 26144,
/// 42157; 42157 also under [`Rules::RESTRICTED`] before the harness
/// counted a lifecycle among a member's partial holdings): a pull
/// answer attaches the counter's lifecycle to every bundle of the counter,
/// so a pull cut short can deliver a removal's lifecycle without its
/// remover's own bundle (here: w resets, then learns y's +1; z pulls from
/// w and only y's bundle arrives, with w's reset in its lifecycle). w is
/// forgotten and wiped, so w's entry stamped with the reset exists nowhere
/// and no watermark will ever fetch it. v, which pulled y's +1 from y
/// before, never receives the reset: z and v have equal entries, equal
/// watermarks and equal digests, and read Some(1) and Some(6) forever
/// (the model: Some(1), the reset held by z). Seed 41642: replica 3 reads
/// -2 where the others and the model read 3. Seed 42157 is the same
/// delivery with a remover whose entry had started a new run at the
/// sender: the lifecycle no longer names the remover's earlier run (its
/// `since` said it), so the reset's effect on that run is lost while the
/// rest of it stays: every replica reads Some(2) where the model reads
/// Some(3) (seeds 21881 and 26144 the same way, with the remover's own
/// earlier entry: 0 for 1, 4 for 3).
#[test]
#[ignore = "finding: a lifecycle a cut-short pull delivers without its remover's bundle, the remover wiped: equal digests, different reads"]
fn finding_a_removal_delivered_without_its_removers_entry_splits_equal_digests() {
    let (x, y, w) = (actor("x"), actor("y"), actor("w"));
    let (mut nx, mut ny, mut nw) = (Peer::default(), Peer::default(), Peer::default());
    let (mut nz, mut nv) = (Peer::default(), Peer::default());
    nx.write(&x, "a", 5);
    for peer in [&mut nw, &mut nz, &mut nv] {
        peer.pull(&nx);
    }
    nw.remove(&w, "a", RemovalKind::Reset);
    ny.write(&y, "a", 1);
    nw.pull(&ny);
    nv.pull(&ny);
    // z pulls from w; w's own bundle is lost.
    nz.pull_some(&nw, |change| change.actor != w);
    assert_eq!(nz.map.value("a"), Some(1), "z holds w's reset");
    // w is forgotten and wiped; z and v pull from each other.
    for _ in 0..2 {
        nz.pull(&nv);
        nv.pull(&nz);
    }
    assert_eq!(nz.map.digest(), nv.map.digest());
    assert_eq!((nz.map.value("a"), nv.map.value("a")), (Some(1), Some(1)));
    for seed in [41642, 42157] {
        model::run(seed);
    }
    let lifted = Rules {
        forget_with_partial_holdings: true,
        ..Rules::RESTRICTED
    };
    for seed in [16935, 21881, 26144] {
        model::play(seed, lifted, false);
    }
}

/// Finding (model sweep, default rules: seed 46954; with
/// `forget_with_partial_holdings` alone: seeds 10370, 28270, 46954): p applies keyed write k (+4) at
/// t=1048; q, not having heard of it, applies a retry at 1074 (the same
/// group) whose eager change reaches r only; q is forgotten and wiped.
/// f, r and p hold p's entry and watermarks {p: 1}, so the gate opens at
/// f (its watermarks cover every live member's) and `fold_keys` folds the
/// group {p@1}: every application f knows is within `seen_by_all`, but r
/// holds q's, which no watermark shows. q's registration then reaches f
/// by a pull: to f it is a lone application (counted) and p's amount a
/// plain write (counted), to r one group: f reads Some(8), r Some(4), with
/// equal digests, for good (the model: Some(4)). Seed 46954: replicas 0
/// and 1 read 17, replicas 2–4 and the model 13.
#[test]
#[ignore = "finding: a fold misses an application a replica holds beyond the watermarks (a forgotten member's eager change): equal digests, different reads"]
fn finding_a_fold_misses_an_application_held_beyond_the_watermarks() {
    let (p, q) = (actor("p"), actor("q"));
    let (mut np, mut nq, mut nr, mut nf) = (
        Peer::default(),
        Peer::default(),
        Peer::default(),
        Peer::default(),
    );
    np.keyed(&p, "a", 4, "k", 1048);
    nq.keyed(&q, "a", 4, "k", 1074);
    let nothing = Watermarks::new();
    let retry = (nq.map.changes_since(&nothing))
        .map(|change| LinkedChange {
            prev_seq: 0,
            change,
        })
        .collect();
    assert!(nr.hear(retry));
    // q is forgotten and wiped. f and r pull from p; f housekeeps behind the gate.
    nr.pull(&np);
    nf.pull(&np);
    let seen_by_all = np.marks.clone();
    for peer in [&np, &nr] {
        assert_eq!(peer.marks, nf.marks, "the gate is open at f");
    }
    assert_eq!(nf.map.fold_keys(&seen_by_all, 1300), 1);
    for _ in 0..2 {
        nf.pull(&nr);
        nr.pull(&nf);
    }
    assert_eq!(nf.map.digest(), nr.map.digest());
    assert_eq!((nf.map.value("a"), nr.map.value("a")), (Some(4), Some(4)));
    model::run(46954);
    let lifted = Rules {
        forget_with_partial_holdings: true,
        ..Rules::RESTRICTED
    };
    for seed in [10370, 28270] {
        model::play(seed, lifted, false);
    }
}

/// The rules `MODEL_LIFT` names for the sweep and the trace: unset, the
/// default rules; else [`Rules::RESTRICTED`] with the comma-separated
/// fields it names set (`unlinked_deltas` too).
fn rules_from_env() -> Rules {
    let Ok(lift) = std::env::var("MODEL_LIFT") else {
        return Rules::default();
    };
    let mut rules = Rules::RESTRICTED;
    for name in lift.split(',').filter(|n| !n.is_empty()) {
        match name {
            "forget_with_partial_holdings" => rules.forget_with_partial_holdings = true,
            "retire_with_keys" => rules.retire_with_keys = true,
            "retry_between_windows" => rules.retry_between_windows = true,
            "unlinked_deltas" => rules.unlinked_deltas = true,
            other => panic!("no rule {other}"),
        }
    }
    rules
}

/// A wide sweep of the model-based test (release mode advised):
/// `MODEL_SEEDS=10000 cargo test --release -p crdt-core --test laws --
/// --ignored model_sweep --nocapture` plays seeds `MODEL_FROM..` (default
/// 0; 5,000 seeds unless told) under [`rules_from_env`], and reports every
/// seed where a replica disagrees with the model.
#[test]
#[ignore = "a long sweep: run on demand"]
fn model_sweep() {
    let number = |var: &str, default: u64| {
        std::env::var(var).map_or(default, |v| v.parse().expect("a number"))
    };
    let (from, count) = (number("MODEL_FROM", 0), number("MODEL_SEEDS", 5_000));
    let rules = rules_from_env();
    let mut failed = Vec::new();
    let mut exercised = model::Coverage::default();
    for seed in from..from + count {
        match std::panic::catch_unwind(|| model::play(seed, rules, false)) {
            Ok(run) => exercised.add(&run.coverage),
            Err(_) => failed.push(seed),
        }
    }
    println!("{count} seeds from {from} under {rules:?}: {exercised:?}");
    assert!(
        failed.is_empty(),
        "seeds that disagree with the model: {failed:?}"
    );
}

/// Plays one seed of the model-based test printing every step, and the
/// model's units and removals at each check:
/// `MODEL_SEED=4 cargo test -p crdt-core --test laws -- --ignored
/// model_trace --nocapture` (rules from [`rules_from_env`]).
#[test]
#[ignore = "a debugging aid: run on demand"]
fn model_trace() {
    let seed = std::env::var("MODEL_SEED").map_or(0, |v| v.parse().expect("a seed"));
    model::play(seed, rules_from_env(), true);
}
