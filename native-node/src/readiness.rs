//! Readiness (`/ready`), as distinct from liveness (`/health`): whether
//! this node should be sent traffic now.
//!
//! A node is ready once it has recovered its log and listens (true by the
//! time `/ready` can answer at all), its writer accepts writes, it is not
//! shutting down, and it has joined the cluster: seen at least one live
//! peer, or it knows of none to join (no `--seed`, `--seed-dns` or
//! `--discovery`: alone by configuration; or the ones given name no other
//! node yet, like the first node registered with discovery). Joining is a
//! start-up gate, latched once passed: a node whose peers all fail later
//! stays ready, because an available counter keeps taking writes alone. A node that
//! cannot reach any peer within `join_timeout` of its start is also let in,
//! with a warning, so a cluster that lost every other member still serves.
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Why a node is not ready (the `reason` of a 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// SIGTERM arrived: in-flight requests finish, new ones go elsewhere.
    #[error("shutting down")]
    Draining,
    /// The write-ahead log failed; writes are refused.
    #[error("writes refused: {0}")]
    WriterRefusing(String),
    /// No peer seen yet since start.
    #[error("joining the cluster: no live peer yet")]
    Joining,
}

/// The readiness state of one node: plain flags, set by the node's parts.
#[derive(Debug)]
pub struct Readiness {
    started: Instant,
    join_timeout: Duration,
    alone_by_config: bool,
    joined: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// A node started now; `alone_by_config` when it was given no way to
    /// find peers.
    pub fn new(alone_by_config: bool, join_timeout: Duration) -> Self {
        Self {
            started: Instant::now(),
            join_timeout,
            alone_by_config,
            joined: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// From now on, not ready: shutdown has begun.
    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Assesses readiness now, given the live peers, whether any other
    /// node is known at all (a seed, a member), and the writer's refusal
    /// (if any). Latches "joined" the first time it holds.
    pub fn assess(
        &self,
        peers_alive: usize,
        peers_known: bool,
        writer_refusal: Option<String>,
        now: Instant,
    ) -> Result<(), NotReady> {
        if self.is_draining() {
            return Err(NotReady::Draining);
        }
        if let Some(reason) = writer_refusal {
            return Err(NotReady::WriterRefusing(reason));
        }
        if self.joined.load(Relaxed) {
            return Ok(());
        }
        let gave_up_waiting = now.saturating_duration_since(self.started) >= self.join_timeout;
        let alone = self.alone_by_config || !peers_known;
        if peers_alive > 0 || alone || gave_up_waiting {
            if peers_alive == 0 && !alone {
                tracing::warn!(
                    waited_s = self.join_timeout.as_secs(),
                    "no peer reachable since start; ready anyway, serving alone until one is"
                );
            }
            self.joined.store(true, Relaxed);
            return Ok(());
        }
        Err(NotReady::Joining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    #[test]
    fn a_node_is_ready_once_it_has_seen_a_peer_and_stays_so() {
        let readiness = Readiness::new(false, WAIT);
        let now = Instant::now();
        assert_eq!(readiness.assess(0, true, None, now), Err(NotReady::Joining));
        assert_eq!(readiness.assess(1, true, None, now), Ok(()));
        // Every peer gone later: still ready (joining is a start-up gate).
        assert_eq!(readiness.assess(0, true, None, now), Ok(()));
    }

    #[test]
    fn a_node_without_peers_to_find_is_ready_at_once() {
        let readiness = Readiness::new(true, WAIT);
        assert_eq!(readiness.assess(0, true, None, Instant::now()), Ok(()));
    }

    #[test]
    fn a_node_that_knows_no_other_node_yet_is_ready() {
        let readiness = Readiness::new(false, WAIT);
        assert_eq!(readiness.assess(0, false, None, Instant::now()), Ok(()));
    }

    #[test]
    fn a_node_that_finds_no_peer_is_let_in_after_the_join_timeout() {
        let readiness = Readiness::new(false, WAIT);
        let later = Instant::now() + WAIT;
        assert_eq!(readiness.assess(0, true, None, later), Ok(()));
    }

    #[test]
    fn draining_and_a_refusing_writer_are_never_ready() {
        let readiness = Readiness::new(true, WAIT);
        let now = Instant::now();
        let refused = readiness.assess(3, true, Some("disk full".into()), now);
        assert_eq!(refused, Err(NotReady::WriterRefusing("disk full".into())));
        assert_eq!(readiness.assess(3, true, None, now), Ok(()));
        readiness.start_draining();
        assert!(readiness.is_draining());
        assert_eq!(
            readiness.assess(3, true, None, now),
            Err(NotReady::Draining)
        );
    }
}
