//! `GET /watch`: Server-Sent Events of counter values on nodes and the
//! gateway, filtered by prefix, resumable with `Last-Event-ID`.
mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::{http, Cluster, GatewayProcess};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(10);

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

/// A `/watch` stream being read.
struct Watch {
    response: reqwest::Response,
    text: String,
    ready: VecDeque<Sse>,
}

impl Watch {
    async fn open(url: &str, last_event_id: Option<&str>) -> Self {
        let mut request = http().get(url);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("GET /watch");
        assert_eq!(response.status(), 200, "{url}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            response,
            text: String::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next event (keep-alive comments skipped), failing after `PATIENCE`.
    async fn next(&mut self) -> Sse {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            let chunk = tokio::time::timeout_at(deadline.into(), self.response.chunk())
                .await
                .expect("no event in time")
                .expect("stream broke")
                .expect("stream ended");
            self.text
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut event = Sse::default();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event.event = name.trim().to_owned();
                    } else if let Some(id) = line.strip_prefix("id:") {
                        event.id = Some(id.trim().to_owned());
                    } else if let Some(data) = line.strip_prefix("data:") {
                        event.data = serde_json::from_str(data.trim()).expect("JSON data");
                    }
                }
                if !event.event.is_empty() {
                    self.ready.push_back(event);
                }
            }
        }
    }

    /// The next event that is not a repeat of `known`, the value this
    /// client already has for `name`. The protocol allows repeats (values
    /// are absolute): a change still waiting for the hub's flush when a
    /// snapshot read its value arrives once more after `live`.
    async fn next_news(&mut self, name: &str, known: i64) -> Sse {
        loop {
            let event = self.next().await;
            let repeat = event.event == "counter"
                && event.data["name"] == name
                && event.data["value"] == known;
            if !repeat {
                return event;
            }
        }
    }

    /// Reads a whole snapshot: its reason and the counters in it.
    async fn snapshot(&mut self) -> (String, Vec<(String, i64)>, String) {
        let marker = self.next().await;
        assert_eq!(marker.event, "snapshot", "{marker:?}");
        let mut counters = Vec::new();
        loop {
            let event = self.next().await;
            match event.event.as_str() {
                "counter" => counters.push(name_value(&event)),
                "live" => {
                    let reason = marker.data["reason"].as_str().unwrap().to_owned();
                    return (reason, counters, event.id.expect("live has an id"));
                }
                other => panic!("unexpected {other} in a snapshot: {event:?}"),
            }
        }
    }
}

fn name_value(event: &Sse) -> (String, i64) {
    (
        event.data["name"].as_str().expect("name").to_owned(),
        event.data["value"].as_i64().expect("value"),
    )
}

async fn add(base: &str, name: &str, amount: u64) {
    let answer = http()
        .post(format!("{base}/counters/{name}/increment"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"amount": {amount}}}"#))
        .send()
        .await
        .expect("write");
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn watchers_see_matching_changes_only_and_resume_where_they_left_off() {
    let cluster = Cluster::start(2, &[]).await;
    let gateway = GatewayProcess::start(&cluster.nodes, None).await;
    let node = cluster.nodes[0].url("");
    add(&node, "apples", 2).await;
    add(&node, "bananas", 1).await;
    assert!(cluster.converge(Some("apples"), 2, PATIENCE).await);

    for (what, base) in [("node", node.clone()), ("gateway", gateway.url(""))] {
        // A new watcher gets the matching counters, then live changes.
        let url = format!("{base}/watch?prefix=app");
        let mut watch = Watch::open(&url, None).await;
        let (reason, counters, _) = watch.snapshot().await;
        assert_eq!(reason, "new", "{what}");
        assert_eq!(counters.len(), 1, "{what}: {counters:?}");
        let (name, mut expected) = counters[0].clone();
        assert_eq!(name, "apples", "{what}");

        // A change to another prefix sends nothing; a matching one arrives.
        let mut latencies = Vec::new();
        for round in 1..=5u64 {
            add(&node, "bananas", 1).await;
            let written = Instant::now();
            add(&node, "apples", round).await;
            let event = watch.next_news("apples", expected).await;
            expected += round as i64;
            latencies.push(written.elapsed());
            assert_eq!(event.event, "counter", "{what}: {event:?}");
            assert_eq!(
                name_value(&event),
                ("apples".to_owned(), expected),
                "{what}"
            );
            assert!(event.id.is_some(), "{what}: live events carry an id");
        }
        let fastest = latencies.iter().min().unwrap();
        assert!(
            *fastest <= Duration::from_millis(100),
            "{what}: no event came within 100 ms of its write: {latencies:?}"
        );
        println!("{what} /watch latency after the write: {latencies:?}");

        // Reconnecting with the last id resumes without a snapshot.
        let last = watch.next_id_after_write(&node, &mut expected).await;
        drop(watch);
        let known = expected;
        add(&node, "apples", 10).await;
        expected += 10;
        let mut resumed = Watch::open(&url, Some(&last)).await;
        let event = resumed.next_news("apples", known).await;
        assert_eq!(event.event, "counter", "{what}: resumed with {event:?}");
        assert_eq!(
            name_value(&event),
            ("apples".to_owned(), expected),
            "{what}"
        );

        // An id this process never gave starts over, marked as such.
        let mut stranger = Watch::open(&url, Some("1-1")).await;
        let (reason, counters, _) = stranger.snapshot().await;
        assert_eq!(reason, "unknown-id", "{what}");
        assert_eq!(counters, [("apples".to_owned(), expected)], "{what}");
    }
}

impl Watch {
    /// Writes once more and returns the id of the event it makes.
    async fn next_id_after_write(&mut self, node: &str, expected: &mut i64) -> String {
        add(node, "apples", 1).await;
        let event = self.next_news("apples", *expected).await;
        *expected += 1;
        assert_eq!(name_value(&event), ("apples".to_owned(), *expected));
        event.id.expect("id")
    }
}
