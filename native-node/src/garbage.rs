//! Housekeeping behind one gate: collecting removed counters (a deleted
//! counter, its entries, registrations and lifecycle, dropped once every
//! live member holds its removal) and folding keyed writes whose window
//! closed everywhere. Both are sound only when this node knows that
//! nothing they drop can still arrive from elsewhere; the gate:
//!
//! 1. Each member's `Pull` reports its watermarks (what it holds
//!    everything up to) and its clock; gossip keeps the highest of each per
//!    member and forgets them when the member is forgotten
//!    (`--forget-dead-after`; a forgotten member is refused if it returns).
//!    While there is work, each round pulls from every member even when
//!    states agree ([`Gossip::refresh_watermarks`]): eager deltas never
//!    advance watermarks, and pulls happen otherwise only when states differ.
//! 2. Each round takes `Lo` = the pointwise minimum and `Hi` = the
//!    pointwise maximum over this node's watermarks and every member's
//!    report, and `clock` = the least clock among them, and remembers
//!    them. A member that has not reported yet blocks the round.
//! 3. At the next round, if this node's watermarks reached the previous
//!    `Hi` (it holds everything any member held when it reported):
//!    - keys are folded whose groups closed before `clock − 2·skew`
//!      ([`closed_before`]): every member stamped those registrations
//!      before its report (clocks are within `--max-clock-skew` of each
//!      other), so this node holds all of them, and none can be stamped again;
//!    - counters whose every seq is within the previous `Lo` (every member
//!      held them) and whose keys closed by then are collected, a bounded
//!      number per round.
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crdt_core::{CounterName, Watermarks};

use crate::gossip::Gossip;
use crate::metrics::Metrics;
use crate::protocol::Report;
use crate::replica::Replica;
use crate::transport::Tcp;
use tally_protocol::clock::now_ms;

/// `--gc-interval` by default: a removal is collected within about two rounds
/// once every member holds it.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(2);

/// Removed counters looked at per round, so a round holds the replica's
/// lock only briefly, however many counters were deleted.
const GC_BUDGET: usize = 20_000;

/// Counters dropped in one round after which freed memory is handed back
/// to the operating system.
const RELEASE_AFTER_DROPPING: usize = 1_000;

/// Hands memory freed by collection back to the operating system. glibc's
/// allocator otherwise keeps freed pages for later: a node that created and
/// deleted a million counters stayed at ~800 MiB resident with none left.
/// Called at most once per round, after a round that dropped many counters
/// (trimming walks the allocator's free lists, milliseconds on a large heap).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    // SAFETY: `malloc_trim` has no preconditions; it only returns unused
    // pages of the allocator's own heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

/// What one round learnt of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    /// What every member (and this node) held: what may be collected.
    pub lo: Watermarks,
    /// What some member held: what this node must hold before collecting.
    pub hi: Watermarks,
    /// The least clock among this node's and the members' reports.
    pub clock_ms: u64,
    /// The members forgotten (by every member): what is collected with
    /// these bounds is collected without them.
    pub without: Vec<String>,
}

/// The round's bounds over this node's watermarks (at its clock
/// `now_ms`) and the members' reports; `None` when a member has not
/// reported yet, or has not reported forgetting every member this node
/// forgot (`forgotten`): until then, that member may admit a forgotten
/// member's old data, and nothing may be collected without it.
pub fn bounds(
    own: &Watermarks,
    now_ms: u64,
    reports: &[Option<Report>],
    forgotten: &[String],
) -> Option<Bounds> {
    let reports: Vec<&Report> = reports.iter().map(Option::as_ref).collect::<Option<_>>()?;
    let agreed = forgotten
        .iter()
        .all(|id| reports.iter().all(|r| r.forgotten.contains(id)));
    if !agreed {
        return None;
    }
    let clock_ms = (reports.iter()).fold(now_ms, |least, r| least.min(r.clock_ms));
    let reports: Vec<&Watermarks> = reports.iter().map(|r| &r.watermarks).collect();
    let mut hi = own.clone();
    for report in &reports {
        hi.raise_all(report);
    }
    // An actor missing from any report is held by no one up to anything.
    let lo = (own.iter())
        .map(|(actor, seq)| {
            let least = (reports.iter()).fold(seq, |least, r| least.min(r.get(actor.as_str())));
            (actor.clone(), least)
        })
        .filter(|(_, seq)| *seq > 0)
        .collect();
    Some(Bounds {
        lo,
        hi,
        clock_ms,
        without: forgotten.to_vec(),
    })
}

/// Keys whose groups closed before this may be folded, and counters whose
/// keys did may be collected: the round's least clock, or this node's if
/// earlier, less twice the skew a node may have. A registration stamped
/// before it was stamped (real time) before every member reported, so the
/// reports cover it; and no node stamps below it any more.
pub fn closed_before(bounds: &Bounds, now_ms: u64, max_skew_ms: u64) -> u64 {
    (bounds.clock_ms.min(now_ms)).saturating_sub(max_skew_ms.saturating_mul(2))
}

/// True when `own` holds everything up to `hi`, actor by actor.
pub fn covers(own: &Watermarks, hi: &Watermarks) -> bool {
    hi.iter().all(|(actor, seq)| own.get(actor.as_str()) >= seq)
}

/// Collects garbage and folds keys every `interval` until the process ends.
pub fn spawn(
    replica: Arc<Replica>,
    gossip: Arc<Gossip<Tcp>>,
    metrics: Arc<Metrics>,
    interval: Duration,
    max_skew: Duration,
) {
    let max_skew_ms = u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<Bounds> = None;
        let mut cursor: Option<CounterName> = None;
        loop {
            ticks.tick().await;
            let now = now_ms();
            let work = {
                let state = replica.read();
                state.map.removed_count() > 0
                    || state
                        .map
                        .has_keys_closing_by(now.saturating_sub(max_skew_ms.saturating_mul(2)))
            };
            if !work {
                previous = None;
                continue;
            }
            gossip.refresh_watermarks();
            let reports: Vec<Option<Report>> = (gossip.member_reports().into_iter())
                .map(|(_, r)| r)
                .collect();
            let own = replica.read().watermarks.clone();
            if let Some(held) = previous.take().filter(|b| covers(&own, &b.hi)) {
                let closed_before_ms = closed_before(&held, now, max_skew_ms);
                let removed_before = replica.read().map.removed_count();
                let folded = replica.write().map.fold_keys(&held.lo, closed_before_ms);
                if folded > 0 {
                    metrics.keys_folded.fetch_add(folded as u64, Relaxed);
                    tracing::debug!(folded, "keyed writes past their window folded");
                }
                let (dropped, resume) = replica.write().map.drop_removed(
                    &held.lo,
                    closed_before_ms,
                    cursor.as_ref(),
                    GC_BUDGET,
                );
                cursor = resume;
                let compacted = removed_before > replica.read().map.removed_count();
                if folded > 0 || compacted {
                    // Collected without them: from now on, what their old
                    // data holds may bring removed amounts back.
                    gossip
                        .forgotten()
                        .learn(held.without.iter().map(|id| (id.clone(), now)));
                }
                let count = dropped.len();
                if count > 0 {
                    metrics.garbage_collected.fetch_add(count as u64, Relaxed);
                    tracing::debug!(dropped = count, "removed counters collected");
                }
                replica.publish_collected(dropped);
                if count >= RELEASE_AFTER_DROPPING {
                    release_freed_memory();
                }
            }
            let forgotten = gossip.members().forgotten_ids();
            previous = bounds(&own, now, &reports, &forgotten);
        }
    });
}

#[cfg(test)]
mod tests {
    use crdt_core::ActorId;

    use super::*;

    fn marks(pairs: &[(&str, u64)]) -> Watermarks {
        (pairs.iter())
            .map(|(actor, seq)| (ActorId::new(actor).unwrap(), *seq))
            .collect()
    }

    use tally_protocol::clock::MAX_CLOCK_SKEW_MS;

    fn report(pairs: &[(&str, u64)], clock_ms: u64) -> Option<Report> {
        Some(Report {
            watermarks: marks(pairs),
            clock_ms,
            forgotten: Vec::new(),
        })
    }

    const NONE_FORGOTTEN: &[String] = &[];

    #[test]
    fn bounds_are_the_pointwise_least_and_greatest_of_every_report() {
        let own = marks(&[("a", 5), ("b", 3)]);
        let reports = [
            report(&[("a", 4), ("b", 9)], 1_000),
            report(&[("a", 7), ("c", 2)], 900),
        ];
        let bounds = bounds(&own, 2_000, &reports, NONE_FORGOTTEN).unwrap();
        assert_eq!(bounds.lo, marks(&[("a", 4)]));
        assert_eq!(bounds.hi, marks(&[("a", 7), ("b", 9), ("c", 2)]));
        assert_eq!(bounds.clock_ms, 900, "the least clock");
    }

    #[test]
    fn a_member_that_has_not_reported_blocks_the_round() {
        let own = marks(&[("a", 5)]);
        let reports = [report(&[("a", 5)], 10), None];
        assert_eq!(bounds(&own, 10, &reports, NONE_FORGOTTEN), None);
        assert!(
            bounds(&own, 10, &[], NONE_FORGOTTEN).is_some(),
            "alone, this node decides"
        );
    }

    #[test]
    fn a_member_that_has_not_forgotten_what_this_node_forgot_blocks_the_round() {
        let own = marks(&[("a", 5)]);
        let reports = [report(&[("a", 5)], 10)];
        assert_eq!(bounds(&own, 10, &reports, &["n3".to_owned()]), None);
        let mut agreeing = reports[0].clone().unwrap();
        agreeing.forgotten.push("n3".to_owned());
        assert!(bounds(&own, 10, &[Some(agreeing)], &["n3".to_owned()]).is_some());
    }

    #[test]
    fn keys_close_twice_the_skew_before_the_least_clock() {
        let bounds = bounds(
            &marks(&[]),
            500_000,
            &[report(&[("a", 1)], 400_000)],
            NONE_FORGOTTEN,
        )
        .unwrap();
        assert_eq!(
            closed_before(&bounds, 500_000, MAX_CLOCK_SKEW_MS),
            400_000 - 2 * MAX_CLOCK_SKEW_MS
        );
        assert_eq!(
            closed_before(&bounds, 100, MAX_CLOCK_SKEW_MS),
            0,
            "never below zero"
        );
    }

    #[test]
    fn covers_needs_every_actor_of_the_bound() {
        let hi = marks(&[("a", 7), ("c", 2)]);
        assert!(covers(&marks(&[("a", 7), ("c", 3)]), &hi));
        assert!(!covers(&marks(&[("a", 7)]), &hi));
        assert!(!covers(&marks(&[("a", 6), ("c", 2)]), &hi));
    }
}
