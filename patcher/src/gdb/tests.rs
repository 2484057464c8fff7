//! Client and backend tests against the mock gdbstub in `mock.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use super::link::Stream;
use super::mock::{self, MockConfig};
use super::*;
use crate::model::backend::Backend;

fn opts() -> GdbOptions {
    GdbOptions { timeout: Duration::from_millis(500), stop_timeout: Duration::from_millis(500), ..GdbOptions::default() }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn registers_by_name_per_thread() {
    let (s, _st, _h) = mock::start(MockConfig { no_ack: true, phys: true, ..Default::default() }, 0, vec![0; 64]);
    let client = GdbClient::over(Stream::Unix(s), opts()).unwrap();
    let mut be = GdbBackend::with_client(client).unwrap();
    let v = be.stop().unwrap();
    assert_eq!(v.len(), 2);
    // rax is register 0, rsp 7, rip 16; cr3 is the 6th of the sys registers (19 + 5).
    assert_eq!(v[0].gprs[0], mock::reg_value(1, 0));
    assert_eq!(v[1].gprs[7], mock::reg_value(2, 7));
    assert_eq!(v[1].rip, mock::reg_value(2, 16));
    assert_eq!(v[1].cs, mock::reg_value(2, 18) as u16);
    assert_eq!(v[0].cr3, mock::reg_value(1, 24));
    assert_eq!(v[0].efer, mock::reg_value(1, 27));
    assert_eq!(v[0].kernel_gs_base, Some(mock::reg_value(1, 21)));
    assert_eq!(v[0].lstar, None);
}

#[test]
fn large_pipelined_read_and_ack_mode_read() {
    for no_ack in [true, false] {
        let mem = pattern(100_000);
        let (s, st, _h) = mock::start(MockConfig { no_ack, phys: true, ..Default::default() }, 0x1000, mem.clone());
        let client = GdbClient::over(Stream::Unix(s), opts()).unwrap();
        let mut be = GdbBackend::with_client(client).unwrap();
        let mut buf = vec![0u8; 90_000];
        be.read_phys(0x1000 + 777, &mut buf).unwrap();
        assert_eq!(buf, mem[777..777 + 90_000]);
        let log = st.lock().unwrap().log.clone();
        assert!(log.iter().any(|l| l == "Qqemu.PhyMemMode:1"));
        // Chunks never exceed what the stub takes (E22 would have failed the read).
        assert!(log.iter().filter(|l| l.starts_with('m')).count() >= 90_000 / 2048);
    }
}

#[test]
fn out_of_range_read_is_bad_address() {
    let (s, _st, _h) = mock::start(MockConfig { no_ack: true, phys: true, ..Default::default() }, 0, vec![0; 4096]);
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    let mut buf = [0u8; 16];
    let e = be.read_phys(0x10_0000, &mut buf).unwrap_err();
    assert_eq!(e.cause(), "bad_address");
    // The link is still usable afterwards.
    be.read_phys(0, &mut buf).unwrap();
}

#[test]
fn rle_replies_are_expanded() {
    let mut mem = vec![0u8; 8192];
    mem[100] = 0xaa;
    let (s, _st, _h) = mock::start(MockConfig { no_ack: true, rle: true, phys: true, ..Default::default() }, 0, mem.clone());
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    let mut buf = vec![1u8; 8192];
    be.read_phys(0, &mut buf).unwrap();
    assert_eq!(buf, mem);
}

#[test]
fn writes_with_m_and_with_binary_x() {
    for binary in [false, true] {
        let (s, st, _h) =
            mock::start(MockConfig { no_ack: true, phys: true, binary_write: binary, ..Default::default() }, 0, vec![0; 16384]);
        let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
        // Every byte value, including the ones that need escaping.
        let data: Vec<u8> = (0..10_000).map(|i| (i % 256) as u8).collect();
        be.write_phys(100, &data).unwrap();
        let got = st.lock().unwrap().mem[100..10_100].to_vec();
        assert_eq!(got, data);
        let log = st.lock().unwrap().log.clone();
        assert_eq!(log.iter().any(|l| l.starts_with("X64,") && l.len() > 8), binary);
    }
}

#[test]
fn bad_checksum_in_ack_mode_is_retransmitted() {
    let cfg = MockConfig { no_ack: false, phys: true, corrupt_once: Some("m".into()), ..Default::default() };
    let mem = pattern(4096);
    let (s, _st, _h) = mock::start(cfg, 0, mem.clone());
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    let mut buf = vec![0u8; 1000];
    be.read_phys(0, &mut buf).unwrap();
    assert_eq!(buf, mem[..1000]);
}

#[test]
fn bad_checksum_in_no_ack_mode_is_an_error() {
    let cfg = MockConfig { no_ack: true, phys: true, corrupt_once: Some("m".into()), ..Default::default() };
    let (s, _st, _h) = mock::start(cfg, 0, pattern(4096));
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    let mut buf = vec![0u8; 1000];
    let e = be.read_phys(0, &mut buf).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
}

#[test]
fn silence_mid_transfer_times_out() {
    let cfg = MockConfig { no_ack: true, phys: true, silent_after_reads: Some(5), ..Default::default() };
    let (s, _st, _h) = mock::start(cfg, 0, pattern(1 << 20));
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let e = be.read_phys(0, &mut buf).unwrap_err();
    assert_eq!(e.cause(), "transport");
    assert!(e.to_string().contains("timeout"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
}

#[test]
fn stop_resume_and_state_checks() {
    let (s, st, _h) = mock::start(MockConfig { no_ack: true, phys: true, ..Default::default() }, 0, vec![0; 64]);
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    be.resume().unwrap();
    assert!(be.is_running());
    let mut b = [0u8; 4];
    assert_eq!(be.read_phys(0, &mut b).unwrap_err().cause(), "wrong_state");
    let v = be.stop().unwrap();
    assert_eq!(v.len(), 2);
    assert!(!st.lock().unwrap().running);
    be.detach().unwrap();
    assert!(st.lock().unwrap().log.iter().any(|l| l == "D"));
}

#[test]
fn connect_refused_has_a_cause() {
    let e = GdbClient::connect("127.0.0.1:1", opts()).unwrap_err();
    assert_eq!(e.cause(), "connect");
}

#[test]
fn without_phys_mode_physical_reads_go_through_a_direct_map() {
    let base = 0xffff_8880_0000_0000u64;
    let mem = pattern(0x4000);
    let (s, st, _h) = mock::start(MockConfig { no_ack: true, phys: false, ..Default::default() }, base, mem.clone());
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    assert!(!be.has_phys_access());
    let mut buf = [0u8; 64];
    assert_eq!(be.read_phys(0x100, &mut buf).unwrap_err().cause(), "transport");
    be.read_virt(base + 0x100, &mut buf).unwrap();
    assert_eq!(buf[..], mem[0x100..0x140]);
    be.set_direct_map(base);
    let mut buf2 = [0u8; 64];
    be.read_phys(0x100, &mut buf2).unwrap();
    assert_eq!(buf, buf2);
    assert!(!st.lock().unwrap().log.iter().any(|l| l.starts_with("Qqemu.PhyMemMode")));
}

#[test]
fn a_guest_that_does_not_stop_is_a_pause_timeout() {
    let (s, _st, _h) = mock::start(MockConfig { no_ack: true, phys: true, ignore_interrupt: true, ..Default::default() }, 0, vec![0; 64]);
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    be.resume().unwrap();
    let t = Instant::now();
    let e = be.stop().unwrap_err();
    assert_eq!(e.cause(), "pause_timeout");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn binary_x_reads_and_short_replies() {
    for (binary_read, short_reads) in [(true, None), (true, Some(1000)), (false, Some(777))] {
        let mem: Vec<u8> = (0..50_000).map(|i| (i % 256) as u8).collect(); // every byte value, escapes included
        let cfg = MockConfig { no_ack: true, phys: true, binary_read, short_reads, ..Default::default() };
        let (s, st, _h) = mock::start(cfg, 0, mem.clone());
        let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
        let mut buf = vec![0u8; 40_000];
        be.read_phys(5, &mut buf).unwrap();
        assert_eq!(buf, mem[5..40_005], "binary {binary_read} short {short_reads:?}");
        let log = st.lock().unwrap().log.clone();
        assert_eq!(log.iter().any(|l| l.starts_with('x')), binary_read);
    }
}

#[test]
fn check_alive_while_running_then_the_stub_quits_or_closes() {
    // A stub that stays: nothing to read, the guest runs on.
    let (s, st, h) = mock::start(MockConfig { no_ack: true, phys: true, ..Default::default() }, 0, vec![0; 64]);
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    be.resume().unwrap();
    for _ in 0..3 {
        be.check_alive().unwrap();
    }
    assert!(be.is_running());
    drop(be);
    h.join().unwrap();
    assert!(st.lock().unwrap().log.iter().any(|l| l == "vCont;c" || l == "c"), "the stub was told to continue");
    // QEMU quitting: `W00`, then the connection closes.
    let cfg = MockConfig { no_ack: true, phys: true, exit_on_cont: Some(b"W00".to_vec()), ..Default::default() };
    let (s, _st, h) = mock::start(cfg, 0, vec![0; 64]);
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    be.resume().unwrap();
    h.join().unwrap();
    let e = be.check_alive().unwrap_err();
    assert_eq!(e.cause(), "exited", "{e}");
    // Killed: the connection just closes.
    let cfg = MockConfig { no_ack: true, phys: true, exit_on_cont: Some(Vec::new()), ..Default::default() };
    let (s, _st, h) = mock::start(cfg, 0, vec![0; 64]);
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    be.resume().unwrap();
    h.join().unwrap();
    assert_eq!(be.check_alive().unwrap_err().cause(), "closed");
}

#[test]
fn a_stop_the_stub_reports_on_its_own_marks_the_guest_stopped() {
    let cfg = MockConfig { no_ack: true, phys: true, exit_on_cont: Some(b"T02thread:01;".to_vec()), ..Default::default() };
    let (s, _st, h) = mock::start(cfg, 0, vec![0; 64]);
    let mut be = GdbBackend::with_client(GdbClient::over(Stream::Unix(s), opts()).unwrap()).unwrap();
    be.resume().unwrap();
    h.join().unwrap();
    // The stop is read first (the guest is stopped), then the close.
    assert_eq!(be.check_alive().unwrap_err().cause(), "closed");
    assert!(!be.is_running());
}
