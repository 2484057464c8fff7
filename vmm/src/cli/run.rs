//! `vsplice run`: boot a guest and run it until it powers off, reboots or crashes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use vsplice_patcher::model::chain;
use vsplice_patcher::os::linux::view::TaskSource;
use vsplice_patcher::patch::TrustPolicy;
use vsplice_patcher::txn::TxnReport;

use crate::api::service::ApiService;
use crate::arch::x86_64::layout::ARENA_DEFAULT_SIZE;
use crate::livepatch::LivePatches;
use crate::builder;
use crate::config::{SerialConfig, VmConfig, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use crate::vstate::pause::DEFAULT_PAUSE_TIMEOUT;
use crate::vstate::vcpu::GuestExit;

/// Exit code when the guest crashed (triple fault, KVM internal error).
pub const EXIT_GUEST_CRASHED: u8 = 2;
/// Exit code when the VM could not be built (bad input, KVM refused).
pub const EXIT_BAD_INPUT: u8 = 1;

/// Arguments of `vsplice run`.
#[derive(Debug, Args)]
#[command(after_help = "\
The guest's power-off (ACPI S5) ends the VMM with exit code 0; so does a reboot request (i8042 \
reset, `reboot=k`) unless `--on-reboot restart` boots the guest again (with its live patches \
applied again once its kernel is up). A triple fault or KVM internal error ends it with exit code 2 and a message giving \
the exit reason, RIP and the instruction bytes KVM reported. Bad input exits with code 1 and a \
one-line error naming the problem; so does a usage error (unknown flag, bad value): exit code 2 \
only ever means a crashed guest. An ELF kernel without a loadable segment or with one outside \
guest RAM (over the arena, past the end) is refused at load, and so is --memory above the \
host's RAM.

--config FILE takes any of the flags from a JSON object whose keys are the flags' names with `_` \
for `-`: kernel, initrd, cmdline, vcpus, memory, serial, arena, pause_timeout_ms, live_patch (a \
list), on_reboot, api_sock, trusted_keys, allow_unsigned, register, label (a list), register_id, register_ttl; e.g. {\"kernel\": \"vmlinux\", \"vcpus\": 2, \"live_patch\": [\"a.vsp\"]}. \
Flags given on the command line win (--live-patch replaces the whole list). Relative paths in the \
file are relative to its directory. An unknown key, a wrong type or bad JSON is refused \
([bad_config], exit code 1).")]
pub struct RunArgs {
    /// JSON file giving any of these flags (see below); flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kernel to boot: an ELF vmlinux (entered at its 64-bit entry point) or a bzImage. Required,
    /// here or as `kernel` in the --config file.
    #[arg(long, value_name = "PATH", default_value = "", hide_default_value = true, value_parser = super::run_config::kernel_parser())]
    pub kernel: PathBuf,
    /// Initial ramdisk, loaded at the top of usable RAM below the patch arena.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line. `console=ttyS0`, `reboot=k` and `panic=1` are added unless it names
    /// its own `console=`, `reboot=` or `panic=`.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Number of vCPUs (1 up to what this host's KVM allows, at most 254).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VCPUS)]
    pub vcpus: usize,
    /// Guest memory in MiB, patch arena included.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB)]
    pub memory: u64,
    /// Where COM1 (ttyS0) goes: `stdio` (stdin feeds the guest), `file:PATH`, or `null`.
    #[arg(long, value_name = "stdio|file:PATH|null", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialArg,
    /// Size in MiB of the patch arena: a 2 MiB-aligned range at the top of guest memory that the
    /// e820 map marks reserved, so the guest never uses it; live patches are placed there. A
    /// multiple of 2, at least 4 (a 2 MiB data slot and a 2 MiB code slot).
    #[arg(long, value_name = "MIB", default_value_t = ARENA_DEFAULT_SIZE >> 20)]
    pub arena: u64,
    /// Longest a whole-VM pause may take before it is abandoned (the VM keeps running).
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_PAUSE_TIMEOUT.as_millis() as u64)]
    pub pause_timeout_ms: u64,
    /// Live patch (built by `vsplice patch build`) to apply as soon as the guest kernel is up;
    /// repeatable, applied in order. Each result is printed on stderr as one JSON line. The
    /// test guest is its own ELF image; a Linux kernel (bzImage or vmlinux) is identified from
    /// guest memory after each boot (kallsyms, KASLR slide, build-id, BTF) and patched once its
    /// `system_state` is RUNNING. Every patch must be for the kind of kernel booted.
    #[arg(long = "live-patch", value_name = "FILE")]
    pub live_patch: Vec<PathBuf>,
    /// Where a Linux guest's task list comes from for the safety check: `auto` (the vsplice
    /// guest agent when loaded — its doorbell is this VMM's — checked against the BTF walk; else
    /// the walk), `agent` (refuse without a sound agent), `agentless` (the walk only).
    #[arg(long, value_enum, default_value_t = TaskSource::Auto)]
    pub tasks: TaskSource,
    /// What a guest reboot request does: `exit` ends the VMM (exit code 0); `restart` boots the
    /// same kernel, initrd and command line again in a fresh VM and re-applies `--live-patch`.
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = OnReboot::Exit)]
    pub on_reboot: OnReboot,
    /// Serve the HTTP API on this Unix socket (created mode 0600, removed on exit; a stale socket
    /// file is replaced, a live one refused): the VM, its patches (apply, revert, list, recover),
    /// metrics and events. `vsplice remote --api-sock PATH` is its client; docs/openapi.yaml
    /// describes it. Patches applied through it are re-applied after a reboot like `--live-patch`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Who may patch this guest (`--live-patch` and the API).
    #[command(flatten)]
    pub trust: super::sign::TrustArgs,
    /// Registering as a fleet target (`--register`, `--label`).
    #[command(flatten)]
    pub register: super::register_args::RegisterArgs,
}

/// What a guest reboot request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnReboot {
    /// End the VMM with exit code 0.
    Exit,
    /// Boot the guest again.
    Restart,
}

/// Parsed `--serial` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialArg {
    /// stdout / stdin.
    Stdio,
    /// A file.
    File(PathBuf),
    /// Discard.
    Null,
}

pub(super) fn parse_serial(s: &str) -> Result<SerialArg, String> {
    match s {
        "stdio" => Ok(SerialArg::Stdio),
        "null" => Ok(SerialArg::Null),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialArg::File(PathBuf::from(p))),
            _ => Err(format!("`{s}` is not one of stdio, null, file:PATH")),
        },
    }
}

impl RunArgs {
    /// The VM configuration these arguments describe.
    pub fn to_config(&self) -> VmConfig {
        let mut c = VmConfig::new(&self.kernel);
        c.initrd = self.initrd.clone();
        c.cmdline = self.cmdline.clone();
        c.vcpus = self.vcpus;
        c.memory_mib = self.memory;
        c.arena_mib = self.arena;
        c.pause_timeout = Duration::from_millis(self.pause_timeout_ms);
        c.serial = match &self.serial {
            SerialArg::Stdio => SerialConfig::Stdio,
            SerialArg::File(p) => SerialConfig::File(p.clone()),
            SerialArg::Null => SerialConfig::Null,
        };
        c
    }
}

/// The serial output of successive boots: a `file:` output is created once
/// and appended to by every boot after a reboot, never truncated.
struct SerialSink(Option<std::fs::File>);

impl SerialSink {
    fn open(arg: &SerialArg) -> std::io::Result<Self> {
        match arg {
            SerialArg::File(p) => std::fs::File::create(p).map(|f| Self(Some(f))),
            _ => Ok(Self(None)),
        }
    }

    fn config_for_boot(&self, args: &RunArgs) -> std::io::Result<VmConfig> {
        let mut config = args.to_config();
        if let Some(f) = &self.0 {
            config.serial = SerialConfig::Writer(Box::new(f.try_clone()?));
        }
        Ok(config)
    }
}

/// The live patches (the desired list and its target): `Ok(None)` with the
/// reason when there are none and the kernel cannot be a target.
fn open_patches(args: &RunArgs, trust: &TrustPolicy) -> Result<(Option<LivePatches>, String), crate::livepatch::LivePatchError> {
    if args.live_patch.is_empty() && args.api_sock.is_none() {
        return Ok((None, String::new()));
    }
    // A refused patch is reported like any other result; the guest boots without it.
    let mut refused = |path: &std::path::Path, r: TxnReport| {
        eprintln!("vsplice: live-patch {}", r.to_json());
        eprintln!("vsplice: live patch {} refused [{}]: {}", path.display(), r.cause.name(), r.message);
    };
    match LivePatches::open_trusted(&args.kernel, &args.live_patch, args.tasks, trust, &mut refused) {
        Ok(p) => Ok((Some(p), String::new())),
        Err(e) if args.live_patch.is_empty() => {
            let why = format!("the booted kernel cannot be a live-patch target: {}", chain(&e));
            Ok((None, why))
        }
        Err(e) => Err(e),
    }
}

/// Runs `vsplice run`.
pub fn run(args: RunArgs) -> ExitCode {
    let trust = match args.trust.policy() {
        Ok(t) => t,
        Err(code) => return code,
    };
    let (mut patches, why_not) = match open_patches(&args, &trust) {
        Ok(p) => p,
        Err(e) => {
            super::report(&e, e.cause());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    // Bad labels or store are refused before anything starts; nothing is written yet.
    let registration = match args.register.prepare(args.api_sock.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            super::report(&e, e.cause());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let sink = match SerialSink::open(&args.serial) {
        Ok(s) => s,
        Err(e) => {
            super::report(&e, "serial_output_unwritable");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut api = match &args.api_sock {
        Some(path) => match ApiService::start(path) {
            Ok(mut a) => {
                a.set_trust(trust);
                Some(a)
            }
            Err(e) => {
                super::report(&e, e.cause());
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        },
        None => None,
    };
    // Registered once the API answers; the kernel's release and build-id follow once known.
    let registrar = match (registration, api.as_ref()) {
        (Some(r), Some(a)) => {
            let shared = a.shared().clone();
            match r.start_removed_on_signal(move || shared.vm().map(|v| v.kernel)) {
                Ok(r) => Some(r),
                Err(e) => {
                    super::report(&e, "signals");
                    return ExitCode::from(EXIT_BAD_INPUT);
                }
            }
        }
        _ => None,
    };
    let code = run_boots(&args, &sink, patches.as_mut(), api.as_mut(), &why_not);
    // A clean end: the registration goes first (a rollout stops seeing the target), then the API.
    if let Some(r) = registrar {
        r.end();
    }
    if let Some(a) = api.as_mut() {
        a.finish();
    }
    code
}

fn run_boots(args: &RunArgs, sink: &SerialSink, mut patches: Option<&mut LivePatches>, mut api: Option<&mut ApiService>, why_not: &str) -> ExitCode {
    let print = |r: &vsplice_patcher::txn::TxnReport| eprintln!("vsplice: live-patch {}", r.to_json());
    let mut boot = 0u64;
    loop {
        boot += 1;
        // What the API describes (the built VM owns the real configuration).
        let described = args.to_config();
        let built = sink.config_for_boot(args).map_err(builder::BuildError::from).and_then(builder::build);
        let mut vmm = match built {
            Ok(v) => v,
            Err(e) => {
                super::report(&e, e.cause());
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        };
        tracing::info!(boot, "guest started");
        let waited = match (api.as_deref_mut(), patches.as_deref_mut()) {
            (Some(api), p) => api.run_boot(&mut vmm, &described, p, boot, why_not, print).map(Some),
            (None, Some(p)) => p.run(&mut vmm, print),
            (None, None) => vmm.wait_for_exit(None),
        };
        vmm.shutdown();
        let exit = match waited {
            Ok(Some(exit)) => exit,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                super::report(&e, "event_loop_failed");
                return ExitCode::from(EXIT_GUEST_CRASHED);
            }
        };
        if exit == GuestExit::Reset && args.on_reboot == OnReboot::Restart {
            eprintln!("vsplice: guest rebooted; starting boot {}", boot + 1);
            continue;
        }
        if exit.is_clean() {
            tracing::info!(%exit, "guest finished");
            return ExitCode::SUCCESS;
        }
        eprintln!("vsplice: guest crashed [{}]: {exit}", exit.cause());
        return ExitCode::from(EXIT_GUEST_CRASHED);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn serial_values() {
        assert_eq!(parse_serial("stdio").unwrap(), SerialArg::Stdio);
        assert_eq!(parse_serial("null").unwrap(), SerialArg::Null);
        assert_eq!(parse_serial("file:/tmp/x").unwrap(), SerialArg::File("/tmp/x".into()));
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp:1").is_err());
    }

    #[test]
    fn help_explains_every_flag() {
        use clap::CommandFactory;
        let mut cmd = super::super::Cli::command();
        let run = cmd.find_subcommand_mut("run").unwrap();
        let help = run.render_long_help().to_string();
        for flag in ["--kernel", "--initrd", "--cmdline", "--vcpus", "--memory", "--serial", "--arena", "--pause-timeout-ms", "--live-patch", "--tasks", "--on-reboot", "--api-sock", "--trusted-keys", "--allow-unsigned", "--register", "--label", "--register-id", "--register-ttl"] {
            assert!(help.contains(flag), "{flag} missing from help");
        }
        assert!(help.contains("console=ttyS0"));
    }
}
