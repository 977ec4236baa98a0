//! The page as a subscriber (`/ws?prefix=`): the gateway's merged counters
//! for its prefix, its node summaries and busiest list, and the picture
//! they feed (topology pulses, chart series and geometry).
//!
//! Runs natively (`cargo test -p tally-web`) and in headless Chromium
//! (`wasm-pack test --headless --chrome --chromedriver /usr/bin/chromedriver web`).
use crdt_core::{wire, ActorId, CounterMap, CounterName, Op};
use tally_protocol::events::{BusyCounter, ClusterEvent, NodeHealth, NodeSummary};
use tally_web::observer::{Convergence, Observer, Update};
use tally_web::picture::{plot, ring, value_range, Area, Series, Timeline, HISTORY_MS, PULSE_MS};
use tally_web::socket::{stream_url, subscription};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test;
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

fn map(writes: &[(&str, u64)]) -> CounterMap {
    let actor = ActorId::new("n1~1").expect("valid actor");
    let mut map = CounterMap::new();
    for (name, amount) in writes {
        let name = CounterName::new(name).expect("valid name");
        map.apply(&actor, &name, Op::Increment(*amount))
            .expect("applies");
    }
    map
}

fn summary(id: &str, value: i128, in_sync: bool, local: u64, gossip: u64) -> NodeSummary {
    NodeSummary {
        id: id.to_owned(),
        value,
        behind: u64::from(!in_sync),
        in_sync,
        local_changes: local,
        gossip_changes: gossip,
        cut_off: false,
    }
}

fn nodes(ids: &[(&str, bool)]) -> ClusterEvent {
    ClusterEvent::Nodes {
        nodes: (ids.iter())
            .map(|(id, partitioned)| NodeHealth {
                id: (*id).to_owned(),
                http_addr: format!("127.0.0.1:{}", id.len()),
                healthy: true,
                partitioned: *partitioned,
            })
            .collect(),
        controls: true,
    }
}

/// Feeds the observer the wire bytes, as the socket does.
fn receive(observer: &mut Observer, event: &ClusterEvent, now_ms: f64) {
    observer
        .receive(&wire::encode(event), now_ms)
        .expect("decodes");
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn a_new_subscription_replaces_the_counters_and_deltas_merge() {
    let mut observer = Observer::new();
    let all = ClusterEvent::Counters {
        prefix: String::new(),
        state: map(&[("page/a", 1), ("other", 5)]),
        first: true,
        last: true,
    };
    receive(&mut observer, &all, 0.0);
    assert_eq!(observer.following(), Some(""));
    assert_eq!(observer.value("other"), 5);
    // The filter narrowed: the first chunk of the new subscription replaces.
    let first = ClusterEvent::Counters {
        prefix: "page/".into(),
        state: map(&[("page/a", 1)]),
        first: true,
        last: false,
    };
    let rest = ClusterEvent::Counters {
        prefix: "page/".into(),
        state: map(&[("page/b", 2)]),
        first: false,
        last: true,
    };
    receive(&mut observer, &first, 1.0);
    receive(&mut observer, &rest, 2.0);
    assert_eq!(observer.following(), Some("page/"));
    assert!(observer.merged().get("other").is_none());
    assert_eq!(observer.merged().len(), 2);
    let delta = ClusterEvent::CountersDelta {
        delta: map(&[("page/a", 4)]),
    };
    receive(&mut observer, &delta, 3.0);
    receive(&mut observer, &delta, 4.0); // duplicates are harmless
    assert_eq!(observer.value("page/a"), 4);
    let newest = observer.log().next().expect("logged").kind.to_string();
    assert_eq!(newest, "following \"page/…\": 2 counters");
    let rows = observer.busiest("", 10);
    assert_eq!(rows[0].name.as_str(), "page/a");
    assert_eq!(rows[0].recent_changes, 1);
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn the_busiest_list_comes_from_the_gateway_then_from_the_page() {
    let mut observer = Observer::new();
    let counters = ClusterEvent::Counters {
        prefix: String::new(),
        state: map(&[("quiet", 1), ("hot", 7)]),
        first: true,
        last: true,
    };
    receive(&mut observer, &counters, 0.0);
    let top = ClusterEvent::Busiest {
        top: vec![
            BusyCounter {
                name: "hot".into(),
                per_second: 12.5,
                value: 6,
            },
            BusyCounter {
                name: "elsewhere".into(),
                per_second: 3.0,
                value: 40,
            },
        ],
    };
    receive(&mut observer, &top, 1.0);
    let rows = observer.busiest("", 10);
    let names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
    assert_eq!(names, ["hot", "elsewhere", "quiet"]);
    // The page's own copy is fresher than the list's value.
    assert_eq!((rows[0].value, rows[0].per_second), (7, Some(12.5)));
    assert_eq!(rows[2].per_second, None);
    // A counter outside the subscription is known from the list only.
    assert_eq!(observer.known_value("elsewhere"), Some(40));
    assert_eq!(observer.known_value("nowhere"), None);
    let filtered = observer.busiest("ELSE", 10);
    assert_eq!(filtered.len(), 1);
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn summaries_give_node_values_lag_convergence_and_flashes() {
    let mut observer = Observer::new();
    receive(&mut observer, &nodes(&[("a", false), ("b", false)]), 0.0);
    let first = ClusterEvent::Summary {
        nodes: vec![summary("a", 5, true, 10, 0), summary("b", 4, false, 0, 3)],
    };
    receive(&mut observer, &first, 1.0);
    let a = observer.node("a").expect("known");
    assert_eq!(a.value("default"), 5);
    assert!(a.knows("default") && !a.knows("other"));
    assert_eq!(a.updates(), 0, "the first summary is history, not news");
    let b = observer.node("b").expect("known");
    assert!(!observer.lag(b, "default").in_sync);
    assert_eq!(observer.lag(b, "default").value_behind, 1);
    assert_eq!(
        observer.convergence(),
        Convergence::Diverged {
            behind: 1,
            healthy: 2
        }
    );
    let second = ClusterEvent::Summary {
        nodes: vec![summary("a", 5, true, 10, 0), summary("b", 5, true, 0, 4)],
    };
    receive(&mut observer, &second, 500.0);
    let b = observer.node("b").expect("known");
    assert_eq!(b.last_update(), Some(Update::Gossip));
    assert_eq!(b.updates(), 1);
    assert_eq!(observer.convergence(), Convergence::Converged);
    let lines: Vec<String> = observer.log().map(|e| e.kind.to_string()).collect();
    assert!(
        lines.iter().any(|l| l == "b learned 1 change by gossip"),
        "{lines:?}"
    );
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn a_node_its_peers_lost_is_shown_partitioned_until_they_see_it_again() {
    let mut observer = Observer::new();
    receive(&mut observer, &nodes(&[("a", false), ("b", false)]), 0.0);
    let cut = |cut_off| ClusterEvent::Summary {
        nodes: vec![NodeSummary {
            cut_off,
            ..summary("b", 0, true, 0, 0)
        }],
    };
    receive(&mut observer, &cut(true), 1.0);
    let health = |observer: &Observer| observer.node("b").map(|n| n.health().label());
    assert_eq!(health(&observer), Some("partitioned"));
    // A new node table does not forget what the summary said.
    receive(&mut observer, &nodes(&[("a", false), ("b", false)]), 2.0);
    assert_eq!(health(&observer), Some("partitioned"));
    receive(&mut observer, &cut(false), 3.0);
    assert_eq!(health(&observer), Some("healthy"));
    let lines: Vec<String> = observer.log().map(|e| e.kind.to_string()).collect();
    assert_eq!(lines[..2], ["b is healthy", "b is partitioned"]);
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn the_timeline_turns_summaries_into_rates_series_and_pulses() {
    let mut timeline = Timeline::default();
    timeline.summary(&[summary("a", 0, true, 100, 0)], 0.0);
    assert!(timeline.writes_per_second.last().is_none());
    timeline.summary(
        &[summary("a", 50, true, 150, 0), summary("b", 1, true, 0, 9)],
        500.0,
    );
    // 50 writes at a in half a second; b is new, so its counts are history.
    assert_eq!(timeline.writes_per_second.last(), Some(100.0));
    assert!(timeline.animating(600.0));
    let pulses: Vec<_> = timeline.pulses(600.0).collect();
    assert_eq!(pulses.len(), 1);
    assert!(!pulses[0].0.gossip && pulses[0].0.node == "a");
    timeline.summary(
        &[
            summary("a", 50, true, 150, 0),
            summary("b", 50, true, 0, 10),
        ],
        1000.0,
    );
    let gossip: Vec<_> = timeline.pulses(1000.0).filter(|(p, _)| p.gossip).collect();
    assert_eq!(gossip.len(), 1);
    assert_eq!(gossip[0].0.node, "b");
    assert!(!timeline.animating(1000.0 + PULSE_MS));
    assert_eq!(timeline.values["b"].last(), Some(50.0));
    // A node that left takes its line with it.
    timeline.summary(&[summary("a", 50, true, 150, 0)], 1500.0);
    assert!(!timeline.values.contains_key("b"));
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn the_chart_maps_the_window_into_its_area() {
    let area = Area {
        x: 10.0,
        y: 20.0,
        width: 300.0,
        height: 100.0,
    };
    let now = 1_000_000.0;
    let mut series = Series::default();
    series.push(now - HISTORY_MS - 1.0, 99.0); // forgotten once `now` arrives
    series.push(now - HISTORY_MS / 2.0, 0.0);
    series.push(now, 50.0);
    let range = value_range([&series]);
    assert_eq!(range, (0.0, 50.0));
    let points = plot(&series, area, (0.0, 50.0), now);
    assert_eq!(points, [(160.0, 120.0), (310.0, 20.0)]);
    // A flat or empty chart still has a range to draw in.
    assert_eq!(value_range([&Series::default()]), (0.0, 1.0));
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn the_topology_puts_nodes_on_a_ring_inside_the_area() {
    let area = Area {
        x: 0.0,
        y: 0.0,
        width: 200.0,
        height: 200.0,
    };
    assert_eq!(ring(1, area), [(100.0, 100.0)]);
    let places = ring(3, area);
    assert_eq!(places.len(), 3);
    // The first at the top, all on one circle, all inside.
    assert!((places[0].0 - 100.0).abs() < 1e-9 && places[0].1 < 100.0);
    let radius = |(x, y): (f64, f64)| ((x - 100.0).powi(2) + (y - 100.0).powi(2)).sqrt();
    for place in &places {
        assert!((radius(*place) - radius(places[0])).abs() < 1e-9);
        assert!((0.0..=200.0).contains(&place.0) && (0.0..=200.0).contains(&place.1));
    }
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn the_filter_box_becomes_the_stream_url() {
    let prefix = subscription(" page/ ");
    assert_eq!(
        stream_url("http:", "h:8080", None, &prefix),
        "ws://h:8080/ws?limit=2000&prefix=page%2F"
    );
    assert_eq!(
        stream_url("http:", "h:8080", None, &subscription("   ")),
        "ws://h:8080/ws?limit=2000"
    );
}
