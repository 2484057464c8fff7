//! The purpose-built test guest from the test's side: where its image is,
//! a serial sink that collects its output, the parser for its `TG ...` lines
//! (with the line checksum that detects torn output), and its ELF symbols.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where `images/build-testguest.sh` puts the guest.
pub fn image() -> PathBuf {
    workspace_root().join("target/images/testguest/testguest.elf")
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of the built `vsplice` binary of the same profile and target
/// directory as the tests (`CARGO_TARGET_DIR` included): the test executable
/// is `<target>/<profile>/deps/<test>-<hash>`, the binary `<target>/<profile>/vsplice`.
pub fn vsplice_bin() -> PathBuf {
    let profile_dir = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()));
    profile_dir.unwrap_or_else(|| {
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        workspace_root().join("target").join(profile)
    })
    .join("vsplice")
}

/// The `vsplice` binary, checked to be built with the `fault-injection`
/// feature (its `--version` says so), which the tests that kill it midway
/// through `VSPLICE_FAULT_KILL_AFTER_WRITES` need; panics otherwise, since
/// such a test would otherwise never see a kill.
pub fn vsplice_bin_with_fault_injection() -> PathBuf {
    let bin = vsplice_bin();
    let version = std::process::Command::new(&bin).arg("--version").output();
    let version = match &version {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => panic!("{} does not run ({e}): run `cargo build --release -p vsplice-vmm --features fault-injection` first", bin.display()),
    };
    assert!(
        version.contains("(fault-injection)"),
        "{} was built without the fault-injection feature (`--version`: {}): run `cargo build --release -p vsplice-vmm --features fault-injection`",
        bin.display(),
        version.trim()
    );
    bin
}

/// A `Write` that keeps everything written, shareable with the VMM's serial.
#[derive(Debug, Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().map_err(|_| io::Error::other("poisoned"))?.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Everything written so far, lossily decoded.
    pub fn text(&self) -> String {
        self.0.lock().map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default()
    }

    /// Waits until `pred` holds on the text, or `timeout` passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.text()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One `TG cpu=… task=… iter=… value=… magic=… sum=…` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TgLine {
    /// vCPU that printed it.
    pub cpu: u64,
    /// Task id.
    pub task: u64,
    /// Iteration counter of that task.
    pub iter: u64,
    /// Value computed by the patchable chain.
    pub value: u64,
    /// The `tg_magic` global.
    pub magic: u64,
}

fn num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses a task line; `Err` for a line that starts like one but is damaged
/// (bad field, bad checksum), `Ok(None)` for any other line.
pub fn parse_line(line: &str) -> Result<Option<TgLine>, String> {
    let line = line.trim_end_matches('\r');
    if !line.starts_with("TG cpu=") {
        return Ok(None);
    }
    let (body, sum) = line.rsplit_once(" sum=").ok_or_else(|| format!("no checksum: {line:?}"))?;
    let want = num(sum).ok_or_else(|| format!("bad checksum field: {line:?}"))?;
    let got = checksum(body);
    if got != want {
        return Err(format!("checksum {got:#x} != {want:#x}: {line:?}"));
    }
    let fields: BTreeMap<&str, u64> = body
        .split_whitespace()
        .skip(1)
        .map(|kv| kv.split_once('=').and_then(|(k, v)| Some((k, num(v)?))).ok_or_else(|| format!("bad field {kv:?} in {line:?}")))
        .collect::<Result<_, _>>()?;
    let get = |k: &str| fields.get(k).copied().ok_or_else(|| format!("missing {k} in {line:?}"));
    Ok(Some(TgLine { cpu: get("cpu")?, task: get("task")?, iter: get("iter")?, value: get("value")?, magic: get("magic")? }))
}

/// The line checksum the guest computes (see images/testguest/README.md).
pub fn checksum(body: &str) -> u64 {
    body.bytes().fold(0u64, |acc, b| (acc.wrapping_mul(31).wrapping_add(u64::from(b))) & 0xffff)
}

/// All complete task lines of `text`; any damaged line is an error. A last
/// line without its newline is still being written and is left out.
pub fn parse_all(text: &str) -> Result<Vec<TgLine>, String> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    let mut out = Vec::new();
    for l in complete.lines() {
        if let Some(t) = parse_line(l)? {
            out.push(t);
        }
    }
    Ok(out)
}

/// Latest iteration seen per (cpu, task).
pub fn progress(lines: &[TgLine]) -> BTreeMap<(u64, u64), u64> {
    let mut m = BTreeMap::new();
    for l in lines {
        let e = m.entry((l.cpu, l.task)).or_insert(0);
        *e = (*e).max(l.iter);
    }
    m
}

/// Virtual (kernel-half) and guest-physical address of an ELF symbol of the
/// guest image; the physical one from the PT_LOAD segment that holds it.
pub fn symbol(name: &str) -> Result<(u64, u64), String> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(image()).map_err(|e| format!("{}: {e}", image().display()))?;
    let file = ElfFile64::<object::Endianness>::parse(&*data).map_err(|e| e.to_string())?;
    let vaddr =
        file.symbols().find(|s| s.name() == Ok(name)).map(|s| s.address()).ok_or_else(|| format!("no symbol {name}"))?;
    let e = file.endian();
    file.elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(e) == object::elf::PT_LOAD)
        .find(|ph| (ph.p_vaddr(e)..ph.p_vaddr(e) + ph.p_memsz(e)).contains(&vaddr))
        .map(|ph| (vaddr, ph.p_paddr(e) + (vaddr - ph.p_vaddr(e))))
        .ok_or_else(|| format!("{name} at {vaddr:#x} is in no PT_LOAD segment"))
}

/// Serializes tests that boot guests: on two emulated cores, guests booted in
/// parallel only slow each other down.
pub fn vm_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks the preconditions of a test that boots the test guest under KVM;
/// returns false (after a loud skip) when the machine has no /dev/kvm, and
/// panics with the command to run when the image has not been built.
pub fn ready(test: &str) -> bool {
    if !crate::skip::has_kvm() {
        crate::skip::skip(test, "/dev/kvm cannot be opened on this machine");
        return false;
    }
    assert!(image().is_file(), "{} missing: run images/build-testguest.sh", image().display());
    true
}
