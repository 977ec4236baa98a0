//! The expiry sweep: every [`SWEEP_INTERVAL`], counters past their expiry
//! on this node's wall clock are deleted by the writer, like a client's
//! delete (a removal of what this node holds, journaled and gossiped).
//! Every node sweeps what it holds; reads already treat a counter past its
//! expiry as absent, so the sweep only makes it durable and shared.
use std::sync::Arc;
use std::time::Duration;

use crate::replica::Replica;
use crate::writer::WriterHandle;
use tally_protocol::clock::now_ms;

/// How often the sweep looks.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Counters deleted per round at most: one writer batch stays small.
const SWEEP_BUDGET: usize = 4096;

/// Sweeps until the process ends.
pub fn spawn(replica: Arc<Replica>, writer: WriterHandle) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let due = replica.read().map.expired(now_ms(), SWEEP_BUDGET);
            if !due.is_empty() {
                writer.expire(due).await;
            }
        }
    });
}
