//! `vsplice patch`: build a live patch from C; apply, revert, list and show
//! the status of patches on a guest behind a gdbstub (QEMU `-gdb`), with the
//! guest's own registry in the arena as the source of truth.
//!
//! Targets: `--target testguest` (the purpose-built test guest; `--kernel`
//! is its ELF image) and `--target linux` (a stock x86-64 Linux kernel:
//! patches are built with Kbuild against `--headers`, and in attached mode
//! the running kernel is identified from guest memory alone: kallsyms,
//! KASLR slide, build-id, BTF).
//!
//! In attached mode vsplice is told where the arena is (`--arena
//! PHYS:SIZE`): a 2 MiB-aligned guest-physical range of at least 4 MiB that
//! the guest was booted with reserved (Linux: `memmap=4M$0x3f000000` on the
//! kernel command line keeps 4 MiB at 1008 MiB out of its RAM; the test
//! guest uses no RAM above its image, so any free range works). vsplice
//! cannot discover it: a range the guest still uses as RAM would be
//! overwritten. Under `vsplice run` the VMM reserves it itself (e820) and
//! patches go through `--live-patch`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use vsplice_patcher::patch::format::read_bounded;
use vsplice_patcher::patch::PatchFile;
use vsplice_patcher::txn::{Patcher, TxnConfig, TxnReport};

pub use super::attach_args::AttachArgs;
use super::fault_injection::Attached;
use super::run::EXIT_BAD_INPUT;
use super::session::{self, Session};
use super::sign::{self, TrustArgs};

/// Exit code when a transaction was refused (the JSON result says why).
pub const EXIT_REFUSED: u8 = 3;

/// `vsplice patch …`
#[derive(Debug, Subcommand)]
pub enum PatchCommand {
    /// Compile a patch (C with vsplice.h) with the target kernel's flags into one .vsp file.
    Build(super::patch_build::BuildArgs),
    /// Print a patch file's manifest (JSON: name, id, description, CVE ids, version, target,
    /// replaced functions) on stdout, and whether it is signed (and by which key) on stderr.
    Info {
        /// The patch file.
        file: PathBuf,
    },
    /// Make an ed25519 signing key: KEY (the secret, mode 0600, never over an existing
    /// file) and KEY.pub (put it in the --trusted-keys directory of the VMMs that may take
    /// your patches). Prints the key's fingerprint.
    Keygen {
        /// The secret key file to create.
        #[arg(short = 'o', long = "output", value_name = "KEY")]
        output: PathBuf,
    },
    /// Sign a patch file with a secret key: a signature block is appended that covers every
    /// other byte and names the key by its fingerprint (an existing signature is replaced).
    Sign {
        /// The secret key (from `vsplice patch keygen`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Where to write the signed file (default: the file itself).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// The patch file.
        file: PathBuf,
    },
    /// Check a patch file's signature: against a directory of trusted public keys
    /// (`--trusted-keys`), or one public key (`--key`, no trust store: it says so). Exit 0
    /// and the signer's key id, or exit 3 with `unsigned`, `bad_signature` or
    /// `untrusted_key`. With neither, the signature is found and its key id printed, but it
    /// cannot be checked without the signer's public key: exit 3 `no_key`.
    Verify {
        /// Directory of trusted public keys (`*.pub`).
        #[arg(long, value_name = "DIR", conflicts_with = "key")]
        trusted_keys: Option<PathBuf>,
        /// One public key (`KEY.pub`) to check the signature with, trusted or not.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// The patch file.
        file: PathBuf,
    },
    /// Apply a patch to a guest behind a gdbstub; prints the result as JSON.
    Apply {
        /// Where the guest is.
        #[command(flatten)]
        guest: AttachArgs,
        /// Who may patch.
        #[command(flatten)]
        trust: TrustArgs,
        /// Pauses tried before giving up with `code_busy`.
        #[arg(long, default_value_t = 20)]
        attempts: u32,
        /// The patch file.
        file: PathBuf,
    },
    /// Revert an applied patch (by id or name); prints the result as JSON.
    Revert {
        /// Where the guest is.
        #[command(flatten)]
        guest: AttachArgs,
        /// Pauses tried before giving up with `code_busy`.
        #[arg(long, default_value_t = 20)]
        attempts: u32,
        /// Patch id or name.
        patch: String,
    },
    /// List the applied patches (from the guest's registry).
    List {
        /// Where the guest is.
        #[command(flatten)]
        guest: AttachArgs,
    },
    /// The registry, checked against the kernel text, including a transaction
    /// a killed vsplice left behind (the next apply or revert completes or rolls it back).
    Status {
        /// Where the guest is.
        #[command(flatten)]
        guest: AttachArgs,
        /// Complete or roll back an interrupted transaction now.
        #[arg(long)]
        recover: bool,
    },
}

fn print_report(r: &TxnReport) -> ExitCode {
    println!("{}", r.to_json());
    if r.is_ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!("vsplice: {} refused [{}]: {}", r.op, r.cause.name(), r.message);
        ExitCode::from(EXIT_REFUSED)
    }
}

/// How a half-written transaction is finished from this command line.
const RECOVER_HINT: &str = "`vsplice patch status --recover` (or the next apply/revert)";

/// Runs the patch through `f` on the attached guest, then detaches (the guest runs on).
fn with_patcher(g: &AttachArgs, attempts: u32, f: impl FnOnce(&mut Patcher<'_, &mut Attached>) -> ExitCode) -> ExitCode {
    let Session { target, mut backend, .. } = match session::open(g) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut cfg = TxnConfig::new(g.arena);
    cfg.max_attempts = attempts;
    cfg.check = g.check;
    cfg.incremental = g.incremental;
    let code = {
        let mut p = Patcher::new(&mut backend, &*target, cfg);
        f(&mut p)
    };
    // Never let the guest run half-patched: then it stays stopped.
    session::end(&*target, backend, g.arena, RECOVER_HINT);
    code
}

/// Runs `vsplice patch …`.
pub fn run(cmd: PatchCommand) -> ExitCode {
    match cmd {
        PatchCommand::Build(a) => super::patch_build::build(a),
        PatchCommand::Info { file } => match read_bounded(&file).and_then(|b| PatchFile::parse(&b).map(|p| (p, b))) {
            Ok((p, bytes)) => {
                println!("{}", p.manifest.to_json());
                eprintln!("vsplice: {}: {}", file.display(), sign::describe_signature(&bytes));
                ExitCode::SUCCESS
            }
            Err(e) => {
                super::report(&e, e.reason());
                ExitCode::from(EXIT_BAD_INPUT)
            }
        },
        PatchCommand::Keygen { output } => sign::keygen(&output),
        PatchCommand::Sign { key, output, file } => sign::sign_file(&key, &file, output.as_deref()),
        PatchCommand::Verify { trusted_keys, key, file } => sign::verify_file(trusted_keys.as_deref(), key.as_deref(), &file),
        PatchCommand::Apply { guest, trust, attempts, file } => {
            let policy = match trust.policy() {
                Ok(p) => p,
                Err(code) => return code,
            };
            // A FIFO, a device or an oversized file is refused before reading it.
            let bytes = match read_bounded(&file) {
                Ok(b) => b,
                Err(e) => {
                    super::report(&e, e.reason());
                    return ExitCode::from(EXIT_BAD_INPUT);
                }
            };
            // Who may patch, before even attaching to the guest.
            let admitted = match sign::admit(&policy, &bytes, &file) {
                Ok(a) => a,
                Err(refused) => return print_report(&refused),
            };
            with_patcher(&guest, attempts, |p| {
                let mut r = p.apply_bytes(&bytes);
                r.notes.extend(admitted.notes);
                print_report(&r)
            })
        }
        PatchCommand::Revert { guest, attempts, patch } => with_patcher(&guest, attempts, |p| print_report(&p.revert(&patch))),
        PatchCommand::List { guest } => with_patcher(&guest, 1, |p| match p.status() {
            Ok(s) => {
                for x in &s.patches {
                    let funcs: Vec<String> = x.funcs.iter().map(|f| format!("{}->{}", f.name, f.new_name)).collect();
                    println!("{} {} {:?} {}", x.id, x.name, x.state, funcs.join(","));
                }
                ExitCode::SUCCESS
            }
            Err(f) => {
                eprintln!("vsplice: error [{}]: {}", f.cause.name(), f.message);
                ExitCode::from(EXIT_REFUSED)
            }
        }),
        PatchCommand::Status { guest, recover } => with_patcher(&guest, 20, |p| {
            if recover {
                let r = p.recover();
                if !r.is_ok() {
                    return print_report(&r);
                }
            }
            match p.status() {
                Ok(s) => {
                    println!("{}", s.to_json());
                    ExitCode::SUCCESS
                }
                Err(f) => {
                    eprintln!("vsplice: error [{}]: {}", f.cause.name(), f.message);
                    ExitCode::from(EXIT_REFUSED)
                }
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::{Parser, ValueEnum};
    use vsplice_patcher::model::{CheckMode, Incremental, TargetKind};
    use vsplice_patcher::os::linux::view::TaskSource;
    use vsplice_patcher::shm::StopVia;

    use super::*;
    use crate::cli::{Cli, Command};

    fn attach(args: &[&str]) -> Result<AttachArgs, clap::Error> {
        let argv = ["vsplice", "patch", "list", "--gdb", "127.0.0.1:1234"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Patch(PatchCommand::List { guest }) => Ok(guest),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn mem_path_and_qmp_come_together() {
        let base = ["--kernel", "tg.elf", "--arena", "0x8000000:4M"];
        let a = attach(&base).unwrap();
        assert!(a.shm().is_none(), "without them the gdbstub path stays");
        let a = attach(&[&base[..], &["--mem-path", "/dev/shm/ram", "--qmp", "/run/q.sock", "--stop-via", "qmp"]].concat()).unwrap();
        let s = a.shm().unwrap();
        assert_eq!((s.mem_path.to_str(), s.qmp.as_str(), s.stop_via), (Some("/dev/shm/ram"), "/run/q.sock", StopVia::Qmp));
        assert!(attach(&[&base[..], &["--mem-path", "/dev/shm/ram"]].concat()).is_err(), "--mem-path needs --qmp");
        assert!(attach(&[&base[..], &["--qmp", "/run/q.sock"]].concat()).is_err(), "--qmp needs --mem-path");
    }

    #[test]
    fn arena_specs_parse() {
        let a = attach(&["--kernel", "tg.elf", "--arena", "0x8000000:4M"]).unwrap();
        assert_eq!(a.arena.range(), 0x800_0000..0x840_0000);
        let a = attach(&["--kernel", "tg.elf", "--arena", "134217728:4194304"]).unwrap();
        assert_eq!(a.arena.range(), 0x800_0000..0x840_0000);
        assert!(attach(&["--kernel", "tg.elf", "--arena", "0x8001000:4M"]).is_err());
        assert!(attach(&["--kernel", "tg.elf", "--arena", "0x8000000:2M"]).is_err());
        assert!(attach(&["--kernel", "tg.elf", "--arena", "0x8000000"]).is_err());
    }

    #[test]
    fn kinds_modes_and_sources_are_enums_with_their_old_names_and_defaults() {
        let a = attach(&["--kernel", "tg.elf", "--arena", "0x8000000:4M"]).unwrap();
        assert_eq!((a.target, a.check, a.tasks), (TargetKind::TestGuest, CheckMode::Orc, TaskSource::Auto));
        let a = attach(&["--target", "linux", "--arena", "0x8000000:4M", "--check", "conservative", "--tasks", "agentless"]).unwrap();
        assert_eq!((a.target, a.check, a.tasks), (TargetKind::Linux, CheckMode::Conservative, TaskSource::Agentless));
        let no_kernel = attach(&["--target", "testguest", "--arena", "0x8000000:4M"]).unwrap_err();
        assert_eq!(no_kernel.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        // clap's required_if_eq ignores defaults: `connect` reports the missing image then.
        assert_eq!(attach(&["--arena", "0x8000000:4M", "--tasks", "agent"]).unwrap().kernel, None);
        // The incremental check: off unless asked.
        assert_eq!(attach(&["--kernel", "tg.elf", "--arena", "0x8000000:4M"]).unwrap().incremental, Incremental::Off);
        let a = attach(&["--target", "linux", "--arena", "0x8000000:4M", "--incremental", "compare"]).unwrap();
        assert_eq!(a.incremental, Incremental::Compare);
        for m in Incremental::value_variants() {
            assert_eq!(m.to_possible_value().unwrap().get_name().parse::<Incremental>().unwrap(), *m);
            assert_eq!(m.to_possible_value().unwrap().get_name(), m.to_string());
        }
        for bad in [["--target", "windows"], ["--check", "fast"], ["--tasks", "some"], ["--incremental", "yes"]] {
            let args = [&["--kernel", "tg.elf", "--arena", "0x8000000:4M"][..], &bad[..]].concat();
            assert_eq!(attach(&args).unwrap_err().kind(), clap::error::ErrorKind::InvalidValue, "{bad:?}");
        }
        // The command-line names are the ones manifests, reports and FromStr use.
        for k in TargetKind::value_variants() {
            assert_eq!(k.to_possible_value().unwrap().get_name(), k.to_string());
        }
        for m in CheckMode::value_variants() {
            assert_eq!(m.to_possible_value().unwrap().get_name().parse::<CheckMode>().unwrap(), *m);
            assert_eq!(m.to_possible_value().unwrap().get_name(), m.to_string());
        }
        for s in TaskSource::value_variants() {
            assert_eq!(s.to_possible_value().unwrap().get_name().parse::<TaskSource>().unwrap(), *s);
        }
    }

}
