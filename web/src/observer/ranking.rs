//! Which counters are busiest: recent change counts over a sliding window,
//! and a top-N pick that never sorts the whole keyspace.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use crdt_core::{CounterMap, CounterName};

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
/// then by name. O(counters · log limit).
pub fn busiest(
    map: &CounterMap,
    activity: &RecentActivity,
    filter: &str,
    limit: usize,
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
        best.push(Reverse(RankKey {
            recent: activity.count(name.as_str()),
            magnitude: counter.value().unsigned_abs(),
            name: Reverse(name),
            value: counter.value(),
        }));
        if best.len() > limit {
            best.pop();
        }
    }
    best.into_sorted_vec()
        .into_iter()
        .map(|Reverse(key)| CounterRow {
            name: key.name.0.clone(),
            value: key.value,
            recent_changes: key.recent,
            per_second: None,
        })
        .collect()
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
        let rows = busiest(&map, &activity, "", 3);
        assert_eq!(names(&rows), ["hot", "big", "cold"]);
        assert_eq!(rows[0].recent_changes, 3);
        assert_eq!(rows[2].value, -50);
    }

    #[test]
    fn filter_is_a_case_insensitive_substring() {
        let map = map_with(&[("page/Home", 1), ("page/about", 2), ("clicks", 3)]);
        let rows = busiest(&map, &RecentActivity::default(), " PAGE ", 10);
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
