//! # crdt-core
//!
//! The replicated data at the heart of Tally: a map of named PN-Counters
//! with observed-remove deletes and resets, expiry, keyed (exactly-once)
//! writes and the retirement of departed actors. Shared by the native node
//! (tokio) and the browser's observer replica (wasm32); it knows nothing
//! of I/O or clocks (callers pass times in).
//!
//! The lattice, its join, every derived field and the argument for each
//! housekeeping step are in ARCHITECTURE.md, "The lattice"; each module
//! opens with the part it implements:
//! - [`entry`](Entry): one actor's running totals in one counter, per run;
//! - [`keyed`]: idempotency keys, their groups and how they count;
//! - [`lifecycle`]: removals, expiry and takeovers;
//! - `counter`: one counter's state, join and cached sums;
//! - `map`: the counters, their indexes, local operations and housekeeping;
//! - [`Watermarks`]: what a replica holds gap-free, per actor.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

mod actor;
mod counter;
mod digest;
mod entry;
mod error;
pub mod keyed;
pub mod lifecycle;
mod map;
mod name;
mod watermarks;
#[cfg(feature = "serde")]
pub mod wire;

pub use actor::ActorId;
pub use counter::PnCounter;
pub use entry::{Entry, Op};
pub use error::CrdtError;
pub use keyed::{IdempotencyKey, KeyCheck, Registration, DEFAULT_KEY_WINDOW_MS};
pub use lifecycle::{Lifecycle, Mark, RemovalKind, Takeover};
pub use map::{Change, CounterMap, KeyedWrite, LinkedChange, Summary};
pub use name::{CounterName, MAX_NAME_LEN};
pub use watermarks::Watermarks;

/// Formats of earlier versions, still read from WAL records and snapshots.
#[cfg(feature = "serde")]
pub mod legacy {
    pub use crate::map::serde_impl::{
        current_registrations, with_runs, ChangeWithoutTakeovers, ChangeWithoutWindows,
        EntriesOnly, EntryWithoutRun, KeyedOnly, LegacyChange, LegacyRegistration,
        LifecycleWithoutTakeovers, WithoutTakeovers, WithoutWindows,
    };
}

/// The name the single-counter API (`/counter`, `/increment`, `/decrement`) acts on.
pub const DEFAULT_COUNTER: &str = "default";
