//! etcd as the fleet's store, for rollouts whose controllers run on several
//! hosts (the client itself, shared with the VMMs' registration, is
//! [`crate::store::etcd`]).
//!
//! Only one controller acts: it holds `PREFIX/lock`, created in a
//! transaction only if absent and bound to its lease (kept alive by a
//! thread every third of the TTL; revoked when the controller ends, left to
//! expire when it is killed). Every write is a transaction that also
//! checks the lock is still held with this lease, so a controller that lost
//! its lease cannot write another step. A second controller waits for the
//! lock (`resume --wait`) and takes over from the journal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use crate::store::etcd::Etcd;

/// The lease's default time to live (a killed controller's lock lasts this long).
pub const LEASE_TTL_S: u64 = 3;

/// The TTL this process's controller takes its lease with (`vsplice fleet
/// --lease-ttl`): a process-wide setting, as the lock is taken when the
/// journal is opened, before any plan is read (a standby's `resume` has no
/// plan file to read it from).
static LEASE_TTL: AtomicU64 = AtomicU64::new(LEASE_TTL_S);

/// Sets the controller's lease TTL (seconds, at least 1).
pub fn set_lease_ttl(seconds: u64) {
    LEASE_TTL.store(seconds.max(1), Ordering::Relaxed);
}

/// The controller's lease TTL, in seconds.
pub fn lease_ttl() -> u64 {
    LEASE_TTL.load(Ordering::Relaxed)
}

/// A held lock: the lease kept alive by a thread until dropped (then revoked).
#[derive(Debug)]
pub struct Held {
    /// The lease.
    pub lease: i64,
    /// False once the lease could not be kept alive.
    pub alive: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    etcd: Etcd,
}

impl Held {
    /// Takes the rollout's lock, or `Ok(None)` when another controller holds it.
    pub fn take(etcd: &Etcd) -> Result<Option<Self>, String> {
        let ttl = lease_ttl();
        let lease = etcd.grant(ttl)?;
        let owner = format!("pid {} on {}", std::process::id(), std::env::var("HOSTNAME").unwrap_or_default());
        if !etcd.try_lock(&etcd.key("lock"), &owner, lease)? {
            let _ = etcd.revoke(lease);
            return Ok(None);
        }
        let (alive, stop) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(false)));
        let thread = {
            let (alive, stop, etcd) = (alive.clone(), stop.clone(), etcd.clone());
            std::thread::spawn(move || {
                let period = Duration::from_millis((ttl * 1000 / 3).max(100));
                let mut due = std::time::Instant::now() + period;
                while !stop.load(Ordering::Acquire) {
                    // Woken early by the drop (unpark) so a controller's exit is not held up.
                    std::thread::park_timeout(due.saturating_duration_since(std::time::Instant::now()));
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    if std::time::Instant::now() < due {
                        continue;
                    }
                    due += period;
                    match etcd.keepalive(lease) {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::error!(lease, "the fleet's etcd lease expired: this controller stops acting");
                            alive.store(false, Ordering::Release);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "etcd lease keep-alive failed; retrying"),
                    }
                }
            })
        };
        Ok(Some(Self { lease, alive, stop, thread: Some(thread), etcd: etcd.clone() }))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = self.etcd.revoke(self.lease);
    }
}

