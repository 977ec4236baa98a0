//! `cargo xtask web`: the browser bundle in `web/dist/` — the wasm observer
//! replica with its JS glue, optimised, plus the static page around it.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{process, setup, ui};

const WEB_PACKAGE: &str = "tally-web";
/// The cdylib cargo writes for `tally-web`.
const WASM_FILE: &str = "tally_web.wasm";
/// What wasm-bindgen writes next to the JS glue.
const BINDGEN_WASM_FILE: &str = "tally_web_bg.wasm";

pub fn build(root: &Path) -> Result<()> {
    let dist = root.join("web").join("dist");
    compile(root)?;
    bind(root, &dist)?;
    optimise(root, &dist.join(BINDGEN_WASM_FILE))?;
    copy_static(&root.join("web").join("static"), &dist)?;
    ui::info(&format!("web: bundle ready in {}", dist.display()));
    Ok(())
}

fn compile(root: &Path) -> Result<()> {
    let mut build = process::cargo();
    build.current_dir(root).args([
        "build",
        "--release",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        WEB_PACKAGE,
    ]);
    process::run(&mut build)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"))
}

/// Generates the JS glue into a fresh `dist`, so no stale file survives.
fn bind(root: &Path, dist: &Path) -> Result<()> {
    let wasm = target_dir(root)
        .join("wasm32-unknown-unknown")
        .join("release")
        .join(WASM_FILE);
    if dist.exists() {
        fs::remove_dir_all(dist).with_context(|| format!("clearing {}", dist.display()))?;
    }
    let mut bindgen = Command::new("wasm-bindgen");
    bindgen
        .args(["--target", "web", "--out-dir"])
        .arg(dist)
        .arg(&wasm);
    process::run(&mut bindgen)
}

/// `wasm-opt -Oz` in place, with npm's binaryen (see `setup`).
fn optimise(root: &Path, wasm: &Path) -> Result<()> {
    let wasm_opt = setup::wasm_opt_path(root);
    if !wasm_opt.is_file() {
        bail!("{} is missing: run `cargo xtask setup`", wasm_opt.display());
    }
    let before = file_size(wasm)?;
    let mut optimise = Command::new(&wasm_opt);
    optimise.arg("-Oz").arg(wasm).arg("-o").arg(wasm);
    process::run(&mut optimise)?;
    let after = file_size(wasm)?;
    ui::info(&format!(
        "web: {BINDGEN_WASM_FILE} {} KiB → {} KiB",
        before / 1024,
        after / 1024
    ));
    Ok(())
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len())
}

/// Copies `web/static/` (the page, styles, icons) into `dist`, keeping
/// sub-directories. A missing `web/static/` is not an error yet.
fn copy_static(from: &Path, to: &Path) -> Result<()> {
    if !from.is_dir() {
        ui::info(&format!("web: no {} to copy", from.display()));
        return Ok(());
    }
    copy_tree(from, to)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (source, destination) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_tree(&source, &destination)?;
        } else {
            fs::copy(&source, &destination).with_context(|| {
                format!("copying {} to {}", source.display(), destination.display())
            })?;
        }
    }
    Ok(())
}
