//! What browsers get besides the node table: the merged view's news
//! filtered by each browser's prefix, the busiest counters, and a summary
//! of every node — so a page never needs any node's whole replica.
//!
//! The pure parts (top-N, prefix filtering, per-node counts) are tested here;
//! [`run`] publishes summaries and the busiest list on a timer.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crdt_core::{wire, CounterMap};
use tally_protocol::events::{
    BusyCounter, ClusterEvent, MemberInfo, NodeSummary, BUSIEST_COUNTERS,
};

use crate::browser;
use crate::state::Shared;

/// How often summaries are considered (sent only when they changed).
const SUMMARY_EVERY: Duration = Duration::from_millis(500);
/// How often the busiest list is considered (sent only when it changed).
const BUSIEST_EVERY: Duration = Duration::from_secs(1);
/// The busiest list's memory: a change counts `e^(-age/τ)`, so a counter's
/// score is about its rate × τ.
const DECAY_SECONDS: f64 = 10.0;
/// Counters the busiest list tracks at most (twice this before a prune):
/// a bounded map whatever the keyspace or the write pattern.
const TRACKED_COUNTERS: usize = 1_000;

/// Changes to the merged view, as published once for every browser.
#[derive(Debug)]
pub struct News {
    /// The changed entries.
    pub delta: CounterMap,
    /// `CountersDelta { delta }` encoded once: what a browser whose prefix
    /// matches every counter in it is sent as is.
    pub frame: Bytes,
}

impl News {
    pub fn new(delta: CounterMap) -> Self {
        let frame = Bytes::from(wire::encode(&ClusterEvent::CountersDelta {
            delta: delta.clone(),
        }));
        News { delta, frame }
    }

    /// The frame for a browser subscribed to the counters starting with
    /// `prefix`, up to `window_end` when its snapshot stopped at its limit:
    /// the shared frame when every counter matches (no copy), a filtered
    /// one when some do, `None` when none does.
    pub fn for_window(&self, prefix: &str, window_end: Option<&str>) -> Option<Bytes> {
        let within = |name: &str| window_end.is_none_or(|end| name <= end);
        let matching = (self.delta.counters())
            .filter(|(name, _)| name.as_str().starts_with(prefix) && within(name.as_str()))
            .count();
        if matching == self.delta.len() {
            return (matching > 0).then(|| self.frame.clone());
        }
        if matching == 0 {
            return None;
        }
        let mut delta = CounterMap::new();
        // Deleted counters too, with their lifecycle: a delete is news.
        let in_window =
            (self.delta.all_from(prefix, None)).take_while(|(name, _)| within(name.as_str()));
        for (name, counter) in in_window {
            for registration in counter.registrations() {
                delta.merge_registration(name, registration);
            }
            if let Some(lifecycle) = counter.lifecycle() {
                delta.merge_lifecycle(name, lifecycle);
            }
            for (actor, entry) in counter.entries() {
                delta.merge_entry(name, actor, *entry);
            }
        }
        Some(Bytes::from(wire::encode(&ClusterEvent::CountersDelta {
            delta,
        })))
    }
}

/// The busiest counters by recent change rate, in bounded memory.
///
/// Forward decay: a change at time `t` adds `e^((t - landmark)/τ)`, so old
/// scores never need touching; reading divides by `e^((now - landmark)/τ)`.
/// The landmark moves (rescaling every score) before the factors grow
/// large. At most `2 × capacity` counters are held; beyond that the weakest
/// half is dropped, so a steady heavy hitter stays while one-off writes to
/// a million counters cost nothing lasting.
#[derive(Debug)]
pub struct TopCounters {
    scores: HashMap<String, f64>,
    landmark: f64,
    capacity: usize,
}

impl Default for TopCounters {
    fn default() -> Self {
        Self::new(TRACKED_COUNTERS)
    }
}

impl TopCounters {
    pub fn new(capacity: usize) -> Self {
        TopCounters {
            scores: HashMap::new(),
            landmark: 0.0,
            capacity: capacity.max(1),
        }
    }

    /// One change to `name` at `now` (seconds on any steady clock).
    pub fn record(&mut self, name: &str, now: f64) {
        // e^50 is far from f64's limit yet leaves plenty of headroom.
        if (now - self.landmark) / DECAY_SECONDS > 50.0 {
            self.rescale(now);
        }
        let weight = ((now - self.landmark) / DECAY_SECONDS).exp();
        match self.scores.get_mut(name) {
            Some(score) => *score += weight,
            None => {
                self.scores.insert(name.to_owned(), weight);
                if self.scores.len() > 2 * self.capacity {
                    self.prune();
                }
            }
        }
    }

    fn rescale(&mut self, now: f64) {
        let factor = (-(now - self.landmark) / DECAY_SECONDS).exp();
        for score in self.scores.values_mut() {
            *score *= factor;
        }
        // Below one change in e^-50 of the memory, nothing is left to rank.
        self.scores.retain(|_, score| *score > 1e-9);
        self.landmark = now;
    }

    /// Stops ranking `name` (it was deleted): it leaves the list at once
    /// rather than as its score decays.
    pub fn forget(&mut self, name: &str) {
        self.scores.remove(name);
    }

    /// Keeps the `capacity` strongest.
    fn prune(&mut self) {
        let mut scores: Vec<f64> = self.scores.values().copied().collect();
        let cut = scores.len() - self.capacity;
        let (_, threshold, _) = scores.select_nth_unstable_by(cut, f64::total_cmp);
        let threshold = *threshold;
        self.scores.retain(|_, score| *score >= threshold);
        // Ties at the threshold may keep a few more; the bound is 2 × capacity anyway.
    }

    /// The `limit` busiest at `now`, with their changes per second, busiest
    /// first (ties by name, so equal lists compare equal).
    pub fn top(&self, limit: usize, now: f64) -> Vec<(String, f64)> {
        let scale = (-(now - self.landmark) / DECAY_SECONDS).exp() / DECAY_SECONDS;
        let mut all: Vec<(&String, f64)> = (self.scores.iter())
            .map(|(name, score)| (name, score * scale))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        (all.into_iter().take(limit))
            .map(|(name, rate)| (name.clone(), rate))
            .collect()
    }

    /// How many counters are tracked.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.scores.len()
    }
}

/// What the gateway counts from the streams for browsers.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    top: TopCounters,
    /// By node id: `(local changes, gossip changes)`.
    changes: HashMap<String, (u64, u64)>,
    /// By reporting node id: the members it considers not alive, from its
    /// latest `Members` event.
    not_alive: HashMap<String, Vec<String>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: Instant::now(),
            top: TopCounters::default(),
            changes: HashMap::new(),
            not_alive: HashMap::new(),
        }
    }
}

impl Activity {
    /// A node streamed a delta touching `counters` counters.
    pub fn node_changed(&mut self, node: &str, via_gossip: bool, counters: usize) {
        let (local, gossip) = self.changes.entry(node.to_owned()).or_default();
        let counter = if via_gossip { gossip } else { local };
        *counter = counter.saturating_add(counters as u64);
    }

    /// The merged view changed: every counter in `news` was written,
    /// except those the news deletes, which stop being ranked.
    pub fn merged_changed(&mut self, news: &CounterMap) {
        let now = self.started.elapsed().as_secs_f64();
        for (name, counter) in news.counters() {
            // News holding a removal and nothing written above it is a delete.
            let deleted = counter.lifecycle().is_some() && !counter.is_visible();
            if deleted {
                self.top.forget(name.as_str());
            } else {
                self.top.record(name.as_str(), now);
            }
        }
    }

    /// A node's membership view (its `Members` event).
    pub fn members(&mut self, reporter: &str, members: &[MemberInfo]) {
        let not_alive = (members.iter())
            .filter(|member| member.status != "alive" && member.id != reporter)
            .map(|member| member.id.clone())
            .collect();
        self.not_alive.insert(reporter.to_owned(), not_alive);
    }

    /// Whether most of the other reporting nodes see `node` as suspect or
    /// dead. A majority, so a partitioned node — which sees everyone else
    /// as unreachable — does not make them all look cut off.
    pub fn cut_off(&self, node: &str) -> bool {
        let others = (self.not_alive.iter()).filter(|(reporter, _)| reporter.as_str() != node);
        let (reporters, missing) = others.fold((0, 0), |(reporters, missing), (_, not_alive)| {
            let misses = not_alive.iter().any(|id| id == node);
            (reporters + 1, missing + usize::from(misses))
        });
        reporters > 0 && 2 * missing > reporters
    }

    /// `(local, gossip)` changes `node` streamed so far.
    pub fn changes(&self, node: &str) -> (u64, u64) {
        self.changes.get(node).copied().unwrap_or_default()
    }

    /// The busiest counters now.
    pub fn busiest(&self, limit: usize) -> Vec<(String, f64)> {
        self.top.top(limit, self.started.elapsed().as_secs_f64())
    }
}

/// Every node the gateway has a replica of, summed up.
pub fn summary_event(shared: &Shared) -> ClusterEvent {
    let addrs: Vec<String> = (shared.balancer().nodes().iter())
        .map(|node| node.http_addr.clone())
        .collect();
    let mut nodes: Vec<NodeSummary> = {
        let replicas = shared.replicas();
        (addrs.iter())
            .filter_map(|addr| replicas.node_summary(addr))
            .collect()
    };
    let activity = shared.activity();
    for node in &mut nodes {
        (node.local_changes, node.gossip_changes) = activity.changes(&node.id);
        node.cut_off = activity.cut_off(&node.id);
    }
    ClusterEvent::Summary { nodes }
}

/// The busiest counters with their merged values; deleted and expired
/// ones are left out.
pub fn busiest_event(shared: &Shared) -> ClusterEvent {
    // More than shown, so that counters left out do not shorten the list.
    let ranked = shared.activity().busiest(2 * BUSIEST_COUNTERS);
    let now_ms = wall_clock_ms();
    let replicas = shared.replicas();
    let top = busy_counters(ranked, BUSIEST_COUNTERS, |name| {
        replicas.merged_present_value(name, now_ms)
    });
    ClusterEvent::Busiest { top }
}

/// The first `limit` of `ranked` (name, changes per second) that
/// `present_value` gives a value for: a counter that is deleted or past its
/// expiry has none, and is dropped from the list.
pub fn busy_counters(
    ranked: Vec<(String, f64)>,
    limit: usize,
    present_value: impl Fn(&str) -> Option<i128>,
) -> Vec<BusyCounter> {
    (ranked.into_iter())
        .filter_map(|(name, rate)| {
            let value = present_value(&name)?;
            // Rounded so that a list whose rates barely moved is not resent.
            let per_second = ((rate * 10.0).round() / 10.0) as f32;
            Some(BusyCounter {
                name,
                per_second,
                value,
            })
        })
        .take(limit)
        .collect()
}

/// Whether a published busiest list names a counter that is gone now
/// (deleted, or its expiry passed): then it is recomputed at once rather
/// than at its next turn.
fn names_a_gone_counter(list: &ClusterEvent, shared: &Shared) -> bool {
    let ClusterEvent::Busiest { top } = list else {
        return false;
    };
    let now_ms = wall_clock_ms();
    let replicas = shared.replicas();
    (top.iter()).any(|busy| replicas.merged_present_value(&busy.name, now_ms).is_none())
}

/// Milliseconds since the Unix epoch: expiries are wall-clock times.
fn wall_clock_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since_epoch.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Publishes summaries and the busiest list to every browser when they change.
pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let busiest_every = (BUSIEST_EVERY.as_millis() / SUMMARY_EVERY.as_millis()).max(1) as u64;
    let (mut last_summary, mut last_busiest) = (None, None);
    for round in 0u64.. {
        tick.tick().await;
        let summary = summary_event(&shared);
        if last_summary.as_ref() != Some(&summary) {
            browser::publish(&shared, &summary);
            last_summary = Some(summary);
        }
        let stale = (last_busiest.as_ref()).is_some_and(|list| names_a_gone_counter(list, &shared));
        if round % busiest_every == 0 || stale {
            let busiest = busiest_event(&shared);
            if last_busiest.as_ref() != Some(&busiest) {
                browser::publish(&shared, &busiest);
                last_busiest = Some(busiest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt_core::{ActorId, CounterName, Op, RemovalKind};

    fn delta(names: &[&str]) -> CounterMap {
        let actor = ActorId::new("a~1").unwrap();
        let mut map = CounterMap::new();
        for name in names {
            let _ = map.apply(&actor, &CounterName::new(name).unwrap(), Op::Increment(1));
        }
        map
    }

    fn decoded(frame: &Bytes) -> CounterMap {
        match wire::decode(frame).unwrap() {
            ClusterEvent::CountersDelta { delta } => delta,
            other => panic!("expected a delta, got {other:?}"),
        }
    }

    #[test]
    fn news_is_shared_whole_filtered_or_withheld_by_prefix() {
        let news = News::new(delta(&["page/a", "page/b", "clicks"]));
        // Everything matches: the one shared frame, not a copy.
        let all = news.for_window("", None).unwrap();
        assert_eq!(all.as_ptr(), news.frame.as_ptr());
        let pages = decoded(&news.for_window("page/", None).unwrap());
        let names: Vec<&str> = pages.counters().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["page/a", "page/b"]);
        assert_eq!(pages.get("page/a"), news.delta.get("page/a"));
        assert!(news.for_window("nothing", None).is_none());
        let only = News::new(delta(&["page/a"]));
        let same = only.for_window("page", None).unwrap();
        assert_eq!(same.as_ptr(), only.frame.as_ptr());
        assert!(News::new(CounterMap::new()).for_window("", None).is_none());
    }

    #[test]
    fn news_past_the_end_of_a_window_is_withheld() {
        let news = News::new(delta(&["a", "b", "c", "d"]));
        let window = decoded(&news.for_window("", Some("b")).unwrap());
        let names: Vec<&str> = window.counters().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(news.for_window("c", Some("b")).is_none());
        let all = news.for_window("", Some("z")).unwrap();
        assert_eq!(all.as_ptr(), news.frame.as_ptr());
    }

    /// `names` written, then deleted, by the same actor: the delete's news.
    fn deleted(names: &[&str]) -> CounterMap {
        let actor = ActorId::new("a~1").unwrap();
        let mut map = delta(names);
        let mut news = CounterMap::new();
        for name in names {
            let name = CounterName::new(name).unwrap();
            let removal = map.remove(&actor, &name, RemovalKind::Delete, 1).unwrap();
            news.merge(&removal.expect("present"));
        }
        news
    }

    #[test]
    fn news_for_a_prefix_carries_deletes() {
        let mut news = deleted(&["page/a"]);
        news.merge(&delta(&["clicks"]));
        let news = News::new(news);
        let pages = decoded(&news.for_window("page/", None).expect("page/a matches"));
        let page_a = pages.get("page/a").expect("the deleted counter is sent");
        assert!(page_a.lifecycle().is_some_and(|l| l.mark.is_some()));
        assert_eq!(pages.value("page/a"), None);
        assert!(pages.get("clicks").is_none());
    }

    #[test]
    fn a_deleted_counter_leaves_the_busiest_at_once() {
        let mut activity = Activity::default();
        for _ in 0..5 {
            activity.merged_changed(&delta(&["hot", "warm"]));
        }
        activity.merged_changed(&delta(&["hot"]));
        assert_eq!(activity.busiest(1)[0].0, "hot");
        activity.merged_changed(&deleted(&["hot"]));
        let names: Vec<String> = activity.busiest(5).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["warm"]);
    }

    #[test]
    fn the_busiest_list_drops_gone_counters_and_stays_full() {
        let ranked: Vec<(String, f64)> = ["a", "deleted", "expired", "b", "c"]
            .iter()
            .map(|name| ((*name).to_owned(), 1.04))
            .collect();
        let present = |name: &str| (!matches!(name, "deleted" | "expired")).then_some(7);
        let top = busy_counters(ranked, 3, present);
        let names: Vec<&str> = top.iter().map(|busy| busy.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!((top[0].value, top[0].per_second), (7, 1.0));
    }

    #[test]
    fn the_busiest_are_the_most_written_lately() {
        let mut top = TopCounters::new(10);
        for i in 0..100 {
            let t = f64::from(i) * 0.1;
            top.record("steady", t);
            if i % 4 == 0 {
                top.record("slow", t);
            }
        }
        // A burst long ago fades below the steady writer.
        for _ in 0..500 {
            top.record("old-burst", -60.0);
        }
        let ranked = top.top(3, 10.0);
        let names: Vec<&str> = ranked.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["steady", "slow", "old-burst"]);
        // ~10 changes/s for 10 s with a 10 s memory: about 6.3/s.
        let steady = ranked[0].1;
        assert!((5.0..8.0).contains(&steady), "{steady}");
        assert!(ranked[0].1 > 3.0 * ranked[1].1);
    }

    #[test]
    fn a_million_one_off_counters_stay_bounded_and_the_heavy_hitter_stays() {
        let mut top = TopCounters::new(100);
        for i in 0..20_000u32 {
            let t = f64::from(i) * 0.001;
            top.record(&format!("once-{i}"), t);
            if i % 10 == 0 {
                top.record("hot", t);
            }
            assert!(top.tracked() <= 200);
        }
        assert_eq!(top.top(1, 20.0)[0].0, "hot");
    }

    #[test]
    fn scores_survive_the_landmark_moving() {
        let mut top = TopCounters::new(10);
        let mut last = 0.0;
        for i in 0..2_000 {
            last = f64::from(i);
            top.record("a", last);
        }
        // One change a second for a long time: about one per second.
        let rate = top.top(1, last)[0].1;
        assert!((0.9..1.2).contains(&rate), "{rate}");
    }

    #[test]
    fn activity_counts_local_and_gossip_changes_per_node() {
        let mut activity = Activity::default();
        activity.node_changed("n1", false, 2);
        activity.node_changed("n1", true, 3);
        activity.node_changed("n2", true, 1);
        assert_eq!(activity.changes("n1"), (2, 3));
        assert_eq!(activity.changes("n2"), (0, 1));
        assert_eq!(activity.changes("n3"), (0, 0));
        let member = |id: &str, status: &str| MemberInfo {
            id: id.into(),
            gossip_addr: String::new(),
            http_addr: String::new(),
            status: status.into(),
        };
        // n2 is partitioned: it sees n1 and n3 as suspect, and they see it so.
        let views = [
            ("n1", [("n1", "alive"), ("n2", "suspect"), ("n3", "alive")]),
            ("n2", [("n1", "suspect"), ("n2", "alive"), ("n3", "dead")]),
            ("n3", [("n1", "alive"), ("n2", "dead"), ("n3", "alive")]),
        ];
        for (reporter, view) in views {
            let members: Vec<MemberInfo> = view.iter().map(|(id, s)| member(id, s)).collect();
            activity.members(reporter, &members);
        }
        assert!(activity.cut_off("n2"));
        assert!(!activity.cut_off("n1") && !activity.cut_off("n3"));
        assert!(!activity.cut_off("unknown"));
        activity.merged_changed(&delta(&["x", "y"]));
        activity.merged_changed(&delta(&["x"]));
        assert_eq!(activity.busiest(1)[0].0, "x");
    }
}
