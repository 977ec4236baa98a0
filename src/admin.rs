//! `tally admin`: operations on a running cluster, sent to one node.
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::Rng;
use tally_protocol::request_auth::{self, RequestParts};

use crate::cli::{AdminCommand, RetireArgs};

/// Runs one admin command.
pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Retire(args) => retire(args).await,
    }
}

/// `POST /admin/retire/{node}` on the node given with `--via`; prints the answer.
async fn retire(args: RetireArgs) -> anyhow::Result<()> {
    tally_protocol::node_id::validate_node_id(&args.node)
        .map_err(|error| anyhow::anyhow!("NODE {:?}: {error}", args.node))?;
    let path = format!("/admin/retire/{}", args.node);
    let url = format!("{}{path}", args.via.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .build()
        .context("building the HTTP client")?;
    let mut request = client.post(&url);
    match &args.token {
        Some(token) => request = request.bearer_auth(token),
        None => {
            if let Some(keys) = args.secret.keys()? {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let parts = RequestParts {
                    method: "POST",
                    path_and_query: &path,
                    body: b"",
                };
                let nonce = rand::thread_rng().gen::<[u8; 16]>();
                for (name, value) in request_auth::sign(&keys, parts, now_ms, nonce) {
                    request = request.header(name, value);
                }
            }
        }
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "POST {url}: {status}: {}", body.trim());
    println!("{}", body.trim());
    Ok(())
}
