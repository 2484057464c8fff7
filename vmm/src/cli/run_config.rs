//! `vsplice run --config FILE`: every `run` flag in a JSON file, as
//! Firecracker's `--config-file`. A flag given on the command line overrides
//! the file's key (`--live-patch` replaces the file's whole list); relative
//! paths in the file (`kernel`, `initrd`, `serial` `file:PATH`,
//! `live_patch`, `api_sock`, `trusted_keys`, a `dir:` `register` store) are relative to the file's directory; an
//! unknown key, a value of the wrong type or a bad JSON text is refused
//! (`bad_config`). The kernel must come from one or the other
//! (`kernel_not_given`).
//!
//! ```json
//! {"kernel": "vmlinux", "cmdline": "quiet", "vcpus": 2, "memory": 1024,
//!  "serial": "file:serial.log", "arena": 8, "pause_timeout_ms": 500,
//!  "live_patch": ["a.vsp"], "on_reboot": "restart", "tasks": "auto", "api_sock": "vm.sock",
//!  "trusted_keys": "keys", "allow_unsigned": false,
//!  "register": "etcd://127.0.0.1:2379/dc1", "label": ["host=a", "zone=eu"],
//!  "register_id": "vm0", "register_ttl": 5}
//! ```

use std::path::{Path, PathBuf};

use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::parser::ValueSource;
use clap::{ArgMatches, ValueEnum};
use serde::Deserialize;
use thiserror::Error;

use vsplice_patcher::os::linux::view::TaskSource;

use super::run::{parse_serial, OnReboot, RunArgs, SerialArg};

/// The file: the `run` flags' names with `_` for `-`, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFile {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    vcpus: Option<usize>,
    memory: Option<u64>,
    serial: Option<String>,
    arena: Option<u64>,
    pause_timeout_ms: Option<u64>,
    live_patch: Option<Vec<PathBuf>>,
    on_reboot: Option<String>,
    tasks: Option<String>,
    api_sock: Option<PathBuf>,
    trusted_keys: Option<PathBuf>,
    allow_unsigned: Option<bool>,
    register: Option<String>,
    label: Option<Vec<String>>,
    register_id: Option<String>,
    register_ttl: Option<u64>,
}

/// Why the configuration cannot be used.
#[derive(Debug, Error)]
pub enum RunConfigError {
    /// The file cannot be read.
    #[error("cannot read the --config file {path}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("--config file {path}: {message}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Neither `--kernel` nor the file's `kernel`.
    #[error("no kernel to boot: give --kernel PATH, or \"kernel\" in the --config file")]
    NoKernel,
}

impl RunConfigError {
    /// Stable cause.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Unreadable { .. } => "config_unreadable",
            Self::Bad { .. } => "bad_config",
            Self::NoKernel => "kernel_not_given",
        }
    }
}

/// The parser of `--kernel`: any path, the empty one (its default) meaning
/// none was given.
pub fn kernel_parser() -> impl TypedValueParser<Value = PathBuf> {
    OsStringValueParser::new().map(PathBuf::from)
}

/// `args` with the `--config` file's values for every flag the command
/// line did not give (`matches`: the `run` subcommand's, saying which).
pub fn resolve(mut args: RunArgs, matches: &ArgMatches) -> Result<RunArgs, RunConfigError> {
    if let Some(path) = args.config.clone() {
        let text = std::fs::read_to_string(&path).map_err(|source| RunConfigError::Unreadable { path: path.clone(), source })?;
        merge(&mut args, &path, &text, |id| matches.value_source(id) == Some(ValueSource::CommandLine))?;
    }
    if args.kernel.as_os_str().is_empty() {
        return Err(RunConfigError::NoKernel);
    }
    Ok(args)
}

/// Sets the fields of `args` that `given` says the command line did not
/// give from the file `path` holding `text`.
fn merge(args: &mut RunArgs, path: &Path, text: &str, given: impl Fn(&str) -> bool) -> Result<(), RunConfigError> {
    let bad = |message: String| RunConfigError::Bad { path: path.to_owned(), message };
    let file: RunFile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let here = |p: PathBuf| if p.is_relative() { dir.join(p) } else { p };
    let set = |id: &str| !given(id);
    if let (Some(v), true) = (file.kernel, set("kernel")) {
        args.kernel = here(v);
    }
    if let (Some(v), true) = (file.initrd, set("initrd")) {
        args.initrd = Some(here(v));
    }
    if let (Some(v), true) = (file.cmdline, set("cmdline")) {
        args.cmdline = v;
    }
    if let (Some(v), true) = (file.vcpus, set("vcpus")) {
        args.vcpus = v;
    }
    if let (Some(v), true) = (file.memory, set("memory")) {
        args.memory = v;
    }
    if let (Some(v), true) = (file.serial, set("serial")) {
        args.serial = match parse_serial(&v).map_err(|e| bad(format!("serial: {e}")))? {
            SerialArg::File(p) => SerialArg::File(here(p)),
            other => other,
        };
    }
    if let (Some(v), true) = (file.arena, set("arena")) {
        args.arena = v;
    }
    if let (Some(v), true) = (file.pause_timeout_ms, set("pause_timeout_ms")) {
        args.pause_timeout_ms = v;
    }
    if let (Some(v), true) = (file.live_patch, set("live_patch")) {
        args.live_patch = v.into_iter().map(here).collect();
    }
    if let (Some(v), true) = (file.on_reboot, set("on_reboot")) {
        args.on_reboot = OnReboot::from_str(&v, false).map_err(|_| bad(format!("on_reboot: `{v}` is not one of exit, restart")))?;
    }
    if let (Some(v), true) = (file.tasks, set("tasks")) {
        args.tasks = TaskSource::from_str(&v, false).map_err(|_| bad(format!("tasks: `{v}` is not one of auto, agent, agentless")))?;
    }
    if let (Some(v), true) = (file.api_sock, set("api_sock")) {
        args.api_sock = Some(here(v));
    }
    if let (Some(v), true) = (file.trusted_keys, set("trusted_keys")) {
        args.trust.trusted_keys = Some(here(v));
    }
    if let (Some(v), true) = (file.allow_unsigned, set("allow_unsigned")) {
        args.trust.allow_unsigned = v;
    }
    if let (Some(v), true) = (file.register, set("register")) {
        // A relative `dir:` store is relative to the file, as the file's paths are.
        args.register.register = Some(match v.strip_prefix("dir:") {
            Some(p) if !p.is_empty() => format!("dir:{}", here(PathBuf::from(p)).display()),
            _ => v,
        });
    }
    if let (Some(v), true) = (file.label, set("label")) {
        args.register.label = v;
    }
    if let (Some(v), true) = (file.register_id, set("register_id")) {
        args.register.register_id = Some(v);
    }
    if let (Some(v), true) = (file.register_ttl, set("register_ttl")) {
        args.register.register_ttl = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    use crate::cli::{Cli, Command};

    /// `vsplice run ARGS…` resolved against `config` (written to a scratch file).
    fn run_with(name: &str, config: &str, args: &[&str]) -> Result<RunArgs, RunConfigError> {
        let dir = std::env::temp_dir().join(format!("vsplice-run-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vm.json");
        std::fs::write(&file, config).unwrap();
        let mut argv = vec!["vsplice".to_owned(), "run".to_owned(), "--config".to_owned(), file.display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let matches = Cli::command().try_get_matches_from(argv).unwrap();
        let Command::Run(run) = Cli::from_arg_matches(&matches).unwrap().command else { panic!("not run") };
        let resolved = resolve(run, matches.subcommand_matches("run").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        resolved
    }

    fn dir_of(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vsplice-run-config-{}-{name}", std::process::id()))
    }

    #[test]
    fn the_file_alone_gives_every_flag() {
        let config = r#"{"kernel": "/k/vmlinux", "initrd": "/k/initrd", "cmdline": "quiet", "vcpus": 3, "memory": 256,
            "serial": "null", "arena": 8, "pause_timeout_ms": 77, "live_patch": ["/p/a.vsp", "/p/b.vsp"],
            "on_reboot": "restart", "tasks": "agentless", "api_sock": "/run/vm.sock"}"#;
        let a = run_with("file", config, &[]).unwrap();
        assert_eq!(a.tasks, TaskSource::Agentless);
        assert_eq!(a.kernel, Path::new("/k/vmlinux"));
        assert_eq!(a.initrd.as_deref(), Some(Path::new("/k/initrd")));
        assert_eq!((a.cmdline.as_str(), a.vcpus, a.memory, a.arena, a.pause_timeout_ms), ("quiet", 3, 256, 8, 77));
        assert_eq!(a.serial, SerialArg::Null);
        assert_eq!(a.live_patch, [PathBuf::from("/p/a.vsp"), PathBuf::from("/p/b.vsp")]);
        assert_eq!(a.on_reboot, OnReboot::Restart);
        assert_eq!(a.api_sock.as_deref(), Some(Path::new("/run/vm.sock")));
    }

    #[test]
    fn flags_override_the_file_and_defaults_do_not() {
        let config = r#"{"kernel": "/k/a", "vcpus": 3, "memory": 256, "live_patch": ["/p/a.vsp"], "on_reboot": "restart"}"#;
        // `--memory 512` is the default value, given explicitly: it wins.
        let a = run_with("override", config, &["--kernel", "/k/b", "--memory", "512", "--live-patch", "/p/c.vsp", "--on-reboot", "exit"]).unwrap();
        assert_eq!((a.kernel.as_path(), a.vcpus, a.memory), (Path::new("/k/b"), 3, 512));
        assert_eq!(a.live_patch, [PathBuf::from("/p/c.vsp")]);
        assert_eq!(a.on_reboot, OnReboot::Exit);
        // Not given: the defaults stay where the file says nothing.
        let a = run_with("defaults", r#"{"kernel": "/k/a"}"#, &[]).unwrap();
        assert_eq!((a.vcpus, a.memory, a.cmdline.as_str()), (crate::config::DEFAULT_VCPUS, crate::config::DEFAULT_MEMORY_MIB, ""));
        assert_eq!(a.serial, SerialArg::Stdio);
    }

    #[test]
    fn relative_paths_are_the_files_directory() {
        let config = r#"{"kernel": "vmlinux", "initrd": "sub/initrd", "serial": "file:serial.log", "live_patch": ["p.vsp", "/abs.vsp"], "api_sock": "vm.sock"}"#;
        let a = run_with("relative", config, &[]).unwrap();
        let dir = dir_of("relative");
        assert_eq!(a.kernel, dir.join("vmlinux"));
        assert_eq!(a.initrd, Some(dir.join("sub/initrd")));
        assert_eq!(a.serial, SerialArg::File(dir.join("serial.log")));
        assert_eq!(a.live_patch, [dir.join("p.vsp"), PathBuf::from("/abs.vsp")]);
        assert_eq!(a.api_sock, Some(dir.join("vm.sock")));
        // A relative flag stays relative to where vsplice runs.
        assert_eq!(run_with("relative-flag", config, &["--kernel", "here/vmlinux"]).unwrap().kernel, Path::new("here/vmlinux"));
    }

    #[test]
    fn bad_files_are_bad_config() {
        for (name, config, mention) in [
            ("unknown", r#"{"kernel": "/k", "cpus": 2}"#, "unknown field `cpus`"),
            ("json", r#"{"kernel": "/k","#, "EOF"),
            ("type", r#"{"kernel": "/k", "vcpus": "two"}"#, "expected usize"),
            ("serial", r#"{"kernel": "/k", "serial": "tcp:1"}"#, "serial"),
            ("reboot", r#"{"kernel": "/k", "on_reboot": "halt"}"#, "on_reboot"),
            ("array", "[]", "struct RunFile"),
        ] {
            let e = run_with(name, config, &[]).unwrap_err();
            assert_eq!(e.cause(), "bad_config", "{name}: {e}");
            assert!(e.to_string().contains(mention) && e.to_string().contains("vm.json"), "{name}: {e}");
        }
    }

    #[test]
    fn the_registration_comes_from_the_file_too() {
        let a = run_with("reg", r#"{"kernel": "/k", "register": "dir:targets", "label": ["host=a", "zone=z"], "register_id": "vm0", "register_ttl": 9}"#, &[]).unwrap();
        assert_eq!(a.register.register.as_deref(), Some(format!("dir:{}", dir_of("reg").join("targets").display()).as_str()));
        assert_eq!((a.register.label.len(), a.register.register_id.as_deref(), a.register.register_ttl), (2, Some("vm0"), 9));
        let a = run_with("regflag", r#"{"kernel": "/k", "register": "etcd://h:1", "label": ["host=a"]}"#, &["--label", "host=b"]).unwrap();
        assert_eq!((a.register.register.as_deref(), a.register.label.as_slice()), (Some("etcd://h:1"), &["host=b".to_owned()][..]));
    }

    #[test]
    fn every_run_flag_has_a_key() {
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").unwrap();
        for arg in run.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "config" | "help") {
                continue;
            }
            let json = format!("{{\"{id}\": null}}");
            assert!(serde_json::from_str::<RunFile>(&json).is_ok(), "--{} has no key `{id}` in the --config file", arg.get_long().unwrap_or(id));
        }
    }

    #[test]
    fn trust_keys_come_from_the_file_relative_to_it() {
        let a = run_with("trust", r#"{"kernel": "/k", "trusted_keys": "keys", "allow_unsigned": true}"#, &[]).unwrap();
        assert_eq!(a.trust.trusted_keys.unwrap(), dir_of("trust").join("keys"));
        assert!(a.trust.allow_unsigned);
        let a = run_with("trustflag", r#"{"kernel": "/k", "trusted_keys": "keys"}"#, &["--trusted-keys", "/etc/k"]).unwrap();
        assert_eq!(a.trust.trusted_keys.unwrap(), Path::new("/etc/k"));
        assert!(!a.trust.allow_unsigned);
    }

    #[test]
    fn a_kernel_is_needed_from_one_or_the_other() {
        assert_eq!(run_with("nokernel", r#"{"vcpus": 2}"#, &[]).unwrap_err().cause(), "kernel_not_given");
        assert_eq!(run_with("flagkernel", r#"{"vcpus": 2}"#, &["--kernel", "/k"]).unwrap().kernel, Path::new("/k"));
        let matches = Cli::command().try_get_matches_from(["vsplice", "run"]).unwrap();
        let Command::Run(run) = Cli::from_arg_matches(&matches).unwrap().command else { panic!("not run") };
        assert_eq!(resolve(run, matches.subcommand_matches("run").unwrap()).unwrap_err().cause(), "kernel_not_given");
    }

    #[test]
    fn a_missing_file_is_unreadable() {
        let matches = Cli::command().try_get_matches_from(["vsplice", "run", "--config", "/nonexistent/vm.json"]).unwrap();
        let Command::Run(run) = Cli::from_arg_matches(&matches).unwrap().command else { panic!("not run") };
        let e = resolve(run, matches.subcommand_matches("run").unwrap()).unwrap_err();
        assert_eq!(e.cause(), "config_unreadable");
        assert!(e.to_string().contains("/nonexistent/vm.json"));
    }
}
