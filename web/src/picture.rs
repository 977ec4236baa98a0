//! The pure half of the cluster picture: what the topology view and the
//! time-series chart draw, as numbers, with no canvas in sight — so the
//! geometry and the bookkeeping are tested natively and in the browser.
//!
//! Everything is fed from the gateway's `Summary` events (see
//! [`crate::observer`]): no node's replica is needed to draw the cluster.
use std::collections::{BTreeMap, VecDeque};

use tally_protocol::events::NodeSummary;

/// How much history the chart keeps and shows.
pub const HISTORY_MS: f64 = 5.0 * 60_000.0;
/// How long a gossip or write pulse stays on the topology view.
pub const PULSE_MS: f64 = 900.0;
/// Pulses kept at most: a burst never grows the picture's memory.
pub const MAX_PULSES: usize = 64;

/// One line of the chart: `(time, value)` samples, oldest first, at most
/// [`HISTORY_MS`] old.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    samples: VecDeque<(f64, f64)>,
}

impl Series {
    /// Adds a sample at `at_ms`, forgetting those older than the history.
    /// A sample older than the newest one is dropped (clocks only go on).
    pub fn push(&mut self, at_ms: f64, value: f64) {
        if !value.is_finite()
            || !at_ms.is_finite()
            || self.samples.back().is_some_and(|(t, _)| *t > at_ms)
        {
            return;
        }
        self.samples.push_back((at_ms, value));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at_ms - *t > HISTORY_MS)
        {
            self.samples.pop_front();
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> impl ExactSizeIterator<Item = &(f64, f64)> {
        self.samples.iter()
    }

    /// The newest value.
    pub fn last(&self) -> Option<f64> {
        self.samples.back().map(|(_, v)| *v)
    }
}

/// A rectangle on the canvas, in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Area {
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
}

/// The value range a chart shows for these series: from 0 (or the lowest
/// value, if negative) to the highest, never empty.
pub fn value_range<'a>(series: impl IntoIterator<Item = &'a Series>) -> (f64, f64) {
    let (mut low, mut high) = (0.0f64, 0.0f64);
    for series in series {
        for (_, value) in series.samples() {
            low = low.min(*value);
            high = high.max(*value);
        }
    }
    if high - low < 1.0 {
        high = low + 1.0;
    }
    (low, high)
}

/// Where `series` goes in `area`: x spans the last [`HISTORY_MS`] up to
/// `now_ms`, y spans `range` bottom-up. Samples out of the window are left out.
pub fn plot(series: &Series, area: Area, range: (f64, f64), now_ms: f64) -> Vec<(f64, f64)> {
    let start = now_ms - HISTORY_MS;
    let span = (range.1 - range.0).max(f64::EPSILON);
    (series.samples())
        .filter(|(t, _)| *t >= start && *t <= now_ms)
        .map(|(t, v)| {
            let x = area.x + (t - start) / HISTORY_MS * area.width;
            let y = area.y + area.height - (v - range.0) / span * area.height;
            (x, y)
        })
        .collect()
}

/// Where each of `count` nodes sits on the topology view: evenly on a
/// circle inside `area`, the first at the top, clockwise.
pub fn ring(count: usize, area: Area) -> Vec<(f64, f64)> {
    let (cx, cy) = (area.x + area.width / 2.0, area.y + area.height / 2.0);
    if count == 1 {
        return vec![(cx, cy)];
    }
    // Leave room for the node's circle and label inside the area.
    let radius = (area.width.min(area.height) / 2.0 - 28.0).max(0.0);
    (0..count)
        .map(|i| {
            let angle =
                -std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * i as f64 / count as f64;
            (cx + radius * angle.cos(), cy + radius * angle.sin())
        })
        .collect()
}

/// Something that happened at a node, drawn for [`PULSE_MS`].
#[derive(Debug, Clone, PartialEq)]
pub struct Pulse {
    /// The node it happened at.
    pub node: String,
    /// Learned by gossip (drawn travelling in from its peers) or written by
    /// a client (drawn as a ring around the node).
    pub gossip: bool,
    /// When the page heard of it.
    pub at_ms: f64,
}

impl Pulse {
    /// How far along it is (0 → 1), `None` once over.
    pub fn progress(&self, now_ms: f64) -> Option<f64> {
        let elapsed = now_ms - self.at_ms;
        (0.0..PULSE_MS)
            .contains(&elapsed)
            .then_some(elapsed / PULSE_MS)
    }
}

/// Per node id: `(local, gossip)` changes as a summary counted them.
type ChangeCounts = BTreeMap<String, (u64, u64)>;

/// The history the picture draws: per-node series, the cluster's write
/// rate, and the pulses still running.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Client writes per second over the whole cluster.
    pub writes_per_second: Series,
    /// Each node's value of the default counter.
    pub values: BTreeMap<String, Series>,
    /// Each node's lag behind the merged view (default counter).
    pub lags: BTreeMap<String, Series>,
    pulses: VecDeque<Pulse>,
    /// The previous summary: when it came, and its counts.
    previous: Option<(f64, ChangeCounts)>,
}

impl Timeline {
    /// Records one `Summary` from the gateway, heard at `now_ms`.
    pub fn summary(&mut self, nodes: &[NodeSummary], now_ms: f64) {
        let counts: ChangeCounts = (nodes.iter())
            .map(|n| (n.id.clone(), (n.local_changes, n.gossip_changes)))
            .collect();
        for node in nodes {
            (self.values.entry(node.id.clone()).or_default()).push(now_ms, node.value as f64);
            (self.lags.entry(node.id.clone()).or_default()).push(now_ms, node.behind as f64);
        }
        // The first summary's counts are history since the gateway started,
        // not a rate; nor are those of a node seen for the first time.
        if let Some((then, before)) = self.previous.take() {
            let mut writes = 0u64;
            for (id, (local, gossip)) in &counts {
                let Some(&(old_local, old_gossip)) = before.get(id) else {
                    continue;
                };
                let new_local = local.saturating_sub(old_local);
                writes = writes.saturating_add(new_local);
                if new_local > 0 {
                    self.pulse(id, false, now_ms);
                }
                if gossip.saturating_sub(old_gossip) > 0 {
                    self.pulse(id, true, now_ms);
                }
            }
            let seconds = (now_ms - then) / 1000.0;
            if seconds > 0.0 {
                self.writes_per_second.push(now_ms, writes as f64 / seconds);
            }
        }
        // Nodes that left take their lines with them.
        self.values.retain(|id, _| counts.contains_key(id));
        self.lags.retain(|id, _| counts.contains_key(id));
        self.previous = Some((now_ms, counts));
    }

    fn pulse(&mut self, node: &str, gossip: bool, at_ms: f64) {
        self.pulses.push_back(Pulse {
            node: node.to_owned(),
            gossip,
            at_ms,
        });
        while self.pulses.len() > MAX_PULSES {
            self.pulses.pop_front();
        }
    }

    /// The pulses still running at `now_ms`, with their progress.
    pub fn pulses(&self, now_ms: f64) -> impl Iterator<Item = (&Pulse, f64)> {
        (self.pulses.iter()).filter_map(move |pulse| Some((pulse, pulse.progress(now_ms)?)))
    }

    /// Whether something still moves at `now_ms` (the view keeps asking
    /// for frames only then).
    pub fn animating(&self, now_ms: f64) -> bool {
        self.pulses(now_ms).next().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_forgets_what_is_older_than_the_history() {
        let mut series = Series::default();
        series.push(0.0, 1.0);
        series.push(HISTORY_MS / 2.0, 2.0);
        series.push(1.0, 9.0); // out of order: dropped
        series.push(f64::NAN, 9.0);
        series.push(HISTORY_MS + 10.0, 3.0);
        let kept: Vec<f64> = series.samples().map(|(_, v)| *v).collect();
        assert_eq!(kept, [2.0, 3.0]);
    }
}
