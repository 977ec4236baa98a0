//! Deletes and expiries on the page: a counter that stops reading as
//! present fades out of the lists, then is gone, and only a write after its
//! removal brings it back (from zero) — never a stale copy, nor the
//! gateway's busiest list made before the removal.
//!
//! Runs natively (`cargo test -p tally-web --test lifecycle`) and in headless
//! Chromium (`wasm-pack test --headless --chrome --chromedriver /usr/bin/chromedriver web`).
use crdt_core::{wire, ActorId, CounterMap, CounterName, Op, RemovalKind};
use tally_protocol::events::{BusyCounter, ClusterEvent};
use tally_web::observer::{Gone, Observer, FADE_MS};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test;
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// Wall clock of the tests (ms since the epoch): expiries are absolute.
const T0: f64 = 1_800_000_000_000.0;

/// One node's replica, as the gateway's merged view would stream it.
struct Replica {
    actor: ActorId,
    state: CounterMap,
}

impl Replica {
    fn new() -> Self {
        Replica {
            actor: ActorId::new("n1~1").expect("valid actor"),
            state: CounterMap::new(),
        }
    }

    fn write(&mut self, counter: &str, amount: u64) -> ClusterEvent {
        let delta = (self.state)
            .apply(&self.actor, &name(counter), Op::Increment(amount))
            .expect("applies");
        ClusterEvent::CountersDelta { delta }
    }

    fn delete(&mut self, counter: &str) -> ClusterEvent {
        let delta = (self.state)
            .remove(&self.actor, &name(counter), RemovalKind::Delete, T0 as u64)
            .expect("removes")
            .expect("the counter is present");
        ClusterEvent::CountersDelta { delta }
    }

    fn expire_at(&mut self, counter: &str, at_ms: f64) -> ClusterEvent {
        let delta = (self.state)
            .set_expiry(&self.actor, &name(counter), at_ms as u64)
            .expect("sets")
            .expect("the counter is present");
        ClusterEvent::CountersDelta { delta }
    }

    fn subscription(&self) -> ClusterEvent {
        ClusterEvent::Counters {
            prefix: String::new(),
            state: self.state.clone(),
            first: true,
            last: true,
        }
    }
}

fn name(text: &str) -> CounterName {
    CounterName::new(text).expect("valid name")
}

/// Feeds the observer the wire bytes, as the socket does.
fn receive(observer: &mut Observer, event: &ClusterEvent, now_ms: f64) {
    observer
        .receive(&wire::encode(event), now_ms)
        .expect("decodes");
}

fn listed(observer: &Observer) -> Vec<String> {
    (observer.busiest("", 20).iter())
        .map(|row| row.name.as_str().to_owned())
        .collect()
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn a_deleted_counter_fades_out_then_leaves_the_list() {
    let mut node = Replica::new();
    let mut observer = Observer::new();
    receive(&mut observer, &node.write("a", 5), T0);
    receive(&mut observer, &node.write("b", 1), T0);
    receive(&mut observer, &node.delete("a"), T0 + 10.0);

    assert!(observer.is_gone("a"));
    assert_eq!(observer.gone_why("a"), Some(Gone::Deleted));
    assert_eq!((observer.value("a"), observer.known_value("a")), (0, None));
    let newest = observer.log().next().expect("logged").kind.to_string();
    assert_eq!(newest, "a deleted");

    // Halfway through the fade: still listed, with its last value, leaving.
    observer.tick(T0 + 10.0 + FADE_MS / 2.0);
    let rows = observer.busiest("", 20);
    let a = rows.iter().find(|row| row.name.as_str() == "a");
    let a = a.expect("a fades, still listed");
    assert_eq!(a.value, 5);
    let leaving = a.leaving.expect("marked as leaving");
    assert_eq!(leaving.why, Gone::Deleted);
    assert_eq!(leaving.elapsed_ms, FADE_MS / 2.0);
    assert!(observer.is_fading());
    let b = rows.iter().find(|row| row.name.as_str() == "b");
    assert_eq!(b.map(|row| row.leaving), Some(None));

    // The fade is over: gone from the list, and nothing left to animate.
    observer.tick(T0 + 10.0 + FADE_MS);
    assert_eq!(listed(&observer), ["b"]);
    assert!(!observer.is_fading());
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn a_stale_copy_or_an_old_busiest_list_never_brings_a_deleted_counter_back() {
    let mut node = Replica::new();
    let mut observer = Observer::new();
    let before = node.write("a", 5);
    receive(&mut observer, &before, T0);
    let deleted = node.delete("a");
    receive(&mut observer, &deleted, T0 + 1.0);
    // The write from before the removal arrives again (a second node's
    // stream, a replay), and the gateway's busiest list still names it.
    receive(&mut observer, &before, T0 + 2.0);
    let old_top = ClusterEvent::Busiest {
        top: vec![BusyCounter {
            name: "a".into(),
            per_second: 4.0,
            value: 5,
        }],
    };
    receive(&mut observer, &old_top, T0 + 3.0);
    assert!(observer.is_gone("a"));
    assert_eq!(observer.known_value("a"), None);
    observer.tick(T0 + 1.0 + FADE_MS);
    assert!(listed(&observer).is_empty(), "{:?}", listed(&observer));
    // A page that subscribes after the delete gets the removal with the
    // counter, so it never lists it at all.
    let mut fresh = Observer::new();
    receive(&mut fresh, &node.subscription(), T0 + 5.0);
    receive(&mut fresh, &old_top, T0 + 5.0);
    assert!(listed(&fresh).is_empty());
    let newest = fresh.log().next().expect("logged").kind.to_string();
    assert_eq!(newest, "following every counter: 0 counters");
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn a_write_after_the_delete_brings_the_counter_back_from_zero() {
    let mut node = Replica::new();
    let mut observer = Observer::new();
    receive(&mut observer, &node.write("a", 5), T0);
    receive(&mut observer, &node.delete("a"), T0 + 1.0);
    receive(&mut observer, &node.write("a", 2), T0 + 2.0);
    assert!(!observer.is_gone("a"));
    assert_eq!(observer.value("a"), 2);
    let rows = observer.busiest("", 20);
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].value, rows[0].leaving), (2, None));
    assert!(observer.departures().is_empty());
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn an_expiry_counts_down_then_the_counter_fades_out() {
    let mut node = Replica::new();
    let mut observer = Observer::new();
    receive(&mut observer, &node.write("session", 3), T0);
    receive(&mut observer, &node.expire_at("session", T0 + 2_000.0), T0);
    observer.tick(T0 + 500.0);
    assert_eq!(observer.expires_in_ms("session"), Some(1_500.0));
    let rows = observer.busiest("", 20);
    assert_eq!(rows[0].expires_in_ms, Some(1_500.0));
    assert!(!observer.is_fading());

    // The expiry passes before any node deleted it: gone at once, fading.
    observer.tick(T0 + 2_000.0);
    assert_eq!(observer.gone_why("session"), Some(Gone::Expired));
    assert_eq!(
        (observer.value("session"), observer.expires_in_ms("session")),
        (0, None)
    );
    let rows = observer.busiest("", 20);
    let leaving = rows.first().and_then(|row| row.leaving);
    assert_eq!(leaving.map(|l| l.why), Some(Gone::Expired));
    assert_eq!(
        observer.log().next().map(|e| e.kind.to_string()).as_deref(),
        Some("session expired")
    );

    // A node's delete of the expired counter arrives: no second fade.
    let lines = observer.log().len();
    receive(&mut observer, &node.delete("session"), T0 + 2_100.0);
    assert_eq!(observer.log().len(), lines);
    observer.tick(T0 + 2_000.0 + FADE_MS);
    assert!(listed(&observer).is_empty());
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn a_counter_expired_before_the_subscription_is_neither_listed_nor_counted_nor_faded() {
    let mut node = Replica::new();
    node.write("old", 1);
    node.expire_at("old", T0 - 1_000.0);
    node.write("live", 1);
    let mut observer = Observer::new();
    receive(&mut observer, &node.subscription(), T0);
    observer.tick(T0 + 10.0);
    assert_eq!(listed(&observer), ["live"]);
    assert!(observer.departures().is_empty());
    assert!(observer.is_gone("old"));
    let subscribed = observer.log().next().expect("logged").kind.to_string();
    assert_eq!(subscribed, "following every counter: 1 counter");
}
