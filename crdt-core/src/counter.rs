use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::keyed::{live_key_excess, IdempotencyKey, Registration};
use crate::lifecycle::{live_part, removed_through, Lifecycle};
use crate::{digest, ActorId, CrdtError};

/// One actor's running totals in one counter.
///
/// The totals are `u128` while a single operation's amount is a `u64`: an
/// actor would need 2^64 operations of `u64::MAX` to exhaust a total, so no
/// sequence of accepted operations can leave a counter unwritable (with
/// `u64` totals, `+i64::MAX`, `−u64::MAX`, `+2^63` froze both directions).
/// On the wire (postcard) `u64` and `u128` are both LEB128 varints, so
/// entries written when the totals were `u64` decode to the same values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "UncheckedEntry"))]
pub struct Entry {
    /// Sum of every increment this actor made.
    pub inc: u128,
    /// Sum of every decrement this actor made.
    pub dec: u128,
    /// The actor's operation number that last changed this entry.
    pub seq: u64,
    /// The seq that began this *run* of totals: an actor whose entry was
    /// wholly removed (deleted, reset, expired) starts again from zero at
    /// its next write (see [`crate::lifecycle`]). 0 for entries of before.
    pub since: u64,
}

/// An entry as it arrives, before [`Entry::checked`].
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
struct UncheckedEntry {
    inc: u128,
    dec: u128,
    seq: u64,
    since: u64,
}

#[cfg(feature = "serde")]
impl TryFrom<UncheckedEntry> for Entry {
    type Error = CrdtError;

    fn try_from(raw: UncheckedEntry) -> Result<Entry, CrdtError> {
        Entry {
            inc: raw.inc,
            dec: raw.dec,
            seq: raw.seq,
            since: raw.since,
        }
        .checked()
    }
}

impl Entry {
    /// The entry, if some actor could have written it: every write is
    /// stamped with a seq from 1 on, so only the empty entry has seq 0.
    /// A held entry at seq 0 would sit below every watermark, where
    /// anti-entropy (`changes_since`) never reaches it.
    pub fn checked(self) -> Result<Entry, CrdtError> {
        if self.seq == 0 && self != Entry::default() {
            return Err(CrdtError::Decode("entry without a seq"));
        }
        Ok(self)
    }

    /// The merge of two views of one actor's entry: the later run, and
    /// within one run the per-field maximum (a run's totals only grow).
    pub fn join(self, other: Entry) -> Entry {
        match self.since.cmp(&other.since) {
            core::cmp::Ordering::Greater => self,
            core::cmp::Ordering::Less => other,
            core::cmp::Ordering::Equal => Entry {
                inc: self.inc.max(other.inc),
                dec: self.dec.max(other.dec),
                seq: self.seq.max(other.seq),
                since: self.since,
            },
        }
    }

    /// The first entry of a run begun by an operation stamped `seq`.
    pub fn start(seq: u64) -> Entry {
        Entry {
            inc: 0,
            dec: 0,
            seq,
            since: seq,
        }
    }
}

/// A local operation on a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Op {
    /// Add the amount.
    Increment(u64),
    /// Subtract the amount.
    Decrement(u64),
}

impl Op {
    /// The operation's effect on the value, as a signed number.
    pub fn signed(self) -> i128 {
        match self {
            Op::Increment(amount) => i128::from(amount),
            Op::Decrement(amount) => -i128::from(amount),
        }
    }

    /// The operation that takes this one back out.
    pub fn opposite(self) -> Op {
        match self {
            Op::Increment(amount) => Op::Decrement(amount),
            Op::Decrement(amount) => Op::Increment(amount),
        }
    }
}

/// An exact sum of `u128` totals: `high · 2^128 + low`.
///
/// Entries come from peers, and a damaged or hostile one may hold totals
/// near `u128::MAX`; their sum must neither panic nor wrap. Sums only ever
/// grow (merge raises entries, never lowers them), so one carry word
/// suffices: it would take 2^64 entries to exhaust it (it saturates rather
/// than wrap even then).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct WideSum {
    high: u64,
    low: u128,
}

impl WideSum {
    fn add(&mut self, amount: u128) {
        let (low, carry) = self.low.overflowing_add(amount);
        self.low = low;
        self.high = self.high.saturating_add(u64::from(carry));
    }

    /// `self − other` for `self ≥ other`, clamped to `u128::MAX`.
    fn saturating_distance(self, other: WideSum) -> u128 {
        let (low, borrow) = self.low.overflowing_sub(other.low);
        // `self ≥ other`, so this cannot underflow.
        let high = self.high - other.high - u64::from(borrow);
        if high == 0 {
            low
        } else {
            u128::MAX
        }
    }
}

/// A PN-Counter: per-actor increment and decrement totals, the
/// registrations of keyed writes (see [`crate::keyed`]) and, once it was
/// removed or given an expiry, its [`Lifecycle`].
///
/// `value()` is O(1): the sums, the excess of duplicate keyed writes and the
/// digest are updated on every change.
#[derive(Debug, Clone, Default)]
pub struct PnCounter {
    /// Sorted by actor. A counter has few actors (nodes × incarnations), and
    /// a sorted vector costs ~40 bytes per entry where a B-tree node costs
    /// ~450: it matters with a million counters.
    entries: Vec<(ActorId, Entry)>,
    /// Per key, its registrations sorted by origin (one per node that
    /// applied it, usually one); empty unless keyed writes were made. A
    /// B-tree: a hot counter can hold a day of keys.
    registrations: BTreeMap<IdempotencyKey, Vec<Registration>>,
    /// Removals and expiry; boxed, as most counters never have one.
    lifecycle: Option<Box<Lifecycle>>,
    /// Σinc and Σdec of the live parts (above what removals saw), exact.
    total_inc: WideSum,
    total_dec: WideSum,
    /// Σ over the keys of what duplicates add to the live totals.
    excess: i128,
    /// With a lifecycle: whether anything was written above the removals
    /// (a duplicate of a removed key, or a cancellation, is no write).
    written_since_removal: bool,
    /// Over the entries only: a registration or a lifecycle change never
    /// happens without its actor's entry changing (they travel as one
    /// bundle), so equal entries mean equal registrations and lifecycles,
    /// up to what local housekeeping dropped, which counts for nothing.
    digest: u64,
}

impl PartialEq for PnCounter {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
            && self.registrations == other.registrations
            && self.lifecycle == other.lifecycle
    }
}
impl Eq for PnCounter {}

impl PnCounter {
    /// An empty counter (value 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// `Σinc − Σdec`, exact whenever it fits in `i128`, else clamped to
    /// `i128::MIN` / `i128::MAX`.
    ///
    /// Local operations keep every value they produce within `i64` (or move
    /// it toward it), so only merged entries can take the value beyond
    /// `i128`, and only if a damaged or hostile peer sent totals near
    /// `u128::MAX`. Saturating, rather than wrapping or panicking, keeps
    /// the sign right and the read harmless. The sums it is computed from
    /// are exact, so the result is a pure function of the entries:
    /// merging in any order, any number of times, reads the same value.
    pub fn value(&self) -> i128 {
        let totals = if self.total_inc >= self.total_dec {
            let magnitude = self.total_inc.saturating_distance(self.total_dec);
            i128::try_from(magnitude).unwrap_or(i128::MAX)
        } else {
            let magnitude = self.total_dec.saturating_distance(self.total_inc);
            // −magnitude, down to −2^127 = i128::MIN.
            0i128.checked_sub_unsigned(magnitude).unwrap_or(i128::MIN)
        };
        totals.saturating_sub(self.excess)
    }

    fn position(&self, actor: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|(known, _)| known.as_str().cmp(actor))
    }

    /// True when the counter reads as present: never removed, written
    /// since its last removal, or reset. (Expiry is the caller's to check
    /// against its clock: [`Self::expiry`].)
    pub fn is_visible(&self) -> bool {
        match &self.lifecycle {
            None => !self.entries.is_empty(),
            Some(lifecycle) => self.written_since_removal || lifecycle.is_reset(),
        }
    }

    /// The expiry in force (ms since the Unix epoch), if any.
    pub fn expiry(&self) -> Option<u64> {
        self.lifecycle.as_ref().and_then(|l| l.expiry())
    }

    /// Removals and expiry, if it ever had any.
    pub fn lifecycle(&self) -> Option<&Lifecycle> {
        self.lifecycle.as_deref()
    }

    /// Whether departed actor `from` can be taken over here now: `None`
    /// when there is nothing to take over (no entry, or already taken
    /// over), `Some(false)` when it must wait (it owes a key's
    /// cancellation, or it is the survivor of a takeover still recorded,
    /// which only its own record explains), `Some(true)` when it can.
    pub fn takeover_ready(&self, from: &ActorId) -> Option<bool> {
        self.entry(from.as_str())?;
        let lifecycle = self.lifecycle.as_deref();
        if lifecycle.is_some_and(|l| l.takeover_of(from.as_str()).is_some()) {
            return None;
        }
        let survivor =
            lifecycle.is_some_and(|l| l.takeovers.iter().any(|((_, into), _)| into == from));
        let owes_keys = self.registrations().any(|r| &r.origin == from);
        Some(!survivor && !owes_keys)
    }

    /// Through which seq of `actor` its operations on this counter are removed.
    pub fn removed_through(&self, actor: &str) -> u64 {
        let entry = self.entry(actor);
        let since = entry.map_or(0, |e| e.since);
        let removed = self
            .lifecycle
            .as_ref()
            .and_then(|l| l.baseline_of(actor, since));
        removed_through(removed.as_ref(), entry)
    }

    /// The 64-bit digest of this counter's entries.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Every actor's entry, ordered by actor id.
    pub fn entries(&self) -> impl Iterator<Item = (&ActorId, &Entry)> {
        self.entries.iter().map(|(actor, entry)| (actor, entry))
    }

    /// One actor's entry.
    pub fn entry(&self, actor: &str) -> Option<&Entry> {
        self.position(actor)
            .ok()
            .map(|index| &self.entries[index].1)
    }

    /// Number of actors that ever touched this counter.
    pub fn actors(&self) -> usize {
        self.entries.len()
    }

    /// Every registration of a keyed write, ordered by `(key, origin)`.
    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.registrations.values().flatten()
    }

    /// True when the counter holds a registration.
    pub fn has_registrations(&self) -> bool {
        !self.registrations.is_empty()
    }

    /// The registrations of one key (by every origin that applied it).
    pub fn registrations_of(&self, key: &str) -> &[Registration] {
        self.registrations.get(key).map_or(&[], Vec::as_slice)
    }

    /// A working copy for stamping local operations: the same entries,
    /// totals and value, without the registrations (which can be many, and
    /// which stamping a new key never reads).
    pub fn without_registrations(&self) -> PnCounter {
        PnCounter {
            entries: self.entries.clone(),
            registrations: BTreeMap::new(),
            lifecycle: self.lifecycle.clone(),
            total_inc: self.total_inc,
            total_dec: self.total_dec,
            excess: self.excess,
            written_since_removal: self.written_since_removal,
            digest: self.digest,
        }
    }

    /// What the registrations of `key` add to the live totals (0 when none
    /// or when they count exactly once).
    pub fn key_excess(&self, key: &str) -> i128 {
        let covered = coverage(&self.entries, self.lifecycle.as_deref());
        live_key_excess(self.registrations_of(key), covered).excess
    }

    /// True when `actor`'s next write must start a new run: everything in
    /// its `entry` was removed, or what is left above the removals holds no
    /// write (re-applications of removed keys, cancellations), so a replica
    /// may have dropped the counter as garbage while this one still holds it.
    pub(crate) fn run_is_over(&self, actor: &str, entry: &Entry) -> bool {
        if self.removed_through(actor) >= entry.seq {
            return true;
        }
        if self.lifecycle.is_none() {
            return false;
        }
        let tally = self.tally();
        (self.position(actor)).is_ok_and(|index| tally.written[index] == 0)
    }

    /// True when a removal saw `key` (some registration of it is removed):
    /// it counts for nothing from then on, and its duplicates need no
    /// cancelling.
    pub fn key_is_removed(&self, key: &str) -> bool {
        let covered = coverage(&self.entries, self.lifecycle.as_deref());
        (self.registrations_of(key))
            .iter()
            .any(|r| covered(&r.origin, r.seq))
    }

    /// Recomputes the sums, the excess and visibility from scratch: after a
    /// change that may lower a live part (a removal, a new run).
    fn recompute(&mut self) {
        let tally = self.tally();
        self.total_inc = tally.total_inc;
        self.total_dec = tally.total_dec;
        self.excess = tally.excess;
        self.written_since_removal = tally.written.iter().any(|&amount| amount > 0);
    }

    /// The live sums and excess, and per entry its live amount (Σ of both
    /// directions) and how much of it is writes.
    fn tally(&self) -> Tally {
        let lifecycle = self.lifecycle.as_deref();
        let (mut total_inc, mut total_dec) = (WideSum::default(), WideSum::default());
        let mut live: Vec<u128> = Vec::with_capacity(self.entries.len());
        for (actor, entry) in &self.entries {
            let (inc, dec) = match lifecycle {
                Some(lifecycle) => live_with_takeovers(actor.as_str(), entry, lifecycle),
                None => (entry.inc, entry.dec),
            };
            total_inc.add(inc);
            total_dec.add(dec);
            live.push(inc.saturating_add(dec));
        }
        let covered = coverage(&self.entries, lifecycle);
        let mut excess: i128 = 0;
        let mut written = live;
        for same_key in self.registrations.values() {
            let key = live_key_excess(same_key, &covered);
            excess = excess.saturating_add(key.excess);
            for (origin, amount) in key.not_writes {
                if let Ok(index) = self.entries.binary_search_by(|(a, _)| a.cmp(origin)) {
                    written[index] = written[index].saturating_sub(amount);
                }
            }
        }
        Tally {
            total_inc,
            total_dec,
            excess,
            written,
        }
    }

    /// Merges a lifecycle change; true when anything changed.
    pub fn merge_lifecycle(&mut self, incoming: &Lifecycle) -> bool {
        let lifecycle = self.lifecycle.get_or_insert_with(Default::default);
        if !lifecycle.join(incoming) {
            return false;
        }
        for (actor, entry) in &self.entries {
            lifecycle.forget_older_runs(actor.as_str(), entry.since);
        }
        self.recompute();
        true
    }

    /// Merges one registration; true when anything changed.
    pub fn merge_registration(&mut self, incoming: &Registration) -> bool {
        {
            let covered = coverage(&self.entries, self.lifecycle.as_deref());
            let same_key = self.registrations.entry(incoming.key.clone()).or_default();
            let before = live_key_excess(same_key, &covered).excess;
            match same_key.binary_search_by(|r| r.origin.cmp(&incoming.origin)) {
                Ok(index) => {
                    let joined = same_key[index].join(incoming);
                    if joined == same_key[index] {
                        return false;
                    }
                    same_key[index] = joined;
                }
                Err(index) => same_key.insert(index, incoming.clone()),
            }
            let after = live_key_excess(same_key, &covered).excess;
            self.excess = self.excess.saturating_sub(before).saturating_add(after);
        }
        if self.lifecycle.is_some() {
            // Whether the counter was written since its removal may change.
            self.recompute();
        }
        true
    }

    /// Drops what removals made dead weight, for a counter every live
    /// replica holds as it is here (the caller's check, see
    /// [`crate::CounterMap::drop_removed`]): keys whose every registration
    /// and cancellation are removed, entries wholly removed, what removals
    /// saw of actors with nothing left, and the lifecycle itself once it
    /// says nothing a counter without one would not (no removed part left,
    /// no reset, no expiry in force). Never changes the value or whether
    /// the counter reads as present. Returns the dropped entries (with the
    /// actor) and keys, for the map's indexes.
    pub(crate) fn compact(&mut self) -> (Vec<(ActorId, Entry)>, Vec<IdempotencyKey>) {
        if self.lifecycle.is_none() {
            return (Vec::new(), Vec::new());
        }
        // An entry whose live part holds no write (re-applications of
        // removed keys, cancellations) adds nothing and never will: removed
        // as it is, it stops differing from replicas that dropped the
        // counter whole.
        let tally = self.tally();
        // A departed actor's entry a takeover moved is dead by the takeover,
        // not by a removal: recording it as removed would take its amount
        // back out of the survivor.
        let taken_over = |actor: &ActorId| {
            (self.lifecycle.as_deref()).is_some_and(|l| l.takeover_of(actor.as_str()).is_some())
        };
        let inert: Vec<(ActorId, Entry)> = (self.entries.iter().enumerate())
            .filter(|(index, (actor, _))| tally.written[*index] == 0 && !taken_over(actor))
            .map(|(_, (actor, entry))| (actor.clone(), *entry))
            .collect();
        if !inert.is_empty() {
            let seen = Lifecycle {
                removed: inert,
                ..Lifecycle::default()
            };
            self.lifecycle
                .get_or_insert_with(Default::default)
                .join(&seen);
        }
        let Some(lifecycle) = self.lifecycle.as_deref() else {
            return (Vec::new(), Vec::new());
        };
        let (dead_keys, dead_entries) = {
            let covered = coverage(&self.entries, Some(lifecycle));
            let dead_keys: Vec<IdempotencyKey> = (self.registrations.iter())
                .filter(|(_, same_key)| {
                    same_key.iter().all(|r| {
                        covered(&r.origin, r.seq)
                            && (!r.is_cancelled() || covered(&r.origin, r.cancelled_seq))
                    })
                })
                .map(|(key, _)| key.clone())
                .collect();
            // The latest remover's entry carries a reset to replicas that join later.
            let carrier = (lifecycle.mark.as_ref())
                .filter(|m| m.kind == crate::RemovalKind::Reset)
                .map(|m| &m.actor);
            let dead_entries: Vec<(ActorId, Entry)> = (self.entries.iter())
                .filter(|(actor, entry)| covered(actor, entry.seq) && Some(actor) != carrier)
                .cloned()
                .collect();
            (dead_keys, dead_entries)
        };
        for key in &dead_keys {
            self.registrations.remove(key);
        }
        for (actor, entry) in &dead_entries {
            if let Ok(index) = self.position(actor.as_str()) {
                self.entries.remove(index);
                self.digest = self
                    .digest
                    .wrapping_sub(digest::entry_hash(actor.as_str(), entry));
            }
        }
        let mut lifecycle = self.lifecycle.take().unwrap_or_default();
        lifecycle.takeovers = still_needed(&lifecycle, &self.entries);
        let still_named: alloc::collections::BTreeSet<ActorId> = (self.registrations.values())
            .flatten()
            .map(|r| r.origin.clone())
            .chain(self.entries.iter().map(|(actor, _)| actor.clone()))
            .chain(
                lifecycle
                    .takeovers
                    .iter()
                    .map(|((from, _), _)| from.clone()),
            )
            .collect();
        (lifecycle.removed).retain(|(actor, _)| still_named.contains(actor));
        let says_something = !lifecycle.removed.is_empty()
            || !lifecycle.takeovers.is_empty()
            || lifecycle.is_reset()
            || lifecycle.expiry().is_some()
            || (!self.written_since_removal && !self.entries.is_empty());
        if says_something {
            // Every live replica holds it: the stamps that route it to
            // peers lagging behind have nobody left to route it to.
            lifecycle.stamps.clear();
            if lifecycle.expiry().is_none() {
                // A spent expiry says nothing either.
                (lifecycle.expires_at_ms, lifecycle.spent_expiry_ms) = (0, 0);
            }
            self.lifecycle = Some(lifecycle);
        }
        self.recompute();
        (dead_entries, dead_keys)
    }

    /// Drops every registration of `key`. Only sound when they add nothing
    /// to the value ([`Self::key_excess`] is 0) and no further one can come (the
    /// key's window is over); the caller checks both.
    pub(crate) fn drop_key(&mut self, key: &IdempotencyKey) -> usize {
        let Some(dropped) = self.registrations.remove(key) else {
            return 0;
        };
        let covered = coverage(&self.entries, self.lifecycle.as_deref());
        self.excess = (self.excess).saturating_sub(live_key_excess(&dropped, covered).excess);
        dropped.len()
    }

    /// Adds `amount` on behalf of `actor`, returning the delta to ship to peers.
    pub fn increment(&mut self, actor: &ActorId, amount: u64) -> Result<PnCounter, CrdtError> {
        self.apply_next(actor, Op::Increment(amount))
    }

    /// Subtracts `amount` on behalf of `actor`, returning the delta to ship to peers.
    pub fn decrement(&mut self, actor: &ActorId, amount: u64) -> Result<PnCounter, CrdtError> {
        self.apply_next(actor, Op::Decrement(amount))
    }

    fn apply_next(&mut self, actor: &ActorId, op: Op) -> Result<PnCounter, CrdtError> {
        // A seq at u64::MAX can only come from a damaged or hostile peer.
        let seq = self
            .entry(actor.as_str())
            .map_or(0, |e| e.seq)
            .checked_add(1)
            .ok_or(CrdtError::Overflow)?;
        let entry = self.prepare(actor.as_str(), op, seq)?;
        self.merge_entry(actor, entry);
        let mut delta = PnCounter::new();
        delta.merge_entry(actor, entry);
        Ok(delta)
    }

    /// The entry `actor` would have after `op` stamped `seq`, without applying it.
    ///
    /// Fails on a zero amount, on a value that would move (further) outside
    /// `i64`, or on a `u128` total that would overflow — which no sequence
    /// of accepted operations can reach (2^64 operations of `u64::MAX`),
    /// only a damaged or hostile peer. On failure nothing changes.
    pub fn prepare(&self, actor: &str, op: Op, seq: u64) -> Result<Entry, CrdtError> {
        let (current, mut next) = match self.entry(actor) {
            Some(entry) if !self.run_is_over(actor, entry) => (*entry, Entry { seq, ..*entry }),
            _ => (Entry::start(seq), Entry::start(seq)),
        };
        match op {
            Op::Increment(0) | Op::Decrement(0) => return Err(CrdtError::ZeroAmount),
            Op::Increment(amount) => {
                next.inc = current
                    .inc
                    .checked_add(u128::from(amount))
                    .ok_or(CrdtError::Overflow)?
            }
            Op::Decrement(amount) => {
                next.dec = current
                    .dec
                    .checked_add(u128::from(amount))
                    .ok_or(CrdtError::Overflow)?
            }
        }
        // Only refuse moving *further* out of i64: a value pushed past the
        // range by concurrent merges must still accept operations toward it.
        // (Saturating: a merged value may sit at the edge of i128.)
        let value_after = self.value().saturating_add(op.signed());
        let leaves_range = match op {
            Op::Increment(_) => value_after > i128::from(i64::MAX),
            Op::Decrement(_) => value_after < i128::from(i64::MIN),
        };
        if leaves_range {
            return Err(CrdtError::Overflow);
        }
        Ok(next)
    }

    /// The entry `actor` would have after taking `op` back out, stamped `seq`
    /// (cancelling a duplicate keyed write, [`crate::keyed`]). No range check:
    /// the value does not move, the duplicate's excess goes with it.
    pub fn prepare_cancel(&self, actor: &str, op: Op, seq: u64) -> Result<Entry, CrdtError> {
        let current = self.entry(actor).copied().unwrap_or_default();
        let mut next = Entry { seq, ..current };
        let (total, amount) = match op.opposite() {
            Op::Increment(amount) => (&mut next.inc, amount),
            Op::Decrement(amount) => (&mut next.dec, amount),
        };
        *total = total
            .checked_add(u128::from(amount))
            .ok_or(CrdtError::Overflow)?;
        Ok(next)
    }

    /// Merges one actor's entry; returns the joined entry when anything changed.
    pub fn merge_entry(&mut self, actor: &ActorId, incoming: Entry) -> Option<Entry> {
        let position = self.position(actor.as_str());
        let old = position
            .ok()
            .map(|index| self.entries[index].1)
            .unwrap_or_default();
        let joined = old.join(incoming);
        if joined == old {
            return None;
        }
        match position {
            Ok(index) => self.entries[index].1 = joined,
            Err(index) => self.entries.insert(index, (actor.clone(), joined)),
        }
        if position.is_ok() {
            self.digest = self
                .digest
                .wrapping_sub(digest::entry_hash(actor.as_str(), &old));
        }
        self.digest = self
            .digest
            .wrapping_add(digest::entry_hash(actor.as_str(), &joined));
        let same_run = old.since == joined.since || position.is_err();
        if self.lifecycle.is_none() && same_run {
            // One run, no removal: the join is a per-field maximum, so
            // neither difference underflows and the live part is the entry.
            self.total_inc.add(joined.inc - old.inc);
            self.total_dec.add(joined.dec - old.dec);
            if self.has_registrations() && position.is_err() {
                // Registrations that came before their entry are covered
                // by its run now if they belong to an earlier one.
                self.recompute();
            }
        } else {
            if let Some(lifecycle) = self.lifecycle.as_mut() {
                lifecycle.forget_older_runs(actor.as_str(), joined.since);
            }
            self.recompute();
        }
        Some(joined)
    }

    /// Merges another replica (or a delta) into this one; true when anything changed.
    pub fn merge(&mut self, other: &PnCounter) -> bool {
        let mut changed = false;
        if let Some(lifecycle) = other.lifecycle() {
            changed |= self.merge_lifecycle(lifecycle);
        }
        for registration in other.registrations() {
            changed |= self.merge_registration(registration);
        }
        for (actor, entry) in other.entries() {
            changed |= self.merge_entry(actor, *entry).is_some();
        }
        changed
    }
}

/// What [`PnCounter::tally`] counts.
struct Tally {
    total_inc: WideSum,
    total_dec: WideSum,
    excess: i128,
    /// Per entry, how much of its live amount is writes.
    written: Vec<u128>,
}

/// Whether seq `seq` of `origin` is removed, for the counter with these
/// entries and lifecycle.
fn coverage<'a>(
    entries: &'a [(ActorId, Entry)],
    lifecycle: Option<&'a Lifecycle>,
) -> impl Fn(&ActorId, u64) -> bool + 'a {
    move |origin, seq| {
        let entry = entries
            .binary_search_by(|(known, _)| known.cmp(origin))
            .ok()
            .map(|index| &entries[index].1);
        let removed =
            lifecycle.and_then(|l| l.baseline_of(origin.as_str(), entry.map_or(0, |e| e.since)));
        seq <= removed_through(removed.as_ref(), entry)
    }
}

/// The takeovers a counter with these (compacted) entries still needs:
/// a survivor's translation of what removals saw of the departed actor, a
/// losing takeover's give-back, and the winner of an actor while a loser
/// or the departed actor's entry remains. The rest say nothing any more
/// (the departed actor's entry is gone, and its stale copies are kept
/// out by the map's seq floor).
fn still_needed(
    lifecycle: &Lifecycle,
    entries: &[(ActorId, Entry)],
) -> Vec<((ActorId, ActorId), crate::lifecycle::Takeover)> {
    let entry = |actor: &ActorId| {
        (entries.binary_search_by(|(known, _)| known.cmp(actor)).ok())
            .map(|index| &entries[index].1)
    };
    let active =
        |from: &ActorId, into: &ActorId, takeover: &crate::lifecycle::Takeover, wins: bool| {
            let Some(survivor) = entry(into) else {
                return false;
            };
            let holds_fold = takeover.at >= survivor.since && survivor.seq >= takeover.at;
            let removal_saw_fold = (lifecycle.removed_of(into.as_str()))
                .is_some_and(|r| r.since == survivor.since && r.seq >= takeover.at);
            let gives_something = !wins
                || (lifecycle.removed_of(from.as_str()))
                    .is_some_and(|r| r.since == takeover.base.since);
            holds_fold && !removal_saw_fold && gives_something
        };
    let losers: Vec<_> = (lifecycle.takeovers.iter())
        .filter(|((from, into), _)| {
            lifecycle
                .takeover_of(from.as_str())
                .is_some_and(|(winner, _)| winner != into)
        })
        .filter(|((from, into), takeover)| active(from, into, takeover, false))
        .cloned()
        .collect();
    let winners = (lifecycle.takeovers.iter())
        .filter(|((from, into), _)| {
            lifecycle
                .takeover_of(from.as_str())
                .is_some_and(|(winner, _)| winner == into)
        })
        .filter(|((from, into), takeover)| {
            active(from, into, takeover, true)
                || entry(from).is_some()
                || losers.iter().any(|((lost, _), _)| lost == from)
        })
        .cloned();
    let mut kept: Vec<_> = losers.iter().cloned().chain(winners).collect();
    kept.sort();
    kept
}

/// The live part of `actor`'s `entry` under `lifecycle`: above what
/// removals saw of it and what a takeover moved out of it; for a survivor,
/// less what removals that missed its fold saw of the departed actor, and
/// less what a losing takeover folded in twice.
fn live_with_takeovers(actor: &str, entry: &Entry, lifecycle: &Lifecycle) -> (u128, u128) {
    let baseline = lifecycle.baseline_of(actor, entry.since);
    let (mut inc, mut dec) = live_part(entry, baseline.as_ref());
    let removed = lifecycle.removed_of(actor);
    for (from, takeover, wins) in lifecycle.takeovers_by(actor) {
        // The fold belongs to this run and this entry holds it.
        let holds_fold = takeover.at >= entry.since && entry.seq >= takeover.at;
        // A removal that saw this entry at or past the fold removed the
        // departed actor's part with it.
        let removal_saw_fold =
            removed.is_some_and(|r| r.since == entry.since && r.seq >= takeover.at);
        if !holds_fold || removal_saw_fold {
            continue;
        }
        let (less_inc, less_dec) = if wins {
            // What removals saw of the departed actor's folded run.
            match lifecycle.removed_of(from.as_str()) {
                Some(saw) if saw.since == takeover.base.since => (
                    saw.inc.min(takeover.base.inc),
                    saw.dec.min(takeover.base.dec),
                ),
                _ => (0, 0),
            }
        } else {
            (takeover.base.inc, takeover.base.dec)
        };
        inc = inc.saturating_sub(less_inc);
        dec = dec.saturating_sub(less_dec);
    }
    (inc, dec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(id: &str) -> ActorId {
        ActorId::new(id).unwrap()
    }

    #[test]
    fn value_is_increments_minus_decrements() {
        let mut counter = PnCounter::new();
        counter.increment(&actor("a"), 5).unwrap();
        counter.decrement(&actor("b"), 2).unwrap();
        counter.increment(&actor("a"), 1).unwrap();
        assert_eq!(counter.value(), 4);
        assert_eq!(
            counter.entry("a"),
            Some(&Entry {
                inc: 6,
                dec: 0,
                seq: 2,
                since: 1
            })
        );
    }

    #[test]
    fn overflow_and_zero_are_refused_without_change() {
        let mut counter = PnCounter::new();
        counter.increment(&actor("a"), i64::MAX as u64).unwrap();
        let before = counter.clone();
        assert_eq!(counter.increment(&actor("b"), 1), Err(CrdtError::Overflow));
        assert_eq!(
            counter.increment(&actor("a"), 0),
            Err(CrdtError::ZeroAmount)
        );
        assert_eq!(counter, before);
        assert_eq!(counter.digest(), before.digest());
    }

    /// The issue "No counter can be frozen": `+i64::MAX`, `−u64::MAX`,
    /// `+2^63` by one actor filled both of its `u64` totals, after which
    /// every write to the counter by that actor was refused forever.
    #[test]
    fn no_counter_can_be_frozen() {
        let a = actor("a");
        let mut counter = PnCounter::new();
        counter.increment(&a, i64::MAX as u64).unwrap();
        counter.decrement(&a, u64::MAX).unwrap();
        counter.increment(&a, 1 << 63).unwrap();
        assert_eq!(counter.value(), 0);
        let full = u128::from(u64::MAX);
        assert_eq!(
            counter.entry("a").map(|e| (e.inc, e.dec)),
            Some((full, full))
        );

        counter.increment(&a, 1).unwrap();
        counter.decrement(&a, 3).unwrap();
        counter.increment(&a, u64::MAX >> 1).unwrap();
        assert_eq!(counter.value(), i128::from(i64::MAX) - 2);
        assert_eq!(
            counter.entry("a"),
            Some(&Entry {
                inc: full + 1 + u128::from(u64::MAX >> 1),
                dec: full + 3,
                seq: 6,
                since: 1
            })
        );
    }

    #[test]
    fn values_beyond_i128_saturate_and_stay_order_independent() {
        let huge = Entry {
            inc: u128::MAX,
            dec: 0,
            seq: 1,
            since: 0,
        };
        let mut up = PnCounter::new();
        up.merge_entry(&actor("a"), huge);
        assert_eq!(up.value(), i128::MAX);
        up.merge_entry(&actor("b"), huge);
        assert_eq!(up.value(), i128::MAX, "2 · u128::MAX saturates");
        // Σdec = u128::MAX cancels one of the two, exactly.
        up.merge_entry(
            &actor("c"),
            Entry {
                inc: 5,
                dec: u128::MAX,
                seq: 1,
                since: 0,
            },
        );
        assert_eq!(up.value(), i128::MAX);
        up.merge_entry(
            &actor("d"),
            Entry {
                inc: 0,
                dec: u128::MAX - 10,
                seq: 1,
                since: 0,
            },
        );
        assert_eq!(up.value(), 15);

        // Merged in the opposite order, the same entries read the same.
        let mut reversed = PnCounter::new();
        for (id, entry) in up.entries().collect::<Vec<_>>().into_iter().rev() {
            reversed.merge_entry(id, *entry);
        }
        assert_eq!(reversed, up);
        assert_eq!(reversed.value(), 15);
        assert_eq!(reversed.digest(), up.digest());

        let mut down = PnCounter::new();
        down.merge_entry(
            &actor("a"),
            Entry {
                inc: 0,
                dec: u128::MAX,
                seq: 1,
                since: 0,
            },
        );
        assert_eq!(down.value(), i128::MIN);
        down.merge_entry(
            &actor("b"),
            Entry {
                inc: 0,
                dec: 1 << 127,
                seq: 1,
                since: 0,
            },
        );
        assert_eq!(down.value(), i128::MIN);
        let mut edge = PnCounter::new();
        edge.merge_entry(
            &actor("a"),
            Entry {
                inc: 0,
                dec: 1 << 127,
                seq: 1,
                since: 0,
            },
        );
        assert_eq!(edge.value(), i128::MIN, "−2^127 is exactly i128::MIN");
        edge.merge_entry(
            &actor("b"),
            Entry {
                inc: 1,
                dec: 0,
                seq: 1,
                since: 0,
            },
        );
        assert_eq!(edge.value(), i128::MIN + 1);
    }

    #[test]
    fn hostile_entries_refuse_local_operations_without_panicking() {
        let a = actor("a");
        let mut counter = PnCounter::new();
        counter.merge_entry(
            &a,
            Entry {
                inc: u128::MAX,
                dec: 0,
                seq: u64::MAX,
                since: 0,
            },
        );
        let before = counter.clone();
        // The seq cannot grow, whatever the direction.
        assert_eq!(counter.decrement(&a, 1), Err(CrdtError::Overflow));
        assert_eq!(counter.increment(&a, 1), Err(CrdtError::Overflow));
        // A fresh seq, but the u128 total is exhausted, or the value would
        // move further beyond i64.
        assert_eq!(
            counter.prepare("a", Op::Increment(1), 7),
            Err(CrdtError::Overflow)
        );
        assert_eq!(
            counter.prepare("b", Op::Increment(1), 7),
            Err(CrdtError::Overflow)
        );
        // Toward the range is still fine, even from a saturated value.
        assert!(counter.prepare("b", Op::Decrement(u64::MAX), 7).is_ok());
        assert_eq!(counter, before);
        assert_eq!(counter.digest(), before.digest());
    }

    #[test]
    fn delta_merges_like_the_state() {
        let mut left = PnCounter::new();
        let delta = left.increment(&actor("a"), 3).unwrap();
        let mut right = PnCounter::new();
        assert!(right.merge(&delta));
        assert!(!right.merge(&delta));
        assert_eq!(left, right);
        assert_eq!(left.digest(), right.digest());
    }
}
