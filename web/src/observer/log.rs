//! The activity log: the last few things that happened, newest first.
use std::collections::VecDeque;
use std::fmt;

/// How many entries the page keeps.
pub const LOG_CAPACITY: usize = 20;

/// How many counter names one log line lists before saying "and N more".
const NAMES_SHOWN: usize = 3;

/// One line of the activity log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// When it happened, in milliseconds since the Unix epoch (the caller's clock).
    pub at_ms: f64,
    /// What happened.
    pub kind: LogKind,
}

/// What a log line reports.
#[derive(Debug, Clone, PartialEq)]
pub enum LogKind {
    /// A node appeared, disappeared or changed health.
    Health {
        /// Which node.
        node: String,
        /// Its new health, or `None` when the gateway no longer lists it.
        now: Option<super::Health>,
    },
    /// Every healthy node now holds the observer's state.
    Converged {
        /// How long the cluster took, from the first divergence to agreement.
        after_ms: f64,
    },
    /// A WebSocket message that did not decode.
    BadMessage(String),
    /// The page's link to the gateway changed.
    Connection(String),
    /// The page's counters arrived for its filter (`/ws?prefix=`).
    Subscribed {
        /// The prefix (empty: every counter).
        prefix: String,
        /// How many counters match it.
        counters: usize,
    },
    /// A node's summary says it changed counters since the last one.
    NodeChanges {
        /// Which node.
        node: String,
        /// Learned from peers (else written by clients).
        gossip: bool,
        /// How many counter changes.
        count: u64,
    },
    /// Counters stopped reading as present: deleted, or past their expiry.
    Left {
        /// Which.
        counters: CounterList,
        /// Why.
        why: super::Gone,
    },
    /// The answer to a button press.
    Action {
        /// Whether the gateway accepted it.
        ok: bool,
        /// What to tell the user.
        text: String,
    },
}

/// The visual tone of a log line, which the view maps to a colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Neutral information.
    Info,
    /// A local write.
    Local,
    /// Gossip arriving.
    Gossip,
    /// Good news: convergence, a successful action.
    Good,
    /// Something failed.
    Error,
}

impl LogKind {
    /// The tone the view should draw this line in.
    pub fn tone(&self) -> Tone {
        match self {
            LogKind::Connection(_) | LogKind::Subscribed { .. } => Tone::Info,
            LogKind::NodeChanges { gossip: false, .. } => Tone::Local,
            LogKind::NodeChanges { gossip: true, .. } => Tone::Gossip,
            LogKind::Converged { .. } => Tone::Good,
            LogKind::Health { now, .. } => match now {
                Some(super::Health::Healthy) => Tone::Good,
                Some(super::Health::Unknown) => Tone::Info,
                _ => Tone::Error,
            },
            LogKind::BadMessage(_) => Tone::Error,
            LogKind::Left { .. } => Tone::Info,
            LogKind::Action { ok: true, .. } => Tone::Good,
            LogKind::Action { ok: false, .. } => Tone::Error,
        }
    }
}

impl fmt::Display for LogKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogKind::Health { node, now: Some(h) } => write!(f, "{node} is {}", h.label()),
            LogKind::Health { node, now: None } => write!(f, "{node} left the cluster"),
            LogKind::Converged { after_ms } => {
                write!(
                    f,
                    "converged ✓ after {}",
                    crate::format::duration(*after_ms)
                )
            }
            LogKind::BadMessage(reason) => write!(f, "bad message ignored: {reason}"),
            LogKind::Subscribed { prefix, counters } => {
                let counters = crate::format::count(*counters, "counter", "counters");
                if prefix.is_empty() {
                    write!(f, "following every counter: {counters}")
                } else {
                    write!(f, "following \"{prefix}…\": {counters}")
                }
            }
            LogKind::NodeChanges {
                node,
                gossip,
                count,
            } => {
                let changes = crate::format::count(*count as usize, "change", "changes");
                match gossip {
                    true => write!(f, "{node} learned {changes} by gossip"),
                    false => write!(f, "{node} took {changes} from clients"),
                }
            }
            LogKind::Left { counters, why } => write!(f, "{counters} {}", why.label()),
            LogKind::Connection(text) | LogKind::Action { text, .. } => f.write_str(text),
        }
    }
}

/// A few counter names and how many more there were, for one log line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CounterList {
    shown: Vec<String>,
    more: usize,
}

impl CounterList {
    /// Keeps the first few names of `names` and counts the rest.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut list = CounterList::default();
        for name in names {
            if list.shown.len() < NAMES_SHOWN {
                list.shown.push(name.to_owned());
            } else {
                list.more += 1;
            }
        }
        list
    }

    /// True when it names no counter.
    pub fn is_empty(&self) -> bool {
        self.shown.is_empty()
    }
}

impl fmt::Display for CounterList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown.join(", "))?;
        if self.more > 0 {
            write!(f, " and {} more", self.more)?;
        }
        Ok(())
    }
}

/// A bounded log, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    entries: VecDeque<LogEntry>,
    pushed: u64,
}

impl EventLog {
    /// Adds an entry, forgetting the oldest beyond [`LOG_CAPACITY`].
    pub fn push(&mut self, at_ms: f64, kind: LogKind) {
        self.entries.push_front(LogEntry { at_ms, kind });
        self.entries.truncate(LOG_CAPACITY);
        self.pushed += 1;
    }

    /// How many entries were ever pushed: the view redraws when it moves.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// The entries, newest first.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &LogEntry> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_entries() {
        let mut log = EventLog::default();
        for i in 0..50 {
            log.push(f64::from(i), LogKind::Connection(format!("event {i}")));
        }
        assert_eq!(log.entries().len(), LOG_CAPACITY);
        assert_eq!(log.entries().next().map(|e| e.at_ms), Some(49.0));
        assert_eq!(log.entries().last().map(|e| e.at_ms), Some(30.0));
    }

    #[test]
    fn counter_lists_stay_short() {
        let list = CounterList::from_names(["a", "b", "c", "d", "e"]);
        assert_eq!(list.to_string(), "a, b, c and 2 more");
        assert_eq!(CounterList::from_names(["x"]).to_string(), "x");
    }
}
