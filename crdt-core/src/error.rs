use thiserror::Error;

/// Everything that can go wrong in the CRDT core. None of it panics.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CrdtError {
    /// An increment or decrement of zero was asked for.
    #[error("amount must be at least 1")]
    ZeroAmount,
    /// The operation would overflow the actor's `u64` total or move the value outside `i64`.
    #[error("operation would overflow the counter")]
    Overflow,
    /// A counter name is empty, longer than 128 bytes, or holds a control character.
    #[error("invalid counter name: {0}")]
    InvalidName(&'static str),
    /// An actor id is empty, too long, or holds a control character.
    #[error("invalid actor id: {0}")]
    InvalidActor(&'static str),
    /// Bytes that do not decode as the expected wire value.
    #[error("malformed encoding: {0}")]
    Decode(&'static str),
}
