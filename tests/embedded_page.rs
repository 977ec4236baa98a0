//! The web page travels inside the binary: a copy of `tally`, run as a
//! gateway from another directory without `--web-dir`, serves the page from
//! memory — content types, ETag/304, brotli/gzip/identity by
//! `Accept-Encoding`, and the wasm module as `application/wasm`.
//!
//! When the bundle was not built before the binary (no `web/dist`), the
//! gateway serves a page saying so, and that is what the test checks —
//! except under `CI`, where `cargo xtask web` runs before the tests and a
//! missing bundle is a failure (as in `web_e2e.rs`).
mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use common::{command_for, free_port, http, wait_until, ChildLog};
use reqwest::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY,
};
use reqwest::{Method, Response};

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn a_copied_binary_serves_the_page_from_memory() {
    let bundle = bundle_built();
    let gateway = CopiedGateway::start();
    let ready = wait_until(PATIENCE, || async {
        http().get(gateway.url("/health")).send().await.is_ok()
    })
    .await;
    assert!(ready, "the copied gateway never answered");

    if !bundle {
        eprintln!("no web bundle was built: checking the page of a binary built without it");
        let answer = gateway.get("/", &[]).await;
        assert_eq!(answer.status(), 200);
        assert!(header(&answer, CONTENT_TYPE).starts_with("text/html"));
        let body = answer.text().await.unwrap();
        assert!(body.contains("cargo xtask web"), "{body}");
        assert!(body.contains("rebuild"), "{body}");
        assert_eq!(gateway.get("/tally_web.js", &[]).await.status(), 404);
        return;
    }

    // `/` is index.html, as it is on disk.
    let index = gateway.get("/", &[]).await;
    assert_eq!(index.status(), 200);
    assert!(header(&index, CONTENT_TYPE).starts_with("text/html"));
    assert_eq!(header(&index, CACHE_CONTROL), "no-cache");
    assert!(header(&index, VARY).eq_ignore_ascii_case("accept-encoding"));
    assert!(index.headers().get(CONTENT_ENCODING).is_none(), "identity");
    let etag = header(&index, ETAG);
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let html = index.text().await.unwrap();
    assert!(html.to_ascii_lowercase().contains("<html"), "{html}");
    let same = gateway.get("/index.html", &[]).await;
    assert_eq!(header(&same, ETAG), etag);
    assert_eq!(same.text().await.unwrap(), html);

    // If-None-Match: the same tag (strong or weak, alone or in a list) → 304.
    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"x\", {etag}"),
        "*".into(),
    ] {
        let cached = gateway.get("/", &[(IF_NONE_MATCH, &tag)]).await;
        assert_eq!(cached.status(), 304, "If-None-Match: {tag}");
        assert_eq!(header(&cached, ETAG), etag);
        assert!(cached.bytes().await.unwrap().is_empty());
    }
    let changed = gateway.get("/", &[(IF_NONE_MATCH, "\"stale\"")]).await;
    assert_eq!(changed.status(), 200);

    // Content-Encoding from Accept-Encoding.
    let br = gateway.get("/", &[(ACCEPT_ENCODING, "br")]).await;
    assert_eq!(header(&br, CONTENT_ENCODING), "br");
    assert_ne!(
        header(&br, ETAG),
        etag,
        "another representation, another tag"
    );
    let br_body = br.bytes().await.unwrap();
    assert!(!br_body.is_empty() && br_body.len() < html.len());
    let gzip = gateway.get("/", &[(ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!(header(&gzip, CONTENT_ENCODING), "gzip");
    assert!(gzip.bytes().await.unwrap().starts_with(&[0x1f, 0x8b]));
    let preferred = gateway
        .get("/", &[(ACCEPT_ENCODING, "gzip, deflate, br")])
        .await;
    assert_eq!(header(&preferred, CONTENT_ENCODING), "br");
    let refused = gateway.get("/", &[(ACCEPT_ENCODING, "br;q=0, gzip")]).await;
    assert_eq!(header(&refused, CONTENT_ENCODING), "gzip");
    let none = gateway.get("/", &[(ACCEPT_ENCODING, "identity")]).await;
    assert!(none.headers().get(CONTENT_ENCODING).is_none());
    assert_eq!(none.text().await.unwrap(), html);

    // HEAD: the headers of GET, no body.
    let head = gateway
        .request(Method::HEAD, "/", &[(ACCEPT_ENCODING, "gzip")])
        .await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, CONTENT_ENCODING), "gzip");
    assert!(header(&head, CONTENT_TYPE).starts_with("text/html"));
    assert!(head.bytes().await.unwrap().is_empty());

    // The page's script and, through it, the wasm module.
    let script = script_of(&html);
    let js = gateway.get(&format!("/{script}"), &[]).await;
    assert_eq!(js.status(), 200, "/{script}");
    assert!(header(&js, CONTENT_TYPE).starts_with("text/javascript"));
    let wasm_name = wasm_of(&js.text().await.unwrap());
    let wasm = gateway.get(&format!("/{wasm_name}"), &[]).await;
    assert_eq!(wasm.status(), 200, "/{wasm_name}");
    assert_eq!(header(&wasm, CONTENT_TYPE), "application/wasm");
    assert!(wasm.bytes().await.unwrap().starts_with(b"\0asm"));
    let wasm_br = gateway
        .get(&format!("/{wasm_name}"), &[(ACCEPT_ENCODING, "br, gzip")])
        .await;
    assert_eq!(header(&wasm_br, CONTENT_TYPE), "application/wasm");
    assert_eq!(header(&wasm_br, CONTENT_ENCODING), "br");

    // Unknown files and other methods: 404 as any unknown route; the API still works.
    let missing = gateway.get("/no-such-file.js", &[]).await;
    assert_eq!(missing.status(), 404);
    let post = gateway.request(Method::POST, "/index.html", &[]).await;
    assert_eq!(post.status(), 404);
    let nodes = gateway.get("/nodes", &[]).await;
    assert_eq!(nodes.status(), 200);
    assert!(header(&nodes, CONTENT_TYPE).starts_with("application/json"));
}

/// Whether `cargo xtask web` had built the bundle (so the binary, built
/// after it, carries it). Under `CI` it must have.
fn bundle_built() -> bool {
    let dist = match std::env::var_os("TALLY_WEB_DIST") {
        // As build.rs reads it: relative to the gateway crate.
        Some(dir) if !dir.is_empty() => repository().join("gateway").join(dir),
        _ => repository().join("web").join("dist"),
    };
    if dist.join("index.html").is_file() {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false");
    assert!(
        !in_ci,
        "{} is missing under CI: `cargo xtask web` must run before the tests",
        dist.join("index.html").display()
    );
    false
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The module script `index.html` imports, e.g. `tally_web.js`.
fn script_of(html: &str) -> String {
    let start = html.find("from './").expect("index.html imports a script") + "from './".len();
    let end = html[start..]
        .find('\'')
        .expect("the import's closing quote");
    html[start..start + end].to_owned()
}

/// The `.wasm` file the wasm-bindgen glue loads, e.g. `tally_web_bg.wasm`.
fn wasm_of(js: &str) -> String {
    let end = ["'", "\"", "`"]
        .iter()
        .filter_map(|quote| js.find(&format!(".wasm{quote}")))
        .min()
        .expect("the glue names its .wasm file in quotes")
        + ".wasm".len();
    let start = js[..end]
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c)))
        .map_or(0, |quote| quote + 1);
    js[start..end].to_owned()
}

fn header(response: &Response, name: reqwest::header::HeaderName) -> String {
    let value = response.headers().get(&name);
    let value = value.unwrap_or_else(|| panic!("no {name} header: {:?}", response.headers()));
    value.to_str().unwrap().to_owned()
}

/// `tally` copied into a temporary directory and run there as
/// `tally gateway --node <nothing listens>`: nothing of the repository's
/// files is in reach of its path or working directory.
struct CopiedGateway {
    addr: String,
    child: Child,
    /// Declared after the child: the process is gone before its log prints.
    _log: ChildLog,
    _dir: tempfile::TempDir,
}

impl CopiedGateway {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let binary: PathBuf = dir.path().join("tally");
        std::fs::copy(common::TALLY, &binary).expect("copy the tally binary");
        let addr = format!("127.0.0.1:{}", free_port());
        let node = format!("127.0.0.1:{}", free_port());
        let log = ChildLog::new("copied-gateway");
        let child = command_for(binary.to_str().unwrap(), &log)
            .current_dir(dir.path())
            .args(["gateway", "--addr", &addr, "--node", &node])
            .spawn()
            .expect("spawn the copied tally gateway");
        Self {
            addr,
            child,
            _log: log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str, headers: &[(reqwest::header::HeaderName, &str)]) -> Response {
        self.request(Method::GET, path, headers).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(reqwest::header::HeaderName, &str)],
    ) -> Response {
        let mut request = http().request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        request.send().await.expect("the gateway answers")
    }
}

impl Drop for CopiedGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
