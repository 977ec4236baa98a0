//! Which counters are busiest: recent change counts over a sliding window,
//! and a top-N pick that never sorts the whole keyspace. Only counters that
//! read as present are ranked, and those leaving while they fade.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use crdt_core::{CounterMap, CounterName};

use super::departures::{expires_in_ms, is_present, Departures, Gone, FADE_MS};

/// How many of the latest changes "recent" covers.
pub const ACTIVITY_WINDOW: usize = 1000;

/// One row of the busiest-counters list.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterRow {
    /// The counter.
    pub name: CounterName,
    /// Its converged value (the observer's view).
    pub value: i128,
    /// How many of the last [`ACTIVITY_WINDOW`] changes touched it.
    pub recent_changes: u32,
    /// Its changes per second over the whole cluster, when the gateway's
    /// busiest list has it.
    pub per_second: Option<f32>,
    /// How long until it expires, when it has an expiry ahead.
    pub expires_in_ms: Option<f64>,
    /// Set while it fades out of the list (deleted or expired).
    pub leaving: Option<Leaving>,
}

/// A row on its way out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Leaving {
    /// Why it leaves.
    pub why: Gone,
    /// How long ago it left (ms): the view resumes its fade from there.
    pub elapsed_ms: f64,
}

/// Change counts over the last [`ACTIVITY_WINDOW`] changes the observer learned.
#[derive(Debug, Clone, Default)]
pub struct RecentActivity {
    window: VecDeque<CounterName>,
    counts: BTreeMap<CounterName, u32>,
}

impl RecentActivity {
    /// Records one change to `name`, forgetting the oldest beyond the window.
    pub fn record(&mut self, name: &CounterName) {
        self.window.push_back(name.clone());
        *self.counts.entry(name.clone()).or_default() += 1;
        if self.window.len() > ACTIVITY_WINDOW {
            if let Some(oldest) = self.window.pop_front() {
                self.forget(&oldest);
            }
        }
    }

    fn forget(&mut self, name: &CounterName) {
        if let Some(count) = self.counts.get_mut(name.as_str()) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(name.as_str());
            }
        }
    }

    /// How many recent changes touched `name`.
    pub fn count(&self, name: &str) -> u32 {
        self.counts.get(name).copied().unwrap_or(0)
    }
}

/// The `limit` busiest counters of `map` whose names contain `filter`
/// (case-insensitively): most recent changes first, then largest |value|,
/// then by name. Counters present at `now_ms` are ranked, and those of
/// `departures` still fading (by their last value); the rest are not.
/// O(counters · log limit).
pub fn busiest(
    map: &CounterMap,
    activity: &RecentActivity,
    departures: &Departures,
    filter: &str,
    limit: usize,
    now_ms: f64,
) -> Vec<CounterRow> {
    if limit == 0 {
        return Vec::new();
    }
    let filter = filter.trim().to_lowercase();
    // A min-heap of the best rows so far: its top is the weakest, evicted first.
    let mut best: BinaryHeap<Reverse<RankKey<'_>>> = BinaryHeap::with_capacity(limit + 1);
    for (name, counter) in map.counters() {
        if !filter.is_empty() && !name.as_str().to_lowercase().contains(&filter) {
            continue;
        }
        let value = if is_present(counter, now_ms) {
            counter.value()
        } else {
            match departures.get(name.as_str()) {
                Some(departure) if departure.fade(now_ms).is_some() => departure.value,
                _ => continue,
            }
        };
        best.push(Reverse(RankKey {
            recent: activity.count(name.as_str()),
            magnitude: value.unsigned_abs(),
            name: Reverse(name),
            value,
        }));
        if best.len() > limit {
            best.pop();
        }
    }
    best.into_sorted_vec()
        .into_iter()
        .map(|Reverse(key)| {
            let counter = map.get(key.name.0.as_str());
            let present = counter.is_some_and(|counter| is_present(counter, now_ms));
            CounterRow {
                name: key.name.0.clone(),
                value: key.value,
                recent_changes: key.recent,
                per_second: None,
                expires_in_ms: counter.and_then(|counter| expires_in_ms(counter, now_ms)),
                leaving: (!present)
                    .then(|| leaving(departures, key.name.0.as_str(), now_ms))
                    .flatten(),
            }
        })
        .collect()
}

/// How `name` is leaving at `now_ms`, while it fades.
pub(super) fn leaving(departures: &Departures, name: &str, now_ms: f64) -> Option<Leaving> {
    let departure = departures.get(name)?;
    let fade = departure.fade(now_ms)?;
    Some(Leaving {
        why: departure.why,
        elapsed_ms: fade * FADE_MS,
    })
}

/// Field order is rank order: derived `Ord` compares top to bottom.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct RankKey<'a> {
    recent: u32,
    magnitude: u128,
    name: Reverse<&'a CounterName>,
    value: i128,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt_core::{ActorId, Op};

    fn map_with(values: &[(&str, i64)]) -> CounterMap {
        let actor = ActorId::new("a").expect("valid actor");
        let mut map = CounterMap::new();
        for (name, value) in values {
            let name = CounterName::new(name).expect("valid name");
            let op = if *value >= 0 {
                Op::Increment(value.unsigned_abs())
            } else {
                Op::Decrement(value.unsigned_abs())
            };
            map.apply(&actor, &name, op).expect("applies");
        }
        map
    }

    fn names(rows: &[CounterRow]) -> Vec<&str> {
        rows.iter().map(|row| row.name.as_str()).collect()
    }

    #[test]
    fn recent_changes_rank_before_magnitude() {
        let map = map_with(&[("big", 1000), ("hot", 1), ("cold", -50), ("tiny", 2)]);
        let mut activity = RecentActivity::default();
        for _ in 0..3 {
            activity.record(&CounterName::new("hot").expect("valid"));
        }
        let rows = busiest(&map, &activity, &Departures::default(), "", 3, 0.0);
        assert_eq!(names(&rows), ["hot", "big", "cold"]);
        assert_eq!(rows[0].recent_changes, 3);
        assert_eq!(rows[2].value, -50);
    }

    #[test]
    fn filter_is_a_case_insensitive_substring() {
        let map = map_with(&[("page/Home", 1), ("page/about", 2), ("clicks", 3)]);
        let rows = busiest(
            &map,
            &RecentActivity::default(),
            &Departures::default(),
            " PAGE ",
            10,
            0.0,
        );
        assert_eq!(names(&rows), ["page/about", "page/Home"]);
    }

    #[test]
    fn window_forgets_old_changes() {
        let mut activity = RecentActivity::default();
        let old = CounterName::new("old").expect("valid");
        let new = CounterName::new("new").expect("valid");
        activity.record(&old);
        for _ in 0..ACTIVITY_WINDOW {
            activity.record(&new);
        }
        assert_eq!(activity.count("old"), 0);
        assert_eq!(activity.count("new"), ACTIVITY_WINDOW as u32);
    }
}
