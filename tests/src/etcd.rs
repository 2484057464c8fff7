//! An etcd cluster on loopback for the fleet's etcd tests: Debian's
//! `etcd-server` (installed here with apt-get when missing; the tests skip
//! loudly only when it cannot be), members started and killed by the test,
//! each with its own data directory and free ports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::scratch::{free_port, tmp_dir};

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(bin)).find(|p| p.is_file()))
}

/// The etcd binary, installing `etcd-server` once when it is missing; `None`
/// (after a loud skip of `test`) when it cannot be had.
pub fn etcd_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(p) = which("etcd") {
        return Some(p);
    }
    let _ = Command::new("apt-get").args(["install", "-y", "-qq", "etcd-server"]).env("DEBIAN_FRONTEND", "noninteractive").stdout(Stdio::null()).stderr(Stdio::null()).status();
    match which("etcd") {
        Some(p) => Some(p),
        None => {
            crate::skip::skip(test, "etcd (Debian etcd-server) is not installed and apt-get could not install it");
            None
        }
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    members: Vec<Option<Child>>,
    /// Each member's client endpoint, `127.0.0.1:PORT`.
    pub endpoints: Vec<String>,
    dir: PathBuf,
}

impl Cluster {
    /// Starts `n` members and waits until each answers.
    pub fn start(bin: &std::path::Path, name: &str, n: usize) -> Self {
        let dir = tmp_dir(&format!("etcd-{name}"));
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}")).collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.join(format!("m{i}.log"))).unwrap_or_else(|e| panic!("{e}"));
            let child = Command::new(bin)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("m{i}.data")))
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}"), "--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}"), "--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new", "--initial-cluster-token", name])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("etcd does not start: {e}"));
            members.push(Some(child));
        }
        let c = Self { members, endpoints: ports.iter().map(|(c, _)| format!("127.0.0.1:{c}")).collect(), dir };
        let end = Instant::now() + Duration::from_secs(60);
        for ep in &c.endpoints {
            let etcd = vsplice_vmm::fleet::etcd::Etcd::parse(&format!("etcd://{ep}/probe")).unwrap_or_else(|| panic!("{ep}"));
            while etcd.put_fenced("/probe", "1", "", 0).is_err() {
                assert!(Instant::now() < end, "etcd member {ep} never answered: {}", c.logs());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        c
    }

    /// `etcd://EP,EP,EP/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoints.join(","))
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The members' logs.
    pub fn logs(&self) -> String {
        (0..self.members.len()).map(|i| std::fs::read_to_string(self.dir.join(format!("m{i}.log"))).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
