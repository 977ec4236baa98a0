//! Values computed once natively and written down: digests and encodings
//! must come out bit-identical on wasm32 (the browser replica compares
//! digests with native nodes) and must not drift between releases.
use crdt_core::{wire, ActorId, CounterMap, CounterName, Op, PnCounter};

/// A small fixed map: two actors, three counters, one of them non-ASCII.
pub fn pinned_map() -> CounterMap {
    let (one, two) = (actor("node-1~lq3x9"), actor("node-2~k81a"));
    let mut map = CounterMap::new();
    let ops = [
        (&one, "default", Op::Increment(5)),
        (&two, "default", Op::Decrement(3)),
        (&one, "page/views", Op::Increment(1 << 40)),
        (&two, "ünïcode ✓", Op::Decrement(i64::MAX as u64)),
        (&one, "default", Op::Increment(2)),
    ];
    for (actor, name, op) in ops {
        let name = CounterName::new(name).expect("valid name");
        map.apply(actor, &name, op).expect("pinned ops are valid");
    }
    map
}

fn actor(id: &str) -> ActorId {
    ActorId::new(id).expect("valid actor")
}

pub const PINNED_MAP_DIGEST: u64 = 0x9ae2bb751bcbd915;
pub const PINNED_DEFAULT_COUNTER_DIGEST: u64 = 0x88a37eefbe38200a;
pub const PINNED_SINGLE_ENTRY_DIGEST: u64 = 0x3132adfdc913bbf0;
pub const PINNED_MAP_WIRE: &[u8] = &[
    0x03, 0x07, 0x64, 0x65, 0x66, 0x61, 0x75, 0x6c, 0x74, 0x02, 0x0c, 0x6e, 0x6f, 0x64, 0x65, 0x2d,
    0x31, 0x7e, 0x6c, 0x71, 0x33, 0x78, 0x39, 0x07, 0x00, 0x03, 0x0b, 0x6e, 0x6f, 0x64, 0x65, 0x2d,
    0x32, 0x7e, 0x6b, 0x38, 0x31, 0x61, 0x00, 0x03, 0x01, 0x0a, 0x70, 0x61, 0x67, 0x65, 0x2f, 0x76,
    0x69, 0x65, 0x77, 0x73, 0x01, 0x0c, 0x6e, 0x6f, 0x64, 0x65, 0x2d, 0x31, 0x7e, 0x6c, 0x71, 0x33,
    0x78, 0x39, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x00, 0x02, 0x0d, 0xc3, 0xbc, 0x6e, 0xc3, 0xaf,
    0x63, 0x6f, 0x64, 0x65, 0x20, 0xe2, 0x9c, 0x93, 0x01, 0x0b, 0x6e, 0x6f, 0x64, 0x65, 0x2d, 0x32,
    0x7e, 0x6b, 0x38, 0x31, 0x61, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x02,
];

pub fn check_pinned_values() {
    let map = pinned_map();
    let default = map.get("default").expect("written");
    let mut single = PnCounter::new();
    single.increment(&actor("a"), 1).expect("valid");
    let actual = (
        map.digest(),
        default.digest(),
        single.digest(),
        wire::encode(&map),
    );
    let pinned = (
        PINNED_MAP_DIGEST,
        PINNED_DEFAULT_COUNTER_DIGEST,
        PINNED_SINGLE_ENTRY_DIGEST,
        PINNED_MAP_WIRE.to_vec(),
    );
    assert_eq!(actual, pinned, "{:#x?}", actual);
    assert_eq!(CounterMap::new().digest(), 0, "the empty map's digest");
    assert_eq!(map.value("default"), Some(4));
    assert_eq!(map.value("ünïcode ✓"), Some(-i128::from(i64::MAX)));
}
