//! Who is in the cluster, and who seems to be up.
//!
//! Members spread by gossip: every exchange carries the sender's member
//! list, and a record with a higher heartbeat replaces an older one. Each
//! node raises its own heartbeat every round, so a member whose heartbeat
//! stops rising — seen directly or through anyone else — is failing.
//!
//! Failure detection is φ-accrual over heartbeat inter-arrival times
//! (exponential model: φ = Δt / (mean · ln 10)): above `SUSPECT_PHI` a member
//! is *suspect* (still gossiped with), above `DEAD_PHI` it is *dead* (not
//! chosen for gossip, but probed now and then so a healed partition is
//! noticed). Any newer heartbeat makes it alive again.
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use tokio::time::Instant;

use crate::protocol::MemberRecord;

const SUSPECT_PHI: f64 = 5.0;
const DEAD_PHI: f64 = 10.0;
const WINDOW: usize = 32;
/// Chance per round of probing one dead member.
const DEAD_PROBE_CHANCE: f64 = 0.25;
/// A heartbeat further ahead of the wall clock than this (in ms) is refused.
/// Heartbeats start at a node's boot time in ms and grow by one per round,
/// so an honest one trails the clock; this leaves room for clock skew.
pub const MAX_HEARTBEAT_LEAD_MS: u64 = 10 * 60 * 1000;

/// How member records reached us, which decides how far they are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// Frames of a session whose Noise handshake authenticated this member:
    /// its record about itself is authoritative (it may move addresses);
    /// what it says about others is a hint.
    Peer(&'a str),
    /// Discovery or the operator's seeds: introductions only.
    Outside,
}

/// How a member seems from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Heartbeats arrive as expected.
    Alive,
    /// Heartbeats are late.
    Suspect,
    /// Heartbeats stopped.
    Dead,
}

impl Status {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Alive => "alive",
            Status::Suspect => "suspect",
            Status::Dead => "dead",
        }
    }
}

struct Member {
    record: MemberRecord,
    last_heard: Instant,
    intervals: VecDeque<f64>,
    status: Status,
}

impl Member {
    fn phi(&self, now: Instant, min_interval: f64) -> f64 {
        let mean = if self.intervals.is_empty() {
            min_interval
        } else {
            (self.intervals.iter().sum::<f64>() / self.intervals.len() as f64).max(min_interval)
        };
        now.duration_since(self.last_heard).as_secs_f64() / (mean * std::f64::consts::LN_10)
    }
}

/// A member that was dead long enough to leave the table: remembered for a
/// while so that old records relayed by others cannot bring it back; only
/// a newer heartbeat (it really restarted) does.
struct Tombstone {
    heartbeat: u64,
    since: Instant,
}

/// Tombstones outlive the death that made them by this factor of
/// `forget_dead_after`: long enough for every old record to have died out.
const TOMBSTONE_LIFETIMES: u32 = 10;

/// The membership table of one node.
pub struct Membership {
    me: MemberRecord,
    /// Ordered so that a seeded partner choice is reproducible (a HashMap's
    /// iteration order differs from process to process).
    members: BTreeMap<String, Member>,
    tombstones: BTreeMap<String, Tombstone>,
    min_interval: f64,
    forget_dead_after: Duration,
}

impl Membership {
    /// A table holding only `me`; `interval` is the gossip interval, the
    /// shortest heartbeat spacing the detector assumes; members silent for
    /// `forget_dead_after` (dead by then) leave the table.
    pub fn new(me: MemberRecord, interval: Duration, forget_dead_after: Duration) -> Self {
        Self {
            me,
            members: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            min_interval: interval.as_secs_f64(),
            forget_dead_after,
        }
    }

    /// This node's own record.
    pub fn me(&self) -> &MemberRecord {
        &self.me
    }

    /// Raises our heartbeat, re-evaluates everyone and forgets members gone
    /// for good; true when a status changed or a member left the table.
    pub fn tick(&mut self, now: Instant) -> bool {
        self.me.heartbeat = self.me.heartbeat.saturating_add(1);
        let mut changed = self.forget_the_long_dead(now);
        for member in self.members.values_mut() {
            let phi = member.phi(now, self.min_interval);
            let status = if phi >= DEAD_PHI {
                Status::Dead
            } else if phi >= SUSPECT_PHI {
                Status::Suspect.max_with(member.status)
            } else {
                member.status
            };
            if status != member.status {
                tracing::info!(peer = %member.record.id, from = member.status.as_str(), to = status.as_str(), "member status changed");
                member.status = status;
                changed = true;
            }
        }
        changed
    }

    /// Merges records from `source`; true when a member appeared or changed
    /// status. `wall_ms` is the wall clock (unix ms): heartbeats more than
    /// [`MAX_HEARTBEAT_LEAD_MS`] ahead of it are refused, so no record can
    /// pin a member's heartbeat near `u64::MAX` and silence its real news.
    ///
    /// A record is news only with a higher heartbeat than the one held (a
    /// fresher record is never overwritten). A known member's addresses
    /// change only on its own word ([`Source::Peer`] with its id): others
    /// relay liveness, not where to reach it.
    pub fn merge(
        &mut self,
        records: &[MemberRecord],
        source: Source<'_>,
        now: Instant,
        wall_ms: u64,
    ) -> bool {
        let horizon = wall_ms.saturating_add(MAX_HEARTBEAT_LEAD_MS);
        let mut changed = false;
        for record in records {
            if record.heartbeat > horizon {
                tracing::warn!(peer = %record.id, heartbeat = record.heartbeat, ?source, "member record from the future refused");
                continue;
            }
            if record.id == self.me.id {
                // Someone remembers an older boot of ours with a higher
                // heartbeat: jump past it so our news wins again.
                self.me.heartbeat = self.me.heartbeat.max(record.heartbeat.saturating_add(1));
                continue;
            }
            let own_word = source == Source::Peer(&record.id);
            changed |= self.observe(record, own_word, now);
        }
        changed
    }

    /// Moves members silent for `forget_dead_after` to tombstones, and drops
    /// tombstones past their lifetime; true when a member left.
    fn forget_the_long_dead(&mut self, now: Instant) -> bool {
        let forget_after = self.forget_dead_after;
        let gone: Vec<String> = (self.members.iter())
            .filter(|(_, m)| {
                m.status == Status::Dead && now.duration_since(m.last_heard) >= forget_after
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            if let Some(member) = self.members.remove(id) {
                tracing::info!(peer = %id, "member gone for good; forgotten");
                let tombstone = Tombstone {
                    heartbeat: member.record.heartbeat,
                    since: now,
                };
                self.tombstones.insert(id.clone(), tombstone);
            }
        }
        let lifetime = forget_after * TOMBSTONE_LIFETIMES;
        self.tombstones
            .retain(|_, tombstone| now.duration_since(tombstone.since) < lifetime);
        !gone.is_empty()
    }

    fn observe(&mut self, record: &MemberRecord, own_word: bool, now: Instant) -> bool {
        if let Some(tombstone) = self.tombstones.get(&record.id) {
            if record.heartbeat <= tombstone.heartbeat {
                return false;
            }
            self.tombstones.remove(&record.id);
        }
        match self.members.get_mut(&record.id) {
            None => {
                tracing::info!(peer = %record.id, gossip = %record.gossip_addr, "new member");
                self.members.insert(
                    record.id.clone(),
                    Member {
                        record: record.clone(),
                        last_heard: now,
                        intervals: VecDeque::new(),
                        status: Status::Alive,
                    },
                );
                true
            }
            Some(member) if record.heartbeat > member.record.heartbeat => {
                let gap = now.duration_since(member.last_heard).as_secs_f64();
                if member.intervals.len() == WINDOW {
                    member.intervals.pop_front();
                }
                member.intervals.push_back(gap);
                member.last_heard = now;
                member.record.heartbeat = record.heartbeat;
                if own_word {
                    member.record.gossip_addr.clone_from(&record.gossip_addr);
                    member.record.http_addr.clone_from(&record.http_addr);
                }
                let revived = member.status != Status::Alive;
                if revived {
                    tracing::info!(peer = %record.id, "member is alive");
                    member.status = Status::Alive;
                }
                revived
            }
            Some(_) => false,
        }
    }

    /// Every known record, ours included: what we gossip.
    pub fn records(&self) -> Vec<MemberRecord> {
        let mut records: Vec<MemberRecord> =
            self.members.values().map(|m| m.record.clone()).collect();
        records.push(self.me.clone());
        records
    }

    /// Up to `fanout` gossip partners: random live members, and sometimes a dead one to probe.
    pub fn gossip_targets(&self, fanout: usize, rng: &mut impl Rng) -> Vec<MemberRecord> {
        let live: Vec<&Member> = self
            .members
            .values()
            .filter(|m| m.status != Status::Dead)
            .collect();
        let mut targets: Vec<MemberRecord> = live
            .choose_multiple(rng, fanout)
            .map(|m| m.record.clone())
            .collect();
        if rng.gen_bool(DEAD_PROBE_CHANCE) {
            let dead: Vec<&Member> = self
                .members
                .values()
                .filter(|m| m.status == Status::Dead)
                .collect();
            if let Some(member) = dead.choose(rng) {
                targets.push(member.record.clone());
            }
        }
        targets
    }

    /// Number of members (not us) currently alive.
    pub fn alive(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.status == Status::Alive)
            .count()
    }

    /// Every member but us, with its status, sorted by id.
    pub fn peers(&self) -> Vec<(MemberRecord, Status)> {
        let mut peers: Vec<_> = self
            .members
            .values()
            .map(|m| (m.record.clone(), m.status))
            .collect();
        peers.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        peers
    }

    /// Members forgotten recently, still guarded against revival by old records.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Members by status.
    pub fn count(&self, status: Status) -> usize {
        self.members.values().filter(|m| m.status == status).count()
    }
}

impl Status {
    /// Suspicion never downgrades a dead member: only a heartbeat revives it.
    fn max_with(self, current: Status) -> Status {
        if current == Status::Dead {
            Status::Dead
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_800_000_000_000;

    /// A table for "me" that forgets dead members after 10 minutes.
    fn table() -> Membership {
        Membership::new(
            record("me", 5),
            Duration::from_millis(100),
            Duration::from_secs(600),
        )
    }

    /// `records` arrive from `source` now.
    fn hear(table: &mut Membership, records: &[MemberRecord], source: Source<'_>) -> bool {
        table.merge(records, source, Instant::now(), NOW_MS)
    }

    fn record(id: &str, heartbeat: u64) -> MemberRecord {
        MemberRecord {
            id: id.into(),
            gossip_addr: format!("{id}:1"),
            http_addr: format!("{id}:2"),
            heartbeat,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silent_members_become_suspect_then_dead_and_revive_on_news() {
        let interval = Duration::from_millis(100);
        let mut table = Membership::new(record("me", 1), interval, Duration::from_secs(600));
        hear(&mut table, &[record("b", 1)], Source::Peer("b"));
        for beat in 2..20 {
            tokio::time::advance(interval).await;
            hear(&mut table, &[record("b", beat)], Source::Peer("b"));
            table.tick(Instant::now());
        }
        assert_eq!(table.peers()[0].1, Status::Alive);
        let mut seen = vec![];
        for _ in 0..30 {
            tokio::time::advance(interval).await;
            table.tick(Instant::now());
            seen.push(table.peers()[0].1);
        }
        assert!(seen.contains(&Status::Suspect));
        assert_eq!(seen.last(), Some(&Status::Dead));
        hear(&mut table, &[record("b", 99)], Source::Peer("c"));
        assert_eq!(table.peers()[0].1, Status::Alive);
    }

    #[test]
    fn our_own_old_heartbeat_is_overtaken() {
        let mut table = table();
        hear(&mut table, &[record("me", 50)], Source::Peer("b"));
        assert_eq!(table.me().heartbeat, 51);
        assert!(table.peers().is_empty());
    }

    #[test]
    fn heartbeats_from_the_future_are_refused() {
        let mut table = table();
        let far = NOW_MS + MAX_HEARTBEAT_LEAD_MS + 1;
        assert!(!hear(
            &mut table,
            &[record("evil", far)],
            Source::Peer("evil")
        ));
        assert!(table.peers().is_empty());
        hear(&mut table, &[record("me", u64::MAX)], Source::Peer("evil"));
        assert_eq!(
            table.me().heartbeat,
            5,
            "our own heartbeat cannot be pushed to the end"
        );
        hear(&mut table, &[record("b", 10)], Source::Peer("b"));
        hear(&mut table, &[record("b", u64::MAX)], Source::Peer("c"));
        assert_eq!(table.peers()[0].0.heartbeat, 10);
    }

    #[test]
    fn only_a_member_itself_moves_its_addresses() {
        let mut table = table();
        hear(&mut table, &[record("b", 10)], Source::Peer("b"));
        let mut moved = record("b", 11);
        moved.gossip_addr = "attacker:1".into();
        hear(&mut table, &[moved.clone()], Source::Peer("c"));
        let (b, _) = table.peers()[0].clone();
        assert_eq!(
            (b.heartbeat, b.gossip_addr.as_str()),
            (11, "b:1"),
            "a hint: liveness only"
        );
        moved.heartbeat = 12;
        hear(&mut table, &[moved], Source::Peer("b"));
        assert_eq!(
            table.peers()[0].0.gossip_addr,
            "attacker:1",
            "its own word moves it"
        );
    }

    #[test]
    fn an_older_record_never_overwrites_a_fresher_one() {
        let mut table = table();
        hear(&mut table, &[record("b", 10)], Source::Peer("b"));
        hear(&mut table, &[record("b", 3)], Source::Peer("b"));
        assert_eq!(table.peers()[0].0.heartbeat, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn members_dead_long_enough_leave_and_old_records_cannot_revive_them() {
        let interval = Duration::from_millis(100);
        let forget = Duration::from_secs(5);
        let mut table = Membership::new(record("me", 1), interval, forget);
        hear(&mut table, &[record("gone", 7)], Source::Peer("gone"));
        for _ in 0..100 {
            tokio::time::advance(interval).await;
            table.tick(Instant::now());
        }
        assert!(
            table.peers().is_empty(),
            "a member dead for 10 s is still listed"
        );
        assert_eq!(table.tombstones(), 1);
        // Someone relays the old record: it stays gone.
        assert!(!hear(&mut table, &[record("gone", 7)], Source::Peer("x")));
        assert!(table.peers().is_empty());
        // It restarts (a newer heartbeat): it is back.
        assert!(hear(
            &mut table,
            &[record("gone", 8_000)],
            Source::Peer("gone")
        ));
        assert_eq!(table.peers().len(), 1);
        assert_eq!(table.tombstones(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn tombstones_do_not_pile_up() {
        let interval = Duration::from_millis(100);
        let forget = Duration::from_secs(1);
        let mut table = Membership::new(record("me", 1), interval, forget);
        for id in 0..50 {
            hear(&mut table, &[record(&format!("m{id}"), 1)], Source::Outside);
        }
        for _ in 0..(10 * 12) {
            tokio::time::advance(interval * 10).await;
            table.tick(Instant::now());
        }
        assert!(table.peers().is_empty());
        assert_eq!(table.tombstones(), 0, "tombstones outlived their lifetime");
    }
}
