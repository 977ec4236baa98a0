//! The batch write route, `POST /batch`: many increments and decrements in
//! one request, made durable by one group commit on the node.
//!
//! The gateway combines concurrent client writes into these batches, so a
//! busy gateway sends few upstream requests, each a small postcard body
//! over a pooled keep-alive connection. Answers carry, per item, the
//! counter's value after the commit and the seq that stamped the write,
//! plus the node's actor: `(actor, seq)` is what a reader waits for to
//! read its own writes from a merged view.
//!
//! Both bodies are postcard ([`crdt_core::wire`]); requests are bounded by
//! [`MAX_BATCH_ITEMS`] and by the servers' 64 KiB body limit.
use serde::{Deserialize, Serialize};

/// The route.
pub const BATCH_PATH: &str = "/batch";

/// The content type of both the request and the answer.
pub const BATCH_CONTENT_TYPE: &str = "application/x-tally-batch";

/// The header of a `POST /batch?w=…` answer saying how many replicas hold
/// the batch (`?w=` as on single writes: the gateway sends one `w` per batch).
pub const REPLICAS_HEADER: &str = "x-tally-replicas";

/// Most items in one batch (more → 400). With names at their 128-byte
/// maximum, this many unkeyed items stays under the 64 KiB body limit
/// (keyed items with long keys take fewer per batch).
pub const MAX_BATCH_ITEMS: usize = 256;

/// Which way an item moves its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Adds the amount.
    Increment,
    /// Subtracts the amount.
    Decrement,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    /// The counter's name (validated by the node like any name).
    pub counter: String,
    /// Increment or decrement.
    pub direction: Direction,
    /// At least 1.
    pub amount: u64,
    /// The client's `Idempotency-Key`, if it gave one: the node applies the
    /// item at most once across the cluster, like a single keyed write.
    pub key: Option<String>,
}

/// The body of `POST /batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// Applied in this order, all in one group commit.
    pub items: Vec<BatchItem>,
}

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemResult {
    /// Durable: the counter's value after the commit that holds it, and
    /// the seq of the node's actor that stamped it.
    Applied {
        /// The counter's value after the commit.
        value: i128,
        /// The write's seq (see [`BatchAnswer::actor`]); for a replay,
        /// the seq of the actor that first applied it.
        seq: u64,
        /// True when the item's key was applied before: the value is the
        /// first answer's, and nothing was applied now.
        replayed: bool,
    },
    /// Not applied, with the status and message a single write would have
    /// got (400 invalid, 503 storage, 507 counter limit, …).
    Refused {
        /// HTTP status.
        status: u16,
        /// Why.
        error: String,
    },
}

/// The answer of `POST /batch`: one result per item, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// The node's id.
    pub node: String,
    /// The CRDT actor that stamped every applied item.
    pub actor: String,
    /// One per item of the request, in its order.
    pub results: Vec<ItemResult>,
}

/// Why a write's body was refused (the node's and the gateway's 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not `{"amount": n}`.
    #[error("body must be {{\"amount\": <integer from 1 to {max}>}}: {0}", max = u64::MAX)]
    Malformed(String),
    /// `{"amount": 0}`.
    #[error("amount must be at least 1")]
    Zero,
}

/// The body of a single write: `{"amount": n}`, or no body at all for 1.
#[cfg(feature = "http")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountBody {
    amount: u64,
}

/// Parses a write's optional amount; anything but a whole number ≥ 1 that
/// fits u64 is refused. One rule for nodes and the gateway, so a write
/// gets the same answer whichever it reaches.
#[cfg(feature = "http")]
pub fn parse_amount(body: &[u8]) -> Result<u64, AmountError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(1);
    }
    let parsed: AmountBody =
        serde_json::from_slice(body).map_err(|e| AmountError::Malformed(e.to_string()))?;
    if parsed.amount == 0 {
        return Err(AmountError::Zero);
    }
    Ok(parsed.amount)
}

#[cfg(all(test, feature = "http"))]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_whole_positive_numbers_only() {
        assert_eq!(parse_amount(b"").unwrap(), 1);
        assert_eq!(parse_amount(b"{\"amount\": 5}").unwrap(), 5);
        assert_eq!(
            parse_amount(b"{\"amount\": 18446744073709551615}").unwrap(),
            u64::MAX
        );
        for bad in [
            "{\"amount\": 0}",
            "{\"amount\": -1}",
            "{\"amount\": 1.5}",
            "{\"amount\": \"abc\"}",
            "{\"amount\": 18446744073709551616}",
            "{\"amout\": 2}",
            "abc",
            "{}",
        ] {
            assert!(parse_amount(bad.as_bytes()).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_full_batch_of_longest_names_fits_the_body_limit() {
        let item = BatchItem {
            counter: "x".repeat(crdt_core::MAX_NAME_LEN),
            direction: Direction::Decrement,
            amount: u64::MAX,
            key: None,
        };
        let request = BatchRequest {
            items: vec![item; MAX_BATCH_ITEMS],
        };
        let encoded = crdt_core::wire::encode(&request);
        assert!(encoded.len() <= crate::http_error::MAX_BODY_BYTES);
        assert_eq!(
            crdt_core::wire::decode::<BatchRequest>(&encoded),
            Ok(request)
        );
    }
}
