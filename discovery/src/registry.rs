//! The member table. Pure: every method takes `now`, so tests drive time by hand.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{Member, Peer};

/// Default bound on the number of members, so no caller can grow memory without limit.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    InvalidId(#[from] tally_protocol::InvalidNodeId),
    #[error("registry is full ({0} members)")]
    Full(usize),
}

struct Entry {
    member: Member,
    last_seen: Instant,
}

/// Live members keyed by id; an entry lives for `ttl` after its last register/heartbeat.
pub struct Registry {
    ttl: Duration,
    capacity: usize,
    members: HashMap<String, Entry>,
}

impl Registry {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            members: HashMap::new(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Adds or refreshes `member`. A re-registration may change its addresses.
    pub fn register(&mut self, member: Member, now: Instant) -> Result<(), RegistryError> {
        validate_id(&member.id)?;
        if !self.members.contains_key(&member.id) && self.members.len() >= self.capacity {
            // Expired entries may still be waiting for the sweep; they must not block newcomers.
            self.sweep(now);
            if self.members.len() >= self.capacity {
                return Err(RegistryError::Full(self.capacity));
            }
        }
        let id = member.id.clone();
        self.members.insert(
            id,
            Entry {
                member,
                last_seen: now,
            },
        );
        Ok(())
    }

    /// Refreshes a live member; `false` if it is unknown or already expired.
    pub fn heartbeat(&mut self, id: &str, now: Instant) -> bool {
        let ttl = self.ttl;
        match self.members.get_mut(id) {
            Some(entry) if is_alive(entry, now, ttl) => {
                entry.last_seen = now;
                true
            }
            _ => false,
        }
    }

    /// Removes a member; `false` if it was not registered (or already expired).
    pub fn remove(&mut self, id: &str, now: Instant) -> bool {
        match self.members.remove(id) {
            Some(entry) => is_alive(&entry, now, self.ttl),
            None => false,
        }
    }

    /// Live members sorted by id; expired ones are hidden even before the sweep runs.
    pub fn peers(&self, now: Instant) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self
            .members
            .values()
            .filter(|entry| is_alive(entry, now, self.ttl))
            .map(|entry| to_peer(entry, now))
            .collect();
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        peers
    }

    /// Number of live members.
    pub fn live_count(&self, now: Instant) -> usize {
        self.members
            .values()
            .filter(|entry| is_alive(entry, now, self.ttl))
            .count()
    }

    /// Drops expired members and returns their ids.
    pub fn sweep(&mut self, now: Instant) -> Vec<String> {
        let ttl = self.ttl;
        let mut expired = Vec::new();
        self.members.retain(|id, entry| {
            let alive = is_alive(entry, now, ttl);
            if !alive {
                expired.push(id.clone());
            }
            alive
        });
        expired
    }
}

/// Node ids follow the one rule every Tally process applies.
pub fn validate_id(id: &str) -> Result<(), RegistryError> {
    Ok(tally_protocol::validate_node_id(id)?)
}

fn is_alive(entry: &Entry, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(entry.last_seen) <= ttl
}

fn to_peer(entry: &Entry, now: Instant) -> Peer {
    let age = now.saturating_duration_since(entry.last_seen);
    Peer {
        id: entry.member.id.clone(),
        gossip_addr: entry.member.gossip_addr.clone(),
        http_addr: entry.member.http_addr.clone(),
        last_seen_ms_ago: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(5);

    fn member(id: &str, port: u16) -> Member {
        Member {
            id: id.to_owned(),
            gossip_addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)).into(),
            http_addr: std::net::SocketAddr::from(([127, 0, 0, 1], port + 1)).into(),
        }
    }

    fn ids(peers: &[Peer]) -> Vec<&str> {
        peers.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn register_lists_members_sorted_with_their_age() {
        let t0 = Instant::now();
        let mut registry = Registry::new(TTL, 10);
        registry.register(member("b", 2000), t0).unwrap();
        registry.register(member("a", 1000), t0).unwrap();

        let peers = registry.peers(t0 + Duration::from_millis(1500));
        assert_eq!(ids(&peers), ["a", "b"]);
        assert_eq!(peers[0].gossip_addr.port(), 1000);
        assert_eq!(peers[0].last_seen_ms_ago, 1500);
    }

    #[test]
    fn re_register_updates_addresses_without_duplicating() {
        let t0 = Instant::now();
        let mut registry = Registry::new(TTL, 10);
        registry.register(member("a", 1000), t0).unwrap();
        registry.register(member("a", 3000), t0).unwrap();

        let peers = registry.peers(t0);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].http_addr.port(), 3001);
    }

    #[test]
    fn invalid_ids_are_refused() {
        let mut registry = Registry::new(TTL, 10);
        for bad in ["", "a\nb", &"x".repeat(129)] {
            let result = registry.register(member(bad, 1000), Instant::now());
            assert!(
                matches!(result, Err(RegistryError::InvalidId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn heartbeat_keeps_a_member_alive_past_the_ttl() {
        let t0 = Instant::now();
        let mut registry = Registry::new(TTL, 10);
        registry.register(member("a", 1000), t0).unwrap();

        assert!(registry.heartbeat("a", t0 + Duration::from_secs(4)));
        let later = t0 + Duration::from_secs(8);
        assert_eq!(ids(&registry.peers(later)), ["a"]);
        assert_eq!(registry.peers(later)[0].last_seen_ms_ago, 4000);
    }

    #[test]
    fn heartbeat_of_unknown_or_expired_member_is_refused() {
        let t0 = Instant::now();
        let mut registry = Registry::new(TTL, 10);
        assert!(!registry.heartbeat("ghost", t0));

        registry.register(member("a", 1000), t0).unwrap();
        // Unswept but expired: the node must re-register, not be silently revived.
        assert!(!registry.heartbeat("a", t0 + Duration::from_secs(6)));
    }

    #[test]
    fn expired_members_are_hidden_then_swept() {
        let t0 = Instant::now();
        let mut registry = Registry::new(TTL, 10);
        registry.register(member("old", 1000), t0).unwrap();
        registry
            .register(member("new", 2000), t0 + Duration::from_secs(3))
            .unwrap();

        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(ids(&registry.peers(t1)), ["new"]);
        assert_eq!(registry.live_count(t1), 1);
        assert_eq!(registry.sweep(t1), ["old"]);
        assert!(registry.sweep(t1).is_empty());
        assert!(!registry.remove("old", t1));
    }

    #[test]
    fn remove_reports_whether_the_member_was_live() {
        let t0 = Instant::now();
        let mut registry = Registry::new(TTL, 10);
        registry.register(member("a", 1000), t0).unwrap();
        assert!(registry.remove("a", t0));
        assert!(!registry.remove("a", t0));
        assert!(registry.peers(t0).is_empty());
    }

    #[test]
    fn full_registry_refuses_newcomers_but_accepts_refreshes() {
        let t0 = Instant::now();
        let mut registry = Registry::new(TTL, 2);
        registry.register(member("a", 1000), t0).unwrap();
        registry.register(member("b", 2000), t0).unwrap();

        assert_eq!(
            registry.register(member("c", 3000), t0),
            Err(RegistryError::Full(2))
        );
        registry.register(member("a", 4000), t0).unwrap();
        assert!(registry.heartbeat("b", t0));
    }

    #[test]
    fn full_registry_makes_room_by_dropping_expired_members() {
        let t0 = Instant::now();
        let mut registry = Registry::new(TTL, 1);
        registry.register(member("a", 1000), t0).unwrap();
        let t1 = t0 + Duration::from_secs(6);
        registry.register(member("b", 2000), t1).unwrap();
        assert_eq!(ids(&registry.peers(t1)), ["b"]);
    }
}
