//! `cargo xtask <command>`: the project's automation, in Rust so it runs
//! wherever cargo does.
//!
//! - `setup` installs the missing toolchain pieces (idempotent).
//! - `web` builds the browser bundle into `web/dist/`.
//! - `demo [args…]` sets up, builds the bundle and starts the demo cluster.
//! - `deploy-check` validates `deploy/` (Dockerfile, compose, Kubernetes) offline.
//! - `ci` runs every check in order and fails fast.
mod ci;
mod deploy;
mod lockfile;
mod process;
mod setup;
mod ui;
mod web;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Result};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup          install what is missing (wasm target, wasm-bindgen CLI, wasm-pack,
                 chromium + chromedriver, wasm-opt, the deploy-check tools); safe to run again
  web            build the browser bundle into web/dist/
  demo [args…]   setup + web, then `cargo run --release -p tally -- [args…]`
  deploy-check   lint deploy/: hadolint, compose schema, Kubernetes schemas, consistency
  ci             setup, then fmt, deploy-check, clippy, web, tests (native, node, headless chrome)";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            ui::error(&format!("{error:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let root = repo_root();
    std::env::set_current_dir(&root)?;
    process::put_cargo_bin_on_path();
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(());
    };
    match command.as_str() {
        "setup" => setup::run(&root),
        "web" => web::build(&root),
        "demo" => demo(&root, rest),
        "deploy-check" => deploy::check(&root),
        "ci" => ci::run(&root),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

/// Builds everything the demo needs, then hands over to the `tally` binary.
fn demo(root: &std::path::Path, args: &[String]) -> Result<()> {
    setup::run(root)?;
    web::build(root)?;
    let mut command = process::cargo();
    command
        .args(["run", "--release", "-p", "tally", "--"])
        .args(args);
    process::run(&mut command)
}

/// The workspace root: xtask lives one level below it.
fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
