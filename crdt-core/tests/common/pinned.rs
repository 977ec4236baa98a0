//! Values computed once natively and written down: digests and encodings
//! must come out bit-identical on wasm32 (the browser replica compares
//! digests with native nodes) and must not drift between releases.
use crdt_core::{wire, ActorId, CounterMap, CounterName, Entry, Op, PnCounter};

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

pub const PINNED_MAP_DIGEST: u64 = 0x59470f828c181ede;
pub const PINNED_DEFAULT_COUNTER_DIGEST: u64 = 0xb2c674a1f3229ac6;
pub const PINNED_SINGLE_ENTRY_DIGEST: u64 = 0xbadd11843451caa;
pub const PINNED_MAP_WIRE: &[u8] = &[
    0x03, 0x07, 0x64, 0x65, 0x66, 0x61, 0x75, 0x6c, 0x74, 0x02, 0x0c, 0x6e, 0x6f, 0x64, 0x65, 0x2d,
    0x31, 0x7e, 0x6c, 0x71, 0x33, 0x78, 0x39, 0x07, 0x00, 0x03, 0x01, 0x0b, 0x6e, 0x6f, 0x64, 0x65,
    0x2d, 0x32, 0x7e, 0x6b, 0x38, 0x31, 0x61, 0x00, 0x03, 0x01, 0x01, 0x00, 0x00, 0x0a, 0x70, 0x61,
    0x67, 0x65, 0x2f, 0x76, 0x69, 0x65, 0x77, 0x73, 0x01, 0x0c, 0x6e, 0x6f, 0x64, 0x65, 0x2d, 0x31,
    0x7e, 0x6c, 0x71, 0x33, 0x78, 0x39, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x00, 0x02, 0x02, 0x00,
    0x00, 0x0d, 0xc3, 0xbc, 0x6e, 0xc3, 0xaf, 0x63, 0x6f, 0x64, 0x65, 0x20, 0xe2, 0x9c, 0x93, 0x01,
    0x0b, 0x6e, 0x6f, 0x64, 0x65, 0x2d, 0x32, 0x7e, 0x6b, 0x38, 0x31, 0x61, 0x00, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x02, 0x02, 0x00, 0x00,
];

/// A counter whose totals passed `u64`: the freeze sequence
/// (`+i64::MAX`, `−u64::MAX`, `+2^63`) then `+1`, plus a hostile entry with
/// both totals at `u128::MAX`. Totals ≥ 2^64 fold their high halves into the
/// digest, which must agree across platforms too.
pub fn pinned_wide_map() -> CounterMap {
    let mut map = CounterMap::new();
    let name = CounterName::new("default").expect("valid name");
    let one = actor("node-1~lq3x9");
    for op in [
        Op::Increment(i64::MAX as u64),
        Op::Decrement(u64::MAX),
        Op::Increment(1 << 63),
        Op::Increment(1),
    ] {
        map.apply(&one, &name, op).expect("pinned ops are valid");
    }
    let hostile = Entry {
        inc: u128::MAX,
        dec: u128::MAX,
        seq: 9,
        since: 0,
    };
    map.merge_entry(&name, &actor("node-2~k81a"), hostile);
    map
}

pub const PINNED_WIDE_MAP_DIGEST: u64 = 0xeb780f0eed0161ec;
pub const PINNED_WIDE_COUNTER_DIGEST: u64 = 0x4d4bf108a69d8f59;
pub const PINNED_WIDE_WIRE: &[u8] = &[
    0x01, 0x07, 0x64, 0x65, 0x66, 0x61, 0x75, 0x6c, 0x74, 0x02, 0x0c, 0x6e, 0x6f, 0x64, 0x65, 0x2d,
    0x31, 0x7e, 0x6c, 0x71, 0x33, 0x78, 0x39, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x04, 0x01, 0x0b, 0x6e, 0x6f,
    0x64, 0x65, 0x2d, 0x32, 0x7e, 0x6b, 0x38, 0x31, 0x61, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03, 0x09,
    0x00, 0x00, 0x00,
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

    let wide = pinned_wide_map();
    let wide_counter = wide.get("default").expect("written");
    let actual = (wide.digest(), wide_counter.digest(), wire::encode(&wide));
    let pinned = (
        PINNED_WIDE_MAP_DIGEST,
        PINNED_WIDE_COUNTER_DIGEST,
        PINNED_WIDE_WIRE.to_vec(),
    );
    assert_eq!(actual, pinned, "{:#x?}", actual);
    assert_eq!(wide.value("default"), Some(1));
}
