//! The one wall clock of the cluster's processes, and the skew they must
//! stay within.
//!
//! Stamps that the lattice compares across nodes (keyed writes' `at_ms`,
//! removal marks, expiries) come from this clock. Gossip measures each
//! peer's offset in the handshake and refuses a peer further off than
//! [`MAX_CLOCK_SKEW_MS`], so every stamp in the cluster is within that
//! bound of every live node's clock (ARCHITECTURE.md, "Clocks").

/// How far apart two nodes' clocks may be: a peer further off is refused
/// at the handshake. Also the margin housekeeping leaves before it treats
/// a key's window as closed everywhere.
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;

/// Unix time in ms from the system clock (0 if it is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// How far `theirs` is from `ours`, either way.
pub fn skew_ms(ours: u64, theirs: u64) -> u64 {
    ours.abs_diff(theirs)
}
