//! A VMM registering itself as a fleet target (`--register STORE --label
//! k=v …`): its record written when it starts, kept up to date (the kernel's
//! release and build-id once identified) and kept alive by a background
//! thread, removed when the VMM ends cleanly.
//!
//! - etcd: the key `/PREFIX/targets/<id>` is created only where absent
//!   (a second live VMM with the same id is refused, `target_id_taken`),
//!   bound to a lease of `--register-ttl` seconds kept alive every third of
//!   it; a clean exit revokes the lease (the key goes at once); a VMM that
//!   dies leaves the lease to expire (the key goes within the TTL). A lease
//!   that expired anyway (etcd unreachable for longer than the TTL) is
//!   replaced and the key written again.
//! - a directory: `<dir>/<id>.json` written to a temporary file and renamed
//!   over (never half-written); removed on a clean exit; a killed VMM's file
//!   stays until the reader finds its pid gone (stale).
//!
//! An unreachable store does not stop the VMM: the guest runs, a warning
//! with the cause `store_unreachable` is printed, and the registration is
//! tried again every third of the TTL (a VM must not fail to boot because
//! the inventory store is down; it is only not found by rollouts until it
//! is registered).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::record::{alive_here, KernelFacts, Registration};
use super::{Store, StoreError};

/// The default lease TTL of a registration, in seconds.
pub const DEFAULT_TTL_S: u64 = 5;
/// The TTLs accepted.
pub const TTL_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;

/// What the keeper holds between turns.
#[derive(Debug)]
struct Keeper {
    store: Store,
    key: String,
    ttl_s: u64,
    record: Registration,
    /// The etcd lease the key is bound to, once created.
    lease: Option<i64>,
    /// The record as last written (`None`: not registered).
    written: Option<String>,
}

impl Keeper {
    /// One turn: registers, updates or keeps alive.
    fn turn(&mut self) -> Result<(), StoreError> {
        let json = self.record.to_json();
        let store = self.store.clone();
        match &store {
            Store::Etcd(etcd) => {
                let un = |e: String| store.unreachable(e);
                let Some(lease) = self.lease else {
                    let lease = etcd.grant(self.ttl_s).map_err(un)?;
                    if !etcd.try_lock(&self.key, &json, lease).map_err(un)? {
                        let _ = etcd.revoke(lease);
                        let by = etcd.get(&self.key).ok().flatten().and_then(|v| Registration::parse(v.as_bytes()).ok()).map_or_else(|| "unknown".to_owned(), |r| format!("pid {} on {}", r.pid, r.hostname));
                        return Err(StoreError::IdTaken { id: self.record.id.clone(), store: self.store.url(), by });
                    }
                    self.lease = Some(lease);
                    self.written = Some(json);
                    return Ok(());
                };
                let alive = if self.written.as_deref() == Some(json.as_str()) {
                    etcd.keepalive(lease).map_err(un)?
                } else {
                    let ok = etcd.update_leased(&self.key, &json, lease).map_err(un)?;
                    if ok {
                        self.written = Some(json);
                    }
                    ok
                };
                if !alive {
                    // The lease expired (the store was out of reach longer than the TTL): register again.
                    tracing::warn!(key = %self.key, "the registration's lease expired; registering again");
                    self.lease = None;
                    self.written = None;
                    return self.turn();
                }
                Ok(())
            }
            Store::Dir(dir) => {
                let path = Path::new(&self.key);
                if self.written.as_deref() == Some(json.as_str()) && path.is_file() {
                    return Ok(());
                }
                if self.written.is_none() {
                    if let Some(other) = std::fs::read(path).ok().and_then(|b| Registration::parse(&b).ok()) {
                        if other.pid != self.record.pid && alive_here(&other) {
                            return Err(StoreError::IdTaken { id: self.record.id.clone(), store: self.store.url(), by: format!("pid {}", other.pid) });
                        }
                    }
                }
                write_atomic(dir, path, &json)?;
                self.written = Some(json);
                Ok(())
            }
        }
    }

    /// Removes the registration (a clean exit).
    fn remove(&mut self) {
        match &self.store {
            Store::Etcd(etcd) => {
                if let Some(lease) = self.lease.take() {
                    if let Err(e) = etcd.revoke(lease) {
                        tracing::warn!(error = %e, key = %self.key, "could not revoke the registration's lease: the key goes when it expires");
                    }
                }
            }
            Store::Dir(_) => {
                if self.written.take().is_some() {
                    let _ = std::fs::remove_file(&self.key);
                }
            }
        }
    }
}

/// Writes `text` to `path` in `dir` through a temporary file renamed over it.
fn write_atomic(dir: &Path, path: &Path, text: &str) -> Result<(), StoreError> {
    fn ioerr(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io { path: path.to_owned(), source }
    }
    std::fs::create_dir_all(dir).map_err(ioerr(dir))?;
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(ioerr(&tmp))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(ioerr(&tmp))?;
    std::fs::rename(&tmp, path).map_err(ioerr(path))
}

/// A registration kept by a background thread; dropping it removes it.
#[derive(Debug)]
pub struct Registrar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Keeper>>,
    /// Where the target is registered (the etcd key or the file).
    pub key: String,
}

impl Registrar {
    /// Registers `record` in `store` (the first try here, so a failure is
    /// reported at start), then keeps it up to date with `kernel` and alive
    /// from a thread every third of `ttl_s` (and tries again while it fails).
    pub fn start(store: Store, ttl_s: u64, record: Registration, kernel: impl Fn() -> Option<KernelFacts> + Send + 'static) -> Self {
        let key = store.key(&record.id);
        let mut k = Keeper { store, key: key.clone(), ttl_s, record, lease: None, written: None };
        k.record.kernel = kernel();
        let t0 = Instant::now();
        let mut failing = match k.turn() {
            Ok(()) => {
                tracing::info!(key = %k.key, ms = t0.elapsed().as_millis() as u64, "registered as a fleet target");
                false
            }
            Err(e) => {
                eprintln!("vsplice: warning [{}]: {}; the VM runs, and the registration is tried again every {} ms", e.cause(), vsplice_patcher::model::chain(&e), ttl_s * 1000 / 3);
                true
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let period = Duration::from_millis((ttl_s * 1000 / 3).max(100));
                let mut due = Instant::now() + period;
                while !stop.load(Ordering::Acquire) {
                    // Woken early (unpark) by the drop, so a VMM's exit is not held up.
                    std::thread::park_timeout(due.saturating_duration_since(Instant::now()));
                    if stop.load(Ordering::Acquire) || Instant::now() < due {
                        continue;
                    }
                    due = Instant::now() + period;
                    k.record.kernel = kernel();
                    match k.turn() {
                        Ok(()) if failing => {
                            eprintln!("vsplice: registered as fleet target {} in {}", k.record.id, k.store.url());
                            failing = false;
                        }
                        Ok(()) => {}
                        Err(e) if !failing => {
                            tracing::warn!(cause = e.cause(), error = %vsplice_patcher::model::chain(&e), "the fleet registration failed; retrying");
                            failing = true;
                        }
                        Err(e) => tracing::debug!(error = %e, "registration retry failed"),
                    }
                }
                k
            })
        };
        Self { stop, thread: Some(thread), key }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if let Ok(mut k) = t.join() {
                k.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::read;

    #[test]
    fn a_directory_registration_is_written_whole_updated_and_removed() {
        let dir = std::env::temp_dir().join(format!("vsplice-reg-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::parse(&format!("dir:{}", dir.display())).unwrap();
        let facts = Arc::new(std::sync::Mutex::new(None));
        let rec = Registration::of_this_process("vm0", "/run/vm0.sock".into(), [("host".to_owned(), "a".to_owned())].into());
        let f2 = facts.clone();
        let r = Registrar::start(store.clone(), 1, rec, move || f2.lock().unwrap().clone());
        let listed = read::list(&store, 10).unwrap();
        assert_eq!(listed.targets.len(), 1, "{listed:?}");
        assert_eq!(listed.targets[0].0.labels["host"], "a");
        assert!(listed.targets[0].0.kernel.is_none());
        // The kernel, once identified, is written within a keeper turn (a third of the TTL).
        *facts.lock().unwrap() = Some(KernelFacts { kind: "linux".into(), release: Some("6.1".into()), build_id: Some("ab".into()) });
        let end = Instant::now() + Duration::from_secs(30);
        while read::list(&store, 10).unwrap().targets[0].0.kernel.is_none() {
            assert!(Instant::now() < end, "the kernel was never written");
            std::thread::sleep(Duration::from_millis(50));
        }
        // No temporary file is left; a second registrar with the same id (this live pid) replaces nothing it should not.
        let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["vm0.json"]);
        drop(r);
        assert!(read::list(&store, 10).unwrap().targets.is_empty(), "removed on a clean exit");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
