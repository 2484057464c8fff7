//! The registration record: what a VMM writes of itself in the store
//! (`PREFIX/targets/<id>` in etcd, `<dir>/<id>.json` in a directory), and
//! its reading back, which trusts nothing (bounded, checked, never a panic).
//!
//! ```json
//! {"id": "vm0", "api_sock": "/run/vsplice/vm0.sock", "labels": {"host": "a"},
//!  "kernel": {"kind": "linux", "release": "6.1.0-21-amd64", "build_id": "ab12…"},
//!  "vsplice_version": "0.1.0", "pid": 4242, "pid_start": 123456,
//!  "hostname": "node7", "registered_ms": 1765000000000}
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::labels;

/// Largest record read from a store.
pub const MAX_RECORD: usize = 16 << 10;
const MAX_TEXT: usize = 256;
const MAX_PATH: usize = 4096;

/// What the target's kernel is, as far as its VMM knows (it fills in once
/// the kernel is identified).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFacts {
    /// `testguest`, `linux`, `unknown`.
    pub kind: String,
    /// The release (`uname -r`), where known.
    pub release: Option<String>,
    /// The build-id, where known.
    pub build_id: Option<String>,
}

/// One registered target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The target's id (its name in a rollout).
    pub id: String,
    /// Its API socket (absolute).
    pub api_sock: PathBuf,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its kernel, once known.
    #[serde(default)]
    pub kernel: Option<KernelFacts>,
    /// The VMM's version.
    pub vsplice_version: String,
    /// The VMM's process id.
    pub pid: u32,
    /// The process's start time (`/proc/PID/stat` field 22, clock ticks
    /// since boot): tells a live VMM from a new process that got its pid.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// The host the VMM runs on.
    pub hostname: String,
    /// When it registered (milliseconds since the Unix epoch).
    pub registered_ms: u64,
}

/// This host's name (`/proc/sys/kernel/hostname`; empty when unreadable).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().chars().take(MAX_TEXT).collect()).unwrap_or_default()
}

/// Process `pid`'s start time (`/proc/PID/stat` field 22), `None` when it
/// is gone (or a zombie: dead, not yet reaped).
pub fn pid_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    if matches!(rest.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    rest.nth(18)?.parse().ok()
}

/// True when the VMM that wrote `r` still runs on this host (its pid alive
/// with the same start time).
pub fn alive_here(r: &Registration) -> bool {
    match (pid_start(r.pid), r.pid_start) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn text_ok(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

impl Registration {
    /// The record of this process for `id`, `api_sock`, `labels`.
    pub fn of_this_process(id: &str, api_sock: PathBuf, labels: BTreeMap<String, String>) -> Self {
        let pid = std::process::id();
        Self {
            id: id.to_owned(),
            api_sock,
            labels,
            kernel: None,
            vsplice_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid,
            pid_start: pid_start(pid),
            hostname: hostname(),
            registered_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// The record as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a record from a store (untrusted: bounded and checked).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_RECORD {
            return Err(format!("record larger than {MAX_RECORD} bytes"));
        }
        let r: Self = serde_json::from_slice(bytes).map_err(|e| format!("not a registration record: {e}"))?;
        r.check()?;
        Ok(r)
    }

    fn check(&self) -> Result<(), String> {
        labels::check_id(&self.id).map_err(|e| e.to_string())?;
        labels::check(&self.labels).map_err(|e| e.to_string())?;
        let sock = self.api_sock.to_str().unwrap_or_default();
        if !self.api_sock.is_absolute() || !text_ok(sock, MAX_PATH) {
            return Err("api_sock is not an absolute path of printable text".into());
        }
        if !text_ok(&self.hostname, MAX_TEXT) || !text_ok(&self.vsplice_version, 64) {
            return Err("hostname or vsplice_version is too long or holds control characters".into());
        }
        if let Some(k) = &self.kernel {
            let fields = [Some(&k.kind), k.release.as_ref(), k.build_id.as_ref()];
            if !fields.into_iter().flatten().all(|s| text_ok(s, MAX_TEXT)) {
                return Err("kernel facts too long or holding control characters".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_record_round_trips_and_says_who_wrote_it() {
        let mut r = Registration::of_this_process("vm0", "/run/vm0.sock".into(), [("host".to_owned(), "a".to_owned())].into());
        r.kernel = Some(KernelFacts { kind: "linux".into(), release: Some("6.1.0-21-amd64".into()), build_id: Some("ab12".into()) });
        let back = Registration::parse(r.to_json().as_bytes()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.pid, std::process::id());
        assert!(back.pid_start.is_some() && alive_here(&back), "this process is alive");
        // A record of a process that is gone (or whose pid was reused) is not alive.
        assert!(!alive_here(&Registration { pid_start: back.pid_start.map(|s| s + 1), ..back.clone() }));
        assert!(!alive_here(&Registration { pid: u32::MAX, ..back }));
        // A process that died but is not reaped yet (a zombie) is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while pid_start(child.id()).is_some() {
            assert!(std::time::Instant::now() < end, "a zombie still counts as alive");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
    }

    #[test]
    fn records_from_a_store_are_checked() {
        let good = Registration::of_this_process("vm0", "/s".into(), BTreeMap::new());
        let bad = |f: &dyn Fn(&mut Registration)| {
            let mut r = good.clone();
            f(&mut r);
            Registration::parse(r.to_json().as_bytes()).unwrap_err()
        };
        assert!(bad(&|r| r.id = "../etc".into()).contains("target id"));
        assert!(bad(&|r| r.api_sock = "relative.sock".into()).contains("absolute"));
        assert!(bad(&|r| r.hostname = "h\u{1b}[2J".into()).contains("control"));
        assert!(bad(&|r| {
            r.labels.insert("k".into(), "bad value".into());
        })
        .contains("label value"));
        assert!(bad(&|r| r.kernel = Some(KernelFacts { kind: "x".repeat(300), ..KernelFacts::default() })).contains("kernel"));
        assert!(Registration::parse(b"{").is_err());
        assert!(Registration::parse(b"[1,2]").is_err());
        assert!(Registration::parse(&vec![b' '; MAX_RECORD + 1]).unwrap_err().contains("larger"));
        // Fields a newer VMM adds are let through.
        let mut v: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
        v["future"] = serde_json::json!(1);
        assert!(Registration::parse(v.to_string().as_bytes()).is_ok());
    }
}
