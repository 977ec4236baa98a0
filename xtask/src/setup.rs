//! `cargo xtask setup`: checks each tool and installs only what is missing
//! or at the wrong version, saying what it does. Running it twice does
//! nothing the second time.
use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{bail, Result};

use crate::{lockfile, process, ui};

const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// wasm-pack is only a test driver here; pinned so CI is reproducible.
const WASM_PACK_VERSION: &str = "0.15.1";
/// npm's binaryen: Debian's (108) emits wasm that fails in the browser.
const BINARYEN_VERSION: &str = "132";
const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// apt-get fails at once when another dpkg holds the lock; retry that long.
const APT_ATTEMPTS: u32 = 4;
const APT_RETRY_PAUSE: Duration = Duration::from_secs(15);

/// Why a tool needs installing: missing, or the wrong version.
type Check = std::result::Result<(), String>;

pub fn run(root: &Path) -> Result<()> {
    ui::info("setup: checking the toolchain");
    ensure_wasm_target()?;
    ensure_wasm_bindgen_cli(root)?;
    ensure_wasm_pack()?;
    ensure_chromium()?;
    ensure_wasm_opt(root)?;
    ui::info("setup: everything is in place");
    Ok(())
}

/// Installs `what` with `install` unless `check` passes, then checks again.
fn ensure(
    what: &str,
    check: impl Fn() -> Check,
    install: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let reason = match check() {
        Ok(()) => {
            ui::info(&format!("setup: {what}: present"));
            return Ok(());
        }
        Err(reason) => reason,
    };
    ui::info(&format!("setup: {what}: {reason}; installing"));
    install()?;
    match check() {
        Ok(()) => {
            ui::info(&format!("setup: {what}: installed"));
            Ok(())
        }
        Err(reason) => bail!("{what} is still not usable after installing: {reason}"),
    }
}

/// First line of `program --version`, or why there is none.
fn version_line(program: &str) -> std::result::Result<String, String> {
    process::probe(Command::new(program).arg("--version"))
        .and_then(|out| out.lines().next().map(str::to_owned))
        .ok_or_else(|| "not installed".to_owned())
}

/// `program --version` must print `expected` as a whole word.
fn check_version(program: &str, expected: &str) -> Check {
    let line = version_line(program)?;
    if line.split_whitespace().any(|word| word == expected) {
        Ok(())
    } else {
        Err(format!("found `{line}`"))
    }
}

fn ensure_wasm_target() -> Result<()> {
    let check = || {
        let installed =
            process::probe(Command::new("rustup").args(["target", "list", "--installed"]))
                .ok_or("rustup is not available")?;
        if installed.lines().any(|line| line.trim() == WASM_TARGET) {
            Ok(())
        } else {
            Err("not installed".to_owned())
        }
    };
    ensure(&format!("rust target {WASM_TARGET}"), check, || {
        process::run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
    })
}

/// The CLI must match the `wasm-bindgen` crate exactly, or the generated
/// glue does not fit the compiled module.
fn ensure_wasm_bindgen_cli(root: &Path) -> Result<()> {
    let version = lockfile::locked_version(root, "wasm-bindgen")?;
    let check = || {
        check_version("wasm-bindgen", &version)?;
        check_version("wasm-bindgen-test-runner", &version)
    };
    ensure(&format!("wasm-bindgen CLI {version}"), check, || {
        // Not `--locked`: the CLI's own lockfile pins a webpki-roots release
        // the registry no longer serves, so a locked install fails at once.
        let mut install = process::cargo();
        install.args(["install", "wasm-bindgen-cli", "--version", &version]);
        process::run(&mut install)
    })
}

fn ensure_wasm_pack() -> Result<()> {
    let check = || check_version("wasm-pack", WASM_PACK_VERSION);
    ensure(&format!("wasm-pack {WASM_PACK_VERSION}"), check, || {
        let mut install = process::cargo();
        install.args([
            "install",
            "--locked",
            "wasm-pack",
            "--version",
            WASM_PACK_VERSION,
        ]);
        process::run(&mut install)
    })
}

fn ensure_chromium() -> Result<()> {
    let check = || {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|path| !Path::new(path).is_file())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {}", missing.join(" and ")))
        }
    };
    ensure("chromium + chromedriver", check, install_chromium)
}

/// `apt-get update && apt-get install -y chromium chromium-driver`, retried
/// while another dpkg run holds the lock.
fn install_chromium() -> Result<()> {
    let mut attempt = 1;
    loop {
        let result = apt_get(&["update"])
            .and_then(|()| apt_get(&["install", "-y", "chromium", "chromium-driver"]));
        match result {
            Ok(()) => return Ok(()),
            Err(error) if attempt < APT_ATTEMPTS => {
                ui::info(&format!(
                    "setup: apt-get attempt {attempt}/{APT_ATTEMPTS} failed ({error:#}); \
                     retrying in {}s (the dpkg lock may be busy)",
                    APT_RETRY_PAUSE.as_secs()
                ));
                thread::sleep(APT_RETRY_PAUSE);
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

fn apt_get(args: &[&str]) -> Result<()> {
    let mut command = if is_root() {
        Command::new("apt-get")
    } else if process::find_on_path("sudo").is_some() {
        let mut sudo = Command::new("sudo");
        // Under CI a password prompt would hang: fail instead.
        if ui::is_ci() {
            sudo.arg("-n");
        }
        sudo.arg("apt-get");
        sudo
    } else {
        bail!("installing chromium needs root (or sudo)");
    };
    command
        .args(["-o", "DPkg::Lock::Timeout=120"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive");
    process::run(&mut command)
}

fn is_root() -> bool {
    process::probe(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

/// Where `setup` keeps npm's binaryen: inside `target/`, rebuilt on demand.
pub fn tools_dir(root: &Path) -> PathBuf {
    root.join("target").join("tools")
}

pub fn wasm_opt_path(root: &Path) -> PathBuf {
    tools_dir(root)
        .join("node_modules")
        .join(".bin")
        .join("wasm-opt")
}

fn ensure_wasm_opt(root: &Path) -> Result<()> {
    let wasm_opt = wasm_opt_path(root);
    let check = || {
        let line = version_line(&wasm_opt.to_string_lossy())?;
        // e.g. `wasm-opt version 132 (version_132)`
        if line.split_whitespace().any(|word| word == BINARYEN_VERSION) {
            Ok(())
        } else {
            Err(format!("found `{line}`"))
        }
    };
    ensure(
        &format!("wasm-opt (npm binaryen@{BINARYEN_VERSION})"),
        check,
        || {
            if process::find_on_path("npm").is_none() {
                bail!("npm is needed to install binaryen (apt-get install -y npm)");
            }
            let prefix = tools_dir(root);
            std::fs::create_dir_all(&prefix)?;
            let mut install = Command::new("npm");
            install
                .arg("install")
                .arg("--prefix")
                .arg(&prefix)
                .args(["--no-audit", "--no-fund"])
                .arg(format!("binaryen@{BINARYEN_VERSION}"));
            process::run(&mut install)
        },
    )
}
