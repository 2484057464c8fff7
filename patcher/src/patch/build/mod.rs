//! `vsplice patch build`: compile one C file with the target kernel's own
//! flags, read its `vsplice.h` records, and write a self-contained patch file
//! whose manifest carries the target build-id and, for each replaced
//! function, its size and the SHA-256 of its bytes in the image (run-pre).
//!
//! The test guest's flags mirror `images/testguest/Makefile` (kernel code
//! model, no red zone, integer registers only, -pg -mfentry -mrecord-mcount
//! so fentry calls and `__mcount_loc` are there for the loader to NOP out,
//! one section per function and per object). Linux patches are compiled
//! through Kbuild against the kernel's headers ([`kbuild`]),
//! and their run-pre digests tolerate the kernel's boot-time rewrites
//! ([`super::linux::rewrites`]).

pub mod kbuild;

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use kbuild::KbuildJob;

use super::format::PatchFile;
use super::linux_image::{LinuxImage, LinuxImageError};
use super::manifest::{patch_id, run_pre_digest, BuildInfo, ByteMask, Manifest, PatchInfo, Replacement, SymbolAlias, TargetSpec, MANIFEST_VERSION};
use super::records::{object_records, Record};
use crate::patch::link::{CheckEnv, LinkEnv, LoadError, Object, UnknownEnv};
use crate::os::elf::{ElfImage, ElfImageError};
use crate::model::{LookupError, SymbolTable, TargetKind};

/// The patch author's header, installed next to each compilation.
pub const VSPLICE_H: &str = include_str!("../../../include/vsplice.h");

/// Flags of the test guest's kernel code (images/testguest/Makefile), plus
/// the per-function / per-object sections the loader wants.
pub const TESTGUEST_CFLAGS: &[&str] = &[
    "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-ffreestanding", "-nostdlib",
    "-mcmodel=kernel", "-mno-red-zone", "-mgeneral-regs-only", "-fno-pic", "-fno-pie",
    "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
    "-fcf-protection=none", "-fno-tree-loop-distribute-patterns", "-fno-common",
    "-falign-jumps=1", "-falign-loops=1", "-falign-labels=1", "-falign-functions=16",
    "-pg", "-mfentry", "-mrecord-mcount", "-ffunction-sections", "-fdata-sections",
];

/// Why a patch could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The patch would be one the reader refuses (too large, a bad manifest).
    #[error("the patch cannot be written: {0}")]
    Format(#[source] crate::patch::FormatError),
    /// The kernel image is unusable.
    #[error(transparent)]
    Image(#[from] ElfImageError),
    /// The Linux kernel image is unusable.
    #[error(transparent)]
    LinuxImage(#[from] LinuxImageError),
    /// A Linux patch needs the kernel's headers.
    #[error("building a Linux patch needs the kernel's Kbuild headers (--headers DIR)")]
    NoHeaders,
    /// The compiler could not be run or failed.
    #[error("compiling {source_file} failed:\n{stderr}")]
    Compile {
        /// The source file.
        source_file: String,
        /// Compiler diagnostics.
        stderr: String,
    },
    /// An I/O error around the compilation.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A `vsplice.h` record is malformed, or nothing is replaced.
    #[error("patch records: {0}")]
    Records(String),
    /// A replaced function cannot be found (or is ambiguous) in the image.
    #[error("replacement target: {0}")]
    Target(#[source] LookupError),
    /// The target function's bytes are not in the image file.
    #[error("the bytes of `{0}` are not in the kernel image")]
    NoBytes(String),
    /// The object does not load against the image (unknown symbol, refused section, …).
    #[error("the patch does not link against the kernel image")]
    Link(#[source] LoadError),
    /// The manifest cannot be serialized.
    #[error("manifest serialization failed")]
    Json(#[source] serde_json::Error),
}

impl BuildError {
    /// Stable machine-readable cause.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Link(e) => e.cause(),
            Self::Format(e) => e.reason(),
            Self::Target(LookupError::NotFound { .. }) => "failed_to_find",
            Self::Image(_) | Self::LinuxImage(_) | Self::NoHeaders | Self::Io { .. } | Self::Compile { .. } => "build_failed",
            _ => "bad_patch",
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Kind of target.
    pub target: TargetKind,
    /// Kernel image built against (test guest: ELF with symbols; Linux: the bzImage).
    pub kernel: PathBuf,
    /// Linux: the kernel's Kbuild-usable headers.
    pub headers: Option<PathBuf>,
    /// The patch source.
    pub source: PathBuf,
    /// Extra include directories (e.g. the kernel's headers).
    pub include_dirs: Vec<PathBuf>,
    /// Patch name (default: the source file's stem).
    pub name: Option<String>,
    /// Cumulative patch (replaces every patch applied before it).
    pub cumulative: bool,
    /// C compiler.
    pub cc: String,
    /// Check at build time that every symbol resolves and every section loads.
    pub link_check: bool,
    /// Description, CVE ids, version for the manifest.
    pub info: PatchInfo,
}

impl BuildOptions {
    /// Defaults for a test-guest patch.
    pub fn testguest(kernel: impl Into<PathBuf>, source: impl Into<PathBuf>) -> Self {
        Self {
            target: TargetKind::TestGuest,
            kernel: kernel.into(),
            source: source.into(),
            headers: None,
            include_dirs: Vec::new(),
            name: None,
            cumulative: false,
            cc: "gcc".into(),
            link_check: true,
            info: PatchInfo::default(),
        }
    }

    /// Defaults for a Linux patch: the bzImage and its headers.
    pub fn linux(kernel: impl Into<PathBuf>, headers: impl Into<PathBuf>, source: impl Into<PathBuf>) -> Self {
        Self { target: TargetKind::Linux, headers: Some(headers.into()), ..Self::testguest(kernel, source) }
    }
}

/// Compiles `source` to an object with the target's flags; returns its bytes.
pub fn compile(opts: &BuildOptions) -> Result<(Vec<u8>, BuildInfo), BuildError> {
    if opts.target == TargetKind::Linux {
        let headers = opts.headers.as_deref().ok_or(BuildError::NoHeaders)?;
        return kbuild::compile(&KbuildJob { headers, source: &opts.source, include_dirs: &opts.include_dirs, make: "make" });
    }
    let dir = std::env::temp_dir().join(format!("vsplice-build-{}-{}", std::process::id(), unique()));
    let io = |what: String| move |source| BuildError::Io { what, source };
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let result = (|| {
        std::fs::write(dir.join("vsplice.h"), VSPLICE_H).map_err(io("writing vsplice.h".into()))?;
        let out = dir.join("patch.o");
        let mut flags: Vec<String> = TESTGUEST_CFLAGS.iter().map(|s| (*s).to_owned()).collect();
        flags.push(format!("-I{}", dir.display()));
        for d in &opts.include_dirs {
            flags.push(format!("-I{}", d.display()));
        }
        let output = Command::new(&opts.cc)
            .args(&flags)
            .arg("-c")
            .arg(&opts.source)
            .arg("-o")
            .arg(&out)
            .output()
            .map_err(io(format!("running {}", opts.cc)))?;
        if !output.status.success() {
            return Err(BuildError::Compile {
                source_file: opts.source.display().to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        let obj = std::fs::read(&out).map_err(io(format!("reading {}", out.display())))?;
        Ok((obj, BuildInfo { source: opts.source.display().to_string(), compiler: opts.cc.clone(), flags, left_out: Vec::new() }))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A number unique in this process (temp directory names).
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The kernel image a patch is built against, as the builder needs it.
pub trait PatchImage {
    /// Symbols at link addresses.
    fn symbols(&self) -> &SymbolTable;
    /// GNU build-id, lower-case hex.
    fn build_id(&self) -> Option<&str>;
    /// The image's bytes at link address `addr`.
    fn bytes_at(&self, addr: u64, len: u64) -> Option<&[u8]>;
    /// Byte ranges of `[addr, addr + size)` the kernel rewrites at boot.
    fn masks(&self, addr: u64, size: u64) -> Vec<ByteMask>;
    /// The loader environment of the build-time link check.
    fn check_env(&self) -> Box<dyn LinkEnv>;
}

impl PatchImage for ElfImage {
    fn symbols(&self) -> &SymbolTable {
        ElfImage::symbols(self)
    }
    fn build_id(&self) -> Option<&str> {
        ElfImage::build_id(self)
    }
    fn bytes_at(&self, addr: u64, len: u64) -> Option<&[u8]> {
        ElfImage::bytes_at(self, addr, len)
    }
    fn masks(&self, _addr: u64, _size: u64) -> Vec<ByteMask> {
        Vec::new() // the test guest rewrites nothing at boot
    }
    fn check_env(&self) -> Box<dyn LinkEnv> {
        Box::new(UnknownEnv)
    }
}

impl PatchImage for LinuxImage {
    fn symbols(&self) -> &SymbolTable {
        LinuxImage::symbols(self)
    }
    fn build_id(&self) -> Option<&str> {
        LinuxImage::build_id(self)
    }
    fn bytes_at(&self, addr: u64, len: u64) -> Option<&[u8]> {
        LinuxImage::bytes_at(self, addr, len)
    }
    fn masks(&self, addr: u64, size: u64) -> Vec<ByteMask> {
        LinuxImage::masks(self, addr, size)
    }
    fn check_env(&self) -> Box<dyn LinkEnv> {
        Box::new(CheckEnv)
    }
}

/// Builds the patch file from an already compiled object.
pub fn make_patch(
    object: Vec<u8>,
    image: &dyn PatchImage,
    kind: TargetKind,
    name: &str,
    cumulative: bool,
    build: BuildInfo,
    link_check: bool,
) -> Result<PatchFile, BuildError> {
    let records = object_records(&object).map_err(BuildError::Records)?;
    let mut replacements = Vec::new();
    let mut symbols = Vec::new();
    for r in records {
        match r {
            Record::Replace { old, new, qualifier } => {
                let sym = image.symbols().resolve(&old, qualifier.as_ref()).map_err(BuildError::Target)?;
                let bytes = image.bytes_at(sym.addr, sym.size).ok_or_else(|| BuildError::NoBytes(old.clone()))?;
                let tolerate = image.masks(sym.addr, sym.size);
                replacements.push(Replacement {
                    old,
                    qualifier,
                    new,
                    old_addr: sym.addr,
                    size: sym.size,
                    sha256: run_pre_digest(bytes, &tolerate),
                    tolerate,
                    why: None,
                    object: None,
                });
            }
            Record::Symbol { name, target, qualifier } => symbols.push(SymbolAlias { name, target, qualifier, object: None }),
        }
    }
    if replacements.is_empty() {
        return Err(BuildError::Records("no VSPLICE_REPLACE in the patch".into()));
    }
    package(Packaging { object, replacements, symbols, kind, name, cumulative, build, link_check }, image)
}

/// A compiled patch object with what it replaces, to be checked and packaged.
#[derive(Debug)]
pub struct Packaging<'n> {
    /// The object.
    pub object: Vec<u8>,
    /// Functions replaced (run-pre data filled in).
    pub replacements: Vec<Replacement>,
    /// Names of the object bound to qualified target symbols.
    pub symbols: Vec<SymbolAlias>,
    /// Target kind.
    pub kind: TargetKind,
    /// Patch name.
    pub name: &'n str,
    /// Cumulative patch.
    pub cumulative: bool,
    /// How it was built.
    pub build: BuildInfo,
    /// Link it at plausible addresses against the image first.
    pub link_check: bool,
}

/// Checks (link at plausible arena addresses) and packages a patch object.
pub fn package(p: Packaging<'_>, image: &dyn PatchImage) -> Result<PatchFile, BuildError> {
    let Packaging { object, replacements, symbols, kind, name, cumulative, build, link_check } = p;
    if link_check {
        let obj = Object::parse(&object).map_err(BuildError::Link)?;
        for r in &replacements {
            if !obj.defines_function(&r.new) {
                return Err(BuildError::Link(LoadError::MissingFunction(r.new.clone())));
            }
        }
        // Link at plausible arena addresses: every symbol must resolve, every relocation fit.
        let probe = 0xffff_ffff_c000_0000u64 - (8 << 20);
        obj.link_with(probe, probe + (4 << 20), &crate::patch::objects::link_aliases(&symbols), image.symbols(), &mut *image.check_env()).map_err(BuildError::Link)?;
    }
    let manifest = Manifest {
        format: MANIFEST_VERSION,
        name: name.to_owned(),
        id: patch_id(name, &object),
        target: TargetSpec { kind, build_id: image.build_id().map(str::to_owned) },
        cumulative,
        replacements,
        symbols,
        build,
        info: PatchInfo::default(),
    };
    Ok(PatchFile { manifest, object })
}

/// Opens the kernel image the way the target kind needs it.
pub fn open_image(target: TargetKind, kernel: &Path) -> Result<Box<dyn PatchImage>, BuildError> {
    match target {
        TargetKind::TestGuest => Ok(Box::new(ElfImage::open(kernel)?)),
        TargetKind::Linux => Ok(Box::new(LinuxImage::open(kernel)?)),
    }
}

/// Compiles and packages a patch.
pub fn build_patch(opts: &BuildOptions) -> Result<PatchFile, BuildError> {
    let image = open_image(opts.target, &opts.kernel)?;
    build_patch_with(opts, &*image)
}

/// Compiles and packages a patch against an image already opened (several
/// patches against one image open it once).
pub fn build_patch_with(opts: &BuildOptions, image: &dyn PatchImage) -> Result<PatchFile, BuildError> {
    let (object, info) = compile(opts)?;
    let name = opts.name.clone().unwrap_or_else(|| stem(&opts.source));
    let mut p = make_patch(object, image, opts.target, &name, opts.cumulative, info, opts.link_check)?;
    p.manifest.info = opts.info.clone();
    // The writer refuses what the reader would (bounds, the manifest's own checks).
    p.to_bytes().map_err(BuildError::Format)?;
    Ok(p)
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "patch".into())
}
