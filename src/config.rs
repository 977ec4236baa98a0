//! Settings from the environment and from a TOML file, kept in one place
//! with the flags.
//!
//! Every long flag of every command can also be given as `TALLY_<FLAG>`
//! (`--gossip-addr` → `TALLY_GOSSIP_ADDR`; lists comma-separated; flags as
//! `true`/`false`/`1`/`0`) or in the file named by `--config` /
//! `TALLY_CONFIG`, by flag name (`gossip-addr = "0.0.0.0:9000"`,
//! `seed = ["a:9000", "b:9000"]`). Precedence: command line > environment >
//! config file > default.
//!
//! How: [`command`] takes the command derived from [`Cli`] and gives every
//! long flag that has no variable yet its `TALLY_<FLAG>` one, so clap does
//! all the parsing, validation, `--help` and precedence. The config file is
//! turned into those same variables (only the ones not already set, so the
//! environment beats the file) just before the real parse, and they are
//! removed again right after it. `--print-config` then reads the parsed
//! matches back: each value with where it came from.
use std::any::TypeId;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// Every flag's variable is this followed by its long name in upper case.
pub const ENV_PREFIX: &str = "TALLY_";
/// What `--print-config` shows instead of a secret.
pub const REDACTED: &str = "<redacted>";
/// The ids of the two global arguments about configuration itself: neither
/// belongs in a config file nor in `--print-config`'s output.
const CONFIG_ID: &str = "config";
const PRINT_CONFIG_ID: &str = "print_config";
/// The values clap's [`BoolishValueParser`] takes as false.
const FALSE_LITERALS: [&str; 6] = ["n", "no", "f", "false", "off", "0"];

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Run this.
    Run(Box<Cli>),
    /// `--print-config`: print this (TOML) and exit.
    Print(String),
}

/// Why the command line cannot be used.
#[derive(Debug)]
pub enum Error {
    /// Clap's own error (or `--help`/`--version`): `exit()` prints it.
    Clap(clap::Error),
    /// The config file: one line, without the leading `error: `.
    Config(String),
}

/// A flag's environment variable: `gossip-addr` → `TALLY_GOSSIP_ADDR`.
pub fn env_name(long: &str) -> String {
    format!("{ENV_PREFIX}{}", long.to_uppercase().replace('-', "_"))
}

/// Whether an argument's value must not be shown by `--help` (its env value).
fn is_secret_name(id: &str) -> bool {
    id.contains("key") || id.contains("token")
}

/// Whether `--print-config` shows `<redacted>` for an argument: a secret
/// given as such, not a file that holds secrets (a path is no secret).
pub fn is_redacted(id: &str) -> bool {
    is_secret_name(id) && !id.ends_with("_file") && !id.ends_with("-file")
}

fn is_falsey(value: &str) -> bool {
    FALSE_LITERALS.contains(&value.to_lowercase().as_str()) || value.is_empty()
}

/// An argument a user sets (not `--help` or `--version`).
fn is_setting(arg: &Arg) -> bool {
    arg.get_long().is_some()
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// `--config` and `--print-config` themselves.
fn is_about_config(arg: &Arg) -> bool {
    matches!(arg.get_id().as_str(), CONFIG_ID | PRINT_CONFIG_ID)
}

fn is_flag(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// The variable clap reads for `arg` (its explicit one, or `TALLY_<FLAG>`).
fn variable(arg: &Arg) -> Option<String> {
    match arg.get_env() {
        Some(name) => Some(name.to_string_lossy().into_owned()),
        None => arg.get_long().map(env_name),
    }
}

/// The `tally` command with a `TALLY_<FLAG>` variable on every long flag.
///
/// `on_command_line` holds the ids the command line itself gives (`None`:
/// not known, as in the first look at the command line). A list flag reads
/// its variable split at commas, but a comma on the command line must stay
/// part of the value as it always was: since clap's delimiter applies to
/// both, it is set only on list flags the command line does not give, whose
/// value can then only come from the environment.
pub fn command(on_command_line: Option<&HashSet<String>>) -> Command {
    let delimit = |id: &str| on_command_line.is_some_and(|given| !given.contains(id));
    with_env(Cli::command(), &delimit)
}

fn with_env(command: Command, delimit: &dyn Fn(&str) -> bool) -> Command {
    command
        .mut_args(|arg| arg_with_env(arg, delimit))
        .mut_subcommands(|sub| with_env(sub, delimit))
}

fn arg_with_env(arg: Arg, delimit: &dyn Fn(&str) -> bool) -> Arg {
    if !is_setting(&arg) {
        return arg;
    }
    let id = arg.get_id().as_str().to_owned();
    let mut arg = if is_secret_name(&id) {
        arg.hide_env_values(true)
    } else {
        arg
    };
    if arg.get_env().is_some() {
        return arg;
    }
    let Some(name) = arg.get_long().map(env_name) else {
        return arg;
    };
    if is_flag(&arg) {
        // `true|false|1|0|yes|no|on|off`; on the command line a flag still
        // sets `true`, which this parser reads the same.
        arg = arg.value_parser(BoolishValueParser::new());
        // Clap counts a flag read from its variable as given, even when the
        // value is false, so `TALLY_INSECURE=false` would conflict with
        // `--cluster-key`. False is the default: then leave the variable out.
        let value = std::env::var_os(&name);
        if value
            .as_deref()
            .and_then(OsStr::to_str)
            .is_some_and(is_falsey)
        {
            return arg;
        }
    } else if is_list(&arg) && delimit(&id) {
        arg = arg.value_delimiter(',');
    }
    arg.env(name)
}

/// Parses the command line (`argv` with the program name first), with the
/// environment and the config file; `--print-config` is answered here.
///
/// Must run before any other thread exists: it sets (and then removes)
/// environment variables, see [`apply`].
pub fn parse(argv: Vec<OsString>) -> Result<Parsed, Error> {
    let first = first_look(&argv);
    let mut from_config = Vec::new();
    if let Some(FirstLook {
        config: Some(path),
        subcommand,
        ..
    }) = &first
    {
        from_config = apply(load(path, subcommand.as_deref())?);
    }
    let result = parse_with(&argv, first.as_ref(), &from_config);
    unapply(&from_config);
    result
}

fn parse_with(
    argv: &[OsString],
    first: Option<&FirstLook>,
    from_config: &[Setting],
) -> Result<Parsed, Error> {
    let no_ids = HashSet::new();
    let on_command_line = first.map_or(&no_ids, |first| &first.on_command_line);
    let print = first.is_some_and(|first| first.print);
    let mut command = command(Some(on_command_line));
    if print {
        // Show what is missing rather than refuse to show anything.
        command = all_optional(command);
    }
    let matches = command
        .try_get_matches_from_mut(argv)
        .map_err(Error::Clap)?;
    let print = matches
        .try_get_one::<bool>(PRINT_CONFIG_ID)
        .ok()
        .flatten()
        .copied()
        .unwrap_or(false);
    if print {
        let config = matches
            .try_get_one::<PathBuf>(CONFIG_ID)
            .ok()
            .flatten()
            .cloned();
        let (name, sub_command, sub_matches) = match matches.subcommand() {
            Some((name, sub_matches)) => match command.find_subcommand(name) {
                Some(sub_command) => (format!("tally {name}"), sub_command, sub_matches),
                None => ("tally".to_owned(), &command, &matches),
            },
            None => ("tally".to_owned(), &command, &matches),
        };
        let from_config: HashSet<String> = from_config.iter().map(|s| s.id.clone()).collect();
        return Ok(Parsed::Print(render(
            sub_command,
            sub_matches,
            &name,
            config.as_deref(),
            &from_config,
        )));
    }
    let cli =
        Cli::from_arg_matches(&matches).map_err(|error| Error::Clap(error.format(&mut command)))?;
    Ok(Parsed::Run(Box::new(cli)))
}

fn all_optional(command: Command) -> Command {
    command
        .mut_args(|arg| arg.required(false))
        .mut_subcommands(all_optional)
}

/// What a first, forgiving parse of the command line tells.
#[derive(Debug)]
struct FirstLook {
    subcommand: Option<String>,
    config: Option<PathBuf>,
    print: bool,
    on_command_line: HashSet<String>,
}

/// The chosen subcommand, `--config`, `--print-config` and the ids given on
/// the command line, from a parse that ignores errors (a required flag may
/// still come from the config file); `None` for `--help` and `--version`.
fn first_look(argv: &[OsString]) -> Option<FirstLook> {
    let matches = command(None)
        .ignore_errors(true)
        .try_get_matches_from(argv)
        .ok()?;
    let chosen = matches
        .subcommand()
        .map(|(name, sub)| (name.to_owned(), sub.clone()));
    let (subcommand, matches) = match chosen {
        Some((name, sub)) => (Some(name), sub),
        None => (None, matches),
    };
    let on_command_line = matches
        .ids()
        .map(|id| id.as_str())
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        .map(str::to_owned)
        .collect();
    Some(FirstLook {
        subcommand,
        config: matches
            .try_get_one::<PathBuf>(CONFIG_ID)
            .ok()
            .flatten()
            .cloned(),
        print: matches
            .try_get_one::<bool>(PRINT_CONFIG_ID)
            .ok()
            .flatten()
            .copied()
            .unwrap_or(false),
        on_command_line,
    })
}

/// One setting of a config file, as the variable clap will read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The argument's id (`gossip_addr`).
    pub id: String,
    /// The variable (`TALLY_GOSSIP_ADDR`).
    pub env: String,
    /// The value as the variable holds it (lists joined with commas).
    pub value: String,
}

/// Reads the config file for `tally <subcommand>` (`None`: bare `tally`).
fn load(path: &Path, subcommand: Option<&str>) -> Result<Vec<Setting>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| Error::Config(format!("config {}: {error}", path.display())))?;
    let mut command = command(None);
    command.build();
    let (name, target) = match subcommand.and_then(|name| command.find_subcommand(name)) {
        Some(sub) => (format!("tally {}", sub.get_name()), sub),
        None => ("tally".to_owned(), &command),
    };
    settings_from_toml(&text, path, target, &name).map_err(Error::Config)
}

/// The settings of a config file's `text` for `command` (built, so that it
/// holds the global arguments too), named `name` in errors.
pub fn settings_from_toml(
    text: &str,
    file: &Path,
    command: &Command,
    name: &str,
) -> Result<Vec<Setting>, String> {
    let file = file.display();
    let table: toml::Table = text
        .parse()
        .map_err(|error| format!("config {file}: {}", toml_error(text, &error)))?;
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut settings = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|arg| is_setting(arg) && arg.get_long() == Some(long.as_str()));
        let arg = match arg {
            Some(arg) if is_about_config(arg) => {
                return Err(format!(
                    "config {file}: {key:?} cannot be set in a config file"
                ))
            }
            Some(arg) => arg,
            None => return Err(format!("config {file}: unknown setting {key:?} for {name}")),
        };
        if let Some(first) = seen.insert(long.clone(), key) {
            return Err(format!(
                "config {file}: {first:?} and {key:?} are the same setting"
            ));
        }
        if matches!(value, toml::Value::Array(items) if items.is_empty()) {
            // An empty list is what an unset list flag is.
            continue;
        }
        let value = value_text(value).map_err(|why| format!("config {file}: {key:?}: {why}"))?;
        if value.contains('\0') {
            // No variable can hold it (and `set_var` would panic).
            return Err(format!(
                "config {file}: {key:?}: a value cannot hold a NUL character"
            ));
        }
        let Some(env) = variable(arg) else { continue };
        settings.push(Setting {
            id: arg.get_id().as_str().to_owned(),
            env,
            value,
        });
    }
    Ok(settings)
}

/// A TOML value as the text a variable holds: lists joined with commas.
fn value_text(value: &toml::Value) -> Result<String, String> {
    use toml::Value;
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Integer(number) => Ok(number.to_string()),
        Value::Float(number) => Ok(number.to_string()),
        Value::Boolean(flag) => Ok(flag.to_string()),
        Value::Datetime(time) => Ok(time.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Array(_) | Value::Table(_) => {
                    Err("a list may hold only plain values".to_owned())
                }
                item => value_text(item),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        Value::Table(_) => Err("expected a value, found a table".to_owned()),
    }
}

/// A TOML parse error on one line, with where it is.
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match error.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&byte| byte == b'\n').count() + 1;
            let column = before.len()
                - before
                    .iter()
                    .rposition(|&byte| byte == b'\n')
                    .map_or(0, |at| at + 1)
                + 1;
            format!("invalid TOML at line {line}, column {column}: {message}")
        }
        None => format!("invalid TOML: {message}"),
    }
}

/// Sets each setting's variable unless the environment already has it (the
/// environment beats the file); returns the ones it set.
///
/// Sound: `set_var` is only unsound when another thread reads or writes the
/// environment at the same time. [`parse`] runs first thing in `main`,
/// before the async runtime, logging or anything else starts a thread, so
/// this process has one thread here.
fn apply(settings: Vec<Setting>) -> Vec<Setting> {
    settings
        .into_iter()
        .filter(|setting| std::env::var_os(&setting.env).is_none())
        .inspect(|setting| std::env::set_var(&setting.env, &setting.value))
        .collect()
}

/// Removes what [`apply`] set, so that processes this one starts (the demo's
/// nodes) do not inherit the file's settings. Sound for the same reason.
fn unapply(settings: &[Setting]) {
    for setting in settings {
        std::env::remove_var(&setting.env);
    }
}

/// `--print-config`: every setting of `command` (sorted, defaults included)
/// as TOML, with where each value comes from; secrets as `<redacted>`.
pub fn render(
    command: &Command,
    matches: &ArgMatches,
    name: &str,
    config: Option<&Path>,
    from_config: &HashSet<String>,
) -> String {
    let mut lines = BTreeMap::new();
    for arg in command.get_arguments() {
        if !is_setting(arg) || is_about_config(arg) {
            continue;
        }
        let (Some(long), Some(env)) = (arg.get_long(), variable(arg)) else {
            continue;
        };
        let id = arg.get_id().as_str();
        let mut source = matches.value_source(id);
        if is_flag(arg)
            && source == Some(ValueSource::DefaultValue)
            && std::env::var(&env).is_ok_and(|value| is_falsey(&value))
        {
            // A false flag's variable is left out of the parse (see `arg_with_env`).
            source = Some(ValueSource::EnvVariable);
        }
        let origin = match source {
            Some(ValueSource::CommandLine) => "command line".to_owned(),
            Some(ValueSource::EnvVariable) if from_config.contains(id) => "config".to_owned(),
            Some(ValueSource::EnvVariable) => format!("env {env}"),
            // An empty list is the default, without a default value.
            _ => "default".to_owned(),
        };
        let raw: Vec<String> = matches
            .try_get_raw(id)
            .ok()
            .flatten()
            .map(|values| {
                values
                    .map(|value| value.to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let value = if is_redacted(id) && !raw.is_empty() {
            toml_string(REDACTED)
        } else if is_flag(arg) {
            let set = matches.try_get_one::<bool>(id).ok().flatten();
            set.copied().unwrap_or(false).to_string()
        } else if is_list(arg) {
            let items: Vec<String> = raw.iter().map(|value| scalar(arg, value)).collect();
            format!("[{}]", items.join(", "))
        } else if let Some(value) = raw.first() {
            scalar(arg, value)
        } else {
            lines.insert(long.to_owned(), format!("# {long} = (not set)"));
            continue;
        };
        lines.insert(long.to_owned(), format!("{long} = {value}  # {origin}"));
    }
    let mut text = format!(
        "# {name}: effective settings (command line > TALLY_* environment > config file > default)\n"
    );
    if let Some(config) = config {
        text.push_str(&format!("# config file: {}\n", config.display()));
    }
    for line in lines.values() {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// One value: a bare number for an integer flag, else a TOML string.
fn scalar(arg: &Arg, value: &str) -> String {
    let parsed = arg.get_value_parser().type_id();
    let integers = [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<isize>(),
    ];
    if integers.iter().any(|integer| parsed == *integer) && value.parse::<i64>().is_ok() {
        value.to_owned()
    } else {
        toml_string(value)
    }
}

fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_command() -> Command {
        let mut command = command(None);
        command.build();
        command.find_subcommand("node").unwrap().clone()
    }

    fn settings(text: &str) -> Result<Vec<(String, String)>, String> {
        let node = node_command();
        let settings = settings_from_toml(text, Path::new("/etc/tally.toml"), &node, "tally node")?;
        Ok(settings.into_iter().map(|s| (s.env, s.value)).collect())
    }

    #[test]
    fn variables_are_named_after_the_long_flag() {
        assert_eq!(env_name("gossip-addr"), "TALLY_GOSSIP_ADDR");
        assert_eq!(env_name("fanout"), "TALLY_FANOUT");
        assert_eq!(
            env_name("allow-fault-injection"),
            "TALLY_ALLOW_FAULT_INJECTION"
        );
    }

    #[test]
    fn a_config_file_becomes_the_flags_variables() {
        let got = settings(
            r#"
            gossip-addr = "0.0.0.0:9000"
            seed = ["tally-0.tally:9000", "tally-1.tally:9000"]
            fanout = 3
            insecure = false
            full_sync_every = 20
            log = "debug"
            cluster-key = "a-long-enough-secret"
            api-tokens-file = "/etc/tally/tokens"
            discovery = []
            "#,
        )
        .unwrap();
        let expected = [
            ("TALLY_API_TOKENS_FILE", "/etc/tally/tokens"),
            ("TALLY_CLUSTER_KEY", "a-long-enough-secret"),
            ("TALLY_FANOUT", "3"),
            ("TALLY_FULL_SYNC_EVERY", "20"),
            ("TALLY_GOSSIP_ADDR", "0.0.0.0:9000"),
            ("TALLY_INSECURE", "false"),
            ("TALLY_LOG", "debug"),
            ("TALLY_SEED", "tally-0.tally:9000,tally-1.tally:9000"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(env, value)| (env.to_string(), value.to_string()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn an_unknown_setting_is_one_line_naming_the_key_and_the_file() {
        let error = settings("gosip-addr = \"0.0.0.0:9000\"\n").unwrap_err();
        assert_eq!(
            error,
            "config /etc/tally.toml: unknown setting \"gosip-addr\" for tally node"
        );
        // A flag of another command is unknown here too.
        let error = settings("ttl = \"5s\"").unwrap_err();
        assert!(error.contains("\"ttl\""), "{error}");
        let error = settings("help = true").unwrap_err();
        assert!(error.contains("unknown setting \"help\""), "{error}");
    }

    #[test]
    fn bad_files_are_one_line_errors() {
        for (text, want) in [
            ("fanout = 3\nseed = [", "line 2"),
            ("fanout = = 3", "line 1"),
            ("[fanout]\nx = 3", "found a table"),
            ("seed = [[\"a\"]]", "plain values"),
            ("fanout = 3\nfanout = 4", "line 2"),
            ("fanout = 3\nFANOUT = 4", "unknown setting \"FANOUT\""),
            (
                "full-sync-every = 3\nfull_sync_every = 4",
                "the same setting",
            ),
            ("config = \"/etc/other.toml\"", "cannot be set"),
            ("print-config = true", "cannot be set"),
            ("cluster = \"a\\u0000b\"", "NUL"),
        ] {
            let error = settings(text).unwrap_err();
            assert!(error.starts_with("config /etc/tally.toml: "), "{error}");
            assert!(error.contains(want), "{text:?}: {error}");
            assert!(!error.contains('\n'), "{text:?}: {error}");
        }
    }

    #[test]
    fn list_values_are_joined_with_commas() {
        assert_eq!(
            value_text(&toml::Value::Array(vec!["a:1".into(), "b:2".into()])).unwrap(),
            "a:1,b:2"
        );
        assert_eq!(value_text(&toml::Value::Integer(7)).unwrap(), "7");
        assert_eq!(value_text(&toml::Value::Boolean(true)).unwrap(), "true");
    }

    #[test]
    fn secrets_are_redacted_but_not_the_files_that_hold_them() {
        assert!(is_redacted("cluster_key"));
        assert!(is_redacted("api_token"));
        assert!(!is_redacted("cluster_key_file"));
        assert!(!is_redacted("api_tokens_file"));
        assert!(!is_redacted("fanout"));

        let given: HashSet<String> = ["cluster_key", "seed", "fanout"].map(str::to_owned).into();
        let mut command = command(Some(&given));
        let matches = command
            .try_get_matches_from_mut([
                "tally",
                "node",
                "--cluster-key",
                "a-long-enough-secret",
                "--seed",
                "a:9000",
                "--seed",
                "b:9000",
                "--fanout",
                "5",
            ])
            .unwrap();
        let (_, node_matches) = matches.subcommand().unwrap();
        let node = command.find_subcommand("node").unwrap();
        let text = render(node, node_matches, "tally node", None, &HashSet::new());
        assert!(!text.contains("a-long-enough-secret"), "{text}");
        assert!(
            text.contains("cluster-key = \"<redacted>\"  # command line"),
            "{text}"
        );
        assert!(
            text.contains("seed = [\"a:9000\", \"b:9000\"]  # command line"),
            "{text}"
        );
        assert!(text.contains("fanout = 5  # command line"), "{text}");
        assert!(!text.contains("print-config"), "{text}");
        // What it prints is a config file again (comments aside).
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["fanout"].as_integer(), Some(5));
    }

    #[test]
    fn a_comma_on_the_command_line_stays_in_the_value() {
        // `--discovery` given on the command line: no delimiter, as before.
        let given: HashSet<String> = ["discovery"].map(str::to_owned).into();
        let matches = command(Some(&given))
            .try_get_matches_from(["tally", "node", "--discovery", "http://a/x,y"])
            .unwrap();
        let (_, node) = matches.subcommand().unwrap();
        let urls: Vec<&String> = node.get_many::<String>("discovery").unwrap().collect();
        assert_eq!(urls, ["http://a/x,y"]);
        // Not given there: the variable's value is split at commas.
        let tally = command(Some(&HashSet::new()));
        let node = tally.find_subcommand("node").unwrap();
        let discovery = node.get_arguments().find(|arg| arg.get_id() == "discovery");
        assert_eq!(discovery.unwrap().get_value_delimiter(), Some(','));
    }
}
