//! The observer replica: everything the page knows about the cluster, with
//! no DOM in sight, so it is tested natively and in the browser alike.
//!
//! The gateway sends the page its merged view of the counters it follows
//! (`Counters` chunks for its `/ws?prefix=`, then `CountersDelta`s), a
//! `Summary` of every node (default-counter value, lag, whether it holds
//! the whole merged view, change counts) and the `Busiest` counters of the
//! whole keyspace. No node's replica crosses the wire: the gateway judges
//! each node against its merged view and sends the verdict.
//!
//! ## Invariants
//! - `merged` is the join of every `Counters` chunk and `CountersDelta` of
//!   the current subscription. A subscription's first chunk *replaces* it
//!   (a narrowed filter must drop what no longer matches); everything
//!   else merges, and merging is idempotent and order-free, so duplicates
//!   and reordering never lose anything.
//! - The cluster is converged when every healthy node's summary says it
//!   holds the gateway's merged view: O(nodes), not O(keyspace).
//! - A counter is listed while it reads as present at the page's clock
//!   (the latest `now_ms` it was given): visible, and not past its expiry.
//!   One that stops being present fades out ([`Departures`]) and is listed
//!   again only once it reads as present again; the gateway's busiest list
//!   never brings back a counter the page holds as gone.
//! - Bad bytes are logged and dropped; nothing here panics on input.
mod departures;
mod log;
mod ranking;

use std::collections::{BTreeMap, BTreeSet};

use crdt_core::{wire, CounterMap, CounterName, CrdtError, PnCounter, DEFAULT_COUNTER};
use tally_protocol::events::{BusyCounter, ClusterEvent, NodeHealth, NodeSummary};

pub use departures::{expires_in_ms, is_expired, is_present, Departure, Departures, Gone, FADE_MS};
pub use log::{CounterList, EventLog, LogEntry, LogKind, Tone, LOG_CAPACITY};
pub use ranking::{busiest, CounterRow, Leaving, RecentActivity, ACTIVITY_WINDOW};

use crate::picture::Timeline;

/// A node's health as the gateway reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// In the gateway's rotation.
    Healthy,
    /// Out of rotation: crashed, stopped or failing its health checks.
    Unhealthy,
    /// Cut off from its peers by the demo.
    Partitioned,
    /// Streamed its state but not (yet) listed by the gateway.
    Unknown,
}

impl Health {
    fn of(node: &NodeHealth) -> Self {
        // A partition is the more specific story: the node may still serve.
        if node.partitioned {
            Health::Partitioned
        } else if node.healthy {
            Health::Healthy
        } else {
            Health::Unhealthy
        }
    }

    /// One lowercase word, also used as a CSS class.
    pub fn label(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Partitioned => "partitioned",
            Health::Unknown => "unknown",
        }
    }
}

/// How a node's view last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// A client wrote to the node.
    LocalWrite,
    /// The node learned entries from a peer.
    Gossip,
}

/// What the page knows of one node.
#[derive(Debug, Clone)]
pub struct NodeView {
    id: String,
    http_addr: String,
    health: Health,
    /// The health the gateway's node table gives it; `health` also says
    /// partitioned when the summary says its peers lost it.
    listed: Health,
    summary: Option<NodeSummary>,
    last_update: Option<Update>,
    updates: u64,
}

impl NodeView {
    fn new(id: &str) -> Self {
        NodeView {
            id: id.to_owned(),
            http_addr: String::new(),
            health: Health::Unknown,
            listed: Health::Unknown,
            summary: None,
            last_update: None,
            updates: 0,
        }
    }

    /// Recomputes `health`; the new one when it changed.
    fn refresh_health(&mut self) -> Option<Health> {
        let cut_off = self.summary.as_ref().is_some_and(|s| s.cut_off);
        // A node the gateway still reaches but its peers do not is
        // partitioned, even outside the demo (which flags it itself).
        let health = match self.listed {
            Health::Healthy if cut_off => Health::Partitioned,
            listed => listed,
        };
        (health != self.health).then(|| {
            self.health = health;
            health
        })
    }

    fn touched(&mut self, update: Update) {
        self.last_update = Some(update);
        self.updates += 1;
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where it serves HTTP (empty until the gateway lists it).
    pub fn http_addr(&self) -> &str {
        &self.http_addr
    }

    /// Its health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Its own value of `counter` (0 when unknown): the gateway's summary
    /// gives the default counter's; no other counter of a node is sent.
    pub fn value(&self, counter: &str) -> i128 {
        match &self.summary {
            Some(summary) if counter == DEFAULT_COUNTER => summary.value,
            _ => 0,
        }
    }

    /// Whether [`NodeView::value`] of `counter` is known.
    pub fn knows(&self, counter: &str) -> bool {
        self.summary.is_some() && counter == DEFAULT_COUNTER
    }

    /// The gateway's latest summary of this node.
    pub fn summary(&self) -> Option<&NodeSummary> {
        self.summary.as_ref()
    }

    /// How its view last changed.
    pub fn last_update(&self) -> Option<Update> {
        self.last_update
    }

    /// Grows by one on every change of its view: the view flashes the card
    /// when this moves.
    pub fn updates(&self) -> u64 {
        self.updates
    }
}

/// How far one node is behind the observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Increments and decrements of the counter the node has not seen
    /// (known for the default counter only).
    pub value_behind: i128,
    /// The node holds the gateway's whole merged view.
    pub in_sync: bool,
}

/// Whether the healthy nodes agree with the observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convergence {
    /// No node is healthy, so there is nothing to compare.
    NoHealthyNodes,
    /// Every healthy node holds the observer's state.
    Converged,
    /// Some healthy nodes lack something the observer has.
    Diverged {
        /// How many healthy nodes differ from the observer.
        behind: usize,
        /// How many nodes are healthy.
        healthy: usize,
    },
}

/// The page's model of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Observer {
    merged: CounterMap,
    nodes: BTreeMap<String, NodeView>,
    controls: bool,
    log: EventLog,
    activity: RecentActivity,
    diverged_since: Option<f64>,
    revision: u64,
    /// The gateway's busiest counters, busiest first.
    top: Vec<BusyCounter>,
    /// The prefix of the counters the gateway sends (None: no `Counters` yet).
    following: Option<String>,
    /// What the cluster picture and the chart draw.
    timeline: Timeline,
    /// Counters that stopped reading as present, fading out of the lists.
    departures: Departures,
    /// The page's clock: the latest `now_ms` given to [`Observer::apply`]
    /// or [`Observer::tick`]. Expiries are judged by it.
    now_ms: f64,
    /// Expiries up to here were looked at: a counter already expired when
    /// the page subscribed just is not listed, it does not fade.
    expired_through_ms: f64,
}

/// Expired counters looked at per tick at most (nodes delete expired
/// counters, so few wait here).
const EXPIRY_SWEEP: usize = 4_096;

impl Observer {
    /// An observer that has heard nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one WebSocket message and applies it. Garbage is logged and
    /// returned as an error; the model is left as it was.
    pub fn receive(&mut self, bytes: &[u8], now_ms: f64) -> Result<(), CrdtError> {
        match wire::decode::<ClusterEvent>(bytes) {
            Ok(event) => {
                self.apply(event, now_ms);
                Ok(())
            }
            Err(error) => {
                self.note(now_ms, LogKind::BadMessage(error.to_string()));
                Err(error)
            }
        }
    }

    /// Applies one event from the gateway.
    pub fn apply(&mut self, event: ClusterEvent, now_ms: f64) {
        self.now_ms = now_ms;
        // States arrive in a burst on connect; the divergence between the
        // first and the last is the page catching up, not the cluster.
        let is_change = !matches!(event, ClusterEvent::Counters { .. });
        match event {
            ClusterEvent::Nodes { nodes, controls } => self.set_nodes(&nodes, controls, now_ms),
            ClusterEvent::Counters {
                prefix,
                state,
                first,
                last,
            } => self.counters(prefix, state, first, last, now_ms),
            ClusterEvent::CountersDelta { delta } => {
                let news = self.merge_counters(&delta, now_ms);
                for (name, _) in news.counters() {
                    self.activity.record(name);
                }
            }
            ClusterEvent::Summary { nodes } => self.summaries(nodes, now_ms),
            ClusterEvent::Busiest { top } => self.top = top,
        }
        self.sweep_expired(now_ms);
        self.track_convergence(now_ms, is_change);
        self.revision += 1;
    }

    /// The clock moved: counters whose expiry passed leave (and fade).
    /// The page calls it every frame; `apply` does it too.
    pub fn tick(&mut self, now_ms: f64) {
        self.now_ms = now_ms;
        if self.sweep_expired(now_ms) {
            self.revision += 1;
        }
    }

    /// Merges `incoming` into the page's counters; a counter that was
    /// visible and no longer is left (deleted), one present again came
    /// back. Returns the news.
    fn merge_counters(&mut self, incoming: &CounterMap, now_ms: f64) -> CounterMap {
        let before: Vec<(CounterName, i128)> = (incoming.counters())
            .filter_map(|(name, _)| Some((name.clone(), self.merged.value(name.as_str())?)))
            .collect();
        let news = self.merged.merge_changed(incoming.all_changes());
        let mut left = Vec::new();
        for (name, value) in before {
            let Some(counter) = self.merged.get(name.as_str()) else {
                continue;
            };
            if !counter.is_visible() {
                let why = match is_expired(counter, now_ms) {
                    true => Gone::Expired,
                    false => Gone::Deleted,
                };
                if self.departures.leave(&name, value, why, now_ms) {
                    left.push((name, why));
                }
            }
        }
        for (name, _) in incoming.counters() {
            let present =
                (self.merged.get(name.as_str())).is_some_and(|counter| is_present(counter, now_ms));
            if present {
                self.departures.came_back(name.as_str());
            }
        }
        self.log_departures(left, now_ms);
        news
    }

    /// Counters whose expiry passed since the last look leave; true when any did.
    fn sweep_expired(&mut self, now_ms: f64) -> bool {
        if now_ms <= self.expired_through_ms {
            return false;
        }
        let mut left = Vec::new();
        for name in self.merged.expired(now_ms as u64, EXPIRY_SWEEP) {
            let Some(counter) = self.merged.get(name.as_str()) else {
                continue;
            };
            let newly = counter
                .expiry()
                .is_some_and(|at| at as f64 > self.expired_through_ms);
            if newly
                && counter.is_visible()
                && self
                    .departures
                    .leave(&name, counter.value(), Gone::Expired, now_ms)
            {
                left.push((name, Gone::Expired));
            }
        }
        self.expired_through_ms = now_ms;
        let any = !left.is_empty();
        self.log_departures(left, now_ms);
        any
    }

    fn log_departures(&mut self, left: Vec<(CounterName, Gone)>, now_ms: f64) {
        for why in [Gone::Deleted, Gone::Expired] {
            let names = left
                .iter()
                .filter(|(_, w)| *w == why)
                .map(|(n, _)| n.as_str());
            let counters = CounterList::from_names(names);
            if !counters.is_empty() {
                self.log.push(now_ms, LogKind::Left { counters, why });
            }
        }
    }

    /// Adds a line to the activity log (connection changes, action results).
    pub fn note(&mut self, now_ms: f64, kind: LogKind) {
        self.log.push(now_ms, kind);
        self.revision += 1;
    }

    fn counters(
        &mut self,
        prefix: String,
        state: CounterMap,
        first: bool,
        last: bool,
        now_ms: f64,
    ) {
        // The first chunk is the whole answer so far: counters of an older
        // subscription must go, or a narrowed filter would keep showing them.
        if first {
            self.merged = state;
            self.activity = RecentActivity::default();
            // What left before this subscription is simply not listed.
            self.departures.clear();
            self.expired_through_ms = now_ms;
        } else {
            self.merge_counters(&state, now_ms);
        }
        if last {
            let counters = (self.merged.page("", None))
                .filter(|(_, counter)| !is_expired(counter, now_ms))
                .count();
            self.log.push(
                now_ms,
                LogKind::Subscribed {
                    prefix: prefix.clone(),
                    counters,
                },
            );
        }
        self.following = Some(prefix);
    }

    fn summaries(&mut self, nodes: Vec<NodeSummary>, now_ms: f64) {
        self.timeline.summary(&nodes, now_ms);
        for summary in nodes {
            let id = summary.id.clone();
            let view = self.view_mut(&id);
            let (local, gossip) = match &view.summary {
                Some(old) => (
                    summary.local_changes.saturating_sub(old.local_changes),
                    summary.gossip_changes.saturating_sub(old.gossip_changes),
                ),
                // The first summary's counts are history, not news.
                None => (0, 0),
            };
            view.summary = Some(summary);
            if let Some(health) = view.refresh_health() {
                let node = id.clone();
                let kind = LogKind::Health {
                    node,
                    now: Some(health),
                };
                self.log.push(now_ms, kind);
            }
            let view = self.view_mut(&id);
            // Gossip is the story the page tells; it flashes over a local write.
            let update = match (local, gossip) {
                (_, 1..) => Some(Update::Gossip),
                (1.., 0) => Some(Update::LocalWrite),
                (0, 0) => None,
            };
            if let Some(update) = update {
                view.touched(update);
            }
            for (gossip, count) in [(false, local), (true, gossip)] {
                if count > 0 {
                    let node = id.clone();
                    let kind = LogKind::NodeChanges {
                        node,
                        gossip,
                        count,
                    };
                    self.log.push(now_ms, kind);
                }
            }
        }
    }

    fn set_nodes(&mut self, nodes: &[NodeHealth], controls: bool, now_ms: f64) {
        self.controls = controls;
        let listed: BTreeSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|id| !listed.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.nodes.remove(&id);
            self.log.push(
                now_ms,
                LogKind::Health {
                    node: id,
                    now: None,
                },
            );
        }
        for info in nodes {
            let view = self.view_mut(&info.id);
            view.http_addr.clone_from(&info.http_addr);
            view.listed = Health::of(info);
            if let Some(health) = view.refresh_health() {
                let node = info.id.clone();
                self.log.push(
                    now_ms,
                    LogKind::Health {
                        node,
                        now: Some(health),
                    },
                );
            }
        }
    }

    fn view_mut(&mut self, node: &str) -> &mut NodeView {
        self.nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeView::new(node))
    }

    /// Logs how long the cluster took to agree again after a change made it diverge.
    fn track_convergence(&mut self, now_ms: f64, is_change: bool) {
        match self.convergence() {
            Convergence::Diverged { .. } => {
                if is_change {
                    self.diverged_since.get_or_insert(now_ms);
                }
            }
            Convergence::Converged => {
                if let Some(since) = self.diverged_since.take() {
                    self.log.push(
                        now_ms,
                        LogKind::Converged {
                            after_ms: now_ms - since,
                        },
                    );
                }
            }
            Convergence::NoHealthyNodes => {}
        }
    }

    /// The join of everything every node ever reported.
    pub fn merged(&self) -> &CounterMap {
        &self.merged
    }

    /// The converged value of `counter` (0 when never written, deleted or expired).
    pub fn value(&self, counter: &str) -> i128 {
        self.present(counter).map_or(0, PnCounter::value)
    }

    /// `counter` when it reads as present at the page's clock.
    fn present(&self, counter: &str) -> Option<&PnCounter> {
        (self.merged.get(counter)).filter(|counter| is_present(counter, self.now_ms))
    }

    /// Whether the page holds `counter` and it is gone (deleted or
    /// expired): shown as such, never from another source.
    pub fn is_gone(&self, counter: &str) -> bool {
        self.merged.get(counter).is_some() && self.present(counter).is_none()
    }

    /// Why `counter` is gone, when [`Observer::is_gone`].
    pub fn gone_why(&self, counter: &str) -> Option<Gone> {
        let held = self.merged.get(counter)?;
        if is_present(held, self.now_ms) {
            return None;
        }
        let why = self.departures.get(counter).map(|departure| departure.why);
        Some(why.unwrap_or(match is_expired(held, self.now_ms) {
            true => Gone::Expired,
            false => Gone::Deleted,
        }))
    }

    /// How long until `counter` expires, when it is present with an expiry ahead.
    pub fn expires_in_ms(&self, counter: &str) -> Option<f64> {
        expires_in_ms(self.present(counter)?, self.now_ms)
    }

    /// Whether some row is still fading out: the view keeps drawing until
    /// none is.
    pub fn is_fading(&self) -> bool {
        self.departures.any_fading(self.now_ms)
    }

    /// Counters that left, fading or not.
    pub fn departures(&self) -> &Departures {
        &self.departures
    }

    /// Every known node, by id.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &NodeView> {
        self.nodes.values()
    }

    /// One node.
    pub fn node(&self, id: &str) -> Option<&NodeView> {
        self.nodes.get(id)
    }

    /// Whether the gateway offers demo controls (partition, crash, …).
    pub fn controls(&self) -> bool {
        self.controls
    }

    /// How far `node` is behind the observer, for `counter` and overall.
    /// With a gateway summary, the default counter's lag and the digest
    /// comparison the gateway made against its full merged view.
    pub fn lag(&self, node: &NodeView, counter: &str) -> Lag {
        let summary = node.summary.as_ref();
        let behind = summary.map_or(0, |summary| i128::from(summary.behind));
        Lag {
            value_behind: if counter == DEFAULT_COUNTER {
                behind
            } else {
                0
            },
            in_sync: summary.is_some_and(|summary| summary.in_sync),
        }
    }

    /// Whether every healthy node holds the observer's state.
    pub fn convergence(&self) -> Convergence {
        // The page holds only its prefix: the gateway compared each node
        // with its whole view, and a node without a summary yet is not judged.
        let judged = (self.nodes.values())
            .filter(|n| n.health == Health::Healthy)
            .filter_map(|n| n.summary.as_ref());
        let (count, behind) = judged.fold((0, 0), |(count, behind), summary| {
            (count + 1, behind + usize::from(!summary.in_sync))
        });
        match (count, behind) {
            (0, _) => Convergence::NoHealthyNodes,
            (_, 0) => Convergence::Converged,
            (healthy, behind) => Convergence::Diverged { behind, healthy },
        }
    }

    /// The `limit` busiest counters whose names contain `filter`: the
    /// gateway's busiest of the whole keyspace first (they carry a rate),
    /// then the page's own pick among the counters it follows.
    pub fn busiest(&self, filter: &str, limit: usize) -> Vec<CounterRow> {
        let wanted = filter.trim().to_lowercase();
        let mut rows: Vec<CounterRow> = (self.top.iter())
            .filter(|busy| wanted.is_empty() || busy.name.to_lowercase().contains(&wanted))
            // A counter the page holds as gone is not brought back by a list
            // made before its removal; the page's own pick fades it out.
            .filter(|busy| !self.is_gone(&busy.name))
            .filter_map(|busy| {
                Some(CounterRow {
                    name: crdt_core::CounterName::new(&busy.name).ok()?,
                    // The page's own copy is fresher than the list when it has one.
                    value: self
                        .present(&busy.name)
                        .map_or(busy.value, PnCounter::value),
                    recent_changes: self.activity.count(&busy.name),
                    per_second: Some(busy.per_second),
                    expires_in_ms: self.expires_in_ms(&busy.name),
                    leaving: None,
                })
            })
            .take(limit)
            .collect();
        let local = busiest(
            &self.merged,
            &self.activity,
            &self.departures,
            filter,
            limit,
            self.now_ms,
        );
        for row in local {
            if rows.len() >= limit {
                break;
            }
            if !rows.iter().any(|shown| shown.name == row.name) {
                rows.push(row);
            }
        }
        rows
    }

    /// The value of `counter` as far as the page knows: its own copy, else
    /// the busiest list's; `None` when the page follows neither.
    pub fn known_value(&self, counter: &str) -> Option<i128> {
        if self.merged.get(counter).is_some() {
            return self.present(counter).map(PnCounter::value);
        }
        Some(self.top.iter().find(|busy| busy.name == counter)?.value)
    }

    /// The prefix of the counters the page holds (None before any arrived,
    /// or from a gateway that sends whole replicas).
    pub fn following(&self) -> Option<&str> {
        self.following.as_deref()
    }

    /// The history the cluster picture and the chart draw.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// The gateway's busiest counters, busiest first.
    pub fn top(&self) -> &[BusyCounter] {
        &self.top
    }

    /// The activity log, newest first.
    pub fn log(&self) -> impl ExactSizeIterator<Item = &LogEntry> {
        self.log.entries()
    }

    /// Grows with every log line, so the view redraws the log only then.
    pub fn log_version(&self) -> u64 {
        self.log.pushed()
    }

    /// Grows on every change, so the view can skip work when nothing moved.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt_core::{ActorId, CounterName, Op};

    fn write(map: &mut CounterMap, actor: &str, counter: &str, op: Op) -> CounterMap {
        let actor = ActorId::new(actor).expect("valid actor");
        let name = CounterName::new(counter).expect("valid name");
        map.apply(&actor, &name, op).expect("applies")
    }

    fn health(id: &str, healthy: bool, partitioned: bool) -> NodeHealth {
        NodeHealth {
            id: id.to_owned(),
            http_addr: format!("127.0.0.1:80{}", id.len()),
            healthy,
            partitioned,
        }
    }

    #[test]
    fn nodes_event_sets_health_and_drops_unlisted_nodes() {
        let mut observer = Observer::new();
        let nodes = vec![health("a", true, false), health("b", true, true)];
        observer.apply(
            ClusterEvent::Nodes {
                nodes,
                controls: true,
            },
            0.0,
        );
        assert_eq!(
            observer.node("b").map(NodeView::health),
            Some(Health::Partitioned)
        );
        assert!(observer.controls());
        let nodes = vec![health("a", false, false)];
        observer.apply(
            ClusterEvent::Nodes {
                nodes,
                controls: false,
            },
            1.0,
        );
        assert!(observer.node("b").is_none());
        assert_eq!(
            observer.node("a").map(NodeView::health),
            Some(Health::Unhealthy)
        );
        assert_eq!(observer.convergence(), Convergence::NoHealthyNodes);
        let lines: Vec<String> = observer.log().map(|e| e.kind.to_string()).collect();
        assert_eq!(lines[..2], ["a is unhealthy", "b left the cluster"]);
    }

    #[test]
    fn convergence_time_is_logged_once_agreement_returns() {
        let mut observer = Observer::new();
        let nodes = vec![health("a", true, false), health("b", true, false)];
        observer.apply(
            ClusterEvent::Nodes {
                nodes,
                controls: false,
            },
            0.0,
        );
        let summary = |id: &str, in_sync: bool| NodeSummary {
            id: id.to_owned(),
            value: 1,
            behind: u64::from(!in_sync),
            in_sync,
            local_changes: 0,
            gossip_changes: 0,
            cut_off: false,
        };
        let mut a = CounterMap::new();
        let delta = write(&mut a, "a", "default", Op::Increment(1));
        observer.apply(ClusterEvent::CountersDelta { delta }, 100.0);
        let summaries = [
            (100.0, [summary("a", true), summary("b", false)]),
            (350.0, [summary("a", true), summary("b", true)]),
        ];
        for (at, nodes) in summaries {
            observer.apply(
                ClusterEvent::Summary {
                    nodes: nodes.to_vec(),
                },
                at,
            );
        }
        assert_eq!(observer.convergence(), Convergence::Converged);
        let newest = observer.log().next().expect("logged");
        assert_eq!(newest.kind, LogKind::Converged { after_ms: 250.0 });
        assert_eq!(newest.kind.to_string(), "converged ✓ after 250 ms");
    }
}
