//! The gateway routes the page calls, in one place.
//!
//! | route | body | when |
//! |---|---|---|
//! | `GET /ws` (WebSocket) | — | binary `ClusterEvent` frames |
//! | `POST /increment`, `POST /decrement` | `{"amount": n}` | the `default` counter |
//! | `POST /counters/{name}/increment\|decrement` | `{"amount": n}` | any other counter |
//! | `POST /demo/nodes/{id}/partition\|heal\|crash\|restart` | — | demo mode only |
//!
//! Errors come back as `{"error": "..."}` with a 4xx/5xx status.
use crdt_core::DEFAULT_COUNTER;

/// A write to a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterAction {
    /// Add the amount.
    Increment,
    /// Subtract the amount.
    Decrement,
}

impl CounterAction {
    fn verb(self) -> &'static str {
        match self {
            CounterAction::Increment => "increment",
            CounterAction::Decrement => "decrement",
        }
    }
}

/// A demo fault to inject into one node (or to undo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoAction {
    /// Cut the node off from its peers.
    Partition,
    /// Reconnect it.
    Heal,
    /// Kill its process.
    Crash,
    /// Start it again.
    Restart,
}

impl DemoAction {
    /// Every action, in button order.
    pub const ALL: [DemoAction; 4] = [
        DemoAction::Partition,
        DemoAction::Heal,
        DemoAction::Crash,
        DemoAction::Restart,
    ];

    /// The route segment and button label.
    pub fn verb(self) -> &'static str {
        match self {
            DemoAction::Partition => "partition",
            DemoAction::Heal => "heal",
            DemoAction::Crash => "crash",
            DemoAction::Restart => "restart",
        }
    }

    /// Parses a route segment back (for buttons that carry it as an attribute).
    pub fn from_verb(verb: &str) -> Option<DemoAction> {
        DemoAction::ALL
            .into_iter()
            .find(|action| action.verb() == verb)
    }
}

/// The path that writes `counter`.
pub fn counter_path(counter: &str, action: CounterAction) -> String {
    if counter == DEFAULT_COUNTER {
        format!("/{}", action.verb())
    } else {
        format!("/counters/{}/{}", encode_segment(counter), action.verb())
    }
}

/// The path that applies a demo action to `node`.
pub fn demo_path(node: &str, action: DemoAction) -> String {
    format!("/demo/nodes/{}/{}", encode_segment(node), action.verb())
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a
/// name holding `/`, `?`, `#` or spaces stays one path segment.
pub fn encode_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_counter_uses_the_short_routes() {
        assert_eq!(
            counter_path("default", CounterAction::Increment),
            "/increment"
        );
        assert_eq!(
            counter_path("default", CounterAction::Decrement),
            "/decrement"
        );
    }

    #[test]
    fn names_stay_one_segment() {
        assert_eq!(
            counter_path("page/views ü?", CounterAction::Increment),
            "/counters/page%2Fviews%20%C3%BC%3F/increment"
        );
        assert_eq!(
            demo_path("node-1", DemoAction::Crash),
            "/demo/nodes/node-1/crash"
        );
    }

    #[test]
    fn demo_verbs_round_trip() {
        for action in DemoAction::ALL {
            assert_eq!(DemoAction::from_verb(action.verb()), Some(action));
        }
        assert_eq!(DemoAction::from_verb("explode"), None);
    }
}
