//! Write combining: which client writes travel together upstream, and who
//! gets which answer.
//!
//! Increments and decrements commute, so writes to one counter waiting
//! while an upstream batch is in flight can go as one item carrying their
//! sum: the node stamps one operation, and every client's write is in it.
//! An item's sum never leaves `u64` (a write that would overflow it opens
//! a new item of the same counter), so no client's write is ever split
//! across items, and each client is answered by exactly one item's result.
//!
//! Writes with an `Idempotency-Key` never come here: the gateway proxies
//! each alone (`counters::write`), so the node answers it, or replays its
//! first answer, exactly as it would a direct client.
//!
//! Pure (the I/O is in `writes`), so these rules are tested directly.
use std::collections::HashMap;

use tally_protocol::batch::{BatchItem, BatchRequest, Direction, ItemResult, MAX_BATCH_ITEMS};

/// One client's write, with what answers it (`T`: a reply channel in the
/// gateway, anything in tests).
#[derive(Debug)]
pub struct Write<T> {
    pub counter: String,
    pub direction: Direction,
    pub amount: u64,
    pub ticket: T,
}

/// One item of a batch and the clients whose writes it sums.
#[derive(Debug)]
pub struct Combined<T> {
    pub item: BatchItem,
    pub tickets: Vec<T>,
}

/// A batch being filled.
#[derive(Debug)]
pub struct Batch<T> {
    items: Vec<Combined<T>>,
    /// The item of `(counter, direction)` still taking writes.
    open: HashMap<(String, Direction), usize>,
    max_items: usize,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Self::with_max_items(MAX_BATCH_ITEMS)
    }
}

impl<T> Batch<T> {
    /// An empty batch of at most `max_items` items (at least 1).
    pub fn with_max_items(max_items: usize) -> Self {
        Self {
            items: Vec::new(),
            open: HashMap::new(),
            max_items: max_items.max(1),
        }
    }

    /// Adds `write` to its counter's item, or to a new item; hands it back
    /// when that would need an item beyond the limit (it waits for the
    /// next batch).
    pub fn push(&mut self, write: Write<T>) -> Result<(), Write<T>> {
        let key = (write.counter, write.direction);
        if let Some(&index) = self.open.get(&key) {
            let combined = &mut self.items[index];
            if let Some(sum) = combined.item.amount.checked_add(write.amount) {
                combined.item.amount = sum;
                combined.tickets.push(write.ticket);
                return Ok(());
            }
        }
        let (counter, direction) = key;
        if self.items.len() >= self.max_items {
            return Err(Write {
                counter,
                direction,
                amount: write.amount,
                ticket: write.ticket,
            });
        }
        self.open
            .insert((counter.clone(), direction), self.items.len());
        self.items.push(Combined {
            item: BatchItem {
                counter,
                direction,
                amount: write.amount,
                key: None,
            },
            tickets: vec![write.ticket],
        });
        Ok(())
    }

    /// Client writes in the batch.
    pub fn writes(&self) -> usize {
        self.items.iter().map(|c| c.tickets.len()).sum()
    }

    /// What goes upstream.
    pub fn request(&self) -> BatchRequest {
        BatchRequest {
            items: self.items.iter().map(|c| c.item.clone()).collect(),
        }
    }

    pub fn into_items(self) -> Vec<Combined<T>> {
        self.items
    }
}

/// What one client is told about its write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Durable; the counter's value after the node's commit.
    Applied { value: i128, seq: u64 },
    /// Refused by the node (nothing of it applied), with its status.
    Refused { status: u16, error: String },
    /// The node's answer does not account for this write: it may or may
    /// not have been applied (a 502, like a broken connection).
    Unknown,
}

/// Pairs every client with its item's result: all clients of an item get
/// that item's outcome. Results missing from a short answer give
/// [`Outcome::Unknown`]; extra results are ignored.
pub fn answers<T>(
    items: Vec<Combined<T>>,
    results: Vec<ItemResult>,
) -> Vec<(BatchItem, Vec<T>, Outcome)> {
    let mut results = results.into_iter();
    items
        .into_iter()
        .map(|combined| {
            let outcome = match results.next() {
                // Unkeyed items are never replays.
                Some(ItemResult::Applied { value, seq, .. }) => Outcome::Applied { value, seq },
                Some(ItemResult::Refused { status, error }) => Outcome::Refused { status, error },
                None => Outcome::Unknown,
            };
            (combined.item, combined.tickets, outcome)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(counter: &str, direction: Direction, amount: u64, ticket: u32) -> Write<u32> {
        Write {
            counter: counter.into(),
            direction,
            amount,
            ticket,
        }
    }

    fn items(batch: &Batch<u32>) -> Vec<(String, Direction, u64, Vec<u32>)> {
        (batch.items.iter())
            .map(|c| {
                let item = &c.item;
                (
                    item.counter.clone(),
                    item.direction,
                    item.amount,
                    c.tickets.clone(),
                )
            })
            .collect()
    }

    use Direction::{Decrement as Dec, Increment as Inc};

    #[test]
    fn writes_to_one_counter_and_direction_become_one_item_carrying_their_sum() {
        let mut batch = Batch::default();
        for (ticket, (counter, direction, amount)) in [
            ("a", Inc, 1),
            ("a", Inc, 5),
            ("b", Inc, 2),
            ("a", Dec, 3),
            ("a", Inc, 4),
        ]
        .into_iter()
        .enumerate()
        {
            batch
                .push(write(counter, direction, amount, ticket as u32))
                .unwrap();
        }
        assert_eq!(
            items(&batch),
            [
                ("a".into(), Inc, 10, vec![0, 1, 4]),
                ("b".into(), Inc, 2, vec![2]),
                ("a".into(), Dec, 3, vec![3]),
            ]
        );
        assert_eq!(batch.writes(), 5);
        assert_eq!(batch.request().items.len(), 3);
    }

    #[test]
    fn a_sum_that_would_overflow_u64_opens_a_new_item_and_no_write_is_split() {
        let mut batch = Batch::default();
        batch.push(write("a", Inc, u64::MAX - 1, 0)).unwrap();
        batch.push(write("a", Inc, 1, 1)).unwrap();
        // u64::MAX now: the next write of 1 would overflow.
        batch.push(write("a", Inc, 1, 2)).unwrap();
        batch.push(write("a", Inc, u64::MAX, 3)).unwrap();
        batch.push(write("a", Inc, 7, 4)).unwrap();
        assert_eq!(
            items(&batch),
            [
                ("a".into(), Inc, u64::MAX, vec![0, 1]),
                ("a".into(), Inc, 1, vec![2]),
                ("a".into(), Inc, u64::MAX, vec![3]),
                ("a".into(), Inc, 7, vec![4]),
            ]
        );
        // Every client's amount is in exactly one item, whole.
        let total: u128 = (batch.request().items.iter())
            .map(|item| u128::from(item.amount))
            .sum();
        assert_eq!(total, 2 * u128::from(u64::MAX) + 8);
    }

    #[test]
    fn a_full_batch_hands_a_write_back_unless_it_joins_an_open_item() {
        let mut batch = Batch::with_max_items(2);
        batch.push(write("a", Inc, 1, 0)).unwrap();
        batch.push(write("b", Inc, 1, 1)).unwrap();
        let refused = batch.push(write("c", Inc, 1, 2)).unwrap_err();
        assert_eq!((refused.counter.as_str(), refused.ticket), ("c", 2));
        // Joining an existing item needs no room.
        batch.push(write("a", Inc, 1, 3)).unwrap();
        let overflowing = batch.push(write("a", Inc, u64::MAX, 4)).unwrap_err();
        assert_eq!(overflowing.ticket, 4);
        assert_eq!(batch.writes(), 3);
    }

    #[test]
    fn every_client_of_an_item_gets_that_items_outcome() {
        let mut batch = Batch::default();
        for (ticket, counter) in ["a", "b", "a", "c"].into_iter().enumerate() {
            batch.push(write(counter, Inc, 1, ticket as u32)).unwrap();
        }
        let results = vec![
            ItemResult::Applied {
                value: 12,
                seq: 40,
                replayed: false,
            },
            ItemResult::Refused {
                status: 507,
                error: "counter limit".into(),
            },
        ];
        let answered: Vec<(String, Vec<u32>, Outcome)> = answers(batch.into_items(), results)
            .into_iter()
            .map(|(item, tickets, outcome)| (item.counter, tickets, outcome))
            .collect();
        assert_eq!(
            answered,
            [
                (
                    "a".into(),
                    vec![0, 2],
                    Outcome::Applied { value: 12, seq: 40 }
                ),
                (
                    "b".into(),
                    vec![1],
                    Outcome::Refused {
                        status: 507,
                        error: "counter limit".into()
                    }
                ),
                // The node's answer was short: this write's fate is unknown.
                ("c".into(), vec![3], Outcome::Unknown),
            ]
        );
    }
}
