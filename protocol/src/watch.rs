//! `GET /watch?prefix=P`: counter values as Server-Sent Events, readable by
//! any HTTP client (`curl -N`), on nodes and gateways alike.
//!
//! ```text
//! event: snapshot            a fresh start: every matching counter follows
//! data: {"reason":"new"}
//!
//! event: counter
//! data: {"name":"a","value":3}
//! …
//! event: live                the snapshot is complete
//! id: 7d1f…-41
//! data: {}
//!
//! event: counter             then one per change
//! id: 7d1f…-42
//! data: {"name":"a","value":4}
//!
//! event: deleted             a counter that no longer reads as present
//! id: 7d1f…-43               (deleted, or past its expiry)
//! data: {"name":"a"}
//! ```
//!
//! One [`WatchHub`] per process collects the names of changed counters and,
//! at most every [`COALESCE`], turns them into events with the counters'
//! current values: at most one event per counter per period, whatever the
//! write rate, each numbered and kept in a bounded buffer. A client that
//! reconnects with `Last-Event-ID` gets what it missed from the buffer, or —
//! when the gap is gone from it, or the id is from another run of the
//! process — a fresh snapshot, marked `event: snapshot` with the reason.
//! Values are absolute, so an event seen twice does no harm.
use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, Notify};

/// Changes to one counter within this period make one event.
pub const COALESCE: Duration = Duration::from_millis(50);

/// Events kept for clients that reconnect with `Last-Event-ID`.
pub const BUFFERED_EVENTS: usize = 65_536;

/// Counters per page while a snapshot is read (one short lock each).
const SNAPSHOT_PAGE: usize = 1_000;

/// Events queued for one client before the stream waits for it.
const CLIENT_QUEUE: usize = 256;

/// Where values come from: a node's replica, or a gateway's merged view.
pub trait CounterSource: Send + Sync + 'static {
    /// Current values of these counters (a counter without one, never
    /// written, deleted or expired, is left out: its change is a `deleted` event).
    fn values(&self, names: &[String]) -> Vec<(String, i128)>;
    /// Up to `limit` counters starting with `prefix`, after `after`, in name order.
    fn page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<(String, i128)>;
}

/// `/watch`'s query, the same on nodes and gateways: which counters
/// (empty: all).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// Counters whose names start with this.
    #[serde(default)]
    pub prefix: String,
    /// The token, for clients that cannot set headers (checked by the access policy).
    #[serde(default, rename = "access_token")]
    _access_token: Option<String>,
}

/// The `Last-Event-ID` a reconnecting client sends, if any.
pub fn last_event_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
}

/// One counter's new value, numbered within the hub's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Position in the hub's sequence (1, 2, …).
    pub seq: u64,
    /// The counter.
    pub name: String,
    /// Its value when the event was made; `None` once it no longer reads
    /// as present (deleted or expired): an `event: deleted`.
    pub value: Option<i128>,
}

/// What goes out to every client at each flush.
#[derive(Debug, Clone)]
enum Broadcast {
    Events(Arc<Vec<WatchEvent>>),
    /// Changes were missed (the feed lagged): every client starts over.
    Reset,
}

/// A resume cursor: `<run>-<seq>`. The run tells this process's runs
/// apart, so an id from before a restart never resumes by mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    /// Which run of the hub.
    pub run: u64,
    /// The last event seen.
    pub seq: u64,
}

impl EventId {
    /// Parses a `Last-Event-ID` header value; `None` if malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let (run, seq) = text.trim().split_once('-')?;
        Some(Self {
            run: u64::from_str_radix(run, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{}", self.run, self.seq)
    }
}

/// The events numbered so far that are still kept.
#[derive(Debug, Default)]
struct Buffer {
    events: VecDeque<WatchEvent>,
    last_seq: u64,
}

impl Buffer {
    /// Numbers and keeps `values`, dropping the oldest beyond `capacity`.
    fn push(&mut self, values: Vec<(String, Option<i128>)>, capacity: usize) -> Vec<WatchEvent> {
        let made: Vec<WatchEvent> = values
            .into_iter()
            .map(|(name, value)| {
                self.last_seq += 1;
                WatchEvent {
                    seq: self.last_seq,
                    name,
                    value,
                }
            })
            .collect();
        self.events.extend(made.iter().cloned());
        while self.events.len() > capacity {
            self.events.pop_front();
        }
        made
    }

    /// Everything after `seq`, if nothing after it was dropped yet.
    fn since(&self, seq: u64) -> Option<Vec<WatchEvent>> {
        if seq > self.last_seq {
            return None;
        }
        let oldest_kept = self.events.front().map_or(self.last_seq + 1, |e| e.seq);
        if seq + 1 < oldest_kept {
            return None;
        }
        Some(
            self.events
                .iter()
                .filter(|e| e.seq > seq)
                .cloned()
                .collect(),
        )
    }
}

/// How a client's stream starts.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// Resume: these are the missed events.
    Resume(Vec<WatchEvent>),
    /// A fresh snapshot, for this reason.
    Fresh(&'static str),
}

/// The per-process source of watch events (see the module docs).
pub struct WatchHub {
    run: Mutex<u64>,
    pending: Mutex<BTreeSet<String>>,
    buffer: Mutex<Buffer>,
    capacity: usize,
    live: broadcast::Sender<Broadcast>,
    wake: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn new_run() -> u64 {
    // Nanoseconds since the epoch: distinct across restarts of the process.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

impl WatchHub {
    /// A hub keeping [`BUFFERED_EVENTS`]; start its loop with [`WatchHub::run`].
    pub fn new() -> Arc<Self> {
        Self::with_capacity(BUFFERED_EVENTS)
    }

    /// A hub keeping `capacity` events for resuming clients.
    pub fn with_capacity(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            run: Mutex::new(new_run()),
            pending: Mutex::default(),
            buffer: Mutex::default(),
            capacity: capacity.max(1),
            live: broadcast::channel(64).0,
            wake: Notify::new(),
        })
    }

    /// These counters changed (cheap: names are collected until the next flush).
    pub fn changed<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut pending = lock(&self.pending);
        let before = pending.len();
        pending.extend(names.into_iter().map(str::to_owned));
        if pending.len() > before {
            self.wake.notify_one();
        }
    }

    /// Changes were missed (the feed lagged): forget the buffer and make
    /// every client start over with a snapshot.
    pub fn reset(&self) {
        *lock(&self.run) = new_run();
        *lock(&self.buffer) = Buffer::default();
        lock(&self.pending).clear();
        let _ = self.live.send(Broadcast::Reset);
    }

    /// Turns collected names into events every [`COALESCE`], forever.
    pub async fn run(self: Arc<Self>, source: Arc<dyn CounterSource>) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(COALESCE).await;
            self.flush(source.as_ref());
        }
    }

    /// [`WatchHub::run`] as a task of its own.
    pub fn spawn(self: &Arc<Self>, source: Arc<dyn CounterSource>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(Arc::clone(self).run(source))
    }

    /// One flush: the pending names' current values become numbered events.
    pub fn flush(&self, source: &dyn CounterSource) {
        let names: Vec<String> = std::mem::take(&mut *lock(&self.pending))
            .into_iter()
            .collect();
        if names.is_empty() {
            return;
        }
        // A changed counter without a value is gone (deleted or expired).
        let present: std::collections::HashMap<String, i128> =
            source.values(&names).into_iter().collect();
        let values: Vec<(String, Option<i128>)> = (names.into_iter())
            .map(|name| {
                let value = present.get(&name).copied();
                (name, value)
            })
            .collect();
        // Numbered, kept and sent under one lock, so a client that looks at
        // the buffer right after subscribing misses nothing in between.
        let mut buffer = lock(&self.buffer);
        let made = buffer.push(values, self.capacity);
        if !made.is_empty() {
            let _ = self.live.send(Broadcast::Events(Arc::new(made)));
        }
    }

    fn id(&self, seq: u64) -> EventId {
        EventId {
            run: *lock(&self.run),
            seq,
        }
    }

    /// How a client that last saw `last` starts, and the cursor it is at.
    fn start(&self, last: Option<EventId>) -> (Start, u64) {
        let run = *lock(&self.run);
        let buffer = lock(&self.buffer);
        let Some(last) = last else {
            return (Start::Fresh("new"), buffer.last_seq);
        };
        if last.run != run {
            return (Start::Fresh("unknown-id"), buffer.last_seq);
        }
        match buffer.since(last.seq) {
            Some(missed) => (Start::Resume(missed), buffer.last_seq),
            None => (Start::Fresh("gap"), buffer.last_seq),
        }
    }

    /// The `text/event-stream` answer for one client. `last_event_id` is
    /// the `Last-Event-ID` header, if any; `held` (the client's slots) is
    /// kept until the stream ends.
    pub fn stream(
        self: &Arc<Self>,
        source: Arc<dyn CounterSource>,
        prefix: String,
        last_event_id: Option<&str>,
        held: impl Send + 'static,
    ) -> Response {
        let (sender, receiver) = mpsc::channel::<Event>(CLIENT_QUEUE);
        let last = last_event_id.and_then(EventId::parse);
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let _held = held;
            // Ends when the client goes (its queue closes) or the hub stops.
            let _ = hub.serve(source, &prefix, last, sender).await;
        });
        let events = futures_util::stream::unfold(receiver, |mut receiver| async move {
            let event = receiver.recv().await?;
            Some((Ok::<_, Infallible>(event), receiver))
        });
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    }

    async fn serve(
        &self,
        source: Arc<dyn CounterSource>,
        prefix: &str,
        last: Option<EventId>,
        client: mpsc::Sender<Event>,
    ) -> Result<(), Gone> {
        // Subscribe before looking at the buffer or the values: whatever
        // happens in between arrives twice at worst.
        let mut live = self.live.subscribe();
        let (start, mut cursor) = self.start(last);
        match start {
            Start::Resume(missed) => {
                for event in missed.iter().filter(|e| e.name.starts_with(prefix)) {
                    send(&client, counter_event(event, Some(self.id(event.seq)))).await?;
                }
            }
            Start::Fresh(reason) => {
                self.snapshot(&*source, prefix, reason, cursor, &client)
                    .await?
            }
        }
        loop {
            match live.recv().await {
                Ok(Broadcast::Events(events)) => {
                    let seen = cursor;
                    for event in events.iter().filter(|e| e.seq > seen) {
                        cursor = event.seq;
                        if event.name.starts_with(prefix) {
                            send(&client, counter_event(event, Some(self.id(event.seq)))).await?;
                        }
                    }
                }
                Ok(Broadcast::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Events were missed: start over from the current state.
                    let (_, now) = self.start(None);
                    cursor = now;
                    self.snapshot(&*source, prefix, "lagged", cursor, &client)
                        .await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }

    /// `snapshot`, every matching counter page by page, then `live` with
    /// the cursor the snapshot is at least as new as.
    async fn snapshot(
        &self,
        source: &dyn CounterSource,
        prefix: &str,
        reason: &str,
        cursor: u64,
        client: &mpsc::Sender<Event>,
    ) -> Result<(), Gone> {
        let marker = Event::default()
            .event("snapshot")
            .data(json(&serde_json::json!({ "reason": reason })));
        send(client, marker).await?;
        let mut after: Option<String> = None;
        loop {
            let page = source.page(prefix, after.as_deref(), SNAPSHOT_PAGE);
            let full = page.len() == SNAPSHOT_PAGE;
            for (name, value) in &page {
                let event = Event::default().event("counter").data(json(&CounterValue {
                    name,
                    value: *value,
                }));
                send(client, event).await?;
            }
            match page.last() {
                Some((name, _)) if full => after = Some(name.clone()),
                _ => break,
            }
        }
        let live = Event::default()
            .event("live")
            .id(self.id(cursor).to_string())
            .data("{}");
        send(client, live).await
    }
}

/// The client went away.
struct Gone;

async fn send(client: &mpsc::Sender<Event>, event: Event) -> Result<(), Gone> {
    client.send(event).await.map_err(|_| Gone)
}

#[derive(Serialize)]
struct CounterValue<'a> {
    name: &'a str,
    value: i128,
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

fn counter_event(event: &WatchEvent, id: Option<EventId>) -> Event {
    let sse = match event.value {
        Some(value) => Event::default().event("counter").data(json(&CounterValue {
            name: &event.name,
            value,
        })),
        None => Event::default()
            .event("deleted")
            .data(json(&serde_json::json!({ "name": event.name }))),
    };
    match id {
        Some(id) => sse.id(id.to_string()),
        None => sse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(names: &[&str]) -> Vec<(String, Option<i128>)> {
        names.iter().map(|n| (n.to_string(), Some(1))).collect()
    }

    #[test]
    fn event_ids_round_trip_and_garbage_is_refused() {
        let id = EventId {
            run: 0xabc,
            seq: 42,
        };
        assert_eq!(id.to_string(), "abc-42");
        assert_eq!(EventId::parse("abc-42"), Some(id));
        for bad in ["", "42", "xyz-1", "abc-", "abc--1", "abc-1.5"] {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_buffer_resumes_only_without_a_gap() {
        let mut buffer = Buffer::default();
        buffer.push(values(&["a", "b", "c"]), 4);
        buffer.push(values(&["d", "e"]), 4);
        // Kept: seqs 2..=5; 1 was dropped.
        let names =
            |events: Vec<WatchEvent>| events.into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(
            buffer.since(1).map(names),
            Some(vec!["b".into(), "c".into(), "d".into(), "e".into()])
        );
        assert_eq!(buffer.since(4).map(|e| e.len()), Some(1));
        assert_eq!(buffer.since(5).map(|e| e.len()), Some(0));
        assert_eq!(buffer.since(0), None, "event 1 is gone: a gap");
        assert_eq!(buffer.since(6), None, "from the future");
    }

    #[test]
    fn a_client_starts_fresh_unless_its_id_is_resumable() {
        let hub = WatchHub::with_capacity(2);
        let source = Fixed(vec![("a".into(), 5), ("b".into(), 6), ("c".into(), 7)]);
        hub.changed(["a", "b", "c"]);
        hub.flush(&source);
        let run = *lock(&hub.run);
        assert_eq!(hub.start(None).0, Start::Fresh("new"));
        let other_run = EventId {
            run: run + 1,
            seq: 3,
        };
        assert_eq!(hub.start(Some(other_run)).0, Start::Fresh("unknown-id"));
        assert_eq!(
            hub.start(Some(EventId { run, seq: 0 })).0,
            Start::Fresh("gap")
        );
        match hub.start(Some(EventId { run, seq: 2 })).0 {
            Start::Resume(missed) => assert_eq!(missed.len(), 1),
            other => panic!("{other:?}"),
        }
        hub.reset();
        assert_eq!(
            hub.start(Some(EventId { run, seq: 3 })).0,
            Start::Fresh("unknown-id")
        );
    }

    #[test]
    fn changes_within_a_period_make_one_event_per_counter() {
        let hub = WatchHub::new();
        let source = Fixed(vec![("a".into(), 2), ("b".into(), 1)]);
        hub.changed(["a", "b", "a"]);
        hub.changed(["a"]);
        hub.flush(&source);
        let events: Vec<_> = lock(&hub.buffer)
            .events
            .iter()
            .map(|e| (e.seq, e.name.clone()))
            .collect();
        assert_eq!(events, [(1, "a".into()), (2, "b".into())]);
        hub.flush(&source);
        assert_eq!(
            lock(&hub.buffer).last_seq,
            2,
            "nothing pending, nothing made"
        );
    }

    /// A fixed set of values.
    struct Fixed(Vec<(String, i128)>);

    impl CounterSource for Fixed {
        fn values(&self, names: &[String]) -> Vec<(String, i128)> {
            self.0
                .iter()
                .filter(|(n, _)| names.contains(n))
                .cloned()
                .collect()
        }

        fn page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<(String, i128)> {
            self.0
                .iter()
                .filter(|(n, _)| n.starts_with(prefix) && after.is_none_or(|a| n.as_str() > a))
                .take(limit)
                .cloned()
                .collect()
        }
    }
}
