use alloc::collections::BTreeMap;

use crate::{ActorId, Summary};

/// For each actor, the seq up to which a replica holds *every* one of that
/// actor's changes — no gaps below it.
///
/// This is what anti-entropy trades: a peer answering a pull sends the
/// changes above the puller's watermarks ([`crate::CounterMap::changes_since`]).
/// It is not a [`Summary`] (the highest seq *seen*): a replica that merged an
/// eager delta before an earlier one that is still in flight has seen a
/// higher seq than it holds everything up to, and offering that as
/// watermarks would make the gap invisible to every later exchange. Hence a
/// type of its own, raised only by local writes and completed pulls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(transparent)
)]
pub struct Watermarks(BTreeMap<ActorId, u64>);

impl Watermarks {
    /// No actor known: a pull with these asks for everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a [`Summary`] as watermarks. Only sound for a replica that
    /// holds every change up to its highest seq per actor — one built by
    /// local writes and full merges, never by out-of-order deltas.
    pub fn from_gap_free_summary(summary: Summary) -> Self {
        Self(summary)
    }

    /// The watermark of `actor` (0 when nothing of it is held).
    pub fn get(&self, actor: &str) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    /// Records that every change of `actor` up to `seq` is held; never lowers.
    pub fn raise(&mut self, actor: &ActorId, seq: u64) {
        let mine = self.0.entry(actor.clone()).or_default();
        *mine = (*mine).max(seq);
    }

    /// Raises every watermark to at least `other`'s.
    pub fn raise_all(&mut self, other: &Watermarks) {
        for (actor, seq) in other.iter() {
            self.raise(actor, seq);
        }
    }

    /// `(actor, watermark)` in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (&ActorId, u64)> {
        self.0.iter().map(|(actor, seq)| (actor, *seq))
    }

    /// Number of actors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no actor is known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(ActorId, u64)> for Watermarks {
    fn from_iter<I: IntoIterator<Item = (ActorId, u64)>>(pairs: I) -> Self {
        let mut watermarks = Watermarks::new();
        for (actor, seq) in pairs {
            watermarks.raise(&actor, seq);
        }
        watermarks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(text: &str) -> ActorId {
        ActorId::new(text).unwrap()
    }

    #[test]
    fn watermarks_only_rise() {
        let mut marks = Watermarks::new();
        marks.raise(&actor("a"), 5);
        marks.raise(&actor("a"), 3);
        assert_eq!(marks.get("a"), 5);
        assert_eq!(marks.get("b"), 0);
        let other: Watermarks = [(actor("a"), 7), (actor("b"), 1)].into_iter().collect();
        marks.raise_all(&other);
        assert_eq!(marks, other);
    }
}
