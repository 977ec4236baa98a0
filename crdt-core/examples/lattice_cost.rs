//! What a counter costs: heap bytes per counter in a map of single-actor
//! counters, and the time to merge two counters of 1,000 actors each.
//! `cargo run --release -p crdt-core --example lattice_cost`
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Instant;

use crdt_core::{ActorId, CounterMap, CounterName, Op, PnCounter};

/// Counts the bytes the heap holds.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let actor = ActorId::new("node-1~lq3x9abc0001").expect("valid actor");
    let names: Vec<CounterName> = (0..120_000)
        .map(|i| CounterName::new(&format!("page/views/{i:08}")).expect("valid name"))
        .collect();
    let mut map = CounterMap::new();
    for name in &names[..40_000] {
        map.apply(&actor, name, Op::Increment(1)).expect("small");
    }
    let before = HELD.load(Relaxed);
    for name in &names[40_000..] {
        map.apply(&actor, name, Op::Increment(1)).expect("small");
    }
    let per_counter = (HELD.load(Relaxed) - before) as f64 / 80_000.0;
    println!("heap per counter (one actor, 40k → 120k counters): {per_counter:.0} B");

    let actors: Vec<ActorId> = (0..1_000)
        .map(|i| ActorId::new(&format!("node-{i}~lq3x9abc{i:04}")).expect("valid actor"))
        .collect();
    let counter = |amount: u64| {
        let mut counter = PnCounter::new();
        for actor in &actors {
            counter.increment(actor, amount).expect("small");
        }
        counter
    };
    let (left, right) = (counter(1), counter(2));
    let mut times = Vec::new();
    for _ in 0..51 {
        let mut target = left.clone();
        let started = Instant::now();
        target.merge(&right);
        times.push(started.elapsed());
        std::hint::black_box(target);
    }
    times.sort();
    println!(
        "merge of two counters of 1,000 actors: median {:?}",
        times[times.len() / 2]
    );
}
