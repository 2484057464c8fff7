//! The health gates, checked after a target is patched and has soaked:
//! - `api`: the target's API answers `GET /vm`, the guest is `running`, and
//!   it has not rebooted (`boot` as before the patch);
//! - `console`: no new `Oops`, `BUG:`, `WARNING:` or `Kernel panic` line on
//!   the guest's console (the VMM's counts in `GET /vm`, against the
//!   baseline read before the patch; a target whose console is not watched
//!   passes);
//! - `probe`: the operator's command, with the target in its environment,
//!   exits 0 within its time-out.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::inventory::Target;
use super::plan::Gates;
use super::target::{self, Probe};

/// What the gates compare against: the target before the patch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    /// Boots so far.
    pub boot: u64,
    /// Oopses, BUGs, WARNINGs and panics so far (`None`: not watched).
    pub trouble: Option<u64>,
}

impl Baseline {
    /// The baseline of a target that said `probe`.
    pub fn of(probe: &Probe) -> Self {
        Self { boot: probe.boot, trouble: probe.console.map(|c| c.trouble()) }
    }
}

/// A gate that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateFailure {
    /// `api`, `guest_not_running`, `rebooted`, `console`, `probe`.
    pub gate: &'static str,
    /// What was seen.
    pub detail: String,
}

/// Checks every gate of `gates` on `target` against `baseline`.
pub fn check(target: &Target, gates: &Gates, baseline: &Baseline) -> Result<(), GateFailure> {
    let now = target::probe(&target.api_sock).map_err(|u| GateFailure { gate: "api", detail: format!("[{}] {}", u.cause, u.message) })?;
    if now.state != "running" {
        return Err(GateFailure { gate: "guest_not_running", detail: format!("the guest is {}", now.state) });
    }
    if now.boot != baseline.boot {
        return Err(GateFailure { gate: "rebooted", detail: format!("boot {} (was {})", now.boot, baseline.boot) });
    }
    if gates.console {
        if let (Some(before), Some(c)) = (baseline.trouble, now.console) {
            if c.trouble() != before {
                return Err(GateFailure {
                    gate: "console",
                    detail: format!("the console said {} new trouble line(s): oops {}, BUG {}, WARNING {}, panic {}", c.trouble().saturating_sub(before), c.oops, c.bug, c.warning, c.panic),
                });
            }
        }
    }
    if !gates.probe.is_empty() {
        probe_command(target, gates)?;
    }
    Ok(())
}

fn probe_command(target: &Target, gates: &Gates) -> Result<(), GateFailure> {
    let fail = |detail: String| GateFailure { gate: "probe", detail };
    let (prog, args) = gates.probe.split_first().ok_or_else(|| fail("no command".into()))?;
    let mut cmd = Command::new(prog);
    cmd.args(args).env("VSPLICE_TARGET", &target.name).env("VSPLICE_API_SOCK", &target.api_sock).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in &target.labels {
        let key: String = k.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
        cmd.env(format!("VSPLICE_LABEL_{key}"), v);
    }
    let mut child = cmd.spawn().map_err(|e| fail(format!("{prog}: {e}")))?;
    let end = Instant::now() + Duration::from_millis(gates.probe_timeout_ms);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(fail(format!("{prog} exited with {st}"))),
            Ok(None) if Instant::now() >= end => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("{prog} took longer than {} ms", gates.probe_timeout_ms)));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(fail(format!("{prog}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t() -> Target {
        Target { name: "vm7".into(), api_sock: "/nonexistent/api.sock".into(), labels: [("host".to_owned(), "h-1".to_owned())].into(), origin: None }
    }

    #[test]
    fn the_probe_command_sees_the_target_and_its_exit_status_decides() {
        let gates = |cmd: &str| Gates { console: true, probe: vec!["sh".into(), "-c".into(), cmd.into()], probe_timeout_ms: 5_000 };
        assert!(probe_command(&t(), &gates(r#"test "$VSPLICE_TARGET" = vm7 && test "$VSPLICE_LABEL_HOST" = h-1"#)).is_ok());
        assert_eq!(probe_command(&t(), &gates("exit 3")).unwrap_err().gate, "probe");
        let slow = Gates { probe_timeout_ms: 50, ..gates("sleep 5") };
        assert!(probe_command(&t(), &slow).unwrap_err().detail.contains("longer"));
    }

    #[test]
    fn an_unreachable_target_fails_the_api_gate() {
        assert_eq!(check(&t(), &Gates::default(), &Baseline::default()).unwrap_err().gate, "api");
    }
}
