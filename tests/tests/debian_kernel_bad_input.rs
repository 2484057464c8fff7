//! Issue 3 bad input: vsplice pointed at the wrong thing gives a clear error
//! with a stable cause within its time-out — never a hang, never a panic:
//! nothing listening at the gdb address; a "stub" that accepts and then says
//! nothing, talks garbage or hangs up; QEMU frozen (SIGSTOP) before attach
//! and in the middle of a large transfer (and a fresh attach works after it
//! thaws); memory that holds no kernel (all zeros, random bytes, a CPU at
//! its reset vector, a running non-Linux guest).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::bounded;
use vsplice_patcher::attach::attach_gdb;
use vsplice_patcher::model::backend::{Backend, BackendError, VcpuState};
use vsplice_patcher::testing::RamGuest;
use vsplice_patcher::gdb::{GdbBackend, GdbOptions};
use vsplice_patcher::inspect::{run_inspect, InspectArgs, InspectWhat};
use vsplice_patcher::os::linux::kernel::LiveKernel;
use vsplice_tests::debian::Flavour;
use vsplice_tests::qemu::{Channel, Guest, QemuConfig};
use vsplice_tests::testguest::{self, vm_lock};

fn opts(timeout: Duration) -> GdbOptions {
    GdbOptions { timeout, stop_timeout: timeout, ..GdbOptions::default() }
}

/// Attach + identify at `addr`; the error's cause and text, or "ok".
fn identify(addr: &str, timeout: Duration) -> (String, String) {
    let (mut be, vcpus) = match attach_gdb(addr, opts(timeout)) {
        Ok(x) => x,
        Err(e) => return (e.cause().to_string(), format!("{e}: {:?}", std::error::Error::source(&e).map(|s| s.to_string()))),
    };
    let r = LiveKernel::open(&mut be, vcpus, None).map(|_| ());
    let _ = be.detach();
    match r {
        Ok(()) => ("ok".into(), String::new()),
        Err(e) => (e.cause().to_string(), e.to_string()),
    }
}

fn inspect_cause(addr: &str, timeout_ms: u64) -> String {
    let args = InspectArgs { gdb: Some(addr.into()), image: None, json: true, timeout_ms, what: InspectWhat::Summary };
    match run_inspect(&args, &mut Vec::new()) {
        Ok(()) => "ok".into(),
        Err(e) => e.cause().to_string(),
    }
}

/// Runs `f` with a hard limit and checks it took less than `within`.
fn timed<T: Send + 'static>(what: &str, within: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let t = Instant::now();
    let r = bounded(within + Duration::from_secs(30), f).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(t.elapsed() < within, "{what}: took {:?} (limit {within:?})", t.elapsed());
    eprintln!("  {what}: answered in {:.2} s", t.elapsed().as_secs_f64());
    r
}

#[test]
fn nothing_listening_is_a_connect_error_at_once() {
    let dir = vsplice_tests::scratch::tmp("nolisten");
    let sock = dir.join("gdb.sock").display().to_string();
    let port = vsplice_tests::scratch::free_port();
    for addr in [sock, format!("127.0.0.1:{port}")] {
        let a = addr.clone();
        let (cause, msg) = timed(&format!("attach {addr}"), Duration::from_secs(5), move || identify(&a, Duration::from_secs(3)));
        assert_eq!(cause, "connect", "{addr}: {msg}");
        assert!(msg.contains(&addr), "the error names the address: {msg}");
        let a = addr.clone();
        assert_eq!(timed("inspect", Duration::from_secs(5), move || inspect_cause(&a, 3000)), "connect");
    }
}

/// A TCP "stub" that runs `behave` on every connection.
fn fake_stub(behave: fn(std::net::TcpStream)) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || behave(s));
        }
    });
    addr
}

#[test]
fn a_stub_that_is_silent_talks_garbage_or_hangs_up_fails_cleanly() {
    let silent = fake_stub(|mut s| {
        let mut b = [0u8; 4096];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    });
    let garbage = fake_stub(|mut s| {
        let mut b = [0u8; 4096];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {
            let _ = s.write_all(b"+$this is not#zz+$OK#00\x00\xff garbage\n");
        }
    });
    let hangup = fake_stub(drop);
    for (name, addr, causes) in [
        ("silent", silent, &["timeout"][..]),
        ("garbage", garbage, &["protocol", "checksum", "timeout", "remote_error", "unsupported"][..]),
        ("hang-up", hangup, &["closed", "io"][..]),
    ] {
        let a = addr.clone();
        let (cause, msg) = timed(name, Duration::from_secs(10), move || identify(&a, Duration::from_secs(2)));
        assert!(causes.contains(&cause.as_str()), "{name}: cause {cause}: {msg}");
        assert!(!msg.is_empty());
        let a = addr.clone();
        let c = timed(&format!("{name} inspect"), Duration::from_secs(10), move || inspect_cause(&a, 2000));
        assert!(causes.contains(&c.as_str()), "{name}: inspect cause {c}");
    }
}

/// Issue 11: a stub that opens a packet and never ends it, or floods bytes
/// outside any packet, is refused by the link's bounds (`packet_too_large`,
/// `garbage`) — with a time-out far longer than the run, so the refusal is
/// the bound's, not the clock's — and host memory stays bounded.
#[test]
fn a_stub_that_never_ends_a_packet_or_floods_noise_is_refused_by_the_bounds() {
    fn endless(mut s: std::net::TcpStream, first: &[u8], fill: u8) {
        let mut b = [0u8; 4096];
        if !matches!(s.read(&mut b), Ok(n) if n > 0) {
            return;
        }
        let chunk = [fill; 64 * 1024];
        if s.write_all(first).is_err() {
            return;
        }
        while s.write_all(&chunk).is_ok() {}
    }
    let unended = fake_stub(|s| endless(s, b"+$", b'a'));
    let noise = fake_stub(|s| endless(s, b"", b'x'));
    for (name, addr, cause) in [("unended packet", unended, "packet_too_large"), ("noise", noise, "garbage")] {
        let a = addr.clone();
        let (got, msg) = bounded(Duration::from_secs(300), move || identify(&a, Duration::from_secs(240)))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, cause, "{name}: {msg}");
    }
}

#[test]
fn a_frozen_gdbstub_times_out_before_attach_and_mid_transfer() {
    let _l = vm_lock();
    let mut g = Guest::boot_debian(Flavour::CloudAmd64, "bad-input-frozen").unwrap_or_else(|e| panic!("{e}"));
    let addr = g.gdb_addr().unwrap().to_string();

    // Frozen before attach: the socket accepts (kernel backlog), the stub never answers.
    g.freeze().unwrap();
    let a = addr.clone();
    let (cause, msg) = timed("attach to a frozen QEMU", Duration::from_secs(15), move || identify(&a, Duration::from_secs(3)));
    assert_eq!(cause, "timeout", "{msg}");
    g.thaw().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Frozen in the middle of a 512 MiB read.
    let a = addr.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut be = GdbBackend::connect(&a, opts(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        be.stop().map_err(|e| e.to_string())?;
        let _ = tx.send(());
        let mut buf = vec![0u8; 512 << 20];
        let t = Instant::now();
        let r = be.read_phys(0, &mut buf);
        Ok::<_, String>((r, t.elapsed()))
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("attached and stopped");
    std::thread::sleep(Duration::from_millis(700));
    g.freeze().unwrap();
    let t = Instant::now();
    let (r, took) = bounded(Duration::from_secs(60), move || reader.join())
        .expect("the read returns")
        .expect("no panic")
        .expect("attach worked");
    eprintln!("  read interrupted by SIGSTOP: {:?} after {:.2} s ({:.2} s after the freeze)", r.as_ref().err(), took.as_secs_f64(), t.elapsed().as_secs_f64());
    let e = r.expect_err("a frozen stub cannot finish 512 MiB");
    assert!(matches!(e, BackendError::Transport(_) | BackendError::PauseTimeout { .. }), "{e}");
    assert_eq!(e.cause(), "transport");
    assert!(t.elapsed() < Duration::from_secs(15), "error came {:?} after the freeze", t.elapsed());

    // Thawed, a fresh attach identifies the kernel and lets it go again.
    g.thaw().unwrap();
    let a = addr.clone();
    let (cause, msg) = timed("attach after thaw", Duration::from_secs(240), move || identify(&a, Duration::from_secs(20)));
    assert_eq!(cause, "ok", "{msg}");
    assert_eq!(g.run_ok("echo alive").unwrap(), "alive\n");
    g.check_console().unwrap();
}

/// Guest memory with given contents and one vCPU in 64-bit mode.
fn fake_guest(mem: &[u8]) -> RamGuest {
    let mut g = RamGuest::new(mem.len() as u64);
    g.put(0, mem);
    g.vcpus = vec![VcpuState { cs: 0x10, cr0: 0x8005_0033, cr3: 0x10_0000, cr4: 0x20, efer: 0xd01, rip: 0xffff_ffff_8100_0000, ..VcpuState::default() }];
    g
}

#[test]
fn memory_of_zeros_or_random_bytes_is_not_a_kernel() {
    let zeros = fake_guest(&vec![0; 64 << 20]);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let random = fake_guest(
        &(0..(64 << 20) / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect::<Vec<u8>>(),
    );
    for (name, mut fake) in [("zeros", zeros), ("random", random)] {
        let (cause, msg) = timed(name, Duration::from_secs(60), move || {
            let vcpus = fake.stop().unwrap();
            match LiveKernel::open(&mut fake, vcpus, None) {
                Ok(_) => ("ok".to_string(), String::new()),
                Err(e) => (e.cause().to_string(), e.to_string()),
            }
        });
        eprintln!("  {name}: {cause}: {msg}");
        assert_ne!(cause, "ok", "{name} memory was taken for a kernel");
        assert!(!msg.is_empty());
    }
}

#[test]
fn a_cpu_at_its_reset_vector_runs_no_kernel_yet() {
    let _l = vm_lock();
    let mut cfg = QemuConfig::debian(Flavour::CloudAmd64, "bad-input-reset").unwrap();
    cfg.channel = Channel::None;
    cfg.extra_args.push("-S".into());
    let g = Guest::boot(cfg).unwrap_or_else(|e| panic!("{e}"));
    let a = g.gdb_addr().unwrap().to_string();
    let (cause, msg) = timed("identify at reset", Duration::from_secs(30), move || identify(&a, Duration::from_secs(5)));
    assert_eq!(cause, "not_long_mode", "{msg}");
    let a = g.gdb_addr().unwrap().to_string();
    assert_eq!(timed("inspect at reset", Duration::from_secs(30), move || inspect_cause(&a, 5000)), "not_long_mode");
}

#[test]
fn a_running_guest_that_is_not_linux_has_no_kernel() {
    let _l = vm_lock();
    let kernel = testguest::workspace_root().join("target/images/testguest/testguest-pvh.elf");
    assert!(kernel.is_file(), "{} missing: run images/build-testguest.sh", kernel.display());
    let mut cfg = QemuConfig::new("bad-input-testguest", kernel, None);
    cfg.channel = Channel::None;
    cfg.arena = None;
    cfg.mem_mib = 256;
    cfg.extra_append = vec!["tg.tasks=2".into(), "tg.wait=2".into()];
    let mut g = Guest::boot(cfg).unwrap_or_else(|e| panic!("{e}"));
    g.wait_console("TG cpu=1 task=4 iter=2", Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    let a = g.gdb_addr().unwrap().to_string();
    let (cause, msg) = timed("identify the test guest", Duration::from_secs(120), move || identify(&a, Duration::from_secs(10)));
    eprintln!("  test guest: {cause}: {msg}");
    assert!(["no_kernel_mapping", "kallsyms_not_found", "no_phys_access"].contains(&cause.as_str()), "{cause}: {msg}");
    assert!(g.console().contains("TG cpu="), "the test guest kept running");
}
