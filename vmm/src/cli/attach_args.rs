//! Where an attached guest is, as `vsplice patch …` and `vsplice attach`
//! take it: the gdbstub, the kind of kernel, the arena, the safety check,
//! the task source, and QEMU's RAM file and QMP socket for the
//! shared-memory backend.

use std::path::PathBuf;

use clap::Args;
use vsplice_patcher::model::{ArenaRange, CheckMode, Incremental, TargetKind};
use vsplice_patcher::os::linux::view::TaskSource;
use vsplice_patcher::shm::{ShmSpec, StopVia};

/// Where an attached guest is.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// gdbstub address (`host:port`, e.g. QEMU's `-gdb tcp:127.0.0.1:1234`, or a Unix socket path).
    #[arg(long, value_name = "ADDR")]
    pub gdb: String,
    /// Kind of kernel: `testguest`, or `linux` (identified from guest memory:
    /// kallsyms, KASLR slide, build-id, BTF; no image needed).
    #[arg(long, value_enum, default_value_t = TargetKind::TestGuest)]
    pub target: TargetKind,
    /// The running kernel's image (test guest: its ELF; ignored for Linux).
    #[arg(long, value_name = "IMAGE", required_if_eq("target", TargetKind::TestGuest.name()))]
    pub kernel: Option<PathBuf>,
    /// The patch arena: guest-physical `START:SIZE` (e.g. `0x3f000000:4M`), 2 MiB aligned,
    /// at least 4 MiB, that the guest was booted with reserved from its RAM
    /// (Linux: `memmap=4M$0x3f000000` on its command line). vsplice cannot
    /// discover it; a range the guest uses as RAM would be overwritten.
    #[arg(long, value_name = "START:SIZE")]
    pub arena: ArenaRange,
    /// Time-out of each gdbstub request, in milliseconds.
    #[arg(long, default_value_t = 20_000, value_name = "MS")]
    pub timeout_ms: u64,
    /// The safety check: `orc` unwinds every stack with the kernel's ORC
    /// data (a stack it cannot unwind is scanned word by word instead, and
    /// the result's `check` says which and why); `conservative` scans every
    /// word of every stack (Ksplice's check: stale code addresses count).
    #[arg(long, value_enum, default_value_t = CheckMode::Orc)]
    pub check: CheckMode,
    /// The incremental safety check (with `--check orc`): `on` unwinds
    /// every sleeping task while the guest runs, and the pause checks only
    /// the vCPUs, the CPU stacks and the tasks the scheduler's evidence
    /// (task_struct, start_time, nvcsw, nivcsw, thread.sp) does not prove
    /// idle since; `compare` runs that and the full check under the same
    /// pause and refuses (`incremental_mismatch`) if their conflicts
    /// differ; `off` checks every task under the pause. The result's
    /// `check.incremental` counts the tasks reused and rechecked.
    #[arg(long, value_enum, default_value_t = Incremental::Off)]
    pub incremental: Incremental,
    /// Where a Linux guest's task list comes from: `auto` (the vsplice guest
    /// agent when loaded, checked against the BTF walk; else the walk),
    /// `agent` (refuse without a sound agent), `agentless` (the walk only).
    #[arg(long, value_enum, default_value_t = TaskSource::Auto)]
    pub tasks: TaskSource,
    /// QEMU's RAM file: the `mem-path` of `-object
    /// memory-backend-file,id=mem,size=…,mem-path=FILE,share=on` with
    /// `-machine memory-backend=mem` (libvirt: `<memoryBacking><source
    /// type='file'/><access mode='shared'/>`). Guest memory is then read
    /// through the file instead of the gdbstub (writes still go through
    /// the stub under TCG, which keeps translated code coherent; into the
    /// file under KVM). The file is checked against the gdbstub's view
    /// first and refused (`shm_not_this_guest`, `shm_size_mismatch`, …)
    /// when it is not this guest's RAM. Needs `--qmp`.
    #[arg(long, value_name = "FILE", requires = "qmp")]
    pub mem_path: Option<PathBuf>,
    /// QEMU's QMP Unix socket (`-qmp unix:SOCK,server=on,wait=off`): the
    /// guest-physical layout of the RAM file (below and above the PCI hole)
    /// comes from QEMU's memory map over it. Needs `--mem-path`.
    #[arg(long, value_name = "SOCK", requires = "mem_path")]
    pub qmp: Option<PathBuf>,
    /// With `--mem-path`: stop and resume the guest through the gdbstub
    /// (`gdb`: interrupt, continue) or through QMP (`qmp`: `stop`, `cont`);
    /// registers come from the gdbstub either way.
    #[arg(long, value_enum, default_value_t = StopVia::Gdb)]
    pub stop_via: StopVia,
}

impl AttachArgs {
    /// The shared-memory request of `--mem-path`/`--qmp`, if any.
    pub fn shm(&self) -> Option<ShmSpec> {
        let (mem_path, qmp) = (self.mem_path.clone()?, self.qmp.as_ref()?);
        let timeout = std::time::Duration::from_millis(self.timeout_ms);
        Some(ShmSpec { mem_path, qmp: qmp.to_string_lossy().into_owned(), stop_via: self.stop_via, timeout })
    }
}
