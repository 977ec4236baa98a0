//! Keyed writes: each logical write counted once under client retries.
//!
//! A client that does not know whether its write was applied retries it
//! with the same [`IdempotencyKey`], possibly on another node. A node that
//! holds the key answers from its [`Registration`] and applies nothing; but
//! two nodes may each apply the key before either hears of the other. The
//! lattice makes that count once, with no node acting on it afterwards:
//!
//! - Every application is an ordinary change of its origin's entry (the
//!   amount is in the origin's running totals) plus a [`Registration`] in
//!   the same bundle, so observed-remove covers it like any write.
//! - **Groups.** The registrations of a key, ordered by `(at_ms, origin,
//!   seq)`, fall into groups: the first one *heads* a group, which holds
//!   every registration stamped before `head.at_ms + head.window_ms`; the
//!   next one heads the next group. One group is one logical write; a
//!   retry stamped after its window closed is a new one ([`groups`]).
//! - **Count.** A group counts its head's amount once, unless a removal
//!   counted some application of it, in which case it counts zero times
//!   ([`count_key`]). The counter subtracts what its entries hold beyond
//!   that (the *excess*). A pure function of the state.
//! - **Leaving.** Registrations are dropped only where that moves no value
//!   on any replica, whatever happens next: a closed group with a single
//!   registration, or one whose applications are all removed
//!   ([`is_inert`]). The caller vouches that the group is *closed*
//!   everywhere (no replica can still add to it, see `CounterMap::fold_keys`).
//!   Groups with several live applications stay, and keep subtracting.
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::{ActorId, CrdtError, Op};

/// Longest idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// How long a key's group stays open by default (24 h): a retry stamped
/// within it joins the first attempt.
pub const DEFAULT_KEY_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// A client's name for one logical write: 1–128 visible ASCII bytes
/// (`!`..`~`), as an HTTP header carries it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// Validates `key` and wraps it.
    pub fn new(key: &str) -> Result<Self, CrdtError> {
        if key.is_empty() {
            return Err(CrdtError::InvalidKey("empty"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(CrdtError::InvalidKey("longer than 128 bytes"));
        }
        if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(CrdtError::InvalidKey(
                "holds a byte that is not visible ASCII",
            ));
        }
        Ok(Self(Arc::from(key)))
    }

    /// A value that sorts before every valid key (for range bounds).
    pub(crate) fn lowest() -> Self {
        Self(Arc::from(""))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl core::borrow::Borrow<str> for IdempotencyKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for IdempotencyKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <alloc::borrow::Cow<'de, str>>::deserialize(d)?;
        IdempotencyKey::new(&text).map_err(serde::de::Error::custom)
    }
}

/// That `origin` applied the keyed write `key` to a counter at its seq `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "UncheckedRegistration"))]
pub struct Registration {
    /// The client's key.
    pub key: IdempotencyKey,
    /// The actor that applied it (its entry holds the amount).
    pub origin: ActorId,
    /// The write.
    pub op: Op,
    /// The origin's clock when it applied the write (ms since the Unix
    /// epoch, never decreasing on one origin): orders the attempts of a key.
    pub at_ms: u64,
    /// The origin's seq of the operation that applied it.
    pub seq: u64,
    /// The counter's value in the answer to the write: what a replay returns.
    pub value: i128,
    /// Written by versions ≤ 5 only: the origin's seq of the operation that
    /// took the amount back out of its entry (0: never). Read, never made.
    pub cancelled_seq: u64,
    /// How long after `at_ms` a retry still joins this attempt, when it
    /// heads its group (the origin's `--idempotency-window`).
    pub window_ms: u64,
}

/// A registration as it arrives, before it is checked.
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
struct UncheckedRegistration {
    key: IdempotencyKey,
    origin: ActorId,
    op: Op,
    at_ms: u64,
    seq: u64,
    value: i128,
    cancelled_seq: u64,
    window_ms: u64,
}

#[cfg(feature = "serde")]
impl TryFrom<UncheckedRegistration> for Registration {
    type Error = CrdtError;

    fn try_from(raw: UncheckedRegistration) -> Result<Registration, CrdtError> {
        Registration {
            key: raw.key,
            origin: raw.origin,
            op: raw.op,
            at_ms: raw.at_ms,
            seq: raw.seq,
            value: raw.value,
            cancelled_seq: raw.cancelled_seq,
            window_ms: raw.window_ms,
        }
        .checked()
    }
}

impl Registration {
    /// The registration, if an origin could have made it: a write has a
    /// seq (one at 0 would count as removed by every removal), a window,
    /// and a cancellation comes after the write it cancels.
    pub fn checked(self) -> Result<Registration, CrdtError> {
        if self.seq == 0 {
            return Err(CrdtError::Decode("registration without a seq"));
        }
        if self.window_ms == 0 {
            return Err(CrdtError::Decode("registration without a window"));
        }
        if self.cancelled_seq != 0 && self.cancelled_seq <= self.seq {
            return Err(CrdtError::Decode("cancelled before it was applied"));
        }
        if self.op.amount() == 0 {
            return Err(CrdtError::Decode("registration of a zero amount"));
        }
        Ok(self)
    }

    /// True when a version ≤ 5 origin took the amount back out of its entry.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled_seq != 0
    }

    /// The highest seq of the origin that changed this registration.
    pub fn last_seq(&self) -> u64 {
        self.seq.max(self.cancelled_seq)
    }

    /// When the group this registration heads closes: retries stamped from
    /// then on are new writes.
    pub fn closes_at(&self) -> u64 {
        self.at_ms.saturating_add(self.window_ms)
    }

    /// The order of the attempts of one key: earliest first, then by origin
    /// and seq (a total order: `(origin, seq)` names one application).
    fn order(&self) -> (u64, &ActorId, u64) {
        (self.at_ms, &self.origin, self.seq)
    }

    /// The merge of two views of one application `(origin, seq)`. The
    /// fields agree (an origin applies at one seq once), except the legacy
    /// cancellation, which only grows. Should a damaged peer send two
    /// different ones, the greater by every field wins, so the merge is
    /// still commutative, associative and idempotent.
    fn join(&self, other: &Registration) -> Registration {
        let order = |r: &Registration| (r.at_ms, r.op.rank(), r.value, r.window_ms);
        let mut joined = if order(other) > order(self) {
            other.clone()
        } else {
            self.clone()
        };
        joined.cancelled_seq = self.cancelled_seq.max(other.cancelled_seq);
        joined
    }
}

/// Joins `incoming` into the registrations of one key, kept in
/// [`Registration::order`]; true when anything changed.
pub(crate) fn join_into(same_key: &mut Vec<Registration>, incoming: &Registration) -> bool {
    if let Some(index) =
        (same_key.iter()).position(|r| r.origin == incoming.origin && r.seq == incoming.seq)
    {
        let joined = same_key[index].join(incoming);
        if joined == same_key[index] {
            return false;
        }
        same_key.remove(index);
        let at = same_key.partition_point(|r| r.order() < joined.order());
        same_key.insert(at, joined);
        return true;
    }
    let at = same_key.partition_point(|r| r.order() < incoming.order());
    same_key.insert(at, incoming.clone());
    true
}

/// The groups of one key's registrations (given in [`Registration::order`]):
/// each a logical write, headed by its earliest attempt.
pub fn groups(same_key: &[Registration]) -> impl Iterator<Item = &[Registration]> {
    let mut rest = same_key;
    core::iter::from_fn(move || {
        let head = rest.first()?;
        // From the second on: a group holds at least its head, even one
        // whose window saturates (`at_ms` near `u64::MAX`).
        let end = (rest.iter().skip(1))
            .position(|r| r.at_ms >= head.closes_at())
            .map_or(rest.len(), |index| index + 1);
        let (group, after) = rest.split_at(end);
        rest = after;
        Some(group)
    })
}

/// What the registrations of one key mean for a counter, given which of
/// their origins' operations removals cover (`removed(registration, seq)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount<'a> {
    /// What they add to the live totals beyond counting each group once
    /// (or not at all, once a removal counted it).
    pub excess: i128,
    /// Amounts in live totals that are not writes: applications of a
    /// group a removal counted, and legacy cancellations.
    pub not_writes: Vec<(&'a Registration, u128)>,
}

/// Counts one key ([`KeyCount`]). A group is *counted by a removal* when
/// some removal covered one of its applications without covering that
/// application's cancellation: the remover's view then counted the logical
/// write, and the removal took it away. Otherwise the group counts its
/// first uncancelled attempt once.
pub fn count_key<'a>(
    same_key: &'a [Registration],
    removed: impl Fn(&Registration, u64) -> bool,
) -> KeyCount<'a> {
    let mut excess: i128 = 0;
    let mut not_writes = Vec::new();
    for group in groups(same_key) {
        let counted_by_removal = group
            .iter()
            .any(|r| removed(r, r.seq) && !(r.is_cancelled() && removed(r, r.cancelled_seq)));
        let mut live: i128 = 0;
        for r in group {
            let amount = r.op.signed();
            if !removed(r, r.seq) {
                live = live.saturating_add(amount);
                if counted_by_removal {
                    not_writes.push((r, amount.unsigned_abs()));
                }
            }
            if r.is_cancelled() && !removed(r, r.cancelled_seq) {
                live = live.saturating_sub(amount);
                not_writes.push((r, amount.unsigned_abs()));
            }
        }
        let counted = match group.iter().find(|r| !r.is_cancelled()) {
            Some(kept) if !counted_by_removal => kept.op.signed(),
            _ => 0,
        };
        excess = excess.saturating_add(live.saturating_sub(counted));
    }
    KeyCount { excess, not_writes }
}

/// True when dropping `group` moves no value now or later, provided no
/// replica can still add to it: a single uncancelled application (it counts
/// as a plain write would), or applications and cancellations all removed
/// (they count for nothing, and so does every amount they name).
pub fn is_inert(group: &[Registration], removed: impl Fn(&Registration, u64) -> bool) -> bool {
    let single = matches!(group, [only] if !only.is_cancelled());
    single
        || group
            .iter()
            .all(|r| removed(r, r.seq) && (!r.is_cancelled() || removed(r, r.cancelled_seq)))
}

/// The attempt a retry of the key answers from, when the key's latest
/// group is still open at `now_ms`: its first uncancelled attempt (else its
/// head).
pub fn open_attempt(same_key: &[Registration], now_ms: u64) -> Option<&Registration> {
    let latest = groups(same_key).last()?;
    let head = latest.first()?;
    (now_ms < head.closes_at()).then(|| latest.iter().find(|r| !r.is_cancelled()).unwrap_or(head))
}

/// What a keyed write finds in the replica before it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key is new here (or its window closed): apply the write.
    New,
    /// The same write was applied already: answer with this registration.
    Replay(Registration),
    /// The key was used for another write (another counter or body).
    Mismatch {
        /// The counter the key was used on.
        counter: alloc::string::String,
        /// The write it named.
        op: Op,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(origin: &str, at_ms: u64, amount: u64, seq: u64) -> Registration {
        Registration {
            key: IdempotencyKey::new("k").unwrap(),
            origin: ActorId::new(origin).unwrap(),
            op: Op::Increment(amount),
            at_ms,
            seq,
            value: 0,
            cancelled_seq: 0,
            window_ms: 100,
        }
    }

    fn sorted(regs: &[Registration]) -> Vec<Registration> {
        let mut out = Vec::new();
        for r in regs {
            join_into(&mut out, r);
        }
        out
    }

    #[test]
    fn keys_are_visible_ascii_up_to_128_bytes() {
        assert!(IdempotencyKey::new("order-42/attempt:α").is_err());
        assert!(IdempotencyKey::new("a b").is_err());
        assert!(IdempotencyKey::new("").is_err());
        assert!(IdempotencyKey::new(&"k".repeat(129)).is_err());
        assert!(IdempotencyKey::new(&"k".repeat(128)).is_ok());
    }

    #[test]
    fn a_retry_after_the_window_heads_a_group_of_its_own() {
        let regs = sorted(&[reg("b", 150, 3, 1), reg("a", 10, 3, 1), reg("c", 109, 3, 1)]);
        let sizes: Vec<usize> = groups(&regs).map(<[_]>::len).collect();
        assert_eq!(sizes, [2, 1], "10 and 109 are one write, 150 another");
        assert_eq!(count_key(&regs, |_, _| false).excess, 3);
        assert_eq!(open_attempt(&regs, 200).map(|r| r.at_ms), Some(150));
        assert_eq!(open_attempt(&regs, 250), None, "every window closed");
    }

    #[test]
    fn a_group_a_removal_counted_counts_nothing_more() {
        let regs = sorted(&[reg("a", 10, 3, 1), reg("b", 20, 3, 1)]);
        // The removal saw b's application only.
        let count = count_key(&regs, |r, _| r.origin.as_str() == "b");
        assert_eq!(count.excess, 3, "a's live application is taken out");
        assert_eq!(count.not_writes.len(), 1);
    }

    #[test]
    fn a_removal_that_saw_a_cancelled_application_did_not_count_it() {
        let mut cancelled = reg("b", 20, 3, 1);
        cancelled.cancelled_seq = 2;
        let regs = sorted(&[reg("a", 10, 3, 1), cancelled]);
        // The removal saw b's application and its cancellation, not a's.
        let count = count_key(&regs, |r, _| r.origin.as_str() == "b");
        assert_eq!(count.excess, 0, "a's application still counts once");
    }

    #[test]
    fn only_single_or_wholly_removed_groups_are_inert() {
        let one = [reg("a", 10, 3, 1)];
        let two = sorted(&[reg("a", 10, 3, 1), reg("b", 20, 3, 1)]);
        assert!(is_inert(&one, |_, _| false));
        assert!(!is_inert(&two, |_, _| false));
        assert!(is_inert(&two, |_, _| true));
    }

    #[test]
    fn join_is_commutative_and_one_application_is_kept_once() {
        let plain = reg("a", 5, 3, 1);
        let mut cancelled = plain.clone();
        cancelled.cancelled_seq = 8;
        assert_eq!(plain.join(&cancelled), cancelled);
        assert_eq!(cancelled.join(&plain), cancelled);
        let odd = Registration {
            at_ms: 9,
            ..reg("a", 1, 9, 1)
        };
        assert_eq!(plain.join(&odd), odd.join(&plain));
        assert_eq!(sorted(&[plain.clone(), odd.clone()]).len(), 1);
        assert_eq!(sorted(&[plain.clone(), reg("a", 5, 3, 2)]).len(), 2);
    }
}
