//! The web page end to end: a real cluster (3 `tally node` processes), a
//! real `tally gateway` serving the built bundle, and headless Chromium
//! driven through chromedriver. The page must show every node, count the
//! clicks on its + button, agree with every node's `GET /counter`, and log
//! no errors to the browser console. Its filter box must narrow what the
//! gateway streams to the matching counters (`/ws?prefix=`), and the
//! cluster picture must show a crashed node as such.
//!
//! Needs `/usr/bin/chromium`, `/usr/bin/chromedriver` and the bundle from
//! `cargo xtask web`. Without the bundle the test skips locally but fails
//! under `CI` (where the xtask builds it first). A screenshot of the final
//! page goes to `target/artifacts/web-e2e.png` and `target/e2e/page.png`.
mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, http, value_at, wait_until, Cluster, GatewayProcess, NodeProcess};
use serde_json::Value;
use thirtyfour::prelude::*;
use thirtyfour::LoggingPrefsLogLevel;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Clicks on the + button (amount 1 each).
const CLICKS: i64 = 10;
const NODES: usize = 3;
/// Upper bound for each wait; generous for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn the_page_counts_clicks_and_agrees_with_every_node() {
    let Some(web_dir) = web_bundle() else {
        eprintln!("SKIPPED web_e2e: web/dist/index.html is missing — run `cargo xtask web` first");
        return;
    };
    // Fault injection: the test partitions a node with `/admin/partition`.
    let mut cluster = Cluster::start(NODES, &["--allow-fault-injection"]).await;
    let gateway = GatewayProcess::start(&cluster.nodes, Some(&web_dir)).await;
    // Declared before the driver process so it is dropped after it:
    // Chromium is gone before its profile is deleted.
    let profile = tempfile::tempdir().expect("browser profile dir");
    let driver_process = ChromeDriverProcess::start().await;
    let browser = open_browser(&driver_process, profile.path()).await;

    let mut outcome = exercise_page(&browser, &gateway, &cluster).await;
    if outcome.is_ok() {
        outcome = filter_narrows_the_stream(&browser, &gateway).await;
    }
    if outcome.is_ok() {
        outcome = the_picture_shows_a_partitioned_node(&browser, &cluster).await;
    }
    if outcome.is_ok() {
        outcome = the_picture_shows_a_crashed_node(&browser, &mut cluster).await;
    }
    settle_animations(&browser).await;
    let screenshot = save_screenshot(&browser).await;
    let console_errors = console_errors(&browser).await;
    // Quit explicitly: the session's Drop would block the runtime.
    let _ = browser.quit().await;

    if let Err(problem) = outcome {
        panic!("{problem} (screenshot: {screenshot})");
    }
    assert!(
        console_errors.is_empty(),
        "the browser console logged errors:\n{}",
        console_errors.join("\n")
    );
    eprintln!("web_e2e: screenshot saved to {screenshot}");
}

/// The bundle directory, or None (skip) when it is not built outside CI.
fn web_bundle() -> Option<PathBuf> {
    let dir = workspace_root().join("web/dist");
    if dir.join("index.html").is_file() {
        return Some(dir);
    }
    let in_ci = std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false");
    assert!(
        !in_ci,
        "web/dist/index.html is missing under CI: `cargo xtask web` must run before the tests"
    );
    None
}

/// The repository root: this crate's parent directory.
/// The repository root: this test belongs to the root package.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Loads the page, clicks + `CLICKS` times and waits until the page and
/// every node show the same total. Err describes the first thing wrong.
async fn exercise_page(
    browser: &WebDriver,
    gateway: &GatewayProcess,
    cluster: &Cluster,
) -> Result<(), String> {
    browser
        .goto(gateway.url("/"))
        .await
        .map_err(|e| format!("cannot open the page: {e}"))?;
    let ready = wait_until(PATIENCE, || async {
        let online = browser.find_all(By::Css(".badge.link.online")).await;
        let cards = browser.find_all(By::Css(".card.node")).await;
        matches!((online, cards), (Ok(o), Ok(c)) if !o.is_empty() && c.len() == NODES)
    })
    .await;
    if !ready {
        return Err(format!(
            "the page never went live with {NODES} node cards; it shows:\n{}",
            page_text(browser).await
        ));
    }
    check_node_cards(browser, &cluster.nodes).await?;

    let amount = shown_text(browser, "select.amount").await?;
    if amount.trim() != "1" {
        return Err(format!("the amount selector starts at {amount:?}, not 1"));
    }
    let plus = browser
        .find(By::Css("button.btn.plus"))
        .await
        .map_err(|e| format!("no + button: {e}"))?;
    for click in 1..=CLICKS {
        plus.click()
            .await
            .map_err(|e| format!("click {click} on + failed: {e}"))?;
    }

    let agreed = wait_until(PATIENCE, || async {
        if shown_number(browser, ".hero .big").await != Some(CLICKS) {
            return false;
        }
        for node in &cluster.nodes {
            if node_value(node).await != Some(CLICKS) {
                return false;
            }
        }
        card_values(browser).await == vec![Some(CLICKS); NODES]
    })
    .await;
    if !agreed {
        let mut nodes = Vec::new();
        for node in &cluster.nodes {
            nodes.push(format!("{}={:?}", node.id, node_value(node).await));
        }
        return Err(format!(
            "after {CLICKS} clicks the page shows {:?}, its cards {:?}, the nodes {}",
            shown_number(browser, ".hero .big").await,
            card_values(browser).await,
            nodes.join(" ")
        ));
    }
    let status = browser
        .find(By::Css(".hero .status"))
        .await
        .map_err(|e| format!("no status line: {e}"))?;
    let class = status.class_name().await.ok().flatten().unwrap_or_default();
    let text = status.text().await.unwrap_or_default();
    if !class.split_whitespace().any(|c| c == "ok") {
        return Err(format!(
            "the last write's status is not ok: {class:?} {text:?}"
        ));
    }
    Ok(())
}

/// Typing a prefix in the filter resubscribes: the page then holds, lists
/// and keeps receiving only the counters that start with it.
async fn filter_narrows_the_stream(
    browser: &WebDriver,
    gateway: &GatewayProcess,
) -> Result<(), String> {
    for (name, times) in [("e2e-a", 3), ("e2e-b", 1), ("other-x", 5)] {
        for _ in 0..times {
            let (status, _) = gateway
                .post(&format!("/counters/{name}/increment"), "")
                .await;
            if status != 200 {
                return Err(format!("writing {name} through the gateway: {status}"));
            }
        }
    }
    let filter = browser
        .find(By::Css("input.filter"))
        .await
        .map_err(|e| format!("no filter box: {e}"))?;
    filter
        .send_keys("e2e-")
        .await
        .map_err(|e| format!("typing in the filter: {e}"))?;
    let narrowed = wait_until(PATIENCE, || async {
        let rows = row_names(browser).await;
        let log = shown_text(browser, ".log").await.unwrap_or_default();
        rows.iter().all(|name| name.starts_with("e2e-"))
            && rows.contains(&"e2e-a".to_owned())
            && rows.contains(&"e2e-b".to_owned())
            && log.contains("following \"e2e-…\": 2 counters")
    })
    .await;
    if !narrowed {
        return Err(format!(
            "the filter never narrowed the stream to e2e-*: rows {:?}, page:\n{}",
            row_names(browser).await,
            page_text(browser).await
        ));
    }
    // Changes keep streaming for what matches, and only for that.
    for name in ["other-x", "e2e-b"] {
        let (status, _) = gateway
            .post(&format!("/counters/{name}/increment"), "")
            .await;
        if status != 200 {
            return Err(format!("writing {name} through the gateway: {status}"));
        }
    }
    let live = wait_until(PATIENCE, || async {
        let Ok(row) = browser
            .find(By::Css(".counters li[data-name='e2e-b'] .row-value"))
            .await
        else {
            return false;
        };
        let value = row.text().await.ok().and_then(|t| parse_shown(&t));
        value == Some(2)
            && row_names(browser)
                .await
                .iter()
                .all(|n| n.starts_with("e2e-"))
    })
    .await;
    if !live {
        return Err(format!(
            "e2e-b never showed 2 under the filter: rows {:?}",
            row_names(browser).await
        ));
    }
    // Back to every counter, so the screenshot shows the whole page.
    let clear = "const f = document.querySelector('input.filter'); \
                 f.value = ''; f.dispatchEvent(new Event('input'));";
    browser
        .execute(clear, Vec::new())
        .await
        .map_err(|e| format!("clearing the filter: {e}"))?;
    let everything = wait_until(PATIENCE, || async {
        row_names(browser).await.contains(&"other-x".to_owned())
    })
    .await;
    match everything {
        true => Ok(()),
        false => Err("clearing the filter never brought other-x back".into()),
    }
}

/// The names in the busiest-counters list, in page order.
async fn row_names(browser: &WebDriver) -> Vec<String> {
    let mut names = Vec::new();
    for row in browser
        .find_all(By::Css(".counters li[data-name]"))
        .await
        .unwrap_or_default()
    {
        names.extend(row.attr("data-name").await.ok().flatten());
    }
    names
}

/// What the topology canvas says it shows (its `aria-label`).
async fn topology_label(browser: &WebDriver) -> Option<String> {
    match browser.find(By::Css("canvas.topology")).await {
        Ok(canvas) => canvas.attr("aria-label").await.ok().flatten(),
        Err(_) => None,
    }
}

/// Cuts the second node off from its peers (the gateway still reaches
/// it): the picture must show it partitioned, and healthy once healed.
async fn the_picture_shows_a_partitioned_node(
    browser: &WebDriver,
    cluster: &Cluster,
) -> Result<(), String> {
    let node = &cluster.nodes[1];
    let peers: Vec<&str> = (cluster.nodes.iter())
        .filter(|other| other.id != node.id)
        .map(|other| other.id.as_str())
        .collect();
    let body = serde_json::json!({ "peers": peers }).to_string();
    let (status, _) = node.post("/admin/partition", &body).await;
    if status != 200 {
        return Err(format!("partitioning {}: {status}", node.id));
    }
    let cut = format!("{} partitioned", node.id);
    let shown = wait_until(PATIENCE, || async {
        topology_label(browser)
            .await
            .is_some_and(|label| label.contains(&cut))
    })
    .await;
    if !shown {
        return Err(format!(
            "the topology never showed {cut:?}: {:?}",
            topology_label(browser).await
        ));
    }
    let healed = http().delete(node.url("/admin/partition")).send().await;
    if !healed.is_ok_and(|answer| answer.status().is_success()) {
        return Err(format!("healing {} failed", node.id));
    }
    let back = format!("{} healthy", node.id);
    let healthy = wait_until(PATIENCE, || async {
        topology_label(browser)
            .await
            .is_some_and(|label| label.contains(&back))
    })
    .await;
    match healthy {
        true => Ok(()),
        false => Err(format!(
            "after healing, the topology never showed {back:?}: {:?}",
            topology_label(browser).await
        )),
    }
}

/// Kills a node: the topology canvas must describe it as down (its
/// `aria-label` says what the picture shows).
async fn the_picture_shows_a_crashed_node(
    browser: &WebDriver,
    cluster: &mut Cluster,
) -> Result<(), String> {
    let label = || topology_label(browser);
    let all_healthy = (cluster.nodes.iter())
        .map(|node| format!("{} healthy", node.id))
        .collect::<Vec<_>>();
    let healthy = wait_until(PATIENCE, || async {
        let shown = label().await.unwrap_or_default();
        all_healthy.iter().all(|node| shown.contains(node))
    })
    .await;
    if !healthy {
        return Err(format!(
            "the topology never showed every node healthy: {:?}",
            label().await
        ));
    }
    let victim = cluster.nodes.last_mut().ok_or("no nodes")?;
    victim.kill9();
    let down = format!("{} unhealthy", victim.id);
    let shown = wait_until(PATIENCE, || async {
        label().await.is_some_and(|shown| shown.contains(&down))
    })
    .await;
    match shown {
        true => Ok(()),
        false => Err(format!(
            "the topology never showed {down:?}: {:?}",
            label().await
        )),
    }
}

/// One card per node, named by the node's id.
async fn check_node_cards(browser: &WebDriver, nodes: &[NodeProcess]) -> Result<(), String> {
    let mut shown = Vec::new();
    for card in browser
        .find_all(By::Css(".card.node"))
        .await
        .unwrap_or_default()
    {
        let id = card.attr("data-node").await.ok().flatten();
        let label = match card.find(By::Css(".node-id")).await {
            Ok(label) => label.text().await.ok(),
            Err(_) => None,
        };
        if id.is_none() || id != label {
            return Err(format!(
                "a node card's data-node {id:?} differs from its label {label:?}"
            ));
        }
        shown.extend(id);
    }
    shown.sort();
    let mut expected: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    expected.sort();
    if shown != expected {
        return Err(format!(
            "the page shows node cards {shown:?}, expected {expected:?}"
        ));
    }
    Ok(())
}

/// The value each node card shows, in page order.
async fn card_values(browser: &WebDriver) -> Vec<Option<i64>> {
    let mut values = Vec::new();
    for value in browser
        .find_all(By::Css(".card.node .node-value"))
        .await
        .unwrap_or_default()
    {
        values.push(value.text().await.ok().and_then(|t| parse_shown(&t)));
    }
    values
}

/// The number in the first element matching `css` (None if absent or not a number).
async fn shown_number(browser: &WebDriver, css: &str) -> Option<i64> {
    parse_shown(&shown_text(browser, css).await.ok()?)
}

async fn shown_text(browser: &WebDriver, css: &str) -> Result<String, String> {
    let element = browser
        .find(By::Css(css))
        .await
        .map_err(|e| format!("no {css} on the page: {e}"))?;
    if css.starts_with("select") {
        // A select's text is all its options; its value is the chosen one.
        return element
            .value()
            .await
            .map(Option::unwrap_or_default)
            .map_err(|e| format!("cannot read {css}: {e}"));
    }
    element
        .text()
        .await
        .map_err(|e| format!("cannot read {css}: {e}"))
}

/// Reads a number as the page formats it: `−1 234` (thin-space groups, a real minus).
fn parse_shown(text: &str) -> Option<i64> {
    let plain: String = text
        .trim()
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| if c == '−' { '-' } else { c })
        .collect();
    plain.parse().ok()
}

/// The node's `default` counter, None while it does not answer.
async fn node_value(node: &NodeProcess) -> Option<i64> {
    value_at(&node.url("/counter")).await
}

/// The page's visible text, for failure messages.
async fn page_text(browser: &WebDriver) -> String {
    match browser.find(By::Tag("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(e) => format!("<no body: {e}>"),
    }
}

/// Writes `target/artifacts/web-e2e.png`; returns its path or why it failed.
async fn save_screenshot(browser: &WebDriver) -> String {
    let dir = workspace_root().join("target/artifacts");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return format!("not saved: cannot create {}: {e}", dir.display());
    }
    let path = dir.join("web-e2e.png");
    // The clicks scrolled the page; the top (the picture) tells the most.
    let _ = browser.execute("window.scrollTo(0, 0);", Vec::new()).await;
    match browser.screenshot(&path).await {
        Ok(()) => {
            // Also where the issue asks for it; best effort.
            let copy = workspace_root().join("target/e2e/page.png");
            let copied = std::fs::create_dir_all(workspace_root().join("target/e2e"))
                .and_then(|()| std::fs::copy(&path, &copy));
            match copied {
                Ok(_) => format!("{} and {}", path.display(), copy.display()),
                Err(_) => path.display().to_string(),
            }
        }
        Err(e) => format!("not saved: {e}"),
    }
}

/// A marker the test logs itself, proving the console log is captured at all
/// (so an empty error list means something).
const CANARY: &str = "tally-web-e2e-canary";

/// Console entries at error level (`SEVERE`): uncaught exceptions,
/// `console.error`, failed loads and sockets.
async fn console_errors(browser: &WebDriver) -> Vec<String> {
    let script = format!("console.error({CANARY:?});");
    if let Err(e) = browser.execute(script, Vec::new()).await {
        return vec![format!("cannot log the canary: {e}")];
    }
    let entries = match browser.browser_log().await {
        Ok(entries) => entries,
        Err(e) => return vec![format!("cannot read the browser log: {e}")],
    };
    let (canary, others): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .filter(|entry| entry.level == "SEVERE")
        .partition(|entry| entry.message.contains(CANARY));
    let mut errors: Vec<String> = others.into_iter().map(|entry| entry.message).collect();
    if canary.is_empty() {
        errors.push("the canary console.error never reached the browser log".into());
    }
    errors
}

/// Waits (bounded) until the page's CSS animations — the value bump, the
/// cards' flashes — are over, so the screenshot shows the page at rest.
async fn settle_animations(browser: &WebDriver) {
    wait_until(Duration::from_secs(5), || async {
        let running = browser
            .execute("return document.getAnimations().length;", Vec::new())
            .await
            .ok()
            .and_then(|ret| ret.convert::<u64>().ok());
        running == Some(0)
    })
    .await;
}

/// A headless Chromium session that records every console message.
async fn open_browser(driver: &ChromeDriverProcess, profile: &Path) -> WebDriver {
    let mut caps = DesiredCapabilities::chrome();
    caps.set_binary(CHROMIUM).expect("binary capability");
    let profile_arg = format!("--user-data-dir={}", profile.display());
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1100",
        &profile_arg,
    ] {
        caps.add_arg(arg).expect("browser argument");
    }
    caps.set_browser_log_level(LoggingPrefsLogLevel::All)
        .expect("logging capability");
    WebDriver::new(driver.url(), caps)
        .await
        .expect("a chromedriver session with headless Chromium")
}

/// `chromedriver` in its own process group: Drop kills the group, so the
/// Chromium it started dies with it even when the test panics.
struct ChromeDriverProcess {
    port: u16,
    child: Child,
}

impl ChromeDriverProcess {
    async fn start() -> Self {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn /usr/bin/chromedriver");
        let driver = Self { port, child };
        let status = format!("{}/status", driver.url());
        let ready = wait_until(PATIENCE, || async {
            let answer = http().get(&status).send().await;
            match answer {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|body| body["value"]["ready"] == true),
                Err(_) => false,
            }
        })
        .await;
        assert!(ready, "chromedriver on port {port} never became ready");
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ChromeDriverProcess {
    fn drop(&mut self) {
        // The group id is chromedriver's pid (process_group(0)).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
