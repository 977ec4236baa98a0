//! Keyed writes: exactly-once increments under client retries.
//!
//! A client that does not know whether its write was applied retries it
//! with the same [`IdempotencyKey`], possibly on another node. A node that
//! already holds the key answers from its [`Registration`] and applies
//! nothing. But two nodes may each apply the key before either hears of
//! the other (the first attempt's node crashed after its fsync, or was cut
//! off): both totals then hold the amount. The lattice makes that count
//! once anyway:
//!
//! - Every keyed write leaves a [`Registration`] beside its actor's entry,
//!   in the same bundle `(counter, actor)`, so a replica that holds the
//!   entry holds the registration too.
//! - For each key, every registration but the least *uncancelled* one (by
//!   `(at_ms, origin)`) is a duplicate; the counter's value subtracts the
//!   duplicates' amounts ([`key_excess`]). A pure function of the state:
//!   every replica holding the same registrations reads the same value.
//! - The origin of a duplicate, once it sees a less registration for its key
//!   (whoever's, cancelled or not), *cancels* it: one local operation that
//!   takes the amount back out of its own entry and sets `cancelled_seq`,
//!   in one bundle. A cancelled registration counts for nothing, so it and
//!   the key can later be dropped without changing any value.
//!
//! The least registration of all is never cancelled (no registration is less
//! than it), so once every registration of a key is everywhere, the key's
//! amount is counted exactly once: by the least one's entry.
use alloc::sync::Arc;
use core::{cmp::Ordering, fmt};

use crate::{ActorId, CrdtError, Op};

/// Longest idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 128;

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

/// That `origin` applied the keyed write `key` to a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Registration {
    /// The client's key.
    pub key: IdempotencyKey,
    /// The actor that applied it (its entry holds the amount).
    pub origin: ActorId,
    /// The write.
    pub op: Op,
    /// The origin's wall clock when it applied the write (ms since the Unix
    /// epoch): the earliest attempt is the one kept; also the key's age.
    pub at_ms: u64,
    /// The origin's seq of the operation that applied it.
    pub seq: u64,
    /// The counter's value in the answer to the write: what a replay returns.
    pub value: i128,
    /// The origin's seq of the operation that cancelled it, 0 while it counts.
    pub cancelled_seq: u64,
}

impl Registration {
    /// True once the origin has taken the amount back out of its entry.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled_seq != 0
    }

    /// The highest seq of the origin that changed this registration: a peer
    /// holding the origin's changes up to it holds the registration as is.
    pub fn last_seq(&self) -> u64 {
        self.seq.max(self.cancelled_seq)
    }

    /// Which of two registrations of one key is kept: the earliest, then
    /// the least origin (a total order on distinct origins).
    pub fn precedence(&self, other: &Registration) -> Ordering {
        (self.at_ms, &self.origin).cmp(&(other.at_ms, &other.origin))
    }

    /// The merge of two views of one `(key, origin)` registration.
    ///
    /// An origin registers a key once, so the fields agree except the
    /// cancellation, which only grows. Should a damaged peer send two
    /// different ones, the greater by every field wins, so the merge is
    /// still commutative, associative and idempotent.
    pub fn join(&self, other: &Registration) -> Registration {
        let order = |r: &Registration| (r.seq, r.at_ms, op_rank(r.op), r.value);
        let mut joined = if order(other) > order(self) {
            other.clone()
        } else {
            self.clone()
        };
        joined.cancelled_seq = self.cancelled_seq.max(other.cancelled_seq);
        joined
    }
}

/// A total order on operations, for [`Registration::join`].
fn op_rank(op: Op) -> (bool, u64) {
    match op {
        Op::Increment(amount) => (true, amount),
        Op::Decrement(amount) => (false, amount),
    }
}

/// What the registrations of one key take off the counter's entries: the
/// signed amounts of every uncancelled registration but the least one.
pub fn key_excess<'a>(registrations: impl IntoIterator<Item = &'a Registration>) -> i128 {
    let mut least: Option<&Registration> = None;
    let mut sum: i128 = 0;
    for registration in registrations {
        if registration.is_cancelled() {
            continue;
        }
        sum = sum.saturating_add(registration.op.signed());
        if least.is_none_or(|kept| registration.precedence(kept) == Ordering::Less) {
            least = Some(registration);
        }
    }
    match least {
        Some(kept) => sum.saturating_sub(kept.op.signed()),
        None => 0,
    }
}

/// What the registrations of one key mean for a counter whose removals
/// cover some seqs ([`crate::lifecycle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount<'a> {
    /// What they add to the live totals beyond counting the key once (or
    /// not at all, once a removal saw the key).
    pub excess: i128,
    /// Per origin, amounts in its live total that are not writes: the
    /// re-application of a removed key, or a cancellation.
    pub not_writes: alloc::vec::Vec<(&'a ActorId, u128)>,
}

/// [`key_excess`] for a counter with removals: `covered(origin, seq)`
/// tells whether an origin's operation is removed.
///
/// A key a removal saw (any registration covered) counts zero times from
/// then on: every registration of it names the same logical write, and
/// the remover's view counted it. Otherwise it counts once, by its least
/// uncancelled registration. The live totals hold each registration's
/// amount while its application is not covered, and take it back out
/// while its cancellation is not; the excess is the difference.
pub fn live_key_excess<'a>(
    registrations: &'a [Registration],
    covered: impl Fn(&ActorId, u64) -> bool,
) -> KeyCount<'a> {
    let observed = registrations.iter().any(|r| covered(&r.origin, r.seq));
    let mut live: i128 = 0;
    let mut least: Option<&Registration> = None;
    let mut not_writes = alloc::vec::Vec::new();
    for registration in registrations {
        let amount = registration.op.signed();
        if !covered(&registration.origin, registration.seq) {
            live = live.saturating_add(amount);
            if observed {
                not_writes.push((&registration.origin, amount.unsigned_abs()));
            }
        }
        if registration.is_cancelled() {
            if !covered(&registration.origin, registration.cancelled_seq) {
                live = live.saturating_sub(amount);
                not_writes.push((&registration.origin, amount.unsigned_abs()));
            }
        } else if least.is_none_or(|kept| registration.precedence(kept) == Ordering::Less) {
            least = Some(registration);
        }
    }
    let counted = match least {
        Some(kept) if !observed => kept.op.signed(),
        _ => 0,
    };
    KeyCount {
        excess: live.saturating_sub(counted),
        not_writes,
    }
}

/// True when `mine` must be cancelled: some registration of its key, by
/// anyone and cancelled or not, takes precedence over it.
pub fn is_duplicate<'a>(
    mine: &Registration,
    same_key: impl IntoIterator<Item = &'a Registration>,
) -> bool {
    !mine.is_cancelled()
        && same_key
            .into_iter()
            .any(|other| other.precedence(mine) == Ordering::Less)
}

/// What a keyed write finds in the replica before it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key is new here: apply the write.
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

    fn reg(origin: &str, at_ms: u64, amount: u64, cancelled_seq: u64) -> Registration {
        Registration {
            key: IdempotencyKey::new("k").unwrap(),
            origin: ActorId::new(origin).unwrap(),
            op: Op::Increment(amount),
            at_ms,
            seq: 1,
            value: 0,
            cancelled_seq,
        }
    }

    #[test]
    fn keys_are_visible_ascii_up_to_128_bytes() {
        assert!(IdempotencyKey::new("order-42/attempt:α").is_err());
        assert!(IdempotencyKey::new("a b").is_err());
        assert!(IdempotencyKey::new("").is_err());
        assert!(IdempotencyKey::new(&"k".repeat(129)).is_err());
        assert!(IdempotencyKey::new(&"k".repeat(128)).is_ok());
        assert!(IdempotencyKey::new("order-42/attempt:1").is_ok());
    }

    #[test]
    fn every_uncancelled_registration_but_the_least_is_excess() {
        let (a, b, c) = (reg("a", 5, 3, 0), reg("b", 4, 3, 0), reg("c", 9, 3, 0));
        assert_eq!(key_excess([&a]), 0);
        assert_eq!(key_excess([&a, &b]), 3);
        assert_eq!(key_excess([&a, &b, &c]), 6);
        // The least one cancelled (it lost to one not here yet): the rest
        // still count once.
        let b_cancelled = reg("b", 4, 3, 7);
        assert_eq!(key_excess([&a, &b_cancelled, &c]), 3);
        assert_eq!(key_excess([&b_cancelled]), 0);
    }

    #[test]
    fn only_registrations_with_a_precedent_are_duplicates() {
        let (a, b) = (reg("a", 5, 3, 0), reg("b", 5, 3, 0));
        assert!(
            !is_duplicate(&a, [&a, &b]),
            "equal times: least origin kept"
        );
        assert!(is_duplicate(&b, [&a, &b]));
        assert!(
            is_duplicate(&b, [&reg("a", 5, 3, 9)]),
            "even a cancelled one"
        );
        assert!(!is_duplicate(&reg("b", 5, 3, 2), [&a]), "already cancelled");
    }

    #[test]
    fn join_is_commutative_and_keeps_the_cancellation() {
        let plain = reg("a", 5, 3, 0);
        let cancelled = reg("a", 5, 3, 8);
        assert_eq!(plain.join(&cancelled), cancelled);
        assert_eq!(cancelled.join(&plain), cancelled);
        let odd = Registration {
            seq: 2,
            ..reg("a", 1, 9, 0)
        };
        assert_eq!(plain.join(&odd), odd.join(&plain));
    }
}
