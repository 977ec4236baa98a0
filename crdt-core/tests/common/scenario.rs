//! A scenario: local operations at several replicas interleaved with
//! full-state syncs, and the runners that play it on `CounterMap`s and on
//! `PnCounter`s while checking every single operation against an oracle.
use std::collections::BTreeMap;

use crdt_core::{ActorId, CounterMap, CounterName, CrdtError, Entry, Op, PnCounter};

use super::assertions::{assert_map_consistent, assert_maps_same};

/// Counter names the generators pick from: few, so operations collide.
pub const NAMES: [&str; 4] = ["default", "page/views", "ünïcode ✓", "z"];
/// Most replicas a scenario uses.
pub const MAX_REPLICAS: usize = 4;
/// Actors each replica owns (e.g. a node and its later incarnation).
pub const ACTORS_PER_REPLICA: usize = 2;
/// Longest scenario, in steps.
pub const MAX_STEPS: usize = 40;
/// Amounts at the edges of the overflow checks.
pub const LARGE_AMOUNTS: [u64; 5] = [
    u64::MAX,
    i64::MAX as u64,
    i64::MAX as u64 + 1,
    (i64::MAX as u64) / 2 + 1,
    1 << 40,
];

/// One thing that happens in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Actor number `actor` of `replica` applies `op` to counter `NAMES[name]`.
    Apply {
        replica: usize,
        actor: usize,
        name: usize,
        op: Op,
    },
    /// `to` merges `from`'s whole state: one gossip exchange.
    Sync { from: usize, to: usize },
}

/// Steps over `replicas` replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub replicas: usize,
    pub steps: Vec<Step>,
}

/// The actor id of `replica`'s actor number `actor`.
///
/// An actor is one incarnation of one node: only its own replica ever writes
/// for it, so actor ids are scoped by replica. (Two replicas writing as the
/// same actor would be a misuse that loses updates, not a scenario.)
pub fn actor_id(replica: usize, actor: usize) -> ActorId {
    ActorId::new(&format!("node-{replica}~{actor}")).expect("generated actor ids are valid")
}

/// The counter name with index `name`.
pub fn counter_name(name: usize) -> CounterName {
    CounterName::new(NAMES[name]).expect("listed names are valid")
}

/// What playing a scenario on `CounterMap`s left behind.
#[derive(Debug, Clone)]
pub struct MapRun {
    /// Every replica's final state.
    pub replicas: Vec<CounterMap>,
    /// Every delta `apply` returned, in order.
    pub deltas: Vec<CounterMap>,
    /// Per counter, the sum of every accepted operation.
    pub expected: BTreeMap<String, i128>,
    /// Copies of replicas taken along the way: `(replica, its state then)`.
    pub older_copies: Vec<(usize, CounterMap)>,
}

impl MapRun {
    /// Every replica's state merged into one.
    pub fn union(&self) -> CounterMap {
        let mut union = CounterMap::new();
        for replica in &self.replicas {
            union.merge(replica);
        }
        union
    }
}

/// Plays `scenario` on `CounterMap`s, checking each operation's result.
pub fn run_map(scenario: &Scenario) -> MapRun {
    let mut run = MapRun {
        replicas: vec![CounterMap::new(); scenario.replicas],
        deltas: Vec::new(),
        expected: BTreeMap::new(),
        older_copies: Vec::new(),
    };
    for step in &scenario.steps {
        match *step {
            Step::Apply {
                replica,
                actor,
                name,
                op,
            } => apply_to_map(&mut run, replica, actor, name, op),
            Step::Sync { from, to } => {
                let source = run.replicas[from].clone();
                run.older_copies.push((to, run.replicas[to].clone()));
                run.replicas[to].merge(&source);
            }
        }
    }
    run
}

fn apply_to_map(run: &mut MapRun, replica: usize, actor: usize, name: usize, op: Op) {
    let (actor, name) = (actor_id(replica, actor), counter_name(name));
    let map = &mut run.replicas[replica];
    let before = map.clone();
    let refusal = expected_refusal(&before, &actor, &name, op);
    match (map.apply(&actor, &name, op), refusal) {
        (Ok(delta), None) => {
            let value_before = before.value(name.as_str()).unwrap_or(0);
            assert_eq!(map.value(name.as_str()), Some(value_before + op.signed()));
            assert_eq!(
                delta.entry_count(),
                1,
                "a delta holds the one changed entry"
            );
            assert_eq!(
                map.last_seq(actor.as_str()),
                before.last_seq(actor.as_str()) + 1
            );
            assert_map_consistent(map);
            *run.expected.entry(name.as_str().to_owned()).or_default() += op.signed();
            run.older_copies.push((replica, before));
            run.deltas.push(delta);
        }
        (Err(error), Some(expected)) => {
            assert_eq!(error, expected, "{op:?} on {name:?} by {actor:?}");
            assert_maps_same(map, &before, "a refused operation changes nothing");
        }
        (result, refusal) => {
            panic!("{op:?} on {name:?} by {actor:?}: got {result:?}, expected refusal {refusal:?}")
        }
    }
}

/// The error a local operation must be refused with, if any: zero amounts,
/// an actor seq or total that cannot grow (reachable only by merging a
/// hostile entry), or a value moving (further) outside `i64`.
pub fn expected_refusal(
    map: &CounterMap,
    actor: &ActorId,
    name: &CounterName,
    op: Op,
) -> Option<CrdtError> {
    let entry = map
        .get(name.as_str())
        .and_then(|counter| counter.entry(actor.as_str()))
        .copied()
        .unwrap_or_default();
    let value = map.value(name.as_str()).unwrap_or(0);
    // A map stamps an actor's next operation after the actor's last seq in
    // any counter.
    let last_seq = map.last_seq(actor.as_str());
    refusal_for(entry, last_seq, value, op)
}

fn refusal_for(entry: Entry, last_seq: u64, value: i128, op: Op) -> Option<CrdtError> {
    let (amount, total) = match op {
        Op::Increment(amount) => (amount, entry.inc),
        Op::Decrement(amount) => (amount, entry.dec),
    };
    let value_after = value.saturating_add(op.signed());
    if last_seq == u64::MAX {
        Some(CrdtError::Overflow)
    } else if amount == 0 {
        Some(CrdtError::ZeroAmount)
    } else if total.checked_add(u128::from(amount)).is_none()
        || (matches!(op, Op::Increment(_)) && value_after > i128::from(i64::MAX))
        || (matches!(op, Op::Decrement(_)) && value_after < i128::from(i64::MIN))
    {
        Some(CrdtError::Overflow)
    } else {
        None
    }
}

/// What playing a scenario on single `PnCounter`s left behind (names ignored).
#[derive(Debug, Clone)]
pub struct PnRun {
    pub replicas: Vec<PnCounter>,
    pub deltas: Vec<PnCounter>,
    /// The sum of every accepted operation.
    pub expected: i128,
}

/// Plays `scenario` on one `PnCounter` per replica, every operation on it.
pub fn run_pn(scenario: &Scenario) -> PnRun {
    let mut run = PnRun {
        replicas: vec![PnCounter::new(); scenario.replicas],
        deltas: Vec::new(),
        expected: 0,
    };
    for step in &scenario.steps {
        match *step {
            Step::Apply {
                replica, actor, op, ..
            } => apply_to_counter(&mut run, replica, actor, op),
            Step::Sync { from, to } => {
                let source = run.replicas[from].clone();
                run.replicas[to].merge(&source);
            }
        }
    }
    run
}

fn apply_to_counter(run: &mut PnRun, replica: usize, actor: usize, op: Op) {
    let actor = actor_id(replica, actor);
    let counter = &mut run.replicas[replica];
    let before = counter.clone();
    let entry = before.entry(actor.as_str()).copied().unwrap_or_default();
    let refusal = refusal_for(entry, entry.seq, before.value(), op);
    let result = match op {
        Op::Increment(amount) => counter.increment(&actor, amount),
        Op::Decrement(amount) => counter.decrement(&actor, amount),
    };
    match (result, refusal) {
        (Ok(delta), None) => {
            assert_eq!(counter.value(), before.value() + op.signed());
            assert_eq!(delta.actors(), 1);
            run.expected += op.signed();
            run.deltas.push(delta);
        }
        (Err(error), Some(expected)) => {
            assert_eq!(error, expected, "{op:?} by {actor:?}");
            assert_eq!(*counter, before, "a refused operation changes nothing");
            assert_eq!(counter.digest(), before.digest());
            assert_eq!(counter.value(), before.value());
        }
        (result, refusal) => {
            panic!("{op:?} by {actor:?}: got {result:?}, expected refusal {refusal:?}")
        }
    }
}
