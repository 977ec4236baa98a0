//! Garbage collection of removed counters: a deleted counter (its entries,
//! registrations and lifecycle) is dropped once every live member is known
//! to hold its removal, so creating and deleting counters returns memory
//! and snapshot space.
//!
//! The rule ([`crdt_core::CounterMap::drop_removed`] is only sound when the
//! caller also holds everything every live member held when it reported,
//! so no write from before a removal can still arrive above it):
//!
//! 1. Each member's `Pull` reports its watermarks (what it holds
//!    everything up to); gossip keeps the highest report per member and
//!    forgets it when the member is forgotten (`--forget-dead-after`).
//!    While removed counters wait, each round pulls from every member
//!    even when states agree ([`Gossip::refresh_watermarks`]): eager
//!    deltas never advance watermarks, and pulls happen otherwise only
//!    when states differ.
//! 2. Each round takes `Lo` = the pointwise minimum and `Hi` = the
//!    pointwise maximum over this node's watermarks and every member's
//!    report, and remembers them. A member that has not reported yet
//!    blocks the round: nothing is known of what it holds.
//! 3. At the next round, if this node's watermarks reached the previous
//!    `Hi` (it holds everything any member held then), counters whose
//!    every seq is within the previous `Lo` (every member held them) are
//!    dropped, a bounded number per round.
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crdt_core::{CounterName, Watermarks};

use crate::gossip::Gossip;
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::transport::Tcp;
use crate::writer::now_ms;

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
}

/// The round's bounds over this node's watermarks and the members'
/// reports; `None` when a member has not reported yet.
pub fn bounds(own: &Watermarks, reports: &[Option<Watermarks>]) -> Option<Bounds> {
    let reports: Vec<&Watermarks> = reports.iter().map(Option::as_ref).collect::<Option<_>>()?;
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
    Some(Bounds { lo, hi })
}

/// True when `own` holds everything up to `hi`, actor by actor.
pub fn covers(own: &Watermarks, hi: &Watermarks) -> bool {
    hi.iter().all(|(actor, seq)| own.get(actor.as_str()) >= seq)
}

/// Collects garbage every `interval` until the process ends. Keys within
/// `key_window` keep their counter (a retry must still find its key).
pub fn spawn(
    replica: Arc<Replica>,
    gossip: Arc<Gossip<Tcp>>,
    metrics: Arc<Metrics>,
    interval: Duration,
    key_window: Duration,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<Bounds> = None;
        let mut cursor: Option<CounterName> = None;
        loop {
            ticks.tick().await;
            if replica.read().map.removed_count() == 0 {
                previous = None;
                continue;
            }
            gossip.refresh_watermarks();
            let reports: Vec<Option<Watermarks>> = (gossip.member_reports().into_iter())
                .map(|(_, r)| r)
                .collect();
            let own = replica.read().watermarks.clone();
            if let Some(held) = previous.take().filter(|b| covers(&own, &b.hi)) {
                let keys_before_ms = now_ms().saturating_sub(duration_ms(key_window));
                let (dropped, resume) = replica.write().map.drop_removed(
                    &held.lo,
                    keys_before_ms,
                    cursor.as_ref(),
                    GC_BUDGET,
                );
                cursor = resume;
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
            previous = bounds(&own, &reports);
        }
    });
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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

    #[test]
    fn bounds_are_the_pointwise_least_and_greatest_of_every_report() {
        let own = marks(&[("a", 5), ("b", 3)]);
        let reports = [
            Some(marks(&[("a", 4), ("b", 9)])),
            Some(marks(&[("a", 7), ("c", 2)])),
        ];
        let bounds = bounds(&own, &reports).unwrap();
        assert_eq!(bounds.lo, marks(&[("a", 4)]));
        assert_eq!(bounds.hi, marks(&[("a", 7), ("b", 9), ("c", 2)]));
    }

    #[test]
    fn a_member_that_has_not_reported_blocks_the_round() {
        let own = marks(&[("a", 5)]);
        assert_eq!(bounds(&own, &[Some(own.clone()), None]), None);
        assert!(bounds(&own, &[]).is_some(), "alone, this node decides");
    }

    #[test]
    fn covers_needs_every_actor_of_the_bound() {
        let hi = marks(&[("a", 7), ("c", 2)]);
        assert!(covers(&marks(&[("a", 7), ("c", 3)]), &hi));
        assert!(!covers(&marks(&[("a", 7)]), &hi));
        assert!(!covers(&marks(&[("a", 6), ("c", 2)]), &hi));
    }
}
