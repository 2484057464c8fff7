//! The boot target's life on the patcher's fakes (no KVM, no guest code):
//! identification retried with back-off while the kernel boots and again
//! once it is up, a kernel vsplice cannot patch refused for good (every
//! desired patch reported `unsupported_target`), the guest never left
//! stopped, the desired patches applied once and only once the kernel is
//! up; and the checks `LivePatches::open` makes before anything boots.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use vsplice_patcher::kernels::stock_linux::LinuxTargetError;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::backend::VcpuState;
use vsplice_patcher::model::mem::MemError;
use vsplice_patcher::model::{GuestTasks, KernelMemory, SymbolTable, TargetError, TargetKind};
use vsplice_patcher::os::linux::unwind::OrcUnwinder;
use vsplice_patcher::os::linux::view::TaskSource;
use vsplice_patcher::testing::kernel::arena;
use vsplice_patcher::testing::{FakeKernel, FakePatch, RamGuest};
use vsplice_patcher::txn::{Cause, TxnReport};

use super::target::{ArenaGuest, BootTarget, Identifiable, TargetSource, Unavailable, IDENTIFY_FIRST, IDENTIFY_MAX};
use super::{DesiredPatches, LivePatchError, LivePatches};

/// The fake kernel, shared so a test can bring it up after handing it over.
#[derive(Debug, Clone)]
struct Shared(Arc<FakeKernel>);

impl TargetKernel for Shared {
    fn kind(&self) -> TargetKind {
        self.0.kind()
    }
    fn build_id(&self) -> Option<&str> {
        self.0.build_id()
    }
    fn symbols(&self) -> &SymbolTable {
        self.0.symbols()
    }
    fn image_end(&self) -> u64 {
        self.0.image_end()
    }
    fn arena_window(&self) -> Range<u64> {
        self.0.arena_window()
    }
    fn page_table_root(&self) -> u64 {
        self.0.page_table_root()
    }
    fn is_up(&self, mem: &mut dyn KernelMemory) -> Result<bool, TargetError> {
        self.0.is_up(mem)
    }
    fn tasks(&self, mem: &mut dyn KernelMemory, vcpus: &[VcpuState], source_at: Option<u64>) -> Result<GuestTasks, TargetError> {
        self.0.tasks(mem, vcpus, source_at)
    }
    fn unwinder(&self) -> Option<&OrcUnwinder> {
        self.0.unwinder()
    }
}

/// The fake guest as the driver sees a VMM.
type Live = ArenaGuest<RamGuest>;

fn setup() -> (Arc<FakeKernel>, Live) {
    let k = Arc::new(FakeKernel::new());
    let ram = k.guest();
    (k, ArenaGuest { backend: ram, arena: arena(), doorbell: None })
}

fn desired(k: &FakeKernel) -> DesiredPatches {
    vec![(PathBuf::from("a.vsp"), FakePatch::new("a").replace("fake_a").build(k).unwrap())]
}

fn booting() -> LinuxTargetError {
    LinuxTargetError::Memory(MemError::NotMapped { vaddr: 0xffff_ffff_8100_0000 })
}

fn linux() -> TargetSource {
    TargetSource::Linux { tasks: TaskSource::Auto }
}

#[test]
fn a_booting_linux_kernel_is_retried_with_back_off_then_identified_again_once_up() {
    let (k, mut g) = setup();
    k.set_up(false);
    let calls = Cell::new(0u32);
    let fail_first = 2;
    let mut identify = |_: &mut Live, _: Vec<VcpuState>| {
        calls.set(calls.get() + 1);
        if calls.get() <= fail_first {
            Err(booting())
        } else {
            Ok(Identifiable::other(Box::new(Shared(k.clone()))))
        }
    };
    let mut b = BootTarget::new(&linux());
    let t0 = Instant::now();
    b.poll(&mut g, t0, &mut identify).unwrap();
    assert_eq!(calls.get(), 1);
    assert!(!g.backend.is_stopped(), "the guest runs on after an attempt");
    match b.kernel() {
        Err(Unavailable::NotYet(m)) => assert!(m.contains("attempt 1") && m.contains("not mapped"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Not due again before the back-off.
    b.poll(&mut g, t0 + IDENTIFY_FIRST, &mut identify).unwrap();
    assert_eq!(calls.get(), 1);
    b.poll(&mut g, t0 + IDENTIFY_MAX, &mut identify).unwrap();
    assert_eq!(calls.get(), 2);
    let t2 = t0 + IDENTIFY_MAX + IDENTIFY_MAX;
    b.poll(&mut g, t2, &mut identify).unwrap();
    assert_eq!(calls.get(), 3);
    assert!(b.kernel().is_ok(), "identified");
    assert!(!b.is_up());
    // Identified during boot: not identified again until it is up.
    let mut report = |_: &TxnReport| panic!("nothing is applied before the kernel is up");
    for _ in 0..3 {
        b.poll(&mut g, t2, &mut identify).unwrap();
        b.apply_when_up(&mut g, &desired(&k), &mut report);
    }
    assert_eq!(calls.get(), 3);
    k.set_up(true);
    b.poll(&mut g, t2, &mut identify).unwrap();
    assert_eq!(calls.get(), 4, "identified once more when up");
    assert!(b.is_up());
    assert!(!g.backend.is_stopped());
    b.poll(&mut g, t2, &mut identify).unwrap();
    assert_eq!(calls.get(), 4, "never again once up");
}

#[test]
fn the_desired_patches_are_applied_once_the_kernel_is_up_and_once_only() {
    let (k, mut g) = setup();
    let want = desired(&k);
    let mut identify = |_: &mut Live, _: Vec<VcpuState>| Ok(Identifiable::other(Box::new(Shared(k.clone()))));
    let mut b = BootTarget::new(&linux());
    b.poll(&mut g, Instant::now(), &mut identify).unwrap();
    assert!(b.is_up(), "identified while up: no second identification needed");
    let mut reports = Vec::new();
    b.apply_when_up(&mut g, &want, &mut |r: &TxnReport| reports.push(r.clone()));
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].cause, Cause::Ok, "{}", reports[0].message);
    assert!(b.applied());
    b.apply_when_up(&mut g, &want, &mut |_: &TxnReport| panic!("applied twice"));
    assert!(!g.backend.is_stopped());
}

#[test]
fn a_kernel_vsplice_cannot_patch_is_refused_for_good_and_each_patch_reported() {
    let (k, mut g) = setup();
    let calls = Cell::new(0u32);
    let mut identify = |_: &mut Live, _: Vec<VcpuState>| {
        calls.set(calls.get() + 1);
        Err(LinuxTargetError::NoBtf)
    };
    let mut b = BootTarget::new(&linux());
    let t0 = Instant::now();
    b.poll(&mut g, t0, &mut identify).unwrap();
    b.poll(&mut g, t0 + IDENTIFY_MAX * 10, &mut identify).unwrap();
    assert_eq!(calls.get(), 1, "never tried again");
    assert!(!g.backend.is_stopped());
    match b.kernel() {
        Err(Unavailable::Unsupported { cause, message }) => {
            assert_eq!(cause, "no_btf");
            assert!(message.contains("BTF"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut want = desired(&k);
    want.push((PathBuf::from("b.vsp"), FakePatch::new("b").replace("fake_b").build(&k).unwrap()));
    let mut reports = Vec::new();
    b.apply_when_up(&mut g, &want, &mut |r: &TxnReport| reports.push(r.clone()));
    assert_eq!(reports.len(), 2);
    for (r, name) in reports.iter().zip(["a", "b"]) {
        assert_eq!((r.cause, r.reason.as_deref(), r.patch_name.as_deref()), (Cause::UnsupportedTarget, Some("no_btf"), Some(name)));
        assert!(r.to_json().contains("\"cause\":\"unsupported_target\""));
    }
    b.apply_when_up(&mut g, &want, &mut |_: &TxnReport| panic!("reported twice"));
}

#[test]
fn nothing_is_read_before_the_vcpus_page_in_long_mode() {
    let (_, mut g) = setup();
    g.backend.vcpus = vec![VcpuState { cr0: 0x11, efer: 0, ..VcpuState::default() }];
    let mut identify = |_: &mut Live, _: Vec<VcpuState>| -> Result<Identifiable, LinuxTargetError> { panic!("identified in real mode") };
    let mut b = BootTarget::new(&linux());
    b.poll(&mut g, Instant::now(), &mut identify).unwrap();
    assert!(matches!(b.kernel(), Err(Unavailable::NotYet(_))));
    assert_eq!(b.attempts(), 0);
    assert!(!g.backend.is_stopped());
}

#[test]
fn a_kernel_identified_before_it_is_up_gets_nothing_applied() {
    let (k, mut g) = setup();
    k.set_up(false);
    let mut identify = |_: &mut Live, _: Vec<VcpuState>| Ok(Identifiable::other(Box::new(Shared(k.clone()))));
    let mut b = BootTarget::new(&linux());
    b.poll(&mut g, Instant::now(), &mut identify).unwrap();
    let mut reports = 0;
    b.apply_when_up(&mut g, &desired(&k), &mut |_: &TxnReport| reports += 1);
    assert_eq!(reports, 0);
    assert!(!b.applied());
}

fn write_patch(dir: &std::path::Path, name: &str, kind: TargetKind) -> PathBuf {
    let mut p = FakePatch::new(name).replace("fake_a").build(&FakeKernel::new()).unwrap();
    p.manifest.target.kind = kind;
    let path = dir.join(format!("{name}.vsp"));
    std::fs::write(&path, p.to_bytes().unwrap()).unwrap();
    path
}

#[test]
fn open_refuses_mixed_kinds_a_kind_the_image_is_not_and_an_unbootable_image() {
    let dir = std::env::temp_dir().join(format!("vsplice-livepatch-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_a_kernel = dir.join("garbage");
    std::fs::write(&not_a_kernel, b"not a kernel image at all").unwrap();
    let tg = write_patch(&dir, "tg", TargetKind::TestGuest);
    let lx = write_patch(&dir, "lx", TargetKind::Linux);
    let e = LivePatches::open(&not_a_kernel, &[tg.clone(), lx.clone()], TaskSource::Auto).unwrap_err();
    assert!(matches!(e, LivePatchError::Mixed { .. }), "{e}");
    assert_eq!(e.cause(), "mixed_targets");
    let e = LivePatches::open(&not_a_kernel, &[tg], TaskSource::Auto).unwrap_err();
    assert!(matches!(e, LivePatchError::Kind { kind: TargetKind::TestGuest, .. }), "{e}");
    assert_eq!(e.cause(), "unsupported_target");
    let e = LivePatches::open(&not_a_kernel, &[lx], TaskSource::Auto).unwrap_err();
    assert_eq!(e.cause(), "bad_target", "{e}");
    let e = LivePatches::open(&not_a_kernel, &[], TaskSource::Auto).unwrap_err();
    assert_eq!(e.cause(), "bad_target", "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
