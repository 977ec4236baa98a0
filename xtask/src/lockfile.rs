//! Reads package versions from `Cargo.lock`, so tools are installed at
//! exactly the version the crates were resolved to.
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The version `Cargo.lock` holds for `package`; an error when it holds none
/// or several (a pinned tool must match one version).
pub fn locked_version(root: &Path, package: &str) -> Result<String> {
    let path = root.join("Cargo.lock");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let versions = versions_of(&text, package);
    match versions.as_slice() {
        [version] => Ok(version.clone()),
        [] => bail!("Cargo.lock has no package `{package}`"),
        several => bail!("Cargo.lock has several versions of `{package}`: {several:?}"),
    }
}

/// Every version of `package` in a lockfile's text.
fn versions_of(lockfile: &str, package: &str) -> Vec<String> {
    let wanted_name = format!("name = \"{package}\"");
    let mut versions = Vec::new();
    let mut in_wanted_package = false;
    for line in lockfile.lines().map(str::trim) {
        if line == "[[package]]" {
            in_wanted_package = false;
        } else if line.starts_with("name = ") {
            in_wanted_package = line == wanted_name;
        } else if in_wanted_package {
            if let Some(version) = line
                .strip_prefix("version = \"")
                .and_then(|rest| rest.strip_suffix('"'))
            {
                versions.push(version.to_owned());
                in_wanted_package = false;
            }
        }
    }
    versions
}

#[cfg(test)]
mod tests {
    use super::versions_of;

    const LOCK: &str = r#"
[[package]]
name = "wasm-bindgen-shared"
version = "0.2.130"

[[package]]
name = "wasm-bindgen"
version = "0.2.130"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = [
 "wasm-bindgen-shared",
]
"#;

    #[test]
    fn finds_the_exact_package_only() {
        assert_eq!(versions_of(LOCK, "wasm-bindgen"), ["0.2.130"]);
        assert_eq!(versions_of(LOCK, "wasm-bindgen-shared"), ["0.2.130"]);
        assert!(versions_of(LOCK, "wasm").is_empty());
    }
}
