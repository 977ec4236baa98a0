//! Which nodes exist, which are healthy, and whose turn it is.
//!
//! Pure state (no I/O, time passed in) so the rules can be tested directly:
//! a node joins the rotation when a health check succeeds and leaves it
//! the moment a check or a proxied request fails.
use std::time::{Duration, Instant};

/// One node as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Where it serves HTTP; the node's identity inside the gateway.
    pub http_addr: String,
    /// Its `--id`, once a health check, discovery or its stream told us.
    pub id: Option<String>,
    /// Where it gossips, when discovery or its membership view told us.
    pub gossip_addr: Option<String>,
    /// In the rotation.
    pub healthy: bool,
    /// Cut off from its peers by the demo.
    pub partitioned: bool,
    /// Given with `--node`: never forgotten.
    pinned: bool,
    /// Last time discovery listed it or a health check passed.
    last_seen: Instant,
}

impl NodeStatus {
    /// The id when known, else the address (what browsers see as `id`).
    pub fn name(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.http_addr)
    }

    fn is(&self, key: &str) -> bool {
        self.http_addr == key || self.id.as_deref() == Some(key)
    }
}

/// The node table plus the round-robin cursor.
#[derive(Debug, Default)]
pub struct Balancer {
    nodes: Vec<NodeStatus>,
    next: usize,
}

impl Balancer {
    /// A table holding the `--node` addresses, all unhealthy until checked.
    pub fn new(pinned: &[String], now: Instant) -> Self {
        let mut balancer = Self::default();
        for addr in pinned {
            balancer.insert(addr, true, now);
        }
        balancer
    }

    pub fn nodes(&self) -> &[NodeStatus] {
        &self.nodes
    }

    /// A node by id or HTTP address.
    pub fn find(&self, key: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|node| node.is(key))
    }

    pub fn healthy_count(&self) -> usize {
        self.nodes.iter().filter(|node| node.healthy).count()
    }

    /// Records that discovery lists this node; true when the table changed.
    pub fn listed(&mut self, http_addr: &str, id: &str, gossip_addr: &str, now: Instant) -> bool {
        let added = self.insert(http_addr, false, now);
        let learnt = self.learn_identity(http_addr, id, Some(gossip_addr));
        if let Some(node) = self.find_mut(http_addr) {
            node.last_seen = now;
        }
        added || learnt
    }

    /// Drops discovery-learnt nodes that are down and unlisted for `forget_after`;
    /// returns their addresses.
    pub fn forget_stale(&mut self, now: Instant, forget_after: Duration) -> Vec<String> {
        let (stale, kept) = std::mem::take(&mut self.nodes)
            .into_iter()
            .partition(|node| {
                !node.pinned && !node.healthy && now.duration_since(node.last_seen) > forget_after
            });
        self.nodes = kept;
        stale
            .into_iter()
            .map(|node: NodeStatus| node.http_addr)
            .collect()
    }

    /// Sets a node's health; true when it changed.
    pub fn set_healthy(&mut self, key: &str, healthy: bool, now: Instant) -> bool {
        let Some(node) = self.find_mut(key) else {
            return false;
        };
        if healthy {
            node.last_seen = now;
        }
        std::mem::replace(&mut node.healthy, healthy) != healthy
    }

    /// Records a node's id (and gossip address); true when the id changed.
    pub fn learn_identity(&mut self, http_addr: &str, id: &str, gossip_addr: Option<&str>) -> bool {
        let Some(node) = self.nodes.iter_mut().find(|n| n.http_addr == http_addr) else {
            return false;
        };
        if let Some(gossip_addr) = gossip_addr {
            node.gossip_addr = Some(gossip_addr.to_owned());
        }
        if node.id.as_deref() == Some(id) {
            return false;
        }
        node.id = Some(id.to_owned());
        true
    }

    /// Sets the demo's partition flag; true when it changed.
    pub fn set_partitioned(&mut self, key: &str, partitioned: bool) -> bool {
        let Some(node) = self.find_mut(key) else {
            return false;
        };
        std::mem::replace(&mut node.partitioned, partitioned) != partitioned
    }

    /// Healthy nodes' addresses in the order to try them: each call starts
    /// one further along, so requests spread evenly (round robin), and the
    /// rest of the list is the failover order.
    pub fn rotation(&mut self) -> Vec<String> {
        let healthy: Vec<&NodeStatus> = self.nodes.iter().filter(|n| n.healthy).collect();
        if healthy.is_empty() {
            return Vec::new();
        }
        let start = self.next % healthy.len();
        self.next = self.next.wrapping_add(1);
        let (before, after) = healthy.split_at(start);
        after
            .iter()
            .chain(before)
            .map(|node| node.http_addr.clone())
            .collect()
    }

    fn find_mut(&mut self, key: &str) -> Option<&mut NodeStatus> {
        self.nodes.iter_mut().find(|node| node.is(key))
    }

    fn insert(&mut self, http_addr: &str, pinned: bool, now: Instant) -> bool {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.http_addr == http_addr) {
            node.pinned |= pinned;
            return false;
        }
        self.nodes.push(NodeStatus {
            http_addr: http_addr.to_owned(),
            id: None,
            gossip_addr: None,
            healthy: false,
            partitioned: false,
            pinned,
            last_seen: now,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_healthy() -> (Balancer, Instant) {
        let now = Instant::now();
        let addrs = ["a:1", "b:1", "c:1"].map(String::from);
        let mut balancer = Balancer::new(&addrs, now);
        for addr in &addrs {
            assert!(balancer.set_healthy(addr, true, now));
        }
        (balancer, now)
    }

    fn firsts(balancer: &mut Balancer, n: usize) -> Vec<String> {
        (0..n).map(|_| balancer.rotation()[0].clone()).collect()
    }

    #[test]
    fn new_nodes_wait_for_a_successful_check() {
        let mut balancer = Balancer::new(&["a:1".into()], Instant::now());
        assert_eq!(balancer.healthy_count(), 0);
        assert!(balancer.rotation().is_empty());
    }

    #[test]
    fn rotation_is_round_robin_and_lists_every_healthy_node_for_failover() {
        let (mut balancer, _) = three_healthy();
        assert_eq!(
            firsts(&mut balancer, 6),
            ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1"]
        );
        assert_eq!(balancer.rotation(), ["a:1", "b:1", "c:1"]);
        assert_eq!(balancer.rotation(), ["b:1", "c:1", "a:1"]);
    }

    #[test]
    fn unhealthy_nodes_leave_the_rotation_and_come_back() {
        let (mut balancer, now) = three_healthy();
        assert!(balancer.set_healthy("b:1", false, now));
        assert!(
            !balancer.set_healthy("b:1", false, now),
            "no change, no event"
        );
        let seen = firsts(&mut balancer, 4);
        assert!(!seen.contains(&"b:1".to_string()), "{seen:?}");
        assert_eq!(balancer.healthy_count(), 2);
        assert!(balancer.set_healthy("b:1", true, now));
        assert_eq!(balancer.rotation().len(), 3);
    }

    #[test]
    fn nodes_are_found_by_id_once_known() {
        let (mut balancer, now) = three_healthy();
        assert_eq!(balancer.find("a:1").map(NodeStatus::name), Some("a:1"));
        assert!(balancer.learn_identity("a:1", "node-1", Some("a:2")));
        assert!(!balancer.learn_identity("a:1", "node-1", None));
        assert!(balancer.set_healthy("node-1", false, now));
        assert!(balancer.set_partitioned("node-1", true));
        let node = balancer.find("a:1").cloned();
        assert_eq!(node.as_ref().map(NodeStatus::name), Some("node-1"));
        assert_eq!(node.and_then(|n| n.gossip_addr), Some("a:2".into()));
    }

    #[test]
    fn only_unlisted_unhealthy_discovered_nodes_are_forgotten() {
        let start = Instant::now();
        let mut balancer = Balancer::new(&["pinned:1".into()], start);
        assert!(balancer.listed("gone:1", "gone", "gone:2", start));
        assert!(balancer.listed("alive:1", "alive", "alive:2", start));
        assert!(!balancer.listed("alive:1", "alive", "alive:2", start));
        balancer.set_healthy("alive:1", true, start);
        let later = start + Duration::from_secs(60);
        let forgotten = balancer.forget_stale(later, Duration::from_secs(30));
        assert_eq!(forgotten, ["gone:1"]);
        let left: Vec<&str> = balancer.nodes().iter().map(NodeStatus::name).collect();
        assert_eq!(left, ["pinned:1", "alive"]);
    }
}
