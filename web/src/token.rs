//! The API token the page was opened with, for a gateway that requires one.
//!
//! A gateway with `--api-tokens-file` answers 401 to every call without a
//! token, so its page is opened as `http://gateway/#token=TOKEN`: the
//! fragment never leaves the browser (it is not part of any request), and
//! the page adds the token itself — `Authorization: Bearer TOKEN` on its
//! `fetch` calls, `?access_token=TOKEN` on the WebSocket URL (browsers
//! cannot set headers on a WebSocket). Without `#token=` nothing changes.
//!
//! The parsing is plain Rust (tested natively); reading `location.hash` is
//! wasm-only.

/// The token in a location fragment such as `#token=abc` or
/// `#view=x&token=abc`, percent-decoded. `None` when there is none, it is
/// empty, it is not valid percent-encoded UTF-8, or it holds anything but
/// visible ASCII (which no HTTP header could carry).
pub fn token_from_fragment(fragment: &str) -> Option<String> {
    let fragment = fragment.strip_prefix('#').unwrap_or(fragment);
    let raw = fragment
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
    let token = percent_decode(raw)?;
    let visible = |c: char| c.is_ascii_graphic();
    (!token.is_empty() && token.chars().all(visible)).then_some(token)
}

/// The `Authorization` header value that presents `token`.
pub fn authorization(token: &str) -> String {
    format!("Bearer {token}")
}

/// Decodes `%XX` escapes (a `+` stays a `+`: this is a fragment, not a
/// form); `None` on a broken escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// The token of the page's own address (`window.location.hash`), read at
/// each call so a token typed into the address bar later is used too.
#[cfg(target_arch = "wasm32")]
pub(crate) fn page_token() -> Option<String> {
    let hash = web_sys::window()?.location().hash().ok()?;
    token_from_fragment(&hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_fragment() {
        let token = Some("reader-token-0123456789".to_owned());
        assert_eq!(token_from_fragment("#token=reader-token-0123456789"), token);
        assert_eq!(
            token_from_fragment("#view=ops&token=reader-token-0123456789&x=1"),
            token
        );
        assert_eq!(token_from_fragment("token=reader-token-0123456789"), token);
    }

    #[test]
    fn no_token_means_none() {
        for fragment in [
            "",
            "#",
            "#token=",
            "#view=ops",
            "#tokens=abc",
            "#xtoken=abc",
        ] {
            assert_eq!(token_from_fragment(fragment), None, "{fragment:?}");
        }
    }

    #[test]
    fn escapes_are_decoded_and_broken_ones_refused() {
        assert_eq!(
            token_from_fragment("#token=a%2Bb%2Fc%3D%3D").as_deref(),
            Some("a+b/c==")
        );
        assert_eq!(token_from_fragment("#token=a+b").as_deref(), Some("a+b"));
        assert_eq!(token_from_fragment("#token=abc%2"), None);
        assert_eq!(token_from_fragment("#token=abc%zz"), None);
        assert_eq!(
            token_from_fragment("#token=abc%+1"),
            None,
            "a sign is no digit"
        );
        assert_eq!(token_from_fragment("#token=%FF%FE"), None, "not UTF-8");
        assert_eq!(token_from_fragment("#token=a%20b"), None, "a space");
        assert_eq!(token_from_fragment("#token=%C3%BC"), None, "not ASCII");
    }

    #[test]
    fn the_header_is_a_bearer() {
        assert_eq!(authorization("abc"), "Bearer abc");
    }
}
