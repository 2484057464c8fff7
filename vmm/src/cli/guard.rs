//! The hook guard of `vsplice attach`: a second process that removes the
//! daemon's module hooks when the daemon dies without detaching.
//!
//! The daemon holds hardware breakpoints in QEMU's gdbstub while a patch
//! waits for its module (`klp_module_coming`) and while a module patch is
//! applied (`klp_module_going`). QEMU keeps a client's breakpoints when the
//! client dies without detaching (SIGKILL, a crash, the second signal's
//! exit 130), and a breakpoint hit with no debugger attached stops the
//! guest until one attaches: the next `insmod` or `rmmod` would freeze it.
//!
//! So the daemon starts this guard (`vsplice attach … --guard-for PID`, the
//! daemon's own arguments, in a process group of its own so a terminal's
//! Ctrl-C reaches only the daemon) and tells it over its stdin which
//! breakpoints are set, before setting them (`bp ADDR …`, hex), and
//! `done` once it has detached. At end of input without `done` the daemon
//! is gone: the guard attaches, removes those breakpoints with the guest
//! stopped, and detaches ([`super::session::release`]: the guest runs on,
//! unless a transaction is half-written — then it stays stopped, as it
//! does after any vsplice dies mid-write). With no breakpoint set it does
//! nothing. A guard killed with the daemon (a signal to the whole process
//! group or cgroup, e.g. `systemctl kill -s KILL`) cannot help: the next
//! `vsplice attach` removes the hooks at its start (it sets and removes
//! the load hook once), not a one-shot `vsplice patch`.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::patch::AttachArgs;

/// How often the guard tries to attach once the daemon is gone (QEMU takes
/// a new client once it has seen the old connection close).
const ATTACH_TRIES: u32 = 20;
/// Wait between two tries.
const ATTACH_RETRY: Duration = Duration::from_millis(500);
/// How long the daemon waits for its guard to end after `done`.
const GUARD_EXIT_WAIT: Duration = Duration::from_secs(2);

/// What the guard read from the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The daemon detached (`done`): nothing to do.
    Detached,
    /// Input ended without `done`: the daemon died with these breakpoints
    /// set (guest-virtual addresses; empty: none).
    Died(BTreeSet<u64>),
}

/// Reads the daemon's lines until `done` or the end of input. Unknown
/// lines and bad addresses are skipped (the input is the daemon's own).
pub fn read_ending(input: impl BufRead) -> Ending {
    let mut set = BTreeSet::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line == "done" {
            return Ending::Detached;
        }
        if let Some(rest) = line.strip_prefix("bp") {
            set = rest.split_whitespace().filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()).collect();
        }
    }
    Ending::Died(set)
}

/// The line that tells the guard which breakpoints may be set.
pub fn bp_line(set: &BTreeSet<u64>) -> String {
    let mut l = String::from("bp");
    for a in set {
        l.push_str(&format!(" {a:x}"));
    }
    l.push('\n');
    l
}

/// The daemon's end of the guard.
#[derive(Debug)]
struct Link {
    child: Child,
    stdin: Option<ChildStdin>,
    last: BTreeSet<u64>,
}

/// The daemon's guard, once started (one per process).
static GUARD: Mutex<Option<Link>> = Mutex::new(None);

/// Starts the guard with this process's arguments. A guard that cannot be
/// started is a warning: the daemon works without it, unguarded.
pub fn start() {
    let spawned = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .args(std::env::args_os().skip(1))
            .arg("--guard-for")
            .arg(std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
    });
    match spawned {
        Ok(mut child) => {
            let stdin = child.stdin.take();
            if let Ok(mut g) = GUARD.lock() {
                *g = Some(Link { child, stdin, last: BTreeSet::new() });
            }
        }
        Err(e) => tracing::warn!(error = %e, "the hook guard could not be started: a daemon killed with module hooks set would leave them in QEMU"),
    }
}

/// Tells the guard which breakpoints may be set now (call before setting
/// new ones, with the union, and after, with what is set).
pub fn publish(set: &BTreeSet<u64>) {
    let Ok(mut g) = GUARD.lock() else { return };
    let Some(link) = g.as_mut() else { return };
    if link.last == *set {
        return;
    }
    if let Some(stdin) = link.stdin.as_mut() {
        if let Err(e) = stdin.write_all(bp_line(set).as_bytes()).and_then(|()| stdin.flush()) {
            tracing::warn!(error = %e, "the hook guard is gone: a daemon killed now would leave its module hooks in QEMU");
            link.stdin = None;
        }
    }
    link.last = set.clone();
}

/// Tells the guard the daemon detached (or has nothing left to guard: the
/// gdbstub is gone) and waits a moment for it to end.
pub fn finish() {
    let Ok(mut g) = GUARD.lock() else { return };
    let Some(mut link) = g.take() else { return };
    if let Some(mut stdin) = link.stdin.take() {
        let _ = stdin.write_all(b"done\n");
    }
    let end = std::time::Instant::now() + GUARD_EXIT_WAIT;
    while std::time::Instant::now() < end {
        match link.child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let _ = link.child.kill();
    let _ = link.child.wait();
}

/// Runs the guard (`vsplice attach … --guard-for PID`): waits for the
/// daemon's end, then removes what it left set.
pub fn serve(guest: &AttachArgs, daemon: u32) -> ExitCode {
    let set = match read_ending(std::io::stdin().lock()) {
        Ending::Detached => return ExitCode::SUCCESS,
        Ending::Died(set) if set.is_empty() => return ExitCode::SUCCESS,
        Ending::Died(set) => set,
    };
    let list: Vec<String> = set.iter().map(|a| format!("{a:#x}")).collect();
    eprintln!(
        "vsplice: the daemon (pid {daemon}) ended without detaching while its module hooks were set ({}); removing them so that a module load cannot stop the guest",
        list.join(", ")
    );
    let hint = "`vsplice patch status --recover`";
    for attempt in 1..=ATTACH_TRIES {
        match super::session::release(guest, &set, hint) {
            Ok(stopped) => {
                eprintln!("vsplice: module hooks removed; the guest {}", if stopped { "stays stopped (half-written transaction)" } else { "runs on" });
                return ExitCode::SUCCESS;
            }
            Err(_) if attempt < ATTACH_TRIES => std::thread::sleep(ATTACH_RETRY),
            Err(code) => {
                eprintln!("vsplice: could not attach to remove the module hooks ({}): a module load or unload will stop the guest until a vsplice attaches", list.join(", "));
                return code;
            }
        }
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_bp_line_before_the_end_of_input_is_what_the_daemon_left() {
        let input = "bp ffffffff81100000 ffffffff81100010\nbp ffffffff81100000\n";
        assert_eq!(read_ending(input.as_bytes()), Ending::Died(BTreeSet::from([0xffff_ffff_8110_0000])));
        assert_eq!(read_ending("".as_bytes()), Ending::Died(BTreeSet::new()));
        assert_eq!(read_ending("bp\n".as_bytes()), Ending::Died(BTreeSet::new()));
    }

    #[test]
    fn done_means_detached_whatever_was_set() {
        assert_eq!(read_ending("bp ffffffff81100000\ndone\n".as_bytes()), Ending::Detached);
        // Nothing after `done` counts.
        assert_eq!(read_ending("done\nbp 10\n".as_bytes()), Ending::Detached);
    }

    #[test]
    fn bad_lines_are_skipped_and_bp_lines_round_trip() {
        let set = BTreeSet::from([0x10, 0xffff_ffff_a000_1234]);
        let input = format!("hello\nbp zz 10\n{}", bp_line(&set));
        assert_eq!(read_ending(input.as_bytes()), Ending::Died(set));
        assert_eq!(read_ending("bp zz 10\n".as_bytes()), Ending::Died(BTreeSet::from([0x10])));
    }
}
