//! The map on the wire: `[(name, [(actor, entry)], [registration], lifecycle?)]`.
//! Decoding re-merges, so every index, sum and digest is rebuilt, and
//! duplicates are harmless.
//!
//! Earlier formats, still read (WAL records and snapshots of older
//! versions), newest first:
//! - 5 ([`WithoutWindows`], [`ChangeWithoutWindows`]): registrations
//!   without `window_ms` ([`LegacyRegistration`], read with the default window);
//! - 4 ([`WithoutTakeovers`], [`ChangeWithoutTakeovers`]): lifecycles
//!   without takeovers;
//! - 3 ([`KeyedOnly`], [`LegacyChange`]): no lifecycle, entries without a run;
//! - 2 ([`EntriesOnly`]): entries only.
use alloc::vec::Vec;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Change, CounterMap};
use crate::keyed::{Registration, DEFAULT_KEY_WINDOW_MS};
use crate::lifecycle::{Lifecycle, Mark};
use crate::{ActorId, CounterName, CrdtError, Entry, IdempotencyKey, Op};

impl Serialize for CounterMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.counters.len()))?;
        for (name, counter) in &self.counters {
            let entries: Vec<(&ActorId, &Entry)> = counter.entries().collect();
            let registrations: Vec<&Registration> = counter.registrations().collect();
            seq.serialize_element(&(name, entries, registrations, counter.lifecycle()))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for CounterMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        type Wire = Vec<(
            CounterName,
            Vec<(ActorId, Entry)>,
            Vec<Registration>,
            Option<Lifecycle>,
        )>;
        let mut map = CounterMap::new();
        for (name, entries, registrations, lifecycle) in Wire::deserialize(d)? {
            map.merge_counter(&name, entries, &registrations, lifecycle.as_ref());
        }
        Ok(map)
    }
}

/// A registration as versions 3–5 wrote it: no window (read as
/// [`DEFAULT_KEY_WINDOW_MS`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "UncheckedLegacyRegistration")]
pub struct LegacyRegistration(pub Registration);

#[derive(Deserialize)]
struct UncheckedLegacyRegistration {
    key: IdempotencyKey,
    origin: ActorId,
    op: Op,
    at_ms: u64,
    seq: u64,
    value: i128,
    cancelled_seq: u64,
}

impl TryFrom<UncheckedLegacyRegistration> for LegacyRegistration {
    type Error = CrdtError;

    fn try_from(old: UncheckedLegacyRegistration) -> Result<Self, CrdtError> {
        let registration = Registration {
            key: old.key,
            origin: old.origin,
            op: old.op,
            at_ms: old.at_ms,
            seq: old.seq,
            value: old.value,
            cancelled_seq: old.cancelled_seq,
            window_ms: DEFAULT_KEY_WINDOW_MS,
        };
        registration.checked().map(LegacyRegistration)
    }
}

/// Registrations of an earlier format, as they are now.
pub fn current_registrations(old: Vec<LegacyRegistration>) -> Vec<Registration> {
    old.into_iter().map(|LegacyRegistration(r)| r).collect()
}

/// An entry as encoded before runs: no `since` (it reads as 0).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "UncheckedEntryWithoutRun")]
pub struct EntryWithoutRun(Entry);

#[derive(Deserialize)]
struct UncheckedEntryWithoutRun {
    inc: u128,
    dec: u128,
    seq: u64,
}

impl TryFrom<UncheckedEntryWithoutRun> for EntryWithoutRun {
    type Error = CrdtError;

    fn try_from(old: UncheckedEntryWithoutRun) -> Result<Self, CrdtError> {
        let entry = Entry {
            inc: old.inc,
            dec: old.dec,
            seq: old.seq,
            since: 0,
        };
        entry.checked().map(EntryWithoutRun)
    }
}

impl From<EntryWithoutRun> for Entry {
    fn from(EntryWithoutRun(entry): EntryWithoutRun) -> Entry {
        entry
    }
}

/// Entries of before runs, with their run read as 0.
pub fn with_runs(entries: Vec<(ActorId, EntryWithoutRun)>) -> Vec<(ActorId, Entry)> {
    (entries.into_iter())
        .map(|(actor, entry)| (actor, entry.into()))
        .collect()
}

/// A lifecycle as encoded before takeovers.
#[derive(Debug, Clone, Deserialize)]
pub struct LifecycleWithoutTakeovers {
    removed: Vec<(ActorId, Entry)>,
    stamps: Vec<(ActorId, u64)>,
    mark: Option<Mark>,
    expires_at_ms: u64,
    spent_expiry_ms: u64,
}

impl From<LifecycleWithoutTakeovers> for Lifecycle {
    fn from(old: LifecycleWithoutTakeovers) -> Lifecycle {
        Lifecycle {
            removed: old.removed,
            stamps: old.stamps,
            mark: old.mark,
            expires_at_ms: old.expires_at_ms,
            spent_expiry_ms: old.spent_expiry_ms,
            takeovers: Vec::new(),
        }
    }
}

/// Decodes a map whose counters come as `Counter` and converts each into
/// `(name, entries, registrations, lifecycle)`.
fn decode_map<'de, D, Counter, F>(d: D, convert: F) -> Result<CounterMap, D::Error>
where
    D: Deserializer<'de>,
    Counter: Deserialize<'de>,
    F: Fn(
        Counter,
    ) -> (
        CounterName,
        Vec<(ActorId, Entry)>,
        Vec<Registration>,
        Option<Lifecycle>,
    ),
{
    let mut map = CounterMap::new();
    for counter in Vec::<Counter>::deserialize(d)? {
        let (name, entries, registrations, lifecycle) = convert(counter);
        map.merge_counter(&name, entries, &registrations, lifecycle.as_ref());
    }
    Ok(map)
}

/// A map in the format of version 5: registrations without a window.
#[derive(Debug, Clone, Default)]
pub struct WithoutWindows(pub CounterMap);

impl<'de> Deserialize<'de> for WithoutWindows {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        type Counter = (
            CounterName,
            Vec<(ActorId, Entry)>,
            Vec<LegacyRegistration>,
            Option<Lifecycle>,
        );
        decode_map(d, |(name, entries, registrations, lifecycle): Counter| {
            (
                name,
                entries,
                current_registrations(registrations),
                lifecycle,
            )
        })
        .map(WithoutWindows)
    }
}

/// A map in the format of lifecycles, before takeovers.
#[derive(Debug, Clone, Default)]
pub struct WithoutTakeovers(pub CounterMap);

impl<'de> Deserialize<'de> for WithoutTakeovers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        type Counter = (
            CounterName,
            Vec<(ActorId, Entry)>,
            Vec<LegacyRegistration>,
            Option<LifecycleWithoutTakeovers>,
        );
        decode_map(d, |(name, entries, registrations, lifecycle): Counter| {
            let lifecycle = lifecycle.map(Lifecycle::from);
            (
                name,
                entries,
                current_registrations(registrations),
                lifecycle,
            )
        })
        .map(WithoutTakeovers)
    }
}

/// A map in the format of keyed writes, before lifecycle.
#[derive(Debug, Clone, Default)]
pub struct KeyedOnly(pub CounterMap);

impl<'de> Deserialize<'de> for KeyedOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        type Counter = (
            CounterName,
            Vec<(ActorId, EntryWithoutRun)>,
            Vec<LegacyRegistration>,
        );
        decode_map(d, |(name, entries, registrations): Counter| {
            (
                name,
                with_runs(entries),
                current_registrations(registrations),
                None,
            )
        })
        .map(KeyedOnly)
    }
}

/// A map in the format of before keyed writes (entries only).
#[derive(Debug, Clone, Default)]
pub struct EntriesOnly(pub CounterMap);

impl<'de> Deserialize<'de> for EntriesOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        type Counter = (CounterName, Vec<(ActorId, EntryWithoutRun)>);
        decode_map(d, |(name, entries): Counter| {
            (name, with_runs(entries), Vec::new(), None)
        })
        .map(EntriesOnly)
    }
}

/// A [`Change`] in the format of version 5: registrations without a window.
#[derive(Debug, Clone)]
pub struct ChangeWithoutWindows(pub Change);

impl<'de> Deserialize<'de> for ChangeWithoutWindows {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            name: CounterName,
            actor: ActorId,
            entry: Entry,
            registrations: Vec<LegacyRegistration>,
            lifecycle: Option<Lifecycle>,
        }
        let wire = Wire::deserialize(d)?;
        Ok(ChangeWithoutWindows(Change {
            name: wire.name,
            actor: wire.actor,
            entry: wire.entry,
            registrations: current_registrations(wire.registrations),
            lifecycle: wire.lifecycle,
        }))
    }
}

/// A [`Change`] in the format of lifecycles, before takeovers.
#[derive(Debug, Clone)]
pub struct ChangeWithoutTakeovers(pub Change);

impl<'de> Deserialize<'de> for ChangeWithoutTakeovers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            name: CounterName,
            actor: ActorId,
            entry: Entry,
            registrations: Vec<LegacyRegistration>,
            lifecycle: Option<LifecycleWithoutTakeovers>,
        }
        let wire = Wire::deserialize(d)?;
        Ok(ChangeWithoutTakeovers(Change {
            name: wire.name,
            actor: wire.actor,
            entry: wire.entry,
            registrations: current_registrations(wire.registrations),
            lifecycle: wire.lifecycle.map(Lifecycle::from),
        }))
    }
}

/// A [`Change`] in the format of keyed writes, before lifecycle.
#[derive(Debug, Clone)]
pub struct LegacyChange(pub Change);

impl<'de> Deserialize<'de> for LegacyChange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            name: CounterName,
            actor: ActorId,
            entry: EntryWithoutRun,
            registrations: Vec<LegacyRegistration>,
        }
        let wire = Wire::deserialize(d)?;
        Ok(LegacyChange(Change {
            name: wire.name,
            actor: wire.actor,
            entry: wire.entry.into(),
            registrations: current_registrations(wire.registrations),
            lifecycle: None,
        }))
    }
}
