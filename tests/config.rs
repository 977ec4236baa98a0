//! Settings from `TALLY_*` variables and `--config` files, checked through
//! the real binary's `--print-config`.
//!
//! Every run starts from an empty environment (plus `PATH`), so variables
//! of the machine running the tests change nothing.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `tally args` with only `env` (and `PATH`) in its environment.
fn tally(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(TALLY);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run tally");
    Run {
        ok: status.success(),
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `tally args --print-config`, which must succeed; its output.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut args = args.to_vec();
    args.push("--print-config");
    let run = tally(&args, env);
    assert!(run.ok, "tally {args:?}: {}", run.stderr);
    // It is TOML, whatever else it says.
    run.stdout
        .parse::<toml::Table>()
        .unwrap_or_else(|error| panic!("not TOML: {error}\n{}", run.stdout));
    run.stdout
}

/// The line of `text` setting `key`.
fn line<'a>(text: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key} = ");
    text.lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {key} in\n{text}"))
}

fn config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tally.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn defaults_are_shown_sorted_with_their_source() {
    let text = print_config(&["node"], &[]);
    assert_eq!(line(&text, "fanout"), "fanout = 3  # default");
    assert_eq!(
        line(&text, "gossip-addr"),
        "gossip-addr = \"127.0.0.1:9000\"  # default"
    );
    assert_eq!(line(&text, "insecure"), "insecure = false  # default");
    assert_eq!(line(&text, "seed"), "seed = []  # default");
    assert_eq!(line(&text, "log"), "log = \"info\"  # default");
    assert!(text.contains("# id = (not set)"), "{text}");
    assert!(text.contains("# cluster-key = (not set)"), "{text}");
    assert!(!text.contains("print-config"), "{text}");
    let keys: Vec<&str> = text
        .lines()
        .map(|line| line.trim_start_matches("# "))
        .filter_map(|line| line.split_once(" = ").map(|(key, _)| key))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

#[test]
fn every_command_prints_its_config() {
    let gateway = print_config(&["gateway"], &[]);
    assert!(gateway.starts_with("# tally gateway"), "{gateway}");
    assert!(line(&gateway, "max-browsers-per-ip").contains("8"));
    let discovery = print_config(&["discovery"], &[]);
    assert!(line(&discovery, "ttl").contains("\"5s\""), "{discovery}");
    // `--target` is required to run a bench, not to show its settings.
    let bench = print_config(&["bench"], &[]);
    assert!(bench.contains("# target = (not set)") || bench.contains("target = []"));
    let dev = print_config(&["dev"], &[]);
    assert_eq!(line(&dev, "nodes"), "nodes = 3  # default");
    let bare = print_config(&[], &[]);
    assert_eq!(line(&bare, "log"), "log = \"info\"  # default");
}

#[test]
fn a_variable_sets_a_flag() {
    let text = print_config(
        &["node"],
        &[
            ("TALLY_FANOUT", "5"),
            ("TALLY_SEED", "a:9000,b:9000"),
            ("TALLY_INSECURE", "1"),
            ("TALLY_GOSSIP_INTERVAL", "50ms"),
        ],
    );
    assert_eq!(line(&text, "fanout"), "fanout = 5  # env TALLY_FANOUT");
    assert_eq!(
        line(&text, "seed"),
        "seed = [\"a:9000\", \"b:9000\"]  # env TALLY_SEED"
    );
    assert_eq!(
        line(&text, "insecure"),
        "insecure = true  # env TALLY_INSECURE"
    );
    assert!(line(&text, "gossip-interval").contains("\"50ms\""));

    // A false flag is no conflict with a secret.
    let text = print_config(
        &["node"],
        &[
            ("TALLY_INSECURE", "false"),
            ("TALLY_CLUSTER_KEY", "a-long-enough-secret"),
        ],
    );
    assert_eq!(
        line(&text, "insecure"),
        "insecure = false  # env TALLY_INSECURE"
    );

    // A bad value is refused like on the command line.
    let run = tally(&["node", "--print-config"], &[("TALLY_FANOUT", "0")]);
    assert!(!run.ok);
    assert!(run.stderr.contains("fanout"), "{}", run.stderr);
}

#[test]
fn a_comma_on_the_command_line_stays_part_of_the_value() {
    let text = print_config(
        &[
            "node",
            "--discovery",
            "http://a/x,y",
            "--discovery",
            "http://c",
        ],
        &[("TALLY_DISCOVERY", "http://env1,http://env2")],
    );
    assert_eq!(
        line(&text, "discovery"),
        "discovery = [\"http://a/x,y\", \"http://c\"]  # command line"
    );
    let text = print_config(&["node"], &[("TALLY_DISCOVERY", "http://env1,http://env2")]);
    assert_eq!(
        line(&text, "discovery"),
        "discovery = [\"http://env1\", \"http://env2\"]  # env TALLY_DISCOVERY"
    );
}

#[test]
fn a_config_file_sets_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        dir.path(),
        r#"
        gossip-addr = "0.0.0.0:9000"
        seed = ["tally-0.tally:9000", "tally-1.tally:9000"]
        fanout = 4
        insecure = false
        full_sync_every = 20
        log = "debug"
        "#,
    );
    let path = path.to_str().unwrap();
    let text = print_config(&["node", "--config", path], &[]);
    assert!(text.contains(&format!("# config file: {path}")), "{text}");
    assert_eq!(line(&text, "fanout"), "fanout = 4  # config");
    assert_eq!(
        line(&text, "gossip-addr"),
        "gossip-addr = \"0.0.0.0:9000\"  # config"
    );
    assert_eq!(
        line(&text, "seed"),
        "seed = [\"tally-0.tally:9000\", \"tally-1.tally:9000\"]  # config"
    );
    assert_eq!(
        line(&text, "full-sync-every"),
        "full-sync-every = 20  # config"
    );
    assert_eq!(line(&text, "insecure"), "insecure = false  # config");
    assert_eq!(line(&text, "log"), "log = \"debug\"  # config");
    // `TALLY_CONFIG` names the file too, and `--config` may come first.
    let by_env = print_config(&["node"], &[("TALLY_CONFIG", path)]);
    assert_eq!(line(&by_env, "fanout"), "fanout = 4  # config");
    let first = print_config(&["--config", path, "node"], &[]);
    assert_eq!(line(&first, "fanout"), "fanout = 4  # config");
}

#[test]
fn the_command_line_beats_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), "fanout = 4\nseed = [\"file:1\"]\n");
    let path = path.to_str().unwrap();
    let env = [("TALLY_FANOUT", "5"), ("TALLY_SEED", "env:1")];
    let all = print_config(
        &[
            "node", "--config", path, "--fanout", "6", "--seed", "line:1",
        ],
        &env,
    );
    assert_eq!(line(&all, "fanout"), "fanout = 6  # command line");
    assert_eq!(line(&all, "seed"), "seed = [\"line:1\"]  # command line");
    let no_flags = print_config(&["node", "--config", path], &env);
    assert_eq!(line(&no_flags, "fanout"), "fanout = 5  # env TALLY_FANOUT");
    assert_eq!(
        line(&no_flags, "seed"),
        "seed = [\"env:1\"]  # env TALLY_SEED"
    );
    let file_only = print_config(&["node", "--config", path], &[]);
    assert_eq!(line(&file_only, "fanout"), "fanout = 4  # config");
}

#[test]
fn secrets_are_redacted_but_key_files_are_shown() {
    const SECRET: &str = "a-long-enough-secret-0123456789";
    let on_line = print_config(&["node", "--cluster-key", SECRET], &[]);
    assert!(!on_line.contains(SECRET), "{on_line}");
    assert_eq!(
        line(&on_line, "cluster-key"),
        "cluster-key = \"<redacted>\"  # command line"
    );
    let by_env = print_config(&["gateway"], &[("TALLY_CLUSTER_KEY", SECRET)]);
    assert!(!by_env.contains(SECRET), "{by_env}");
    assert_eq!(
        line(&by_env, "cluster-key"),
        "cluster-key = \"<redacted>\"  # env TALLY_CLUSTER_KEY"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), &format!("cluster_key = \"{SECRET}\"\n"));
    let by_file = print_config(&["discovery", "--config", path.to_str().unwrap()], &[]);
    assert!(!by_file.contains(SECRET), "{by_file}");
    assert_eq!(
        line(&by_file, "cluster-key"),
        "cluster-key = \"<redacted>\"  # config"
    );
    let file = print_config(
        &[
            "node",
            "--cluster-key-file",
            "/etc/tally/key",
            "--api-tokens-file",
            "/etc/tally/tokens",
        ],
        &[],
    );
    assert_eq!(
        line(&file, "cluster-key-file"),
        "cluster-key-file = \"/etc/tally/key\"  # command line"
    );
    assert_eq!(
        line(&file, "api-tokens-file"),
        "api-tokens-file = \"/etc/tally/tokens\"  # command line"
    );
    // Nor does `--help` show a secret's value.
    let help = tally(&["node", "--help"], &[("TALLY_CLUSTER_KEY", SECRET)]);
    assert!(help.ok, "{}", help.stderr);
    assert!(help.stdout.contains("TALLY_CLUSTER_KEY"), "{}", help.stdout);
    assert!(!help.stdout.contains(SECRET), "{}", help.stdout);
}

#[test]
fn a_bad_config_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), "fanout = 3\ngosip-addr = \"0.0.0.0:9000\"\n");
    let path = path.to_str().unwrap();
    let run = tally(&["node", "--config", path, "--print-config"], &[]);
    assert!(!run.ok);
    assert_ne!(run.code, Some(0));
    assert_eq!(
        run.stderr,
        format!("error: config {path}: unknown setting \"gosip-addr\" for tally node\n")
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    // Not only with --print-config.
    let run = tally(&["node", "--config", path], &[]);
    assert!(!run.ok);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);

    for (text, want) in [
        ("fanout = 3\nseed = [\n", "invalid TOML at line 2"),
        ("[seed]\nx = 1\n", "found a table"),
    ] {
        let path = config_file(dir.path(), text);
        let run = tally(&["node", "--config", path.to_str().unwrap()], &[]);
        assert!(!run.ok);
        assert!(run.stderr.starts_with("error: config "), "{}", run.stderr);
        assert!(run.stderr.contains(want), "{}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }

    let missing = dir.path().join("missing.toml");
    let run = tally(&["node", "--config", missing.to_str().unwrap()], &[]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains(missing.to_str().unwrap()),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn a_config_file_reaches_the_process_it_configures() {
    let dir = tempfile::tempdir().unwrap();
    // A secret too short: the process must read it from the file to refuse it.
    let path = config_file(
        dir.path(),
        "cluster-key = \"short\"\naddr = \"127.0.0.1:0\"\n",
    );
    let run = tally(&["discovery", "--config", path.to_str().unwrap()], &[]);
    assert!(!run.ok);
    assert!(run.stderr.contains("at least 16"), "{}", run.stderr);
}

#[test]
fn help_tells_about_variables_and_the_config_file() {
    let help = tally(&["--help"], &[]);
    assert!(help.ok, "{}", help.stderr);
    assert!(help.stdout.contains("TALLY_<FLAG>"), "{}", help.stdout);
    assert!(help.stdout.contains("--config"), "{}", help.stdout);
    let node = tally(&["node", "--help"], &[]);
    assert!(node.stdout.contains("TALLY_GOSSIP_ADDR"), "{}", node.stdout);
}
