//! Helpers shared by the Debian-kernel e2e tests: the guest's own view
//! (/proc/kallsyms, its threads from /proc) parsed, how /proc names a task,
//! and running a closure with a hard time limit so that a hang fails the
//! test instead of blocking it.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use vsplice_tests::qemu::Guest;

pub mod view;

/// One core-kernel line of /proc/kallsyms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSym {
    /// Address.
    pub addr: u64,
    /// Type letter.
    pub kind: char,
    /// Name.
    pub name: String,
}

/// The core-kernel symbols of /proc/kallsyms in order, and how many lines
/// belong to modules (or BPF, ftrace trampolines: a `[...]` column).
pub fn parse_proc_kallsyms(text: &str) -> Result<(Vec<ProcSym>, usize), String> {
    let mut core = Vec::new();
    let mut modules = 0;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(a), Some(k), Some(name)) = (it.next(), it.next(), it.next()) else {
            return Err(format!("bad /proc/kallsyms line {line:?}"));
        };
        if it.next().is_some() {
            modules += 1;
            continue;
        }
        let addr = u64::from_str_radix(a, 16).map_err(|_| format!("bad address in {line:?}"))?;
        let kind = k.chars().next().ok_or_else(|| format!("no type in {line:?}"))?;
        core.push(ProcSym { addr, kind, name: name.to_string() });
    }
    Ok((core, modules))
}

/// A thread as both sides name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TaskKey {
    /// Thread group (process) id.
    pub tgid: i32,
    /// Thread id.
    pub pid: i32,
    /// comm.
    pub comm: String,
}

/// Every thread the guest's /proc shows: `tgid tid comm` per line, read
/// with shell builtins only (no fork per thread).
pub const LIST_THREADS: &str = r#"for t in /proc/[0-9]*/task/[0-9]*; do
  read -r c 2>/dev/null <"$t/comm" || continue
  p=${t#/proc/}
  echo "${p%%/*} ${t##*/} $c"
done"#;

/// How /proc names a task whose `task_struct.comm` is `comm`: the same, or
/// for kernel threads (6.1) a workqueue worker's `comm-<workqueue>` or the
/// untruncated name of a kthread whose comm filled all 15 bytes.
pub fn comm_matches(comm: &str, proc_name: &str) -> bool {
    proc_name == comm
        || (comm.starts_with("kworker/") && proc_name.strip_prefix(comm).is_some_and(|r| r.starts_with('-')))
        || (comm.len() == 15 && proc_name.len() > 15 && proc_name.starts_with(comm))
}

/// The guest's threads.
pub fn guest_tasks(g: &mut Guest) -> Result<BTreeSet<TaskKey>, String> {
    let out = g.run_ok(LIST_THREADS).map_err(|e| e.to_string())?;
    out.lines()
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            let tgid = it.next().and_then(|s| s.parse().ok());
            let pid = it.next().and_then(|s| s.parse().ok());
            match (tgid, pid, it.next()) {
                (Some(tgid), Some(pid), Some(comm)) => Ok(TaskKey { tgid, pid, comm: comm.to_string() }),
                _ => Err(format!("bad thread line {l:?}")),
            }
        })
        .collect()
}

/// Runs `f` on its own thread; `Err` when it panics or is still running
/// after `limit` (the thread is then left behind, and the test fails).
pub fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = h.join();
            Ok(v)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!("still running after {limit:?} (hang)")),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let msg = match h.join() {
                Err(p) => p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())),
                Ok(()) => None,
            };
            Err(format!("panicked: {}", msg.unwrap_or_default()))
        }
    }
}
