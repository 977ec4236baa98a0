//! Counters the node exposes on `GET /metrics` in Prometheus text format.
//! Plain atomics: cheap on hot paths, no registry to configure.
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tally_protocol::http_server::ConnectionStats;

/// Message kinds, indexing the per-kind gossip counters.
pub const KINDS: [&str; 12] = [
    "pull",
    "ack",
    "push",
    "delta",
    "ping",
    "ping_ack",
    "members",
    "news",
    "replicate",
    "stored",
    "fetch",
    "fetched",
];

/// Gossip traffic of one direction.
#[derive(Default)]
pub struct Traffic {
    frames: [AtomicU64; KINDS.len()],
    bytes: [AtomicU64; KINDS.len()],
}

impl Traffic {
    /// Counts one frame of `kind` and `size` bytes.
    pub fn record(&self, kind: &str, size: usize) {
        if let Some(index) = KINDS.iter().position(|k| *k == kind) {
            self.frames[index].fetch_add(1, Relaxed);
            self.bytes[index].fetch_add(size as u64, Relaxed);
        }
    }

    /// Total bytes over all kinds.
    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Frames of `kind` so far (0 for an unknown kind).
    pub fn frames(&self, kind: &str) -> u64 {
        (KINDS.iter().position(|k| *k == kind)).map_or(0, |index| self.frames[index].load(Relaxed))
    }
}

/// Every metric of a node.
#[derive(Default)]
pub struct Metrics {
    /// Local increments acknowledged.
    pub increments: AtomicU64,
    /// Local decrements acknowledged.
    pub decrements: AtomicU64,
    /// Operations refused (bad amount, overflow).
    pub rejected_ops: AtomicU64,
    /// Remote messages that brought news.
    pub merges: AtomicU64,
    /// Gossip received.
    pub gossip_in: Traffic,
    /// Gossip sent.
    pub gossip_out: Traffic,
    /// Frames or connections rejected: bad MAC, failed handshake, malformed or oversized frames.
    pub rejected_frames: AtomicU64,
    /// Messages dropped because a peer's queue was full or it is partitioned away.
    pub dropped_messages: AtomicU64,
    /// Inbound gossip connections closed at once: over the connection or handshake cap.
    pub refused_connections: AtomicU64,
    /// WAL fsyncs.
    pub wal_fsyncs: AtomicU64,
    /// WAL bytes written.
    pub wal_bytes: AtomicU64,
    /// Snapshots taken.
    pub snapshots: AtomicU64,
    /// Counters this node deleted because their expiry had passed.
    pub expired: AtomicU64,
    /// Removed counters dropped as garbage once every live member held the removal.
    pub garbage_collected: AtomicU64,
    /// Registrations of keyed writes folded once their window closed everywhere.
    pub keys_folded: AtomicU64,
    /// The HTTP server's connections (open, refused at the cap).
    pub http_connections: Arc<ConnectionStats>,
}

/// How big the keyspace is, sampled when rendering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSize {
    /// Named counters.
    pub counters: usize,
    /// Distinct actors (node incarnations) that wrote anything.
    pub actors: usize,
    /// `(counter, actor)` entries.
    pub entries: usize,
    /// Idempotency keys held (within their window, or with a duplicate
    /// not yet cancelled).
    pub keys: usize,
    /// Counters removed (deleted, reset, expired) and not yet dropped as garbage.
    pub removed: usize,
}

/// Estimated memory per counter (name, map node, counter header).
pub const STATE_BYTES_PER_COUNTER: u64 = 128;
/// Estimated memory per entry (the entry, its place in the counter and in the per-actor index).
pub const STATE_BYTES_PER_ENTRY: u64 = 88;

impl StateSize {
    /// An estimate of the memory the counter map holds, calibrated on the
    /// measured ~389 MiB for 1M counters × 3 actors; names longer than
    /// usual make it an underestimate.
    pub fn estimated_bytes(&self) -> u64 {
        (self.counters as u64)
            .saturating_mul(STATE_BYTES_PER_COUNTER)
            .saturating_add((self.entries as u64).saturating_mul(STATE_BYTES_PER_ENTRY))
    }
}

/// Peer counts by status, sampled when rendering.
pub struct PeerCounts {
    /// Alive peers.
    pub alive: usize,
    /// Suspect peers.
    pub suspect: usize,
    /// Dead peers.
    pub dead: usize,
    /// What this node's failure detector counted.
    pub suspicions: crate::membership::Suspicions,
}

impl Metrics {
    /// Renders Prometheus text exposition format.
    pub fn render(&self, node: &str, state: StateSize, peers: PeerCounts) -> String {
        let mut out = String::new();
        let mut put = |name: &str, help: &str, kind: &str, samples: &[(String, u64)]| {
            let _ = writeln!(
                out,
                "# HELP tally_{name} {help}\n# TYPE tally_{name} {kind}"
            );
            for (labels, value) in samples {
                let _ = writeln!(out, "tally_{name}{{node=\"{node}\"{labels}}} {value}");
            }
        };
        let totals: [(&str, &str, &AtomicU64); 13] = [
            (
                "increments_total",
                "Local increments acknowledged.",
                &self.increments,
            ),
            (
                "decrements_total",
                "Local decrements acknowledged.",
                &self.decrements,
            ),
            (
                "rejected_ops_total",
                "Operations refused.",
                &self.rejected_ops,
            ),
            (
                "merges_total",
                "Gossip messages that brought news.",
                &self.merges,
            ),
            (
                "rejected_frames_total",
                "Frames or connections rejected.",
                &self.rejected_frames,
            ),
            (
                "dropped_messages_total",
                "Gossip messages dropped.",
                &self.dropped_messages,
            ),
            (
                "gossip_connections_refused_total",
                "Inbound gossip connections closed over the connection or handshake cap.",
                &self.refused_connections,
            ),
            ("wal_fsyncs_total", "WAL fsyncs.", &self.wal_fsyncs),
            ("wal_bytes_total", "WAL bytes written.", &self.wal_bytes),
            ("snapshots_total", "Snapshots taken.", &self.snapshots),
            (
                "expired_total",
                "Counters this node deleted because their expiry had passed.",
                &self.expired,
            ),
            (
                "garbage_collected_total",
                "Removed counters dropped as garbage once every live member held the removal.",
                &self.garbage_collected,
            ),
            (
                "keys_folded_total",
                "Registrations of keyed writes folded once their window closed everywhere.",
                &self.keys_folded,
            ),
        ];
        for (name, help, value) in totals {
            put(
                name,
                help,
                "counter",
                &[(String::new(), value.load(Relaxed))],
            );
        }
        let by_kind = |values: &[AtomicU64; KINDS.len()]| -> Vec<(String, u64)> {
            KINDS
                .iter()
                .zip(values)
                .map(|(kind, value)| (format!(",type=\"{kind}\""), value.load(Relaxed)))
                .collect()
        };
        for (direction, traffic) in [("in", &self.gossip_in), ("out", &self.gossip_out)] {
            let frames = by_kind(&traffic.frames);
            put(
                &format!("gossip_frames_{direction}_total"),
                "Gossip frames by type.",
                "counter",
                &frames,
            );
            let bytes = by_kind(&traffic.bytes);
            put(
                &format!("gossip_bytes_{direction}_total"),
                "Gossip bytes by type.",
                "counter",
                &bytes,
            );
        }
        let gauges: [(&str, &str, u64); 8] = [
            (
                "idempotency_keys",
                "Idempotency keys held (each with the registrations of the nodes that applied it).",
                state.keys as u64,
            ),
            ("counters", "Named counters held.", state.counters as u64),
            (
                "removed_counters",
                "Counters removed (deleted, reset, expired) and not yet dropped as garbage.",
                state.removed as u64,
            ),
            (
                "actors",
                "Distinct actors (node incarnations) in the counter map.",
                state.actors as u64,
            ),
            (
                "entries",
                "(counter, actor) entries in the counter map.",
                state.entries as u64,
            ),
            (
                "state_bytes",
                "Estimated memory of the counter map in bytes (an estimate: 128 per counter + 88 per entry).",
                state.estimated_bytes(),
            ),
            (
                "http_connections_open",
                "HTTP connections open (WebSockets included).",
                self.http_connections.open(),
            ),
            (
                "http_connections_refused_total",
                "HTTP connections closed at once because --max-connections was reached.",
                self.http_connections.refused(),
            ),
        ];
        for (name, help, value) in gauges {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            put(name, help, kind, &[(String::new(), value)]);
        }
        let by_status = [
            ("alive", peers.alive),
            ("suspect", peers.suspect),
            ("dead", peers.dead),
        ]
        .map(|(status, count)| (format!(",status=\"{status}\""), count as u64));
        put("peers", "Peers by status.", "gauge", &by_status);
        put(
            "gossip_suspicions_total",
            "Members this node suspected: a probe went unanswered.",
            "counter",
            &[(String::new(), peers.suspicions.raised)],
        );
        put(
            "gossip_false_suspicions_total",
            "Members this node suspected that then refuted the suspicion (they were up).",
            "counter",
            &[(String::new(), peers.suspicions.refuted)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> String {
        let metrics = Metrics::default();
        metrics.increments.fetch_add(3, Relaxed);
        metrics.gossip_in.record("push", 100);
        let state = StateSize {
            counters: 10,
            actors: 2,
            entries: 15,
            keys: 0,
            removed: 0,
        };
        let peers = PeerCounts {
            alive: 1,
            suspect: 0,
            dead: 2,
            suspicions: Default::default(),
        };
        metrics.render("n1", state, peers)
    }

    /// The exposition format promtool checks: each family is one HELP, one
    /// TYPE (counter/gauge), then its samples, counters named `_total`.
    #[test]
    fn the_text_is_valid_prometheus_exposition() {
        let text = rendered();
        let mut seen = std::collections::HashSet::new();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let help = lines[i].strip_prefix("# HELP ").expect(lines[i]);
            let (name, help_text) = help.split_once(' ').unwrap();
            assert!(!help_text.is_empty(), "{name}");
            let kind = lines[i + 1]
                .strip_prefix(&format!("# TYPE {name} "))
                .unwrap_or_else(|| panic!("no TYPE after HELP for {name}"));
            assert!(kind == "counter" || kind == "gauge", "{name}: {kind}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
            assert!(seen.insert(name.to_owned()), "{name} twice");
            i += 2;
            while i < lines.len() && !lines[i].starts_with('#') {
                let (series, value) = lines[i].rsplit_once(' ').unwrap();
                let (metric, labels) = series.split_once('{').unwrap();
                assert_eq!(metric, name, "a sample outside its family");
                assert!(labels.starts_with("node=\"n1\"") && labels.ends_with('}'));
                value.parse::<u64>().unwrap();
                i += 1;
            }
        }
        for name in [
            "tally_counters",
            "tally_actors",
            "tally_entries",
            "tally_state_bytes",
            "tally_http_connections_open",
            "tally_http_connections_refused_total",
            "tally_increments_total",
            "tally_peers",
        ] {
            assert!(seen.contains(name), "{name} missing");
        }
    }

    #[test]
    fn keyspace_gauges_show_the_sampled_sizes() {
        let text = rendered();
        for line in [
            "tally_counters{node=\"n1\"} 10",
            "tally_actors{node=\"n1\"} 2",
            "tally_entries{node=\"n1\"} 15",
            "tally_state_bytes{node=\"n1\"} 2600",
            "tally_http_connections_open{node=\"n1\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
