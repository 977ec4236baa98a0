//! Counters the node exposes on `GET /metrics` in Prometheus text format.
//! Plain atomics: cheap on hot paths, no registry to configure.
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Message kinds, indexing the per-kind gossip counters.
pub const KINDS: [&str; 4] = ["pull", "ack", "push", "delta"];

/// Gossip traffic of one direction.
#[derive(Default)]
pub struct Traffic {
    frames: [AtomicU64; 4],
    bytes: [AtomicU64; 4],
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
}

/// Peer counts by status, sampled when rendering.
pub struct PeerCounts {
    /// Alive peers.
    pub alive: usize,
    /// Suspect peers.
    pub suspect: usize,
    /// Dead peers.
    pub dead: usize,
}

impl Metrics {
    /// Renders Prometheus text exposition format.
    pub fn render(&self, node: &str, counters: usize, peers: PeerCounts) -> String {
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
        let totals: [(&str, &str, &AtomicU64); 10] = [
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
        ];
        for (name, help, value) in totals {
            put(
                name,
                help,
                "counter",
                &[(String::new(), value.load(Relaxed))],
            );
        }
        let by_kind = |values: &[AtomicU64; 4]| -> Vec<(String, u64)> {
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
        put(
            "counters",
            "Named counters held.",
            "gauge",
            &[(String::new(), counters as u64)],
        );
        let by_status = [
            ("alive", peers.alive),
            ("suspect", peers.suspect),
            ("dead", peers.dead),
        ]
        .map(|(status, count)| (format!(",status=\"{status}\""), count as u64));
        put("peers", "Peers by status.", "gauge", &by_status);
        out
    }
}
