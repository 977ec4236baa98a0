//! What xtask prints: plain text under CI or when piped, colours on a terminal.
use std::{io::IsTerminal, sync::OnceLock, time::Duration};

fn colours_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let ci = std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false");
        let no_color = std::env::var_os("NO_COLOR").is_some();
        !ci && !no_color && std::io::stdout().is_terminal()
    })
}

/// True under CI: nothing may wait for a human.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false")
}

fn paint(code: &str, text: &str) -> String {
    if colours_enabled() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// A step's header, e.g. `==> [3/9] cargo clippy …`.
pub fn header(text: &str) {
    println!("\n{}", paint("1;36", &format!("==> {text}")));
}

/// What xtask is doing or found, e.g. `setup: wasm-pack 0.15.1 present`.
pub fn info(text: &str) {
    println!("{} {text}", paint("1", "xtask:"));
}

pub fn success(text: &str) {
    println!("{}", paint("32", text));
}

pub fn error(text: &str) {
    eprintln!("{} {text}", paint("1;31", "xtask: error:"));
}

/// `12.3s` or `2m05s`.
pub fn duration(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        format!("{}m{:02}s", elapsed.as_secs() / 60, elapsed.as_secs() % 60)
    }
}
