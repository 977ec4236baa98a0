//! The page's WebSocket link to the gateway, and when to retry it.
//!
//! The retry schedule and the link's states are plain Rust (tested
//! natively); the browser socket itself is wasm-only.

use crate::routes::encode_segment;

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
/// browsers cannot put an `Authorization` header on a WebSocket.
pub fn stream_url(page_protocol: &str, host: &str, token: Option<&str>) -> String {
    let scheme = if page_protocol == "https:" {
        "wss"
    } else {
        "ws"
    };
    match token {
        Some(token) => format!(
            "{scheme}://{host}/ws?access_token={}",
            encode_segment(token)
        ),
        None => format!("{scheme}://{host}/ws"),
    }
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
            stream_url("http:", "localhost:8080", None),
            "ws://localhost:8080/ws"
        );
        assert_eq!(
            stream_url("https:", "tally.example", None),
            "wss://tally.example/ws"
        );
    }

    #[test]
    fn stream_url_carries_the_token_encoded() {
        assert_eq!(
            stream_url("http:", "localhost:8080", Some("reader-token-0123456789")),
            "ws://localhost:8080/ws?access_token=reader-token-0123456789"
        );
        assert_eq!(
            stream_url("https:", "tally.example", Some("a+b/c==&x=1 ü")),
            "wss://tally.example/ws?access_token=a%2Bb%2Fc%3D%3D%26x%3D1%20%C3%BC"
        );
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
