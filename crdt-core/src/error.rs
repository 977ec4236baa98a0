use thiserror::Error;

/// Everything that can go wrong in the CRDT core. None of it panics.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CrdtError {
    /// An increment or decrement of zero was asked for.
    #[error("amount must be at least 1")]
    ZeroAmount,
    /// The operation would move the value (further) outside `i64`, or overflow
    /// the actor's `u128` total or `u64` seq (reachable only through entries
    /// merged from a damaged or hostile peer).
    #[error("operation would overflow the counter")]
    Overflow,
    /// A counter name is empty, longer than 128 bytes, or holds a control character.
    #[error("invalid counter name: {0}")]
    InvalidName(&'static str),
    /// An actor id is empty, too long, or holds a control character.
    #[error("invalid actor id: {0}")]
    InvalidActor(&'static str),
    /// An idempotency key is empty, longer than 128 bytes, or holds a byte
    /// that is not visible ASCII.
    #[error("invalid idempotency key: {0}")]
    InvalidKey(&'static str),
    /// Bytes that do not decode as the expected wire value.
    #[error("malformed encoding: {0}")]
    Decode(&'static str),
}
