//! The shared-memory plane against the mock gdbstub and a fake QMP: the
//! file is used only when it agrees with the stub, reads then come from
//! the file, and writes go through the stub under TCG and into the file
//! under KVM (the route no machine here can run end to end).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::shared::use_shared;
use crate::gdb::client::GdbClient;
use crate::gdb::link::Stream;
use crate::gdb::mock::{self, MockConfig};
use crate::gdb::{GdbBackend, GdbOptions};
use crate::model::backend::Backend;
use crate::shm::{ShmSpec, StopVia, WriteRoute};

const RAM: usize = 64 * 1024;

fn pattern() -> Vec<u8> {
    (0..RAM).map(|i| (i * 13 + i / 4096 + 1) as u8).collect()
}

fn dir(label: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vsplice-shm-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fake QEMU monitor for a 64 KiB guest whose RAM is backend "mem".
fn fake_qmp(path: &Path, kvm: bool) {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").unwrap();
        let mtree = "FlatView #0\\n AS \\\"memory\\\", root: system\\n Root memory region: system\\n  0000000000000000-000000000000ffff (prio 0, ram): mem\\n\\n";
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let reply = if line.contains("query-memdev") {
                format!("{{\"return\": [{{\"id\": \"mem\", \"size\": {RAM}}}]}}")
            } else if line.contains("human-monitor-command") {
                format!("{{\"return\": \"{mtree}\"}}")
            } else if line.contains("query-kvm") {
                format!("{{\"return\": {{\"enabled\": {kvm}, \"present\": true}}}}")
            } else {
                "{\"return\": {}}".to_string()
            };
            w.write_all(reply.as_bytes()).unwrap();
            w.write_all(b"\r\n").unwrap();
            line.clear();
        }
    });
}

/// A stopped mock guest holding `pattern()`, a fake QMP, and a RAM file
/// holding `file`; the result of `use_shared` and the backend.
fn setup(label: &str, kvm: bool, file: &[u8]) -> (Result<(), String>, GdbBackend, std::sync::Arc<std::sync::Mutex<mock::MockState>>, PathBuf) {
    let d = dir(label);
    let qmp = d.join("qmp.sock");
    fake_qmp(&qmp, kvm);
    let ram = d.join("ram");
    std::fs::write(&ram, file).unwrap();
    let (s, st, _h) = mock::start(MockConfig { no_ack: true, phys: true, ..Default::default() }, 0, pattern());
    let opts = GdbOptions { timeout: Duration::from_secs(5), stop_timeout: Duration::from_secs(5), ..GdbOptions::default() };
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts).unwrap()).unwrap();
    let vcpus = be.stop().unwrap();
    let spec = ShmSpec { mem_path: ram.clone(), qmp: qmp.to_string_lossy().into_owned(), stop_via: StopVia::Gdb, timeout: Duration::from_secs(5) };
    let r = use_shared(&mut be, &vcpus, &spec).map_err(|e| e.cause().to_string());
    (r, be, st, ram)
}

#[test]
fn under_tcg_reads_come_from_the_file_and_writes_go_through_the_stub() {
    let (r, mut be, st, ram) = setup("tcg", false, &pattern());
    r.unwrap();
    assert_eq!(be.shared().unwrap().write_route(), WriteRoute::Stub);
    // A byte changed in the file only: reads see it, so they come from the file.
    let mut f = std::fs::read(&ram).unwrap();
    f[0x2345] ^= 0xff;
    std::fs::write(&ram, &f).unwrap();
    let mut b = [0u8; 1];
    be.read_phys(0x2345, &mut b).unwrap();
    assert_eq!(b[0], f[0x2345]);
    // Reads also while the guest runs (no stop per read).
    be.resume().unwrap();
    be.read_phys(0x2345, &mut b).unwrap();
    assert_eq!(b[0], f[0x2345]);
    assert!(be.write_phys(0x100, b"x").is_err(), "writes need the guest stopped");
    be.stop().unwrap();
    be.write_phys(0x100, b"jmp!").unwrap();
    assert_eq!(&st.lock().unwrap().mem[0x100..0x104], b"jmp!", "the write went through the stub");
    assert_eq!(&std::fs::read(&ram).unwrap()[0x100..0x104], &pattern()[0x100..0x104], "and not behind QEMU's back");
    assert_eq!(be.read_phys(0xfff0, &mut [0u8; 32]).unwrap_err().cause(), "bad_address", "past the end of RAM");
}

#[test]
fn under_kvm_writes_go_into_the_file() {
    let (r, mut be, st, ram) = setup("kvm", true, &pattern());
    r.unwrap();
    assert_eq!(be.shared().unwrap().write_route(), WriteRoute::File);
    be.write_phys(0x100, b"jmp!").unwrap();
    assert_eq!(&std::fs::read(&ram).unwrap()[0x100..0x104], b"jmp!");
    assert_eq!(&st.lock().unwrap().mem[0x100..0x104], &pattern()[0x100..0x104], "nothing through the stub");
}

#[test]
fn files_that_are_not_this_guests_ram_are_refused_and_memory_stays_with_the_stub() {
    let (r, be, _st, _) = setup("zeros", false, &vec![0u8; RAM]);
    assert_eq!(r.unwrap_err(), "shm_not_this_guest");
    assert!(be.shared().is_none());
    let mut other = pattern();
    other[RAM / 2 + 100] ^= 1;
    let (r, _, _, _) = setup("other", false, &other);
    assert_eq!(r.unwrap_err(), "shm_not_this_guest", "one byte off in a sampled page");
    let (r, _, _, _) = setup("small", false, &pattern()[..RAM / 2]);
    assert_eq!(r.unwrap_err(), "shm_size_mismatch");
}
