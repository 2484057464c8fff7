//! `vsplice attach` as a user runs it, for the end-to-end tests: the daemon
//! as a child process (SIGKILLed on drop if still there), its stderr in a
//! file, its ready line waited for, requests and `vsplice remote` runs whose
//! JSON replies are checked against `docs/openapi.yaml`, SIGTERM and its
//! exit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use vsplice_vmm::api::client::{self, ClientResponse};

use crate::cli::{remote_command, vsplice_bin};
use crate::openapi::OpenApi;

/// What the daemon prints on stderr once it serves.
pub const READY: &str = "vsplice: attached to ";

/// A running `vsplice attach`.
#[derive(Debug)]
pub struct AttachDaemon {
    child: Option<Child>,
    /// The API socket.
    pub sock: PathBuf,
    /// The daemon's stderr.
    pub stderr: PathBuf,
    openapi: OpenApi,
}

impl AttachDaemon {
    /// Starts `vsplice attach --gdb GDB --target linux --arena ARENA
    /// --api-sock DIR/api.sock extra…` and waits up to `timeout` for its
    /// ready line. `Err` with its stderr when it exits or times out first.
    pub fn start(dir: &Path, gdb: &str, arena: &str, extra: &[&str], timeout: Duration) -> Result<Self, String> {
        let (sock, stderr) = (dir.join("api.sock"), dir.join("attach-stderr.txt"));
        let err = std::fs::File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
        let child = Command::new(vsplice_bin())
            .args(["attach", "--gdb", gdb, "--target", "linux", "--arena", arena, "--api-sock"])
            .arg(&sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("vsplice attach does not start: {e}"))?;
        let mut d = Self { child: Some(child), sock, stderr, openapi: OpenApi::load() };
        let end = Instant::now() + timeout;
        while !d.stderr_text().contains(READY) {
            if let Some(st) = d.try_exit() {
                return Err(format!("vsplice attach exited ({st}) before it was ready:\n{}", d.stderr_text()));
            }
            if Instant::now() > end {
                return Err(format!("vsplice attach not ready after {timeout:?}:\n{}", d.stderr_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    /// The daemon's stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The OpenAPI validator.
    pub fn openapi(&self) -> &OpenApi {
        &self.openapi
    }

    /// One request; its reply is checked against the OpenAPI document.
    pub fn req(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> ClientResponse {
        let r = client::request(&self.sock, method, path, content_type, body, Some(Duration::from_secs(300)))
            .unwrap_or_else(|e| panic!("{method} {path}: {e} [{}]\n{}", e.cause(), self.stderr_text()));
        if let Err(e) = self.openapi.conforms(method, path, &r) {
            panic!("reply does not conform to docs/openapi.yaml: {e}");
        }
        r
    }

    /// Runs `vsplice remote --api-sock SOCK --json args…`; the JSON it
    /// prints is checked against the document's `component` schema.
    pub fn remote_json(&self, args: &[&str], component: &str) -> (Output, serde_json::Value) {
        let o = self.remote(&[&["--json"], args].concat());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("remote {args:?}: not JSON ({e}): {}{}", crate::cli::text(&o.stdout), crate::cli::text(&o.stderr)));
        if let Err(e) = self.openapi.validate_component(component, &v) {
            panic!("remote {args:?}: does not conform to {component}: {e}");
        }
        (o, v)
    }

    /// Runs `vsplice remote --api-sock SOCK args…`.
    pub fn remote(&self, args: &[&str]) -> Output {
        remote_command(&self.sock, args).output().unwrap_or_else(|e| panic!("vsplice remote: {e}"))
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(c) = &self.child {
            let pid = c.id() as libc::pid_t;
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            let r = unsafe { libc::kill(pid, signal) };
            assert_eq!(r, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(st)
    }

    /// Waits up to `timeout` for the daemon to end; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for AttachDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
