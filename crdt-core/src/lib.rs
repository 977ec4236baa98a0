//! # crdt-core
//!
//! The replicated data at the heart of Tally: a PN-Counter CRDT and a map of
//! named PN-Counters, shared by the native node (tokio) and the browser's
//! observer replica (wasm32). It knows nothing of I/O.
//!
//! ## Invariants
//! - An entry `(counter, actor)` holds that actor's running totals
//!   `inc` and `dec`, the `seq` of the actor's operation that last changed
//!   it, and `since`, the seq that began its current run. Only the actor
//!   itself ever raises its own entry; everyone else learns it by merging.
//! - Merge of an entry takes the later run, and within a run the per-field
//!   maximum; registrations of keyed writes ([`keyed`]) and lifecycles
//!   ([`lifecycle`]) merge part by part the same way. So merge is
//!   commutative, associative and idempotent; replaying or re-receiving
//!   anything is harmless.
//! - A counter is removed (deleted, reset, expired) by recording what the
//!   remover saw: only what lies above it counts ([`lifecycle`]).
//! - `value = Σinc − Σdec` over what lies above the removals, minus what
//!   duplicate keyed writes add, is kept as running sums, so reading it is O(1).
//!   Per-actor totals are `u128` while one operation's amount is a `u64`,
//!   so no sequence of accepted operations can exhaust them: a counter
//!   never freezes. Local operations refuse only to move the value
//!   (further) outside `i64`. Merged values beyond `i64` read exactly as
//!   `i128`; sums beyond `i128` (only from damaged or hostile entries, up to
//!   `u128::MAX` each) are kept exactly and the value saturates at
//!   `i128::MIN`/`i128::MAX`, still a pure function of the entries. Nothing
//!   merged can make arithmetic panic or wrap.
//! - On the wire `u64` and `u128` are both postcard varints: entries written
//!   when the totals were `u64` decode to the same values.
//! - The digest is a wrapping sum of per-entry hashes, updated on every
//!   change, and the same on every platform for equal states. Entries whose
//!   totals fit in `u64` hash as they did when totals were `u64`.
//! - Every actor stamps its operations with a strictly increasing `seq`, so
//!   [`Watermarks`] (actor → seq up to which *everything* is held) describe
//!   a replica in O(actors), and [`CounterMap::changes_since`] finds what a
//!   peer lacks in O(changed entries). A [`Summary`] (actor → highest seq
//!   *seen*) is a different thing: it may hide gaps, so it never stands in
//!   for watermarks without saying so ([`Watermarks::from_gap_free_summary`]).
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

mod actor;
mod counter;
mod digest;
mod error;
pub mod keyed;
pub mod lifecycle;
mod map;
mod name;
mod watermarks;
#[cfg(feature = "serde")]
pub mod wire;

pub use actor::ActorId;
pub use counter::{Entry, Op, PnCounter};
pub use error::CrdtError;
pub use keyed::{IdempotencyKey, KeyCheck, Registration};
pub use lifecycle::{Lifecycle, Mark, RemovalKind, Takeover};
pub use map::{Change, CounterMap, KeyedWrite, Summary};
#[cfg(feature = "serde")]
pub use map::{
    ChangeWithoutTakeovers, EntriesOnly, EntryWithoutRun, KeyedOnly, LegacyChange,
    LifecycleWithoutTakeovers, WithoutTakeovers,
};
pub use name::{CounterName, MAX_NAME_LEN};
pub use watermarks::Watermarks;

/// The name the single-counter API (`/counter`, `/increment`, `/decrement`) acts on.
pub const DEFAULT_COUNTER: &str = "default";
