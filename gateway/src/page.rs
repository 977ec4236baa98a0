//! The embedded page: the web bundle (`web/dist`, from `cargo xtask web`)
//! compiled into the binary by `build.rs` and served from memory, so a
//! copied or installed `tally` serves the page wherever it runs.
//!
//! `GET`/`HEAD` of `/` is `index.html`, `/<file>` the file. Every answer
//! names its `Content-Type`, an `ETag` (`If-None-Match` → 304),
//! `Cache-Control: no-cache` (the names carry no hash, so a browser checks
//! each time; the ETag makes that a 304) and `Vary: Accept-Encoding`; the
//! body is the brotli or gzip variant made at build time when the request
//! accepts it. The rules (content negotiation, ETag matching) are pure
//! functions with unit tests below.
//!
//! `--web-dir` replaces all of this with the files of a directory (`api.rs`).
use axum::body::Body;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, VARY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{Html, Response};
use bytes::Bytes;

// `build.rs` writes each file's type into the table; the tests check it.
#[cfg(test)]
mod content_type;
#[cfg(test)]
use content_type::content_type;

/// One file of the bundle, as `build.rs` embedded it.
pub(crate) struct EmbeddedFile {
    /// Relative to the bundle, `/`-separated, e.g. `index.html`.
    pub path: &'static str,
    pub content_type: &'static str,
    /// 16 hex digits of a hash of `identity`: the ETag's base.
    pub hash: &'static str,
    /// The file as it is.
    pub identity: &'static [u8],
    /// Its gzip variant, when smaller.
    pub gzip: Option<&'static [u8]>,
    /// Its brotli variant, when smaller.
    pub br: Option<&'static [u8]>,
}

/// The bundle, sorted by path; empty when it was not built before the binary.
static FILES: &[EmbeddedFile] = include!(concat!(env!("OUT_DIR"), "/embedded_page.rs"));

/// Whether the binary carries the page.
pub(crate) fn is_embedded() -> bool {
    !FILES.is_empty()
}

/// The embedded file a request path names (`/` and `…/` mean `index.html`),
/// after percent-decoding.
fn find(request_path: &str) -> Option<&'static EmbeddedFile> {
    let decoded = percent_decode(request_path)?;
    let mut path = decoded.trim_start_matches('/').to_owned();
    if path.is_empty() || path.ends_with('/') {
        path.push_str("index.html");
    }
    FILES.iter().find(|file| file.path == path)
}

/// `%XX` escapes decoded; None when one is malformed or the result is not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The answer to a request for an embedded file: None when there is no such
/// file or the method is neither GET nor HEAD (the caller answers 404, as
/// for any unknown route).
pub(crate) fn respond(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let file = find(path)?;
    let accept = joined(headers, "accept-encoding");
    let encoding = negotiate(accept.as_deref(), file.br.is_some(), file.gzip.is_some());
    let (body, suffix) = match encoding {
        Encoding::Br => (file.br?, "-br"),
        Encoding::Gzip => (file.gzip?, "-gzip"),
        Encoding::Identity => (file.identity, ""),
    };
    // One strong ETag per representation: the variants are different bytes.
    let etag = format!("\"{}{suffix}\"", file.hash);
    let mut response = Response::new(Body::empty());
    let common = response.headers_mut();
    common.insert(ETAG, header_value(&etag));
    common.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    common.insert(VARY, HeaderValue::from_static("accept-encoding"));
    if joined(headers, "if-none-match").is_some_and(|tags| etag_matches(&tags, &etag)) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Some(response);
    }
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(file.content_type));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Some(coding) = encoding.token() {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if method == Method::GET {
        *response.body_mut() = Body::from(Bytes::from_static(body));
    }
    Some(response)
}

/// Every value of header `name`, joined with commas as one list (None when absent).
fn joined(headers: &HeaderMap, name: &'static str) -> Option<String> {
    let values: Vec<&str> = (headers.get_all(HeaderName::from_static(name)).iter())
        .filter_map(|value| value.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("an ETag of hex digits is a valid header value")
}

/// A body's content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Br,
    Gzip,
    Identity,
}

impl Encoding {
    /// The `Content-Encoding` token; None for identity (no header).
    fn token(self) -> Option<&'static str> {
        match self {
            Encoding::Br => Some("br"),
            Encoding::Gzip => Some("gzip"),
            Encoding::Identity => None,
        }
    }
}

/// Picks the coding for a file that has a brotli (`has_br`) and/or gzip
/// (`has_gzip`) variant, from the request's `Accept-Encoding`.
///
/// Each coding's weight is its own entry's q, else `*`'s, else 0 (identity:
/// acceptable, but least preferred). The highest weight wins; ties go to
/// br, then gzip, then identity. `q=0` refuses a coding. When nothing is
/// acceptable, identity is sent anyway (rather than a 406). No header, or
/// an empty one, means identity.
pub(crate) fn negotiate(accept_encoding: Option<&str>, has_br: bool, has_gzip: bool) -> Encoding {
    let Some(accept) = accept_encoding else {
        return Encoding::Identity;
    };
    let (mut br, mut gzip, mut identity, mut star) = (None, None, None, None);
    for entry in accept.split(',') {
        let mut parts = entry.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let Some(q) = quality(parts) else {
            continue; // a malformed q: ignore the entry
        };
        let slot = match coding.as_str() {
            "br" => &mut br,
            "gzip" | "x-gzip" => &mut gzip,
            "identity" => &mut identity,
            "*" => &mut star,
            _ => continue,
        };
        slot.get_or_insert(q);
    }
    // Weights in thousandths; identity not named and no `*`: just above 0.
    let weight = |explicit: Option<u16>, fallback: u16| explicit.or(star).unwrap_or(fallback);
    let mut best = (Encoding::Identity, weight(identity, 1));
    for (offered, encoding, explicit) in
        [(has_gzip, Encoding::Gzip, gzip), (has_br, Encoding::Br, br)]
    {
        let w = weight(explicit, 0);
        // `>=`: gzip beats identity on a tie, and br (tried last) beats both.
        if offered && w > 0 && w >= best.1 {
            best = (encoding, w);
        }
    }
    best.0
}

/// The `q` parameter among an entry's parameters, in thousandths (1000 when
/// absent); None when it is not a valid qvalue (`0`…`1` with ≤ 3 decimals).
fn quality<'a>(params: impl Iterator<Item = &'a str>) -> Option<u16> {
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let value = value.trim();
        let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
        if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
        return match whole {
            "0" => Some(thousandths),
            "1" if thousandths == 0 => Some(1000),
            _ => None,
        };
    }
    Some(1000)
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, as
/// `If-None-Match` requires: `W/` is ignored on both sides). `*` matches
/// any; a malformed list matches nothing from the first bad tag on.
pub(crate) fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let ours = etag.strip_prefix("W/").unwrap_or(etag);
    let mut rest = if_none_match;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        if rest.is_empty() {
            return false;
        }
        if rest.starts_with('*') {
            return true;
        }
        let tag = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(inner) = tag.strip_prefix('"') else {
            return false;
        };
        let Some(end) = inner.find('"') else {
            return false;
        };
        let (candidate, after) = tag.split_at(end + 2);
        if candidate == ours {
            return true;
        }
        rest = after;
    }
}

/// `/` when the binary has no page and no `--web-dir` was given.
pub(crate) async fn not_built() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><meta charset=utf-8><title>Tally</title>",
        "<h1>Tally: web bundle not built</h1>",
        "<p>This binary was built without the web page. Build the bundle with ",
        "<code>cargo xtask web</code>, then rebuild the binary ",
        "(<code>cargo build --release</code>): the page is compiled into it.</p>",
        "<p>The API works: <a href=/nodes>/nodes</a>, <a href=/counter>/counter</a>.</p>",
    ))
}

/// `/` when `--web-dir` names a directory that does not exist.
pub(crate) async fn no_web_dir() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><meta charset=utf-8><title>Tally</title>",
        "<h1>Tally: web bundle not built</h1>",
        "<p>The directory given with <code>--web-dir</code> does not exist. ",
        "Build it with <code>cargo xtask web</code> (it writes <code>web/dist</code>), ",
        "or leave <code>--web-dir</code> out to serve the page built into the binary.</p>",
        "<p>The API works: <a href=/nodes>/nodes</a>, <a href=/counter>/counter</a>.</p>",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn no_accept_encoding_means_identity() {
        assert_eq!(negotiate(None, true, true), Encoding::Identity);
        assert_eq!(negotiate(Some(""), true, true), Encoding::Identity);
        assert_eq!(negotiate(Some("  "), true, true), Encoding::Identity);
    }

    #[test]
    fn br_is_preferred_then_gzip() {
        assert_eq!(
            negotiate(Some("gzip, deflate, br"), true, true),
            Encoding::Br
        );
        assert_eq!(
            negotiate(Some("gzip, deflate, br, zstd"), true, true),
            Encoding::Br
        );
        assert_eq!(negotiate(Some("br"), true, true), Encoding::Br);
        assert_eq!(negotiate(Some("gzip"), true, true), Encoding::Gzip);
        assert_eq!(negotiate(Some("GZip"), true, true), Encoding::Gzip);
        assert_eq!(negotiate(Some("x-gzip"), true, true), Encoding::Gzip);
        assert_eq!(
            negotiate(Some("deflate, zstd"), true, true),
            Encoding::Identity
        );
    }

    #[test]
    fn only_variants_that_exist_are_chosen() {
        assert_eq!(negotiate(Some("br, gzip"), false, true), Encoding::Gzip);
        assert_eq!(negotiate(Some("br, gzip"), true, false), Encoding::Br);
        assert_eq!(negotiate(Some("br"), false, true), Encoding::Identity);
        assert_eq!(
            negotiate(Some("br, gzip"), false, false),
            Encoding::Identity
        );
    }

    #[test]
    fn q_values_are_respected() {
        assert_eq!(negotiate(Some("br;q=0, gzip"), true, true), Encoding::Gzip);
        assert_eq!(
            negotiate(Some("br;q=0.0, gzip;q=0.000"), true, true),
            Encoding::Identity
        );
        assert_eq!(
            negotiate(Some("br;q=0.5, gzip;q=1"), true, true),
            Encoding::Gzip
        );
        assert_eq!(
            negotiate(Some("br;q=0.8, gzip;q=0.8"), true, true),
            Encoding::Br
        );
        assert_eq!(negotiate(Some("br ; Q=0.001"), true, true), Encoding::Br);
        assert_eq!(negotiate(Some("gzip;q=0.5"), true, true), Encoding::Gzip);
        assert_eq!(
            negotiate(Some("identity, gzip;q=0.5"), true, true),
            Encoding::Identity
        );
        assert_eq!(
            negotiate(Some("identity;q=0.4, gzip;q=0.5"), true, true),
            Encoding::Gzip
        );
    }

    #[test]
    fn star_covers_what_is_not_named() {
        assert_eq!(negotiate(Some("*"), true, true), Encoding::Br);
        assert_eq!(negotiate(Some("*;q=0"), true, true), Encoding::Identity);
        assert_eq!(negotiate(Some("br;q=0, *"), true, true), Encoding::Gzip);
        assert_eq!(negotiate(Some("gzip, *;q=0"), true, true), Encoding::Gzip);
        assert_eq!(
            negotiate(Some("identity, *;q=0.5"), true, true),
            Encoding::Identity
        );
        // Nothing acceptable: identity anyway rather than a 406.
        assert_eq!(
            negotiate(Some("identity;q=0, *;q=0"), true, true),
            Encoding::Identity
        );
    }

    #[test]
    fn malformed_q_values_drop_their_entry() {
        for bad in [
            "br;q=2",
            "br;q=1.5",
            "br;q=0.1234",
            "br;q=abc",
            "br;q=",
            "br;q=-1",
        ] {
            assert_eq!(
                negotiate(Some(bad), true, true),
                Encoding::Identity,
                "{bad}"
            );
        }
        assert_eq!(negotiate(Some("br;q=x, gzip"), true, true), Encoding::Gzip);
        assert_eq!(negotiate(Some("br;level=1"), true, true), Encoding::Br);
        assert_eq!(quality(["q=1.000"].into_iter()), Some(1000));
        assert_eq!(quality(["q=0.25"].into_iter()), Some(250));
        assert_eq!(quality(std::iter::empty()), Some(1000));
    }

    #[test]
    fn etags_match_strongly_weakly_and_in_lists() {
        let tag = "\"0123456789abcdef-br\"";
        assert!(etag_matches(tag, tag));
        assert!(etag_matches("W/\"0123456789abcdef-br\"", tag));
        assert!(etag_matches(
            "W/\"0123456789abcdef-br\"",
            "W/\"0123456789abcdef-br\""
        ));
        assert!(etag_matches("\"other\", \"0123456789abcdef-br\"", tag));
        assert!(etag_matches(
            "\"other\",W/\"0123456789abcdef-br\" ,\"x\"",
            tag
        ));
        assert!(
            etag_matches("\"a,b\", \"0123456789abcdef-br\"", tag),
            "commas inside a tag"
        );
        assert!(etag_matches("*", tag));
        assert!(etag_matches(" * ", tag));
    }

    #[test]
    fn etags_that_differ_do_not_match() {
        let tag = "\"0123456789abcdef\"";
        assert!(
            !etag_matches("\"0123456789abcdef-gzip\"", tag),
            "another representation"
        );
        assert!(!etag_matches("\"0123456789ABCDEF\"", tag), "case matters");
        assert!(!etag_matches("0123456789abcdef", tag), "unquoted");
        assert!(!etag_matches("", tag));
        assert!(!etag_matches("\"0123456789abcdef", tag), "unterminated");
        assert!(
            !etag_matches("\"other\", junk, \"0123456789abcdef\"", tag),
            "malformed list"
        );
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/b/page.HTM"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("tally_web.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("tally_web_bg.wasm"), "application/wasm");
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("icon.svg"), "image/svg+xml");
        assert_eq!(content_type("icon.png"), "image/png");
        assert_eq!(content_type("favicon.ico"), "image/x-icon");
        assert_eq!(content_type("data.json"), "application/json");
        assert_eq!(content_type("robots.txt"), "text/plain; charset=utf-8");
        assert_eq!(content_type("archive.tar.gz"), "application/octet-stream");
        assert_eq!(content_type("README"), "application/octet-stream");
        assert_eq!(content_type(".hidden"), "application/octet-stream");
        assert_eq!(content_type("dir.js/file"), "application/octet-stream");
    }

    #[test]
    fn request_paths_decode_and_default_to_index() {
        assert_eq!(percent_decode("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(percent_decode("/%E2%9C%93").as_deref(), Some("/✓"));
        assert_eq!(percent_decode("/bad%2"), None);
        assert_eq!(percent_decode("/bad%zz"), None);
        assert_eq!(percent_decode("/%ff"), None, "not UTF-8");
        if is_embedded() {
            assert_eq!(find("/").map(|file| file.path), Some("index.html"));
            assert_eq!(
                find("/index%2Ehtml").map(|file| file.path),
                Some("index.html")
            );
        }
        assert!(find("/no-such-file.js").is_none());
        assert!(find("/../Cargo.toml").is_none());
    }

    #[test]
    fn the_embedded_table_is_consistent() {
        let mut previous = "";
        for file in FILES {
            assert!(file.path > previous, "sorted, no duplicates: {}", file.path);
            previous = file.path;
            assert_eq!(file.content_type, content_type(file.path), "{}", file.path);
            assert_eq!(file.hash.len(), 16, "{}", file.path);
            if let Some(gzip) = file.gzip {
                assert!(gzip.len() < file.identity.len(), "{}", file.path);
                let mut plain = Vec::new();
                flate2::read::GzDecoder::new(gzip)
                    .read_to_end(&mut plain)
                    .unwrap();
                assert!(plain == file.identity, "gzip of {}", file.path);
            }
            if let Some(br) = file.br {
                assert!(br.len() < file.identity.len(), "{}", file.path);
                let mut plain = Vec::new();
                brotli::Decompressor::new(br, 4096)
                    .read_to_end(&mut plain)
                    .unwrap();
                assert!(plain == file.identity, "brotli of {}", file.path);
            }
        }
    }

    #[test]
    fn responses_carry_type_tag_encoding_and_304() {
        let Some(file) = FILES
            .iter()
            .find(|file| file.br.is_some() && file.gzip.is_some())
        else {
            return; // built without the bundle (or nothing compressible)
        };
        let path = format!("/{}", file.path);
        let mut request = HeaderMap::new();
        request.insert("accept-encoding", HeaderValue::from_static("gzip, br"));
        let answer = respond(&Method::GET, &path, &request).unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let headers = answer.headers();
        assert_eq!(headers[CONTENT_TYPE], file.content_type);
        assert_eq!(headers[CONTENT_ENCODING], "br");
        assert_eq!(headers[CACHE_CONTROL], "no-cache");
        assert_eq!(headers[VARY], "accept-encoding");
        assert_eq!(
            headers[CONTENT_LENGTH],
            file.br.unwrap().len().to_string().as_str()
        );
        let etag = headers[ETAG].clone();
        assert_eq!(etag, format!("\"{}-br\"", file.hash).as_str());

        request.insert("if-none-match", etag);
        let again = respond(&Method::HEAD, &path, &request).unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        request.remove("accept-encoding");
        let plain = respond(&Method::GET, &path, &request).unwrap();
        assert_eq!(plain.status(), StatusCode::OK, "the identity tag differs");
        assert!(plain.headers().get(CONTENT_ENCODING).is_none());

        assert!(respond(&Method::POST, &path, &request).is_none());
        assert!(respond(&Method::GET, "/no-such-file", &request).is_none());
    }
}
