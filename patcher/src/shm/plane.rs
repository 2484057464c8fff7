//! [`SharedPlane`]: a QEMU guest's RAM reached through its shared RAM file,
//! laid out as QEMU says over QMP, plus the QMP connection itself (for
//! `stop`/`cont` when asked to use it).
//!
//! Writes and the emulator's translation cache: under TCG, QEMU translates
//! guest code into host code and only drops a translation when QEMU itself
//! sees a store to its page (its own accesses, or the gdbstub's). A store
//! into the RAM file from another process is invisible to it, so a vCPU
//! could go on running the old translation of patched code. Writes
//! therefore go through the gdbstub under TCG ([`WriteRoute::Stub`]: QEMU
//! writes the RAM and invalidates the translations of that range) and
//! straight into the file under KVM, where the CPU itself keeps code
//! coherent ([`WriteRoute::File`]). QMP's `query-kvm` decides, never a guess.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tracing::info;

use super::error::ShmError;
use super::layout::RamLayout;
use super::qmp::Qmp;
use super::ramfile::RamFile;
use crate::model::backend::BackendError;

/// How the vCPUs are stopped and resumed in shared-memory mode (registers
/// always come from the gdbstub).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum StopVia {
    /// The gdbstub's interrupt and continue (the default).
    #[default]
    Gdb,
    /// QMP `stop` and `cont` (the gdbstub reports the stop; registers still
    /// come through it).
    Qmp,
}

/// Where writes to guest memory go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRoute {
    /// Through the gdbstub: QEMU invalidates translated code (TCG).
    Stub,
    /// Into the RAM file: coherent under KVM.
    File,
}

/// What to open.
#[derive(Debug, Clone)]
pub struct ShmSpec {
    /// The RAM file (`mem-path=` of QEMU's `memory-backend-file`).
    pub mem_path: PathBuf,
    /// QEMU's QMP Unix socket.
    pub qmp: String,
    /// How to stop and resume.
    pub stop_via: StopVia,
    /// Time-out of each QMP request.
    pub timeout: Duration,
}

/// The guest's RAM through its file, and QEMU's QMP.
#[derive(Debug)]
pub struct SharedPlane {
    ram: RamFile,
    layout: RamLayout,
    qmp: Qmp,
    writes: WriteRoute,
    stop_via: StopVia,
    running_reads: bool,
}

impl SharedPlane {
    /// Connects to QMP, reads the memory backend and the memory map, maps
    /// the file and checks that its size is the backend's.
    pub fn open(spec: &ShmSpec) -> Result<Self, ShmError> {
        let mut qmp = Qmp::connect(&spec.qmp, spec.timeout)?;
        let (id, size) = one_memdev(&qmp.execute("query-memdev", None)?)?;
        let layout = RamLayout::from_mtree(&qmp.hmp("info mtree -f")?, &id, size)?;
        let kvm = qmp.execute("query-kvm", None)?.get("enabled").and_then(Value::as_bool).unwrap_or(false);
        let ram = RamFile::open(&spec.mem_path)?;
        Self::check_size(&ram, &layout)?;
        let writes = if kvm { WriteRoute::File } else { WriteRoute::Stub };
        info!(
            file = %ram.path(), backend = %id, size, ranges = layout.ranges.len(), kvm, writes = ?writes,
            "guest RAM mapped from its file"
        );
        Ok(Self { ram, layout, qmp, writes, stop_via: spec.stop_via, running_reads: true })
    }

    fn check_size(ram: &RamFile, layout: &RamLayout) -> Result<(), ShmError> {
        if ram.len() != layout.size {
            return Err(ShmError::SizeMismatch { path: ram.path().to_string(), file: ram.len(), id: layout.backend.clone(), backend: layout.size });
        }
        Ok(())
    }

    /// The layout in use.
    pub fn layout(&self) -> &RamLayout {
        &self.layout
    }

    /// Where writes go.
    pub fn write_route(&self) -> WriteRoute {
        self.writes
    }

    /// Routes writes (tests force [`WriteRoute::File`] to show the hazard it is under TCG).
    pub fn set_write_route(&mut self, w: WriteRoute) {
        self.writes = w;
    }

    /// True when reads are served from the file while the guest runs (the
    /// default): preparation then takes no stop per read. Everything read
    /// so is untrusted and may be torn by the running guest; what the
    /// transaction depends on is read again, or checked, under the pause
    /// (task list, stacks, the target bytes).
    pub fn reads_while_running(&self) -> bool {
        self.running_reads
    }

    /// Turns reads while running on or off (off: every read takes a stop,
    /// as through the gdbstub; for measurements).
    pub fn set_reads_while_running(&mut self, on: bool) {
        self.running_reads = on;
    }

    /// How stops are made.
    pub fn stop_via(&self) -> StopVia {
        self.stop_via
    }

    /// The RAM file's path.
    pub fn path(&self) -> &Path {
        Path::new(self.ram.path())
    }

    /// Reads guest-physical memory from the file.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let bad = BackendError::BadAddress { gpa, len: buf.len() as u64 };
        let off = self.layout.offset_of(gpa, buf.len() as u64).ok_or(bad)?;
        if self.ram.read(off, buf) {
            Ok(())
        } else {
            Err(BackendError::BadAddress { gpa, len: buf.len() as u64 })
        }
    }

    /// Reads guest-physical words from the file, each with one aligned
    /// 8-byte load ([`RamFile::read_words`]); `gpa` must be 8-aligned.
    pub fn read_words(&self, gpa: u64, out: &mut [u64]) -> Result<(), BackendError> {
        let len = out.len() as u64 * 8;
        let bad = BackendError::BadAddress { gpa, len };
        let off = self.layout.offset_of(gpa, len).ok_or(bad)?;
        if self.ram.read_words(off, out) {
            Ok(())
        } else {
            Err(BackendError::BadAddress { gpa, len })
        }
    }

    /// Starts loading `len` bytes at `gpa` into the cache (a hint: nothing
    /// is read, nothing fails).
    pub fn prefetch(&self, gpa: u64, len: usize) {
        if let Some(off) = self.layout.offset_of(gpa, len as u64) {
            self.ram.prefetch(off, len);
        }
    }

    /// Writes guest-physical memory into the file (no translation-cache
    /// invalidation: see the module's documentation).
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        let bad = BackendError::BadAddress { gpa, len: data.len() as u64 };
        let off = self.layout.offset_of(gpa, data.len() as u64).ok_or(bad)?;
        if self.ram.write(off, data) {
            Ok(())
        } else {
            Err(BackendError::BadAddress { gpa, len: data.len() as u64 })
        }
    }

    /// QMP `stop`.
    pub fn qmp_stop(&mut self) -> Result<(), ShmError> {
        self.qmp.execute("stop", None).map(drop)
    }

    /// QMP `cont`.
    pub fn qmp_cont(&mut self) -> Result<(), ShmError> {
        self.qmp.execute("cont", None).map(drop)
    }
}

/// The one memory backend of the machine: its id and size. Several
/// backends (NUMA nodes, hot-plugged DIMMs) are not supported.
fn one_memdev(v: &Value) -> Result<(String, u64), ShmError> {
    let list = v.as_array().ok_or_else(|| ShmError::Layout("query-memdev did not return a list".into()))?;
    match list.as_slice() {
        [m] => {
            let id = m.get("id").and_then(Value::as_str).ok_or_else(|| ShmError::Layout("the memory backend has no id".into()))?;
            let size = m.get("size").and_then(Value::as_u64).ok_or_else(|| ShmError::Layout("the memory backend has no size".into()))?;
            Ok((id.to_string(), size))
        }
        [] => Err(ShmError::Layout("QEMU has no memory backend: start it with -object memory-backend-file,…,share=on -machine memory-backend=ID".into())),
        more => Err(ShmError::Layout(format!("QEMU has {} memory backends; one is supported", more.len()))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn exactly_one_memory_backend_is_taken() {
        let one = json!([{ "id": "pc.ram", "size": 1073741824u64, "share": true }]);
        assert_eq!(one_memdev(&one).unwrap(), ("pc.ram".to_string(), 1 << 30));
        assert_eq!(one_memdev(&json!([])).unwrap_err().cause(), "shm_layout");
        assert_eq!(one_memdev(&json!([{ "id": "a", "size": 1 }, { "id": "b", "size": 1 }])).unwrap_err().cause(), "shm_layout");
        assert_eq!(one_memdev(&json!([{ "size": 1 }])).unwrap_err().cause(), "shm_layout");
        assert_eq!(one_memdev(&json!({})).unwrap_err().cause(), "shm_layout");
    }
}
