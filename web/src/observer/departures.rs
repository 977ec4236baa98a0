//! Counters leaving the page: deleted, or past their expiry.
//!
//! A counter that leaves fades out for [`FADE_MS`] in the lists, then is
//! gone. It comes back only when it reads as present again (written after
//! the removal, which starts it from zero); a stale copy of it cannot, as
//! the merge keeps the removal (see `crdt-core`'s `lifecycle`).
//!
//! "Present" is the core's visibility ([`PnCounter::is_visible`]) plus the
//! expiry, which the core leaves to the reader's clock: a counter whose
//! expiry is at or before now is gone here at once, even before a node
//! sweeps it and its delete arrives.
use std::collections::BTreeMap;

use crdt_core::{CounterName, PnCounter};

/// How long a leaving counter stays in the lists, fading.
pub const FADE_MS: f64 = 1_500.0;

/// Departures remembered at most. A finished one only stops an expired
/// counter that no node swept yet from fading twice, so forgetting the
/// oldest finished ones costs nothing but that.
const REMEMBERED: usize = 4_096;

/// Why a counter left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Deleted through the API.
    Deleted,
    /// Its expiry passed.
    Expired,
}

impl Gone {
    /// One lowercase word, as the page writes it.
    pub fn label(self) -> &'static str {
        match self {
            Gone::Deleted => "deleted",
            Gone::Expired => "expired",
        }
    }
}

/// One counter that left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Departure {
    /// When the page saw it leave (the caller's clock, ms).
    pub at_ms: f64,
    /// Its last value while present: what the fading row shows.
    pub value: i128,
    /// Why it left.
    pub why: Gone,
}

impl Departure {
    /// How far its fade is, from 0 (just left) to below 1; `None` once
    /// the fade is over (the counter is no longer listed).
    pub fn fade(&self, now_ms: f64) -> Option<f64> {
        let elapsed = (now_ms - self.at_ms).max(0.0);
        (elapsed < FADE_MS).then(|| elapsed / FADE_MS)
    }
}

/// Whether `counter` reads as present at `now_ms`: visible (never deleted,
/// or written since) and not past its expiry.
pub fn is_present(counter: &PnCounter, now_ms: f64) -> bool {
    counter.is_visible() && !is_expired(counter, now_ms)
}

/// Whether `counter`'s expiry in force is at or before `now_ms`.
pub fn is_expired(counter: &PnCounter, now_ms: f64) -> bool {
    counter.expiry().is_some_and(|at| at as f64 <= now_ms)
}

/// How long until `counter` expires, when it has an expiry still ahead.
pub fn expires_in_ms(counter: &PnCounter, now_ms: f64) -> Option<f64> {
    let left = counter.expiry()? as f64 - now_ms;
    (left > 0.0).then_some(left)
}

/// The counters that left, by name.
#[derive(Debug, Clone, Default)]
pub struct Departures {
    left: BTreeMap<CounterName, Departure>,
}

impl Departures {
    /// `name` left at `now_ms` with `value`; true when that is news (a
    /// counter already leaving keeps its first departure and fade).
    pub fn leave(&mut self, name: &CounterName, value: i128, why: Gone, now_ms: f64) -> bool {
        if self.left.contains_key(name.as_str()) {
            return false;
        }
        if self.left.len() >= REMEMBERED {
            self.left.retain(|_, d| d.fade(now_ms).is_some());
        }
        let departure = Departure {
            at_ms: now_ms,
            value,
            why,
        };
        self.left.insert(name.clone(), departure);
        true
    }

    /// `name` reads as present again: it is listed as any other.
    pub fn came_back(&mut self, name: &str) -> bool {
        self.left.remove(name).is_some()
    }

    /// How `name` left, if it did.
    pub fn get(&self, name: &str) -> Option<&Departure> {
        self.left.get(name)
    }

    /// Whether some counter is still fading at `now_ms` (the view keeps
    /// drawing until none is).
    pub fn any_fading(&self, now_ms: f64) -> bool {
        self.left.values().any(|d| d.fade(now_ms).is_some())
    }

    /// Forgets every departure (a new subscription starts over).
    pub fn clear(&mut self) {
        self.left.clear();
    }

    /// How many departures are remembered.
    pub fn len(&self) -> usize {
        self.left.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.left.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> CounterName {
        CounterName::new(text).expect("valid name")
    }

    #[test]
    fn a_fade_runs_from_zero_to_its_end_then_stops() {
        let departure = Departure {
            at_ms: 1_000.0,
            value: 3,
            why: Gone::Deleted,
        };
        assert_eq!(departure.fade(1_000.0), Some(0.0));
        assert_eq!(departure.fade(1_000.0 + FADE_MS / 2.0), Some(0.5));
        assert_eq!(departure.fade(1_000.0 + FADE_MS), None);
        // A clock that went back reads as "just left", not as a negative fade.
        assert_eq!(departure.fade(0.0), Some(0.0));
    }

    #[test]
    fn a_counter_leaves_once_and_comes_back_once() {
        let mut departures = Departures::default();
        assert!(departures.leave(&name("a"), 5, Gone::Expired, 10.0));
        assert!(!departures.leave(&name("a"), 0, Gone::Deleted, 20.0));
        let kept = departures.get("a").copied();
        assert_eq!(
            kept.map(|d| (d.at_ms, d.value, d.why)),
            Some((10.0, 5, Gone::Expired))
        );
        assert!(departures.any_fading(20.0));
        assert!(!departures.any_fading(10.0 + FADE_MS));
        assert!(departures.came_back("a"));
        assert!(!departures.came_back("a"));
        assert!(departures.is_empty());
    }

    #[test]
    fn memory_is_bounded_by_forgetting_finished_fades() {
        let mut departures = Departures::default();
        for i in 0..REMEMBERED {
            departures.leave(&name(&format!("old-{i}")), 0, Gone::Deleted, 0.0);
        }
        departures.leave(&name("new"), 1, Gone::Deleted, FADE_MS * 2.0);
        assert_eq!(departures.len(), 1);
        assert!(departures.get("new").is_some());
    }
}
