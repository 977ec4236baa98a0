//! Embeds the web bundle in the gateway, so one copied binary serves the page.
//!
//! Reads `../web/dist` (what `cargo xtask web` writes) or the directory in
//! `TALLY_WEB_DIST` (a relative path is taken from this crate's directory),
//! and writes into `OUT_DIR`:
//!
//! * every file's bytes, and its gzip and brotli variants when they are
//!   smaller, as files for `include_bytes!`;
//! * `embedded_page.rs`: the table `src/page.rs` includes — path, content
//!   type, a hash of the bytes (the ETag) and the variants.
//!
//! Without the directory the build still succeeds with an empty table: the
//! gateway then answers `/` with a page saying how to build the bundle.
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

#[path = "src/page/content_type.rs"]
mod content_type;

/// The generated table, relative to `OUT_DIR`.
const TABLE: &str = "embedded_page.rs";
/// Where the files for `include_bytes!` go, relative to `OUT_DIR`.
const FILES: &str = "embedded_page";

fn main() {
    println!("cargo:rerun-if-env-changed=TALLY_WEB_DIST");
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dist = match env::var_os("TALLY_WEB_DIST") {
        Some(dir) if !dir.is_empty() => manifest_dir.join(dir),
        _ => manifest_dir.join("..").join("web").join("dist"),
    };
    watch(&dist);

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let files_dir = out_dir.join(FILES);
    if files_dir.exists() {
        fs::remove_dir_all(&files_dir).expect("clearing the embedded page files");
    }
    fs::create_dir_all(&files_dir).expect("creating the embedded page files directory");

    let mut sources = Vec::new();
    if dist.is_dir() {
        collect(&dist, "", &mut sources);
    }
    sources.sort();

    let mut table = String::from("&[\n");
    for (index, (path, source)) in sources.iter().enumerate() {
        let bytes =
            fs::read(source).unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
        let identity = write_file(&files_dir, &format!("{index}"), &bytes);
        let gzip = smaller(&bytes, gzip(&bytes))
            .map(|b| write_file(&files_dir, &format!("{index}.gz"), &b));
        let br = smaller(&bytes, brotli(&bytes))
            .map(|b| write_file(&files_dir, &format!("{index}.br"), &b));
        let variant = |file: Option<String>| match file {
            Some(file) => format!("Some(include_bytes!({file:?}) as &[u8])"),
            None => "None".to_owned(),
        };
        writeln!(
            table,
            "    EmbeddedFile {{\n        path: {path:?},\n        content_type: {:?},\n        hash: {:?},\n        identity: include_bytes!({identity:?}),\n        gzip: {},\n        br: {},\n    }},",
            content_type::content_type(path),
            format!("{:016x}", fnv1a64(&bytes)),
            variant(gzip),
            variant(br),
        )
        .expect("formatting the table");
    }
    table.push_str("]\n");
    fs::write(out_dir.join(TABLE), table).expect("writing the embedded page table");
}

/// Tells cargo when to run this script again. A path that does not exist
/// would make cargo run it on every build, so without the bundle the
/// directory that will hold it is watched instead (`web/`, where
/// `cargo xtask web` creates `dist`).
fn watch(dist: &Path) {
    let watched = if dist.is_dir() {
        Some(dist)
    } else {
        dist.parent().filter(|parent| parent.is_dir())
    };
    if let Some(dir) = watched {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
}

/// Every file under `dir` as (path relative to the bundle with `/`, source),
/// skipping hidden ones (`.gitignore` and the like) and names that are not UTF-8.
fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        let source = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            println!(
                "cargo:warning=web bundle: skipping {} (name not UTF-8)",
                source.display()
            );
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = format!("{prefix}{name}");
        // `metadata` follows symbolic links.
        let metadata =
            fs::metadata(&source).unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
        if metadata.is_dir() {
            collect(&source, &format!("{path}/"), out);
        } else if metadata.is_file() {
            out.push((path, source));
        }
    }
}

/// Writes `bytes` to `dir/name` and returns its path for `include_bytes!`.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path.to_str()
        .unwrap_or_else(|| panic!("OUT_DIR is not UTF-8: {}", path.display()))
        .to_owned()
}

/// A compressed variant is only worth keeping when it is smaller.
fn smaller(original: &[u8], compressed: Vec<u8>) -> Option<Vec<u8>> {
    (compressed.len() < original.len()).then_some(compressed)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    // No name and mtime 0 in the header: the same input gives the same bytes.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn brotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &bytes[..], &mut out, &params).expect("brotli");
    out
}

/// FNV-1a, 64 bits: a stable fingerprint of the bytes for the ETag (not a
/// security claim; it only has to change when the file does).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
