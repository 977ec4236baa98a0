//! What the benchmarks that start real `tally` processes share (each
//! example includes it with `#[path = "support/mod.rs"] mod support;`).
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The `tally` binary: `given`, else the one in the directory above this
/// example's (`target/release/tally` for `target/release/examples/…`).
pub fn tally_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe()?;
    let profile =
        (exe.parent().and_then(Path::parent)).context("cannot locate the target directory")?;
    Ok(profile.join("tally"))
}

/// A loopback address no one listens on yet.
pub fn free_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// The sum of every sample of metric `name` in the `/metrics` of the
/// process serving HTTP at `http_addr`.
pub async fn metric(client: &reqwest::Client, http_addr: &str, name: &str) -> anyhow::Result<u64> {
    let text = (client
        .get(format!("http://{http_addr}/metrics"))
        .send()
        .await?)
        .text()
        .await?;
    Ok((text.lines())
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}
