//! QEMU guests whose RAM is a shared file (`memory-backend-file`,
//! `share=on`) with a QMP socket: what vsplice's shared-memory backend
//! needs. [`crate::qemu::QemuConfig::shared_ram`] asks for it; the
//! environment variable `VSPLICE_TEST_SHM=1` makes it the default of every
//! Debian guest, so the whole Debian suite runs on the shared-memory
//! backend without a copy of any test (`linuxpatch::attach` and
//! [`SharedRam::cli_args`] pick it up).

use std::path::{Path, PathBuf};
use std::time::Duration;

use vsplice_patcher::shm::{ShmSpec, StopVia};

/// True when `VSPLICE_TEST_SHM` asks for shared RAM by default.
pub fn default_from_env() -> bool {
    std::env::var("VSPLICE_TEST_SHM").is_ok_and(|v| v == "1")
}

/// The RAM file and QMP socket of one guest; the file goes with it.
#[derive(Debug)]
pub struct SharedRam {
    /// The RAM file (in /dev/shm when there is one).
    pub mem_path: PathBuf,
    /// QEMU's QMP socket.
    pub qmp: PathBuf,
}

impl SharedRam {
    /// Paths for a guest with temp dir `dir` and name `tag`, and the QEMU
    /// arguments that use them.
    pub fn new(dir: &Path, tag: &str, mem_mib: u32) -> (Self, Vec<String>) {
        let shm = Path::new("/dev/shm");
        let mem_path = if shm.is_dir() { shm.join(format!("vsplice-test-{}-{tag}.ram", std::process::id())) } else { dir.join("ram") };
        let qmp = dir.join("qmp.sock");
        let args = vec![
            "-object".to_string(),
            format!("memory-backend-file,id=mem,size={mem_mib}M,mem-path={},share=on", mem_path.display()),
            "-machine".into(),
            "memory-backend=mem".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
        ];
        (Self { mem_path, qmp }, args)
    }

    /// What the patcher's shared-memory attach takes.
    pub fn spec(&self, stop_via: StopVia) -> ShmSpec {
        ShmSpec { mem_path: self.mem_path.clone(), qmp: self.qmp.display().to_string(), stop_via, timeout: Duration::from_secs(20) }
    }

    /// `--mem-path FILE --qmp SOCK` for the CLI.
    pub fn cli_args(&self) -> Vec<String> {
        vec!["--mem-path".into(), self.mem_path.display().to_string(), "--qmp".into(), self.qmp.display().to_string()]
    }
}

impl Drop for SharedRam {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.mem_path);
    }
}
