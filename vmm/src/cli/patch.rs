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

use clap::{Args, Subcommand};
use vsplice_patcher::model::TargetKind;
use vsplice_patcher::patch::build::{build_patch, BuildOptions};
use vsplice_patcher::patch::diff::{build_from_diff, DiffOptions};
use vsplice_patcher::patch::format::read_bounded;
use vsplice_patcher::patch::manifest::PatchInfo;
use vsplice_patcher::patch::PatchFile;
use vsplice_patcher::model::chain;
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
    Build(BuildArgs),
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

/// `vsplice patch build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Kind of kernel: `testguest`, or `linux` (a stock x86-64 kernel; the
    /// patch is compiled through Kbuild against --headers).
    #[arg(long, value_enum, default_value_t = TargetKind::TestGuest)]
    pub target: TargetKind,
    /// Kernel image the patch is for: the test guest's ELF, or a Linux
    /// bzImage (vmlinuz; its build-id, kallsyms and boot-time rewrite tables
    /// give the manifest's run-pre data).
    #[arg(long, value_name = "IMAGE")]
    pub kernel: PathBuf,
    /// Linux: the kernel's Kbuild-usable headers (`/usr/src/linux-headers-<release>`).
    #[arg(long, value_name = "DIR", required_if_eq("target", TargetKind::Linux.name()))]
    pub headers: Option<PathBuf>,
    /// Extra include directory (repeatable).
    #[arg(short = 'I', long = "include", value_name = "DIR")]
    pub include: Vec<PathBuf>,
    /// Patch name (default: the source file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Cumulative: applying it atomically replaces every patch applied before it.
    #[arg(long)]
    pub cumulative: bool,
    /// C compiler (test guest; Linux patches use the compiler Kbuild chooses).
    #[arg(long, default_value = "gcc")]
    pub cc: String,
    /// Skip the build-time link check against the image (symbols, sections, relocations).
    #[arg(long)]
    pub no_link_check: bool,
    /// One-paragraph description for operators (`vsplice patch info` shows it).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// A CVE id the patch fixes (`CVE-YYYY-NNNN`; repeatable).
    #[arg(long = "cve", value_name = "CVE-ID")]
    pub cves: Vec<String>,
    /// The patch's own version (e.g. `1`, `2024.06-2`).
    #[arg(long = "version", id = "patch_version", value_name = "VERSION")]
    pub version: Option<String>,
    /// Linux: build the patch from a fix alone, a unified diff (`-p1`)
    /// against --source: every C file it touches is built before and after
    /// through Kbuild with the kernel's .config (from --headers) and
    /// compiler, every function whose code changed is replaced (callers the
    /// compiler inlined a change into included), new functions and data are
    /// carried; what cannot be carried safely is refused by name.
    #[arg(long, value_name = "FIX.patch", requires = "src_tree", conflicts_with = "source")]
    pub diff: Option<PathBuf>,
    /// With --diff: the running kernel's source tree (Debian: the
    /// `linux-source-6.1` tarball at the kernel's version, unpacked). It is
    /// configured and prepared once; the fixed build happens in a sibling copy
    /// `SRC.vsplice-post`, SRC itself is never modified.
    #[arg(long = "source", value_name = "SRC", requires = "diff")]
    pub src_tree: Option<PathBuf>,
    /// With --diff: WARN sites of replaced code become NOPs (without it they
    /// are compiled as calls of the kernel's `__warn()` and keep warning).
    /// BUG sites are always kept: the guest oopses there as it would.
    #[arg(long, requires = "diff")]
    pub drop_warnings: bool,
    /// Output patch file (written whole or not at all).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// The patch source (a C file with `vsplice.h` records; not with --diff).
    #[arg(required_unless_present = "diff")]
    pub source: Option<PathBuf>,
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
    let code = {
        let mut p = Patcher::new(&mut backend, &*target, cfg);
        f(&mut p)
    };
    // Never let the guest run half-patched: then it stays stopped.
    session::end(&*target, backend, g.arena, RECOVER_HINT);
    code
}

/// Writes `bytes` to `path` through a temporary file renamed over it.
fn write_whole(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let r = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn build_diff(a: BuildArgs, diff: PathBuf, info: PatchInfo) -> ExitCode {
    let (Some(headers), Some(source)) = (a.headers, a.src_tree) else {
        eprintln!("vsplice: error [bad_input]: --diff needs --target linux, --headers and --source");
        return ExitCode::from(EXIT_BAD_INPUT);
    };
    if a.target != TargetKind::Linux {
        eprintln!("vsplice: error [bad_input]: --diff needs --target linux");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let opts = DiffOptions { kernel: a.kernel, headers, source, diff, name: a.name, cumulative: a.cumulative, drop_warnings: a.drop_warnings, info };
    match build_from_diff(&opts) {
        Ok(p) => finish_build(&p, &a.output),
        Err(e) => {
            eprintln!("vsplice: error [{}]: {}", e.cause(), chain(&e).replace('\n', " "));
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn finish_build(p: &PatchFile, output: &std::path::Path) -> ExitCode {
    let bytes = match p.to_bytes() {
        Ok(b) => b,
        Err(e) => {
            super::report(&e, e.reason());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    if let Err(e) = write_whole(output, &bytes) {
        eprintln!("vsplice: error [unexpected]: writing {}: {}", output.display(), chain(&e));
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    println!("{}", p.manifest.to_json());
    ExitCode::SUCCESS
}

fn build(a: BuildArgs) -> ExitCode {
    let info = PatchInfo { description: a.description.clone(), cves: a.cves.clone(), version: a.version.clone() };
    if let Err(e) = info.validate() {
        super::report(&e, e.reason);
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    if let Some(diff) = a.diff.clone() {
        return build_diff(a, diff, info);
    }
    if a.src_tree.is_some() || a.drop_warnings {
        eprintln!("vsplice: error [bad_input]: --source and --drop-warnings go with --diff");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let Some(source) = a.source.clone() else {
        eprintln!("vsplice: error [bad_input]: a patch source (C file) or --diff is needed");
        return ExitCode::from(EXIT_BAD_INPUT);
    };
    let mut opts = BuildOptions::testguest(&a.kernel, &source);
    opts.target = a.target;
    opts.headers = a.headers;
    opts.include_dirs = a.include;
    opts.name = a.name;
    opts.cumulative = a.cumulative;
    opts.cc = a.cc;
    opts.link_check = !a.no_link_check;
    opts.info = info;
    match build_patch(&opts) {
        Ok(p) => finish_build(&p, &a.output),
        Err(e) => {
            super::report(&e, e.cause());
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// Runs `vsplice patch …`.
pub fn run(cmd: PatchCommand) -> ExitCode {
    match cmd {
        PatchCommand::Build(a) => build(a),
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
    use vsplice_patcher::model::CheckMode;
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
        for bad in [["--target", "windows"], ["--check", "fast"], ["--tasks", "some"]] {
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

    #[test]
    fn build_needs_headers_for_linux_only() {
        let build = |extra: &[&str]| {
            let argv = [&["vsplice", "patch", "build", "--kernel", "k", "-o", "p.vsp", "p.c"][..], extra].concat();
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Patch(PatchCommand::Build(b)) => b.target,
                other => panic!("parsed as {other:?}"),
            })
        };
        assert_eq!(build(&[]).unwrap(), TargetKind::TestGuest);
        assert_eq!(build(&["--target", "linux"]).unwrap_err().kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(build(&["--target", "linux", "--headers", "/h"]).unwrap(), TargetKind::Linux);
    }

    #[test]
    fn a_diff_build_needs_its_source_tree_and_no_patch_source() {
        use clap::error::ErrorKind;
        let parse = |args: &[&str]| {
            let argv = [&["vsplice", "patch", "build", "--target", "linux", "--kernel", "k", "--headers", "/h", "-o", "p.vsp"][..], args].concat();
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Patch(PatchCommand::Build(b)) => (b.diff, b.src_tree, b.drop_warnings),
                other => panic!("parsed as {other:?}"),
            })
        };
        let (diff, src, drop) = parse(&["--diff", "fix.patch", "--source", "/src", "--drop-warnings"]).unwrap();
        assert_eq!((diff.unwrap(), src.unwrap(), drop), ("fix.patch".into(), "/src".into(), true));
        assert_eq!(parse(&["--diff", "fix.patch"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(parse(&["--diff", "fix.patch", "--source", "/src", "p.c"]).unwrap_err().kind(), ErrorKind::ArgumentConflict);
        assert_eq!(parse(&[]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument, "no patch source and no --diff");
    }
}
