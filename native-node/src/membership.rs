//! Who is in the cluster, and who seems to be up (SWIM-style).
//!
//! - **Records carry a version** (`MemberRecord::heartbeat`: the member's boot
//!   time in ms, raised by the member only, to refute a suspicion). News about
//!   a member is `(version, status)`; a higher version wins, and at the same
//!   version suspect beats alive and dead beats suspect ([`supersedes`]).
//! - **Dissemination**: every piece of news this node learns or makes is
//!   queued and piggybacked on the next probes and answers, at most
//!   [`MAX_PIGGYBACK`] per message, each sent [`retransmits`] times
//!   (4·⌈log₁₀ n⌉), and while there is news it also goes each round to
//!   `fanout` random members: membership costs nothing while nothing changes.
//! - **Digest**: a hash over `(id, version)` of every member not dead, us
//!   included ([`Membership::digest`]). Probes carry it; when two nodes'
//!   digests differ, they exchange whole tables (the repair path, rare).
//! - **Failure detection**: each round one member is probed, round-robin over
//!   a shuffled list (a member that joins goes in at once, at a place of
//!   its own, not at the next pass: `Membership::join_this_pass`); no answer within the probe timeout → the probe is sent
//!   again over a fresh connection ([`Membership::take_retries`]); no answer
//!   to that either → *suspect* (and gossiped), suspect for the suspicion
//!   timeout → *dead*. A member that
//!   hears it is suspected raises its version: that refutes it everywhere.
//!   Dead members are probed now and then, so a healed partition is noticed.
//! - **Forgetting**: a member dead for `forget_dead_after` leaves the table
//!   and leaves a tombstone, so that old records cannot bring it back.
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use tokio::time::Instant;

pub use crate::protocol::Status;
use crate::protocol::{MemberRecord, MemberUpdate};

/// Chance per round of also probing one dead member.
const DEAD_PROBE_CHANCE: f64 = 0.25;
/// Membership updates piggybacked on one message at most.
pub const MAX_PIGGYBACK: usize = 6;
/// Queued updates kept at most (older ones are dropped first; the digest
/// exchange repairs whatever they would have told).
const MAX_QUEUED_UPDATES: usize = 4096;
/// A version further ahead of the wall clock than this (in ms) is refused.
/// Versions start at a node's boot time in ms and grow by one per
/// refutation, so an honest one trails the clock; this leaves room for skew.
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

/// How the failure detector is timed.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// One probe per round.
    pub interval: Duration,
    /// A probe unanswered this long is sent again, over a fresh connection.
    pub probe_timeout: Duration,
    /// The probe sent again unanswered this long makes its target suspect.
    pub retry_timeout: Duration,
    /// A suspect not refuted this long is dead.
    pub suspect_timeout: Duration,
    /// A member dead this long leaves the table.
    pub forget_dead_after: Duration,
}

impl Timing {
    /// The timing for gossip rounds of `interval`: a probe may take a round,
    /// and its retry one more (a fresh link's dial, handshake and ping are
    /// four round trips: milliseconds in a data centre; an answer stuck
    /// behind a long pull answer on the old link does not delay the retry),
    /// so a member that is down is suspect after 2 rounds; a suspect has 5
    /// more to refute.
    pub fn for_interval(interval: Duration, forget_dead_after: Duration) -> Self {
        Self {
            interval,
            probe_timeout: interval,
            retry_timeout: interval,
            suspect_timeout: interval * 5,
            forget_dead_after,
        }
    }
}

/// Whether news `(version, status)` replaces what is held: a higher version
/// always does; at the same version only a worse status does.
pub fn supersedes(news: (u64, Status), held: (u64, Status)) -> bool {
    news.0 > held.0 || (news.0 == held.0 && news.1 > held.1)
}

/// How many times each update is piggybacked by each node that learns it:
/// 4·⌈log₁₀(n+1)⌉ (memberlist's rule): every node that learns news passes
/// it on, so the epidemic reaches all n w.h.p.; the digest repair covers
/// the rare member it misses.
pub fn retransmits(members: usize) -> u32 {
    let mut digits = 1;
    let mut n = members as u64 + 1;
    while n > 10 {
        n = n.div_ceil(10);
        digits += 1;
    }
    4 * digits
}

/// Whether a member coming back at version `news` after `held` refuted a
/// suspicion (it raises its version by one per refutation) rather than
/// restarted (a new boot jumps the version to the boot time in ms, at least
/// a second later than the last boot).
pub fn is_refutation(news: u64, held: u64) -> bool {
    news > held && news - held < 1000
}

/// When a round came this much later than planned, the process was not
/// running (paused, starved): the answers to its probes may be sitting
/// unread, so their deadlines restart rather than turning into suspicions.
pub fn was_paused(since_last_tick: Duration, interval: Duration) -> bool {
    since_last_tick > interval * 3
}

struct Member {
    record: MemberRecord,
    status: Status,
    /// When `status` last changed.
    since: Instant,
    /// We suspected it ourselves (a refutation then counts as a false suspicion).
    suspected_here: bool,
}

/// A member that was dead long enough to leave the table: remembered for a
/// while so that old records relayed by others cannot bring it back; only
/// a newer version (it really restarted) does.
struct Tombstone {
    heartbeat: u64,
    since: Instant,
}

/// Tombstones outlive the death that made them by this factor of
/// `forget_dead_after`: long enough for every old record to have died out.
const TOMBSTONE_LIFETIMES: u32 = 10;

/// A probe waiting for its answer.
struct Pending {
    probe: u64,
    deadline: Instant,
    /// Sent again over a fresh connection already: the next deadline suspects.
    retried: bool,
}

/// What the failure detector counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Suspicions {
    /// Members this node suspected (a probe went unanswered).
    pub raised: u64,
    /// Of those, members that then refuted (they were up after all).
    pub refuted: u64,
}

/// The membership table of one node.
pub struct Membership {
    me: MemberRecord,
    /// Ordered so that a seeded choice is reproducible (a HashMap's
    /// iteration order differs from process to process).
    members: BTreeMap<String, Member>,
    tombstones: BTreeMap<String, Tombstone>,
    timing: Timing,
    pending: BTreeMap<String, Pending>,
    next_probe: u64,
    /// Round-robin order of probe targets; reshuffled at each pass.
    order: Vec<String>,
    /// News to piggyback, with how often each was sent.
    queue: VecDeque<(MemberUpdate, u32)>,
    last_tick: Option<Instant>,
    suspicions: Suspicions,
    /// Probes to send again over a fresh connection (see [`Membership::take_retries`]).
    retries: Vec<String>,
}

impl Membership {
    /// A table holding only `me`.
    pub fn new(me: MemberRecord, timing: Timing) -> Self {
        Self {
            me,
            members: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            timing,
            pending: BTreeMap::new(),
            next_probe: 0,
            order: Vec::new(),
            queue: VecDeque::new(),
            last_tick: None,
            suspicions: Suspicions::default(),
            retries: Vec::new(),
        }
    }

    /// This node's own record.
    pub fn me(&self) -> &MemberRecord {
        &self.me
    }

    /// What the failure detector counted so far.
    pub fn suspicions(&self) -> Suspicions {
        self.suspicions
    }

    /// Unanswered probes turn into suspicions, old suspicions into deaths,
    /// and members dead long enough are forgotten; true when anything changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last_tick {
            if was_paused(now.duration_since(last), self.timing.interval) {
                for pending in self.pending.values_mut() {
                    pending.deadline = now + self.timing.probe_timeout;
                }
            }
        }
        self.last_tick = Some(now);
        let mut changed = false;
        let expired: Vec<String> = (self.pending.iter())
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            // A first timeout is not yet a suspicion: the connection may be
            // what failed (stalled after a partition, closed under the
            // ping). The probe goes again over a fresh one.
            let alive = self.status_of(&id) == Some(Status::Alive);
            if let Some(pending) = self.pending.get_mut(&id).filter(|p| !p.retried && alive) {
                pending.retried = true;
                pending.deadline = now + self.timing.retry_timeout;
                self.retries.push(id);
                continue;
            }
            self.pending.remove(&id);
            if let Some(member) = self.members.get_mut(&id) {
                if member.status == Status::Alive {
                    tracing::info!(peer = %id, "probe unanswered: member suspect");
                    member.status = Status::Suspect;
                    member.since = now;
                    member.suspected_here = true;
                    self.suspicions.raised += 1;
                    let update = update_of(member);
                    self.enqueue(update);
                    changed = true;
                }
            }
        }
        let suspect_timeout = self.timing.suspect_timeout;
        let dead: Vec<String> = (self.members.iter())
            .filter(|(_, m)| {
                m.status == Status::Suspect && now.duration_since(m.since) >= suspect_timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            if let Some(member) = self.members.get_mut(&id) {
                tracing::info!(peer = %id, "suspect not refuted: member dead");
                member.status = Status::Dead;
                member.since = now;
                let update = update_of(member);
                self.enqueue(update);
                changed = true;
            }
        }
        changed | self.forget_the_long_dead(now)
    }

    /// The members to probe this round: the next in round-robin order among
    /// those not dead (a probe awaited from then on), and now and then a
    /// dead one (awaited by nobody: only its refutation revives it).
    pub fn probe_targets(&mut self, now: Instant, rng: &mut impl Rng) -> Vec<(MemberRecord, u64)> {
        let mut targets = Vec::new();
        if let Some(id) = self.next_in_order(rng) {
            self.next_probe += 1;
            let probe = self.next_probe;
            let deadline = now + self.timing.probe_timeout;
            // A probe already awaited keeps its deadline: a member that
            // never answers becomes suspect on time however often it is picked.
            self.pending.entry(id.clone()).or_insert(Pending {
                probe,
                deadline,
                retried: false,
            });
            let probe = self.pending[&id].probe;
            targets.push((self.members[&id].record.clone(), probe));
        }
        if rng.gen_bool(DEAD_PROBE_CHANCE) {
            let dead: Vec<&Member> = (self.members.values())
                .filter(|m| m.status == Status::Dead)
                .collect();
            if let Some(member) = dead.choose(rng) {
                self.next_probe += 1;
                targets.push((member.record.clone(), self.next_probe));
            }
        }
        targets
    }

    /// Puts a new member somewhere in the current pass's order, as SWIM
    /// does: otherwise it waits for the next pass (n rounds away: 40 s at 200
    /// members), and a member that joined after most nodes began their pass
    /// went unprobed — a crash of it unnoticed — for that long. The place
    /// comes from a hash of both ids, not the rng: the same on every run,
    /// and not the same on every node.
    fn join_this_pass(&mut self, id: &str) {
        let mut both = self.me.id.as_bytes().to_vec();
        both.push(0);
        both.extend_from_slice(id.as_bytes());
        let at = fnv(&both) % (self.order.len() as u64 + 1);
        self.order.insert(at as usize, id.to_owned());
    }

    fn next_in_order(&mut self, rng: &mut impl Rng) -> Option<String> {
        for pass in 0..2 {
            while let Some(id) = self.order.pop() {
                if self
                    .members
                    .get(&id)
                    .is_some_and(|m| m.status != Status::Dead)
                {
                    return Some(id);
                }
            }
            if pass == 0 {
                self.order = (self.members.iter())
                    .filter(|(_, m)| m.status != Status::Dead)
                    .map(|(id, _)| id.clone())
                    .collect();
                self.order.shuffle(rng);
            }
        }
        None
    }

    /// Probes that went unanswered once, to send again over a fresh
    /// connection (the caller drops the old one): each member's record and
    /// the probe's number.
    pub fn take_retries(&mut self) -> Vec<(MemberRecord, u64)> {
        let retries = std::mem::take(&mut self.retries);
        (retries.into_iter())
            .filter_map(|id| {
                let probe = self.pending.get(&id)?.probe;
                Some((self.members.get(&id)?.record.clone(), probe))
            })
            .collect()
    }

    /// An answer to probe `probe` came from `id`.
    pub fn acked(&mut self, id: &str, probe: u64) {
        if self.pending.get(id).is_some_and(|p| p.probe == probe) {
            self.pending.remove(id);
        }
    }

    /// Merges news from `source`; true when a member appeared or changed.
    /// `bulk` marks a whole table (the digest repair): a death it reports is
    /// taken as a suspicion only, so a healed partition, whose sides each
    /// declared the other dead, does not kill everyone (memberlist does the
    /// same); the suspects refute in time. `wall_ms` is the wall clock (unix
    /// ms): versions more than [`MAX_HEARTBEAT_LEAD_MS`] ahead are refused.
    ///
    /// A known member's addresses change only on its own word
    /// ([`Source::Peer`] with its id): others relay status, not where to
    /// reach it.
    pub fn merge(
        &mut self,
        updates: &[MemberUpdate],
        source: Source<'_>,
        bulk: bool,
        now: Instant,
        wall_ms: u64,
    ) -> bool {
        let horizon = wall_ms.saturating_add(MAX_HEARTBEAT_LEAD_MS);
        let mut changed = false;
        for update in updates {
            let record = &update.record;
            if record.heartbeat > horizon {
                tracing::warn!(peer = %record.id, version = record.heartbeat, ?source, "member record from the future refused");
                continue;
            }
            if record.id == self.me.id {
                self.hear_about_me(update);
                continue;
            }
            let status = if bulk && update.status == Status::Dead {
                Status::Suspect
            } else {
                update.status
            };
            let own_word = source == Source::Peer(&record.id);
            // What a whole table told us is not passed on as news: the
            // sender holds it, and whoever else differs repairs by tables too.
            changed |= self.observe(record, status, own_word, !bulk, now);
        }
        changed
    }

    /// Learns a member's record from its connection's handshake (`Hello`):
    /// its own word, taken as alive at its version. A member we hold as
    /// suspect or dead at that version stays so: a handshake proves a TCP
    /// path, not that it answers, and only its refutation (a new version)
    /// revives it everywhere at once.
    pub fn hello(&mut self, record: &MemberRecord, now: Instant, wall_ms: u64) -> bool {
        let update = MemberUpdate {
            record: record.clone(),
            status: Status::Alive,
        };
        self.merge(&[update], Source::Peer(&record.id), false, now, wall_ms)
    }

    /// Records about us: an older boot of ours remembered with a higher
    /// version, or a suspicion — either way we move past it and say so.
    fn hear_about_me(&mut self, update: &MemberUpdate) {
        let version = update.record.heartbeat;
        let refute = version > self.me.heartbeat
            || (version == self.me.heartbeat && update.status != Status::Alive);
        if refute {
            tracing::info!(
                version,
                status = update.status.as_str(),
                "refuting news about us"
            );
            self.me.heartbeat = version.saturating_add(1);
            let me = MemberUpdate {
                record: self.me.clone(),
                status: Status::Alive,
            };
            self.enqueue(me);
        }
    }

    fn observe(
        &mut self,
        record: &MemberRecord,
        status: Status,
        own_word: bool,
        spread: bool,
        now: Instant,
    ) -> bool {
        if let Some(tombstone) = self.tombstones.get(&record.id) {
            if record.heartbeat <= tombstone.heartbeat {
                return false;
            }
            self.tombstones.remove(&record.id);
        }
        let Some(member) = self.members.get_mut(&record.id) else {
            if status == Status::Dead {
                // No news to us: we never knew it.
                return false;
            }
            tracing::info!(peer = %record.id, gossip = %record.gossip_addr, "new member");
            let member = Member {
                record: record.clone(),
                status,
                since: now,
                suspected_here: false,
            };
            let update = update_of(&member);
            self.members.insert(record.id.clone(), member);
            self.join_this_pass(&record.id);
            if spread {
                self.enqueue(update);
            }
            return true;
        };
        if !supersedes(
            (record.heartbeat, status),
            (member.record.heartbeat, member.status),
        ) {
            return false;
        }
        if status == Status::Alive && member.status != Status::Alive {
            tracing::info!(peer = %record.id, "member is alive");
            if member.suspected_here && is_refutation(record.heartbeat, member.record.heartbeat) {
                self.suspicions.refuted += 1;
            }
        }
        if status != member.status {
            member.since = now;
        }
        // Our suspicion stands, whoever else declares the same version
        // dead; a new version settles it.
        if record.heartbeat != member.record.heartbeat {
            member.suspected_here = false;
        }
        member.status = status;
        member.record.heartbeat = record.heartbeat;
        if own_word {
            member.record.gossip_addr.clone_from(&record.gossip_addr);
            member.record.http_addr.clone_from(&record.http_addr);
        }
        let update = update_of(member);
        if spread {
            self.enqueue(update);
        }
        true
    }

    /// Queues news for piggybacking, replacing older news about the same member.
    fn enqueue(&mut self, update: MemberUpdate) {
        self.queue
            .retain(|(queued, _)| queued.record.id != update.record.id);
        self.queue.push_front((update, 0));
        self.queue.truncate(MAX_QUEUED_UPDATES);
    }

    /// News to send on one message to `to`: what we hold about `to` itself
    /// when we doubt it (so it can refute), then the least-sent queued news.
    pub fn piggyback(&mut self, to: &str) -> Vec<MemberUpdate> {
        let mut updates = Vec::new();
        if let Some(member) = self.members.get(to).filter(|m| m.status != Status::Alive) {
            updates.push(update_of(member));
        }
        let limit = retransmits(self.members.len());
        // Fresh news is at the front: it is the least sent.
        let mut index = 0;
        while updates.len() < MAX_PIGGYBACK && index < self.queue.len() {
            let (update, sent) = &mut self.queue[index];
            if update.record.id != to || update.status == Status::Alive {
                updates.push(update.clone());
                *sent += 1;
            }
            index += 1;
        }
        self.queue.retain(|(_, sent)| *sent < limit);
        // Least sent first next time.
        self.queue.make_contiguous().sort_by_key(|(_, sent)| *sent);
        updates
    }

    /// Up to `count` random members not dead, to send news to this round
    /// (none when there is no news: idle, this costs nothing).
    pub fn news_targets(&self, count: usize, rng: &mut impl Rng) -> Vec<MemberRecord> {
        if self.queue.is_empty() {
            return Vec::new();
        }
        let reachable: Vec<&Member> = (self.members.values())
            .filter(|m| m.status != Status::Dead)
            .collect();
        (reachable.choose_multiple(rng, count))
            .map(|m| m.record.clone())
            .collect()
    }

    /// How member `id` seems from here, if known.
    pub fn status_of(&self, id: &str) -> Option<Status> {
        self.members.get(id).map(|m| m.status)
    }

    /// The news waiting to be piggybacked (diagnostics, tests).
    pub fn queued_news(&self) -> Vec<MemberUpdate> {
        self.queue
            .iter()
            .map(|(update, _)| update.clone())
            .collect()
    }

    /// Membership news waiting to be piggybacked.
    pub fn queued_updates(&self) -> usize {
        self.queue.len()
    }

    /// Hash of `(id, version)` over every member not dead, us included:
    /// equal tables (but for suspicions) give equal digests.
    pub fn digest(&self) -> u64 {
        let hash = |record: &MemberRecord| {
            let mut bytes = record.id.as_bytes().to_vec();
            bytes.extend_from_slice(&record.heartbeat.to_le_bytes());
            fnv(&bytes)
        };
        (self.members.values())
            .filter(|m| m.status != Status::Dead)
            .map(|m| hash(&m.record))
            .fold(hash(&self.me), u64::wrapping_add)
    }

    /// The whole table, us included, for the digest repair.
    pub fn table(&self) -> Vec<MemberUpdate> {
        let mut table: Vec<MemberUpdate> = self.members.values().map(update_of).collect();
        table.push(MemberUpdate {
            record: self.me.clone(),
            status: Status::Alive,
        });
        table
    }

    /// Moves members dead for `forget_dead_after` to tombstones, and drops
    /// tombstones past their lifetime; true when a member left.
    fn forget_the_long_dead(&mut self, now: Instant) -> bool {
        let forget_after = self.timing.forget_dead_after;
        let gone: Vec<String> = (self.members.iter())
            .filter(|(_, m)| {
                m.status == Status::Dead && now.duration_since(m.since) >= forget_after
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            if let Some(member) = self.members.remove(id) {
                tracing::info!(peer = %id, "member gone for good; forgotten");
                self.pending.remove(id);
                self.queue.retain(|(update, _)| update.record.id != *id);
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

    /// Every member not dead: where a fresh change is sent.
    pub fn reachable(&self) -> Vec<MemberRecord> {
        (self.members.values())
            .filter(|m| m.status != Status::Dead)
            .map(|m| m.record.clone())
            .collect()
    }

    /// The record of member `id`, if known.
    pub fn get(&self, id: &str) -> Option<&MemberRecord> {
        self.members.get(id).map(|m| &m.record)
    }

    /// Number of members (not us) currently alive.
    pub fn alive(&self) -> usize {
        self.count(Status::Alive)
    }

    /// Every member but us, with its status, sorted by id.
    pub fn peers(&self) -> Vec<(MemberRecord, Status)> {
        (self.members.values())
            .map(|m| (m.record.clone(), m.status))
            .collect()
    }

    /// Members forgotten recently, still guarded against revival by old records.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// The ids of members forgotten recently (those with a tombstone).
    pub fn forgotten_ids(&self) -> Vec<String> {
        self.tombstones.keys().cloned().collect()
    }

    /// Members known (not us), whatever their status.
    pub fn known(&self) -> usize {
        self.members.len()
    }

    /// Members by status.
    pub fn count(&self, status: Status) -> usize {
        self.members.values().filter(|m| m.status == status).count()
    }
}

fn update_of(member: &Member) -> MemberUpdate {
    MemberUpdate {
        record: member.record.clone(),
        status: member.status,
    }
}

/// FNV-1a, then the splitmix64 finaliser: a fixed hash, the same in every process.
fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const NOW_MS: u64 = 1_800_000_000_000;
    const INTERVAL: Duration = Duration::from_millis(100);

    /// A table for "me" that forgets dead members after 10 minutes.
    fn table() -> Membership {
        table_forgetting_after(Duration::from_secs(600))
    }

    fn table_forgetting_after(forget: Duration) -> Membership {
        Membership::new(record("me", 5), Timing::for_interval(INTERVAL, forget))
    }

    fn record(id: &str, version: u64) -> MemberRecord {
        MemberRecord {
            id: id.into(),
            gossip_addr: format!("{id}:1"),
            http_addr: format!("{id}:2"),
            heartbeat: version,
        }
    }

    fn news(id: &str, version: u64, status: Status) -> MemberUpdate {
        MemberUpdate {
            record: record(id, version),
            status,
        }
    }

    /// `updates` arrive from `source` now.
    /// A table that has heard from one peer, `b`, alive, and a seeded rng.
    fn table_with_b() -> (Membership, StdRng) {
        let mut table = table();
        hear(
            &mut table,
            &[news("b", 1, Status::Alive)],
            Source::Peer("b"),
        );
        (table, StdRng::seed_from_u64(1))
    }

    fn hear(table: &mut Membership, updates: &[MemberUpdate], source: Source<'_>) -> bool {
        table.merge(updates, source, false, Instant::now(), NOW_MS)
    }

    fn status_of(table: &Membership, id: &str) -> Option<Status> {
        (table.peers().into_iter())
            .find(|(r, _)| r.id == id)
            .map(|(_, s)| s)
    }

    /// Ticks through `rounds` rounds of simulated time.
    async fn rounds(table: &mut Membership, rounds: u32) {
        for _ in 0..rounds {
            tokio::time::advance(INTERVAL).await;
            table.tick(Instant::now());
        }
    }

    #[test]
    fn a_higher_version_beats_any_status_and_a_worse_status_wins_a_tie() {
        use Status::*;
        assert!(supersedes((2, Alive), (1, Dead)));
        assert!(supersedes((1, Suspect), (1, Alive)));
        assert!(supersedes((1, Dead), (1, Suspect)));
        assert!(!supersedes((1, Alive), (1, Suspect)));
        assert!(!supersedes((1, Alive), (1, Alive)));
        assert!(!supersedes((1, Dead), (2, Alive)));
    }

    #[test]
    fn news_is_retransmitted_four_log10_n_times() {
        assert_eq!(retransmits(0), 4);
        assert_eq!(retransmits(8), 4);
        assert_eq!(retransmits(9), 4);
        assert_eq!(retransmits(10), 8);
        assert_eq!(retransmits(99), 8);
        assert_eq!(retransmits(199), 12);
        assert_eq!(retransmits(10_000), 20);
    }

    #[test]
    fn a_small_version_step_is_a_refutation_a_jump_is_a_restart() {
        assert!(is_refutation(8, 7));
        assert!(is_refutation(12, 7));
        assert!(!is_refutation(7, 7));
        assert!(!is_refutation(1_800_000_005_000, 1_800_000_000_000));
    }

    #[test]
    fn a_late_round_means_we_were_paused() {
        assert!(!was_paused(INTERVAL, INTERVAL));
        assert!(!was_paused(INTERVAL * 3, INTERVAL));
        assert!(was_paused(INTERVAL * 10, INTERVAL));
    }

    #[test]
    fn a_member_that_joins_mid_pass_is_probed_within_that_pass() {
        let mut table = table();
        let mut rng = StdRng::seed_from_u64(1);
        let first: Vec<MemberUpdate> = (0..10)
            .map(|i| news(&format!("m{i}"), 1, Status::Alive))
            .collect();
        hear(&mut table, &first, Source::Outside);
        // The pass begins with the ten; then "late" joins.
        let mut probed: Vec<String> = (table.probe_targets(Instant::now(), &mut rng))
            .into_iter()
            .map(|(record, _)| record.id)
            .collect();
        hear(
            &mut table,
            &[news("late", 1, Status::Alive)],
            Source::Outside,
        );
        // What is left of the pass: nine of the first, and "late".
        for _ in 0..10 {
            let targets = table.probe_targets(Instant::now(), &mut rng);
            probed.extend(targets.into_iter().map(|(record, _)| record.id));
        }
        assert!(probed.iter().any(|id| id == "late"), "{probed:?}");
        let mut once = probed.clone();
        once.sort();
        once.dedup();
        assert_eq!(once.len(), 11, "each member once a pass: {probed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_probe_makes_a_suspect_then_a_dead_member() {
        let (mut table, mut rng) = table_with_b();
        let targets = table.probe_targets(Instant::now(), &mut rng);
        assert_eq!(targets[0].0.id, "b");
        rounds(&mut table, 1).await;
        // First the probe goes again, over a fresh connection.
        assert_eq!(status_of(&table, "b"), Some(Status::Alive));
        let retries = table.take_retries();
        assert_eq!(
            (retries[0].0.id.as_str(), retries[0].1),
            ("b", targets[0].1)
        );
        assert!(table.take_retries().is_empty(), "a retry is asked for once");
        rounds(&mut table, 1).await;
        assert_eq!(status_of(&table, "b"), Some(Status::Suspect));
        assert_eq!(table.suspicions().raised, 1);
        // The suspicion is news to spread.
        let told = table.piggyback("c");
        assert!(told.contains(&news("b", 1, Status::Suspect)), "{told:?}");
        rounds(&mut table, 5).await;
        assert_eq!(status_of(&table, "b"), Some(Status::Dead));
        assert!(table.reachable().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_answered_on_its_retry_suspects_nobody() {
        let (mut table, mut rng) = table_with_b();
        table.probe_targets(Instant::now(), &mut rng);
        rounds(&mut table, 1).await;
        let (record, probe) = table.take_retries().remove(0);
        table.acked(&record.id, probe);
        rounds(&mut table, 10).await;
        assert_eq!(status_of(&table, "b"), Some(Status::Alive));
        assert_eq!(table.suspicions().raised, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_probe_suspects_nobody() {
        let (mut table, mut rng) = table_with_b();
        for _ in 0..20 {
            let targets = table.probe_targets(Instant::now(), &mut rng);
            let (target, probe) = &targets[0];
            table.acked(&target.id, *probe);
            rounds(&mut table, 1).await;
        }
        assert_eq!(status_of(&table, "b"), Some(Status::Alive));
        assert_eq!(table.suspicions().raised, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_pause_probes_get_a_new_deadline_instead_of_suspicions() {
        let (mut table, mut rng) = table_with_b();
        table.tick(Instant::now());
        table.probe_targets(Instant::now(), &mut rng);
        // We were stopped for a second: b's answer may be sitting unread.
        tokio::time::advance(Duration::from_secs(1)).await;
        table.tick(Instant::now());
        assert_eq!(status_of(&table, "b"), Some(Status::Alive));
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspect_that_refutes_is_alive_and_counted_as_a_false_suspicion() {
        let (mut table, mut rng) = table_with_b();
        table.probe_targets(Instant::now(), &mut rng);
        rounds(&mut table, 2).await;
        assert_eq!(status_of(&table, "b"), Some(Status::Suspect));
        // A ping to b tells b what we think of it, so it can refute.
        assert_eq!(table.piggyback("b")[0], news("b", 1, Status::Suspect));
        // Someone else declares it dead first: still our suspicion.
        hear(&mut table, &[news("b", 1, Status::Dead)], Source::Peer("c"));
        hear(
            &mut table,
            &[news("b", 2, Status::Alive)],
            Source::Peer("c"),
        );
        assert_eq!(status_of(&table, "b"), Some(Status::Alive));
        assert_eq!(
            table.suspicions(),
            Suspicions {
                raised: 1,
                refuted: 1
            }
        );
    }

    #[test]
    fn hearing_we_are_suspected_raises_our_version_and_says_so() {
        let mut table = table();
        hear(
            &mut table,
            &[news("me", 5, Status::Suspect)],
            Source::Peer("b"),
        );
        assert_eq!(table.me().heartbeat, 6);
        assert_eq!(table.piggyback("b")[0], news("me", 6, Status::Alive));
        // An older boot of ours remembered with a higher version: we move past it.
        hear(
            &mut table,
            &[news("me", 50, Status::Alive)],
            Source::Peer("b"),
        );
        assert_eq!(table.me().heartbeat, 51);
        // Stale doubts change nothing.
        hear(
            &mut table,
            &[news("me", 7, Status::Dead)],
            Source::Peer("b"),
        );
        assert_eq!(table.me().heartbeat, 51);
        assert!(table.peers().is_empty());
    }

    #[test]
    fn a_death_in_a_whole_table_is_only_a_suspicion() {
        let mut table = table();
        hear(
            &mut table,
            &[news("b", 1, Status::Alive)],
            Source::Peer("b"),
        );
        let dead = [news("b", 1, Status::Dead)];
        table.merge(&dead, Source::Peer("c"), true, Instant::now(), NOW_MS);
        assert_eq!(status_of(&table, "b"), Some(Status::Suspect));
        hear(&mut table, &dead, Source::Peer("c"));
        assert_eq!(status_of(&table, "b"), Some(Status::Dead));
    }

    #[test]
    fn the_dead_we_never_knew_are_not_learnt() {
        let mut table = table();
        assert!(!hear(
            &mut table,
            &[news("x", 1, Status::Dead)],
            Source::Peer("c")
        ));
        assert!(table.peers().is_empty());
    }

    #[test]
    fn the_digest_covers_versions_of_the_living_not_suspicions() {
        let (mut a, mut b) = (table(), table());
        hear(&mut a, &[news("x", 1, Status::Alive)], Source::Outside);
        assert_ne!(a.digest(), b.digest());
        hear(&mut b, &[news("x", 1, Status::Suspect)], Source::Outside);
        assert_eq!(a.digest(), b.digest(), "a suspicion is no difference");
        hear(&mut b, &[news("x", 1, Status::Dead)], Source::Outside);
        assert_ne!(a.digest(), b.digest(), "a death is");
        hear(&mut a, &[news("x", 1, Status::Dead)], Source::Outside);
        assert_eq!(a.digest(), b.digest());
        hear(&mut a, &[news("x", 2, Status::Alive)], Source::Outside);
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn piggybacked_news_is_bounded_per_message_and_stops_after_its_retransmits() {
        let mut table = table();
        for i in 0..20 {
            hear(
                &mut table,
                &[news(&format!("m{i}"), 1, Status::Alive)],
                Source::Outside,
            );
        }
        let mut messages = 0;
        while table.queued_updates() > 0 {
            assert!(table.piggyback("someone").len() <= MAX_PIGGYBACK);
            messages += 1;
            assert!(messages < 1000, "news never stops being sent");
        }
        let limit = retransmits(20) as usize;
        assert_eq!(messages, (20 * limit).div_ceil(MAX_PIGGYBACK));
        assert!(
            table.piggyback("someone").is_empty(),
            "idle messages carry no news"
        );
    }

    #[test]
    fn only_a_member_itself_moves_its_addresses() {
        let mut table = table();
        hear(
            &mut table,
            &[news("b", 10, Status::Alive)],
            Source::Peer("b"),
        );
        let mut moved = news("b", 11, Status::Alive);
        moved.record.gossip_addr = "attacker:1".into();
        hear(&mut table, &[moved.clone()], Source::Peer("c"));
        let (b, _) = table.peers()[0].clone();
        assert_eq!(
            (b.heartbeat, b.gossip_addr.as_str()),
            (11, "b:1"),
            "a hint: liveness only"
        );
        moved.record.heartbeat = 12;
        hear(&mut table, &[moved], Source::Peer("b"));
        assert_eq!(
            table.peers()[0].0.gossip_addr,
            "attacker:1",
            "its own word moves it"
        );
    }

    #[test]
    fn versions_from_the_future_are_refused() {
        let mut table = table();
        let far = NOW_MS + MAX_HEARTBEAT_LEAD_MS + 1;
        assert!(!hear(
            &mut table,
            &[news("evil", far, Status::Alive)],
            Source::Peer("evil")
        ));
        assert!(table.peers().is_empty());
        hear(
            &mut table,
            &[news("me", u64::MAX, Status::Alive)],
            Source::Peer("evil"),
        );
        assert_eq!(
            table.me().heartbeat,
            5,
            "our own version cannot be pushed to the end"
        );
    }

    #[test]
    fn an_older_record_never_overwrites_a_fresher_one() {
        let mut table = table();
        hear(
            &mut table,
            &[news("b", 10, Status::Alive)],
            Source::Peer("b"),
        );
        hear(&mut table, &[news("b", 3, Status::Dead)], Source::Peer("c"));
        assert_eq!(table.peers()[0], (record("b", 10), Status::Alive));
    }

    #[tokio::test(start_paused = true)]
    async fn members_dead_long_enough_leave_and_old_records_cannot_revive_them() {
        let mut table = table_forgetting_after(Duration::from_secs(5));
        let mut rng = StdRng::seed_from_u64(3);
        hear(
            &mut table,
            &[news("gone", 7, Status::Alive)],
            Source::Peer("gone"),
        );
        for _ in 0..100 {
            table.probe_targets(Instant::now(), &mut rng);
            rounds(&mut table, 1).await;
        }
        assert!(
            table.peers().is_empty(),
            "a member dead for 10 s is still listed"
        );
        assert_eq!(table.tombstones(), 1);
        assert_eq!(table.queued_updates(), 0, "news about it is dropped too");
        // Someone relays the old record: it stays gone.
        assert!(!hear(
            &mut table,
            &[news("gone", 7, Status::Alive)],
            Source::Peer("x")
        ));
        assert!(table.peers().is_empty());
        // It restarts (a newer version): it is back.
        assert!(hear(
            &mut table,
            &[news("gone", 8_000, Status::Alive)],
            Source::Peer("gone")
        ));
        assert_eq!(table.peers().len(), 1);
        assert_eq!(table.tombstones(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn tombstones_do_not_pile_up() {
        let mut table = table_forgetting_after(Duration::from_secs(1));
        for id in 0..50 {
            hear(
                &mut table,
                &[news(&format!("m{id}"), 1, Status::Dead)],
                Source::Outside,
            );
            hear(
                &mut table,
                &[news(&format!("m{id}"), 1, Status::Alive)],
                Source::Outside,
            );
            hear(
                &mut table,
                &[news(&format!("m{id}"), 1, Status::Dead)],
                Source::Outside,
            );
        }
        for _ in 0..120 {
            tokio::time::advance(INTERVAL * 10).await;
            table.tick(Instant::now());
        }
        assert!(table.peers().is_empty());
        assert_eq!(table.tombstones(), 0, "tombstones outlived their lifetime");
    }
}
