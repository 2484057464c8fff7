//! Attaching to a guest that vsplice refuses, over the mock gdbstub: the
//! guest runs again on every failure after the stop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use super::{attach, AttachSpec};
use crate::gdb::mock::{self, MockConfig};
use crate::gdb::GdbOptions;
use crate::model::TargetKind;
use crate::os::linux::view::TaskSource;

fn spec(path: &str) -> AttachSpec<'_> {
    let opts = GdbOptions { timeout: Duration::from_secs(5), stop_timeout: Duration::from_secs(5), ..GdbOptions::default() };
    AttachSpec { gdb: path, kind: TargetKind::Linux, image: None, tasks: TaskSource::Auto, opts, shm: None }
}

/// Attaches as Linux to a mock guest whose memory holds no kernel; the cause and whether it runs after.
fn refused(cfg: MockConfig, label: &str) -> (String, bool, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("vsplice-attach-{label}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let sock = dir.join("gdb.sock");
    let _ = std::fs::remove_file(&sock);
    let (st, h) = mock::listen(cfg, 0, vec![0; 1 << 20], &sock);
    let e = attach(&spec(sock.to_str().unwrap())).unwrap_err();
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let st = st.lock().unwrap();
    (e.cause().to_owned(), st.running, st.log.clone())
}

#[test]
fn a_kernel_that_cannot_be_identified_runs_on() {
    let (cause, running, log) = refused(MockConfig { no_ack: true, phys: true, ..MockConfig::default() }, "ident");
    assert_ne!(cause, "connect");
    assert!(running, "refused as {cause}, the guest stays stopped: {log:?}");
}

#[test]
fn no_physical_access_and_no_direct_map_runs_on() {
    let (cause, running, log) = refused(MockConfig { no_ack: true, phys: false, ..MockConfig::default() }, "nophys");
    assert_eq!(cause, "no_phys_access");
    assert!(running, "refused as {cause}, the guest stays stopped: {log:?}");
}
