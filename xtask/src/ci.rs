//! `cargo xtask ci`: every check, in order, failing fast, with a header per
//! step and a summary line (`xtask: N passed, 0 failed`) at the end.
use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Result};

use crate::{deploy, process, setup, ui, web};

/// One CI step: a name for the header and what to run.
struct Step {
    name: String,
    action: Box<dyn FnOnce() -> Result<()>>,
}

impl Step {
    fn command(mut command: Command) -> Self {
        let name = process::describe(&command);
        Self {
            name,
            action: Box::new(move || process::run(&mut command)),
        }
    }

    fn task(name: &str, action: impl FnOnce() -> Result<()> + 'static) -> Self {
        Self {
            name: name.to_owned(),
            action: Box::new(action),
        }
    }
}

fn cargo(args: &[&str]) -> Command {
    let mut command = process::cargo();
    command.args(args);
    command
}

fn wasm_pack_test(mode: &[&str], krate: &str) -> Command {
    let mut command = Command::new("wasm-pack");
    command.arg("test").args(mode).arg(krate);
    command
}

const HEADLESS_CHROME: [&str; 4] = [
    "--headless",
    "--chrome",
    "--chromedriver",
    setup::CHROMEDRIVER,
];

/// `cargo test --workspace`; on a root machine with iproute2 the
/// multi-host test (network namespaces) must run, not skip.
fn workspace_tests() -> Command {
    let mut command = cargo(&["test", "--workspace"]);
    if setup::is_root() && process::find_on_path("ip").is_some() {
        command.env("TALLY_REQUIRE_NETNS", "1");
    }
    command
}

fn steps(root: &Path) -> Vec<Step> {
    let (setup_root, web_root) = (root.to_owned(), root.to_owned());
    let deploy_root = root.to_owned();
    let mut steps = vec![
        Step::task("cargo xtask setup", move || setup::run(&setup_root)),
        Step::command(cargo(&["fmt", "--all", "--check"])),
        // Seconds, offline: the Dockerfile, compose file and manifests.
        Step::task("cargo xtask deploy-check", move || {
            deploy::check(&deploy_root)
        }),
        Step::command(cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])),
        // Before the tests: the end-to-end tests serve the bundle.
        Step::task("cargo xtask web", move || web::build(&web_root)),
        Step::command(workspace_tests()),
        Step::command(wasm_pack_test(&["--node"], "crdt-core")),
        Step::command(wasm_pack_test(&HEADLESS_CHROME, "crdt-core")),
    ];
    if root.join("web").join("tests").is_dir() {
        steps.push(Step::command(wasm_pack_test(&HEADLESS_CHROME, "web")));
    }
    steps
}

pub fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    let steps = steps(root);
    let total = steps.len();
    let mut passed = 0;
    for (index, step) in steps.into_iter().enumerate() {
        ui::header(&format!("[{}/{total}] {}", index + 1, step.name));
        let step_started = Instant::now();
        if let Err(error) = (step.action)() {
            ui::error(&format!("{}: {error:#}", step.name));
            println!(
                "xtask: {passed} passed, 1 failed ({} not run)",
                total - passed - 1
            );
            bail!("ci failed at `{}`", step.name);
        }
        passed += 1;
        ui::success(&format!(
            "ok: {} ({})",
            step.name,
            ui::duration(step_started.elapsed())
        ));
    }
    println!(
        "\nxtask: {passed} passed, 0 failed ({})",
        ui::duration(started.elapsed())
    );
    Ok(())
}
