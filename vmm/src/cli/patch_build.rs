//! `vsplice patch build`: compile a live patch into one `.vsp` file, from a
//! hand-written C source (`vsplice.h` records) or, for Linux, from a source
//! fix alone (`--diff`, built before and after through Kbuild and compared
//! object by object). The output is written whole or not at all.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vsplice_patcher::model::chain;
use vsplice_patcher::model::TargetKind;
use vsplice_patcher::patch::build::{build_patch, BuildOptions};
use vsplice_patcher::patch::diff::{build_from_diff, DiffOptions};
use vsplice_patcher::patch::manifest::PatchInfo;
use vsplice_patcher::patch::PatchFile;

use super::run::EXIT_BAD_INPUT;

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
    /// With --diff, when the fixed file is part of a module (Kbuild: its
    /// object is in obj-m): the kernel's module tree, `/lib/modules/<release>`
    /// of its image package. The module's `.ko` there (`.ko`, `.ko.xz` or
    /// `.ko.zst`) is the file the guest loads; run-pre and the binding of
    /// the module's own names read it.
    #[arg(long, value_name = "DIR", requires = "diff")]
    pub modules: Option<PathBuf>,
    /// With --diff: a partial build. A file whose change cannot be carried
    /// (refused, or Kbuild fails on it; headers and assembly of a diff with
    /// C files) is left out instead of refusing the whole patch; each one is
    /// printed and listed in the manifest (`build.left_out`) with its cause.
    /// Without it, a refusal in any file refuses the patch, naming the file.
    #[arg(long, requires = "diff")]
    pub skip_refused: bool,
    /// Output patch file (written whole or not at all).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// The patch source (a C file with `vsplice.h` records; not with --diff).
    #[arg(required_unless_present = "diff")]
    pub source: Option<PathBuf>,
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
    let opts = DiffOptions { kernel: a.kernel, headers, source, diff, modules: a.modules, name: a.name, cumulative: a.cumulative, drop_warnings: a.drop_warnings, skip_refused: a.skip_refused, info };
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

pub(super) fn build(a: BuildArgs) -> ExitCode {
    let info = PatchInfo { description: a.description.clone(), cves: a.cves.clone(), version: a.version.clone() };
    if let Err(e) = info.validate() {
        super::report(&e, e.reason);
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    if let Some(diff) = a.diff.clone() {
        return build_diff(a, diff, info);
    }
    if a.src_tree.is_some() || a.drop_warnings || a.skip_refused {
        eprintln!("vsplice: error [bad_input]: --source, --drop-warnings and --skip-refused go with --diff");
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;
    use crate::cli::patch::PatchCommand;
    use crate::cli::{Cli, Command};

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
        let skip = |args: &[&str]| {
            let argv = [&["vsplice", "patch", "build", "--target", "linux", "--kernel", "k", "--headers", "/h", "-o", "p.vsp"][..], args].concat();
            Cli::try_parse_from(argv).map(|c| matches!(c.command, Command::Patch(PatchCommand::Build(b)) if b.skip_refused))
        };
        assert!(skip(&["--diff", "fix.patch", "--source", "/src", "--skip-refused"]).unwrap());
        assert!(!skip(&["--diff", "fix.patch", "--source", "/src"]).unwrap());
        assert_eq!(skip(&["--skip-refused", "p.c"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument, "--skip-refused needs --diff");
        assert_eq!(parse(&["--diff", "fix.patch", "--source", "/src", "p.c"]).unwrap_err().kind(), ErrorKind::ArgumentConflict);
        assert_eq!(parse(&[]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument, "no patch source and no --diff");
    }
}
