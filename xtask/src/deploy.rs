//! `cargo xtask deploy-check`: validates `deploy/` offline, with the tools
//! `setup` installs from PyPI (it makes sure they are there first).
//!
//! 1. hadolint on `deploy/Dockerfile` (any finding fails, see
//!    `deploy/.hadolint.yaml`), and the Dockerfile's tool versions against
//!    the repository's pins.
//! 2. `deploy/compose.yaml` against the Compose Specification's schema.
//! 3. Every Kubernetes manifest, and what `kubectl kustomize` renders from
//!    them, against the Kubernetes API's schemas (strict: unknown fields
//!    fail; so does a kind the schemas do not know).
//! 4. `deploy/check.py`: that the files fit together and fit the binary
//!    (selectors, ports, secret keys, grace periods, volumes, seeds…).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{lockfile, process, setup, ui};

/// The Kubernetes release whose API schemas the manifests must satisfy.
const KUBERNETES_VERSION: &str = "1.31.0";

pub fn check(root: &Path) -> Result<()> {
    setup::ensure_deploy_tools(root)?;
    let deploy = root.join("deploy");
    let tool = |program: &str| setup::python_tool(root, program);

    let dockerfile = deploy.join("Dockerfile");
    let mut hadolint = Command::new(tool("hadolint"));
    hadolint
        .arg("--no-color")
        .arg("--config")
        .arg(deploy.join(".hadolint.yaml"))
        .arg(&dockerfile);
    process::run(&mut hadolint)?;
    check_dockerfile_pins(root, &dockerfile)?;

    let mut compose = Command::new(tool("check-jsonschema"));
    compose
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(deploy.join("compose.yaml"));
    process::run(&mut compose)?;

    let kubernetes = deploy.join("kubernetes");
    let manifests = manifests(&kubernetes)?;
    kubernetes_validate(root, &manifests)?;
    let rendered = kustomize(root, &kubernetes)?;
    kubernetes_validate(root, std::slice::from_ref(&rendered))?;

    let mut consistency = Command::new(tool("python"));
    consistency
        .arg(deploy.join("check.py"))
        .arg(&deploy)
        .arg(&rendered);
    process::run(&mut consistency)?;
    ui::info("deploy-check: Dockerfile, compose.yaml and Kubernetes manifests are valid");
    Ok(())
}

/// The Kubernetes resource files: every `*.yaml` but the kustomization.
fn manifests(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let is_yaml = path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml");
        if is_yaml && !path.ends_with("kustomization.yaml") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no Kubernetes manifests in {}", dir.display());
    }
    Ok(files)
}

/// `kubernetes-validate --strict`; its warnings fail too (it only warns, and
/// exits 0, about a kind or API version it has no schema for: a typo).
fn kubernetes_validate(root: &Path, files: &[PathBuf]) -> Result<()> {
    let mut validate = Command::new(setup::python_tool(root, "kubernetes-validate"));
    validate
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files);
    let description = process::describe(&validate);
    ui::info(&format!("$ {description}"));
    let output = validate
        .output()
        .with_context(|| format!("could not start `{description}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    let warned = stdout
        .lines()
        .chain(stderr.lines())
        .any(|line| line.starts_with("WARN"));
    if !output.status.success() || warned {
        bail!("`{description}` found problems");
    }
    Ok(())
}

/// `kubectl kustomize DIR`, written to `target/deploy-check/kustomized.yaml`.
fn kustomize(root: &Path, dir: &Path) -> Result<PathBuf> {
    let mut kustomize = Command::new(setup::python_tool(root, "kubectl"));
    kustomize.arg("kustomize").arg(dir);
    let description = process::describe(&kustomize);
    ui::info(&format!("$ {description}"));
    let output = kustomize
        .output()
        .with_context(|| format!("could not start `{description}`"))?;
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        bail!("`{description}` failed ({})", output.status);
    }
    let out_dir = root.join("target").join("deploy-check");
    fs::create_dir_all(&out_dir)?;
    let rendered = out_dir.join("kustomized.yaml");
    fs::write(&rendered, &output.stdout)
        .with_context(|| format!("writing {}", rendered.display()))?;
    Ok(rendered)
}

/// The image must build with the tools the repository pins: the
/// wasm-bindgen CLI of Cargo.lock, setup's binaryen, a Rust at least the
/// workspace's `rust-version`.
fn check_dockerfile_pins(root: &Path, dockerfile: &Path) -> Result<()> {
    let text = fs::read_to_string(dockerfile)
        .with_context(|| format!("reading {}", dockerfile.display()))?;
    let wasm_bindgen = lockfile::locked_version(root, "wasm-bindgen")?;
    expect_arg(&text, "WASM_BINDGEN_VERSION", &wasm_bindgen, "Cargo.lock")?;
    expect_arg(
        &text,
        "BINARYEN_VERSION",
        setup::BINARYEN_VERSION,
        "xtask/src/setup.rs",
    )?;
    let rust = arg_default(&text, "RUST_VERSION")?;
    let manifest = fs::read_to_string(root.join("Cargo.toml"))?;
    let minimum = manifest
        .lines()
        .find_map(|line| {
            let value = line.trim().strip_prefix("rust-version")?;
            Some(
                value
                    .trim()
                    .strip_prefix('=')?
                    .trim()
                    .trim_matches('"')
                    .to_owned(),
            )
        })
        .context("Cargo.toml has no rust-version")?;
    if numbers(&rust) < numbers(&minimum) {
        bail!("deploy/Dockerfile builds with Rust {rust}, older than the workspace's rust-version {minimum}");
    }
    ui::info(&format!(
        "deploy-check: Dockerfile pins match (Rust {rust} ≥ {minimum}, wasm-bindgen {wasm_bindgen}, binaryen {})",
        setup::BINARYEN_VERSION
    ));
    Ok(())
}

/// The default of `ARG NAME=VALUE`.
fn arg_default(dockerfile: &str, name: &str) -> Result<String> {
    let prefix = format!("ARG {name}=");
    dockerfile
        .lines()
        .find_map(|line| line.trim().strip_prefix(&prefix))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .with_context(|| format!("deploy/Dockerfile has no `ARG {name}=…`"))
}

fn expect_arg(dockerfile: &str, name: &str, expected: &str, source: &str) -> Result<()> {
    let found = arg_default(dockerfile, name)?;
    if found != expected {
        bail!("deploy/Dockerfile has {name}={found}, but {source} pins {expected}");
    }
    Ok(())
}

/// `1.95.0` → [1, 95, 0], for comparing versions.
fn numbers(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{arg_default, numbers};

    #[test]
    fn reads_arg_defaults() {
        let dockerfile = "FROM x\nARG A=1\n  ARG B=\"two\"\n";
        assert_eq!(arg_default(dockerfile, "A").unwrap(), "1");
        assert_eq!(arg_default(dockerfile, "B").unwrap(), "two");
        assert!(arg_default(dockerfile, "C").is_err());
    }

    #[test]
    fn compares_versions_numerically() {
        assert!(numbers("1.95.0") >= numbers("1.85"));
        assert!(numbers("1.9") < numbers("1.85"));
    }
}
