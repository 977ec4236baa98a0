//! Running tools: echo the command, inherit stdio, fail on a non-zero exit.
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::ui;

/// `cargo` as the one running us (rustup's proxy sets `CARGO`).
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Where `cargo install` puts binaries.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// Makes tools that `setup` installs with `cargo install` findable even when
/// `~/.cargo/bin` is not on the caller's PATH.
pub fn put_cargo_bin_on_path() {
    let Some(bin) = cargo_bin_dir() else { return };
    let current = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&current).any(|dir| dir == bin) {
        return;
    }
    let paths = std::iter::once(bin).chain(env::split_paths(&current));
    if let Ok(joined) = env::join_paths(paths) {
        // Single-threaded at this point: nothing else reads the environment.
        env::set_var("PATH", joined);
    }
}

/// The full path of `program` on PATH, if any.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path: OsString = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The command as a shell line, program by its file name only.
pub fn describe(command: &Command) -> String {
    let program = command.get_program().to_string_lossy().into_owned();
    let program = Path::new(&program)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or(program);
    std::iter::once(program)
        .chain(
            command
                .get_args()
                .map(|arg| arg.to_string_lossy().into_owned()),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command` with inherited stdio; an error unless it exits 0.
pub fn run(command: &mut Command) -> Result<()> {
    let description = describe(command);
    ui::info(&format!("$ {description}"));
    let status = command
        .status()
        .with_context(|| format!("could not start `{description}`"))?;
    if !status.success() {
        bail!("`{description}` failed ({status})");
    }
    Ok(())
}

/// Runs `command` quietly and returns its stdout, or `None` when it cannot
/// run or fails (used to probe what is installed).
pub fn probe(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}
