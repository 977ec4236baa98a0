//! The page's WebSocket link to the gateway, and when to retry it.
//!
//! The retry schedule and the link's states are plain Rust (tested
//! natively); the browser socket itself is wasm-only.

use crate::routes::encode_segment;

/// At most this many counters in the page's snapshot (`limit=`): the
/// first of its prefix by name; changes to every matching counter still
/// stream. A page over a million counters loads a few hundred KiB, not tens
/// of MiB; typing a prefix narrows to what it wants.
pub const SNAPSHOT_COUNTERS: usize = 2_000;

/// The first retry waits this long.
pub const FIRST_RETRY_MS: u32 = 500;
/// Retries never wait longer than this.
pub const MAX_RETRY_MS: u32 = 5_000;

/// How long to wait before retry number `failures + 1`: 0.5 s, doubling, capped at 5 s.
pub fn retry_delay_ms(failures: u32) -> u32 {
    // Beyond 2^4 the cap has long been reached; min() keeps the shift in range.
    let factor = 1u32 << failures.min(16);
    FIRST_RETRY_MS.saturating_mul(factor).min(MAX_RETRY_MS)
}

/// The gateway's stream at the page's own origin: `ws://host/ws`, or
/// `wss://` when the page came over HTTPS. With an API `token` (see
/// [`crate::token`]), `?access_token=TOKEN`, percent-encoded, is appended:
/// browsers cannot put an `Authorization` header on a WebSocket. A
/// non-empty `prefix` subscribes to only the counters whose names start
/// with it (`prefix=P`, percent-encoded).
pub fn stream_url(page_protocol: &str, host: &str, token: Option<&str>, prefix: &str) -> String {
    let scheme = if page_protocol == "https:" {
        "wss"
    } else {
        "ws"
    };
    let mut query = vec![format!("limit={SNAPSHOT_COUNTERS}")];
    if !prefix.is_empty() {
        query.push(format!("prefix={}", encode_segment(prefix)));
    }
    if let Some(token) = token {
        query.push(format!("access_token={}", encode_segment(token)));
    }
    format!("{scheme}://{host}/ws?{}", query.join("&"))
}

/// What the page subscribes to for what is typed in its filter box: the
/// text as typed, trimmed, cut to the longest counter name (no longer
/// prefix can match, and the gateway refuses one).
pub fn subscription(filter: &str) -> String {
    let mut prefix = filter.trim();
    while prefix.len() > crdt_core::MAX_NAME_LEN {
        let mut end = crdt_core::MAX_NAME_LEN;
        while !prefix.is_char_boundary(end) {
            end -= 1;
        }
        prefix = &prefix[..end];
    }
    prefix.to_owned()
}

/// What the page shows about its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// A socket is opening.
    Connecting,
    /// The socket is open.
    Online,
    /// The socket closed; the next attempt starts after `retry_in_ms`.
    Offline {
        /// The wait before the next attempt.
        retry_in_ms: u32,
    },
}

/// The link's state machine: `connecting → online → offline → connecting …`.
#[derive(Debug, Clone)]
pub struct Link {
    state: LinkState,
    failures: u32,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            state: LinkState::Connecting,
            failures: 0,
        }
    }
}

impl Link {
    /// A link about to make its first attempt.
    pub fn new() -> Self {
        Self::default()
    }

    /// Its current state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Attempts that failed since data last arrived.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// An attempt starts.
    pub fn connecting(&mut self) {
        self.state = LinkState::Connecting;
    }

    /// The socket opened.
    pub fn opened(&mut self) {
        self.state = LinkState::Online;
    }

    /// A message arrived: the stream works, so the backoff starts over.
    /// (Resetting on open alone would retry a gateway that accepts and
    /// drops at once every 0.5 s forever.)
    pub fn received(&mut self) {
        self.failures = 0;
    }

    /// The socket closed or failed to open; returns how long to wait.
    pub fn closed(&mut self) -> u32 {
        let retry_in_ms = retry_delay_ms(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.state = LinkState::Offline { retry_in_ms };
        retry_in_ms
    }
}

#[cfg(target_arch = "wasm32")]
pub(crate) use browser::Socket;

#[cfg(target_arch = "wasm32")]
mod browser {
    use js_sys::{ArrayBuffer, Uint8Array};
    use wasm_bindgen::{closure::Closure, JsCast, JsValue};
    use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

    /// An open (or opening) browser WebSocket and the callbacks it calls.
    ///
    /// Dropping it detaches the callbacks and closes the socket. Never drop
    /// it from inside one of its own callbacks: that would free the closure
    /// that is running. Replace it from a timer instead.
    pub(crate) struct Socket {
        ws: WebSocket,
        _on_open: Closure<dyn FnMut(Event)>,
        _on_message: Closure<dyn FnMut(MessageEvent)>,
        _on_close: Closure<dyn FnMut(CloseEvent)>,
    }

    impl Socket {
        /// Opens `url` in binary (ArrayBuffer) mode.
        ///
        /// `on_message` gets each binary frame's bytes; text frames are
        /// reported as `Err`. `on_close` gets a short reason.
        pub(crate) fn open(
            url: &str,
            mut on_open: impl FnMut() + 'static,
            mut on_message: impl FnMut(Result<Vec<u8>, String>) + 'static,
            mut on_close: impl FnMut(String) + 'static,
        ) -> Result<Socket, JsValue> {
            let ws = WebSocket::new(url)?;
            ws.set_binary_type(BinaryType::Arraybuffer);
            let on_open = Closure::<dyn FnMut(Event)>::new(move |_: Event| on_open());
            let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                on_message(frame_bytes(&event.data()));
            });
            let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |event: CloseEvent| {
                on_close(close_reason(&event));
            });
            ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
            ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
            Ok(Socket {
                ws,
                _on_open: on_open,
                _on_message: on_message,
                _on_close: on_close,
            })
        }
    }

    impl Drop for Socket {
        fn drop(&mut self) {
            self.ws.set_onopen(None);
            self.ws.set_onmessage(None);
            self.ws.set_onclose(None);
            // Closing an already closed socket is a no-op, not an error.
            let _ = self.ws.close();
        }
    }

    fn frame_bytes(data: &JsValue) -> Result<Vec<u8>, String> {
        match data.dyn_ref::<ArrayBuffer>() {
            Some(buffer) => Ok(Uint8Array::new(buffer).to_vec()),
            None => Err("expected a binary frame, got text".to_owned()),
        }
    }

    fn close_reason(event: &CloseEvent) -> String {
        let reason = event.reason();
        match (event.code(), reason.is_empty()) {
            (1000, true) => "closed".to_owned(),
            (1001, true) => "closed: the gateway is going away".to_owned(),
            (1005, true) => "closed by the gateway".to_owned(),
            (1006, true) => "connection lost".to_owned(),
            (code, true) => format!("closed (code {code})"),
            (code, false) => format!("closed (code {code}: {reason})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_url_follows_the_page_scheme() {
        assert_eq!(
            stream_url("http:", "localhost:8080", None, ""),
            "ws://localhost:8080/ws?limit=2000"
        );
        assert_eq!(
            stream_url("https:", "tally.example", None, ""),
            "wss://tally.example/ws?limit=2000"
        );
    }

    #[test]
    fn stream_url_carries_the_token_encoded() {
        assert_eq!(
            stream_url(
                "http:",
                "localhost:8080",
                Some("reader-token-0123456789"),
                ""
            ),
            "ws://localhost:8080/ws?limit=2000&access_token=reader-token-0123456789"
        );
        assert_eq!(
            stream_url("https:", "tally.example", Some("a+b/c==&x=1 ü"), ""),
            "wss://tally.example/ws?limit=2000&access_token=a%2Bb%2Fc%3D%3D%26x%3D1%20%C3%BC"
        );
    }

    #[test]
    fn stream_url_carries_the_prefix_encoded() {
        assert_eq!(
            stream_url("http:", "h:1", None, "page/a b"),
            "ws://h:1/ws?limit=2000&prefix=page%2Fa%20b"
        );
        assert_eq!(
            stream_url("http:", "h:1", Some("t"), "x&y"),
            "ws://h:1/ws?limit=2000&prefix=x%26y&access_token=t"
        );
    }

    #[test]
    fn the_subscription_is_the_trimmed_filter_within_a_name_length() {
        assert_eq!(subscription("  page/ "), "page/");
        assert_eq!(subscription(""), "");
        let long = "é".repeat(100);
        let cut = subscription(&long);
        assert!(cut.len() <= crdt_core::MAX_NAME_LEN && long.starts_with(&cut));
        assert_eq!(cut.len(), 128);
    }

    #[test]
    fn link_goes_offline_with_growing_waits_and_resets_on_data() {
        let mut link = Link::new();
        assert_eq!(link.state(), LinkState::Connecting);
        assert_eq!(link.closed(), 500);
        link.connecting();
        link.opened();
        assert_eq!(link.state(), LinkState::Online);
        assert_eq!(link.closed(), 1000, "an open without data is no success");
        link.connecting();
        link.opened();
        link.received();
        assert_eq!(link.closed(), 500);
        assert_eq!(link.state(), LinkState::Offline { retry_in_ms: 500 });
    }
}
