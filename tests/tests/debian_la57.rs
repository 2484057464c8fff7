//! Issue 11, 5-level paging, on the stock Debian kernel under QEMU (TCG,
//! KASLR on, agentless, the harness's `memmap=` arena), once with LA57 on
//! (`-cpu max`: the kernel turns 5-level paging on) and once off (QEMU's
//! default CPU). For each:
//!
//! - the guest says which: `la57` in /proc/cpuinfo, CR4.LA57 of the stopped
//!   vCPUs, and the kernel's own `__pgtable_l5_enabled` / `pgdir_shift`
//!   (48 with 5 levels, 39 with 4) read through vsplice's page walk;
//! - the kernel is identified ([`LinuxTarget::open`]) with the paging mode
//!   of its vCPUs; with LA57 also without QEMU's physical memory mode, through
//!   the KASLR'd 5-level direct map (`page_offset_base` above the 4-level
//!   half), which reads the same physical bytes;
//! - `vsplice inspect summary` names the paging mode (text and JSON);
//! - `examples/patches/linux/cmdline_marker.c` applied and reverted through
//!   the CLI: /proc/cmdline before, after apply, after revert;
//! - with LA57 on, once more with the guest agent loaded and insisted on
//!   (`--tasks agent`): its descriptor is found through the 5-level direct
//!   map and its task table is used.
//!
//! With LA57 on and QEMU offering no LA57 the test skips loudly (nothing
//! about 5-level paging would be tested).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use vsplice_patcher::arch::x86::guest::Guest as GuestMem;
use vsplice_patcher::arch::x86::paging::{PagingMode, CR4_LA57};
use vsplice_patcher::attach::attach_gdb;
use vsplice_patcher::gdb::GdbOptions;
use vsplice_patcher::kernels::stock_linux::LinuxTarget;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::model::mem::KernelMemory;
use vsplice_tests::cli::{text, vsplice};
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::Guest;
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::skip::skip;
use vsplice_tests::testguest::vm_lock;

/// Boots the Debian guest with `cpu`, agentless unless `agent`; `None`
/// after a loud skip when the images, the Kbuild headers or QEMU are missing.
fn boot(label: &str, cpu: Option<&str>, agent: bool) -> Option<Guest> {
    let mut cfg = linuxpatch::config_with_headers(Flavour::Amd64, label)?;
    cfg.cpu = cpu.map(str::to_owned);
    if !agent {
        cfg.extra_append.push("vsplice.agent=0".into());
    }
    Guest::boot_or_skip(cfg)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A `u32` kernel variable by name, if kallsyms has it.
fn kernel_u32<B: Backend>(mem: &mut GuestMem<B>, t: &LinuxTarget, name: &str) -> Option<u32> {
    let a = t.kallsyms().first_addr(name)?;
    let mut b = [0u8; 4];
    mem.read(a, &mut b).unwrap_or_else(|e| panic!("reading {name} at {a:#x}: {e}"));
    Some(u32::from_le_bytes(b))
}

/// Attaches, checks the stopped vCPUs' CR4 and the kernel's own view of
/// its paging mode against `mode`, identifies the kernel, and lets it run.
fn check_the_kernel_view(g: &Guest, mode: PagingMode) {
    let opts = GdbOptions { timeout: Duration::from_secs(20), ..GdbOptions::default() };
    let (mut be, vcpus) = attach_gdb(g.gdb_addr().unwrap(), opts).unwrap();
    let long: Vec<_> = vcpus.iter().filter(|v| v.long_mode()).collect();
    assert!(!long.is_empty());
    for v in &long {
        assert_eq!(v.cr4 & CR4_LA57 != 0, mode == PagingMode::FiveLevel, "vCPU {} CR4 {:#x}", v.index, v.cr4);
    }
    eprintln!("  CR4 of vCPU 0: {:#x}", long[0].cr4);
    let target = match LinuxTarget::open(&mut be, vcpus) {
        Ok(t) => t,
        Err(e) => panic!("identify with {mode:?}: {e} ({})", e.cause()),
    };
    assert_eq!(target.paging_mode(), mode);
    let mut mem = GuestMem::new(&mut be, target.page_table_root(), target.paging_mode().cr4_bits());
    let l5 = kernel_u32(&mut mem, &target, "__pgtable_l5_enabled");
    let shift = kernel_u32(&mut mem, &target, "pgdir_shift");
    eprintln!("  __pgtable_l5_enabled = {l5:?}, pgdir_shift = {shift:?}");
    assert!(l5.is_some() || shift.is_some(), "the kernel has neither __pgtable_l5_enabled nor pgdir_shift");
    let five = mode == PagingMode::FiveLevel;
    if let Some(l5) = l5 {
        assert_eq!(l5 != 0, five, "__pgtable_l5_enabled");
    }
    if let Some(shift) = shift {
        assert_eq!(shift, if five { 48 } else { 39 }, "pgdir_shift");
    }
    drop(mem);
    be.resume().unwrap();
    be.detach().unwrap();
}

/// Without the stub's physical mode: attach finds the direct map (in the
/// 5-level range), identifies the kernel, and reads through the direct map
/// the same bytes as the physical mode does.
fn check_the_direct_map(g: &Guest) {
    let addr = g.gdb_addr().unwrap();
    let read_root = |phys_mode: bool| {
        let opts = GdbOptions { timeout: Duration::from_secs(20), phys_mode, ..GdbOptions::default() };
        let (mut be, vcpus) = attach_gdb(addr, opts).unwrap();
        assert!(be.has_phys_access());
        // Without it, physical reads really go through the direct map.
        assert_eq!(be.client().phys_mode(), phys_mode);
        let target = LinuxTarget::open(&mut be, vcpus).unwrap_or_else(|e| panic!("identify (phys mode {phys_mode}): {e} ({})", e.cause()));
        assert_eq!(target.paging_mode(), PagingMode::FiveLevel);
        let root = target.page_table_root();
        let mut mem = GuestMem::new(&mut be, root, target.paging_mode().cr4_bits());
        let pob = target.kallsyms().first_addr("page_offset_base").unwrap();
        let base = mem.read_u64(pob).unwrap();
        drop(mem);
        // The PML5 page, read physically (through the direct map without phys mode).
        let mut pml5 = vec![0u8; 4096];
        be.read_phys(root, &mut pml5).unwrap();
        be.resume().unwrap();
        be.detach().unwrap();
        (base, root, pml5)
    };
    let (base, root, phys) = read_root(true);
    let (base2, root2, via_dm) = read_root(false);
    eprintln!("  page_offset_base {base:#x}; init_top_pgt at {root:#x}");
    assert_eq!((base2, root2), (base, root));
    assert!(!PagingMode::FourLevel.is_canonical(base) && PagingMode::FiveLevel.is_canonical(base), "{base:#x}: not in the 5-level direct map range");
    assert!(phys.iter().any(|&b| b != 0), "the PML5 is empty");
    assert!(phys == via_dm, "the direct map reads other bytes than the physical mode");
}

/// `vsplice inspect summary` names the paging mode.
fn check_inspect(g: &Guest, mode: PagingMode) {
    let gdb = g.gdb_addr().unwrap().to_owned();
    let o = vsplice(&["inspect", "--gdb", &gdb, "summary"]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    let want = match mode {
        PagingMode::FiveLevel => "5-level (CR4.LA57)",
        PagingMode::FourLevel => "4-level",
    };
    let line = text(&o.stdout).lines().find(|l| l.starts_with("paging")).map(str::to_owned);
    assert!(line.as_deref().is_some_and(|l| l.ends_with(want)), "{}", text(&o.stdout));
    let o = vsplice(&["inspect", "--gdb", &gdb, "--json", "summary"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(v["paging"]["levels"].as_u64(), Some(u64::from(mode.levels())), "{v}");
    assert!(v["banner"].as_str().is_some_and(|b| b.starts_with("Linux version")), "{v}");
    eprintln!("  inspect: {}", line.unwrap_or_default());
}

/// cmdline_marker through the CLI with `--tasks tasks`: apply (its check
/// read the tasks from `source`), /proc/cmdline, revert.
fn apply_and_revert(g: &mut Guest, label: &str, tasks: &str, source: &str) {
    let img = debian_images(Flavour::Amd64).unwrap();
    let dir = tmp_dir(label);
    let vsp = linuxpatch::cli_build_example(&img, "cmdline_marker.c", &dir).unwrap();
    let gdb = g.gdb_addr().unwrap().to_owned();
    let arena = linuxpatch::arena_arg(g);
    let cli = |cmd: &[&str]| {
        let mut args = vec!["patch"];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&["--gdb", gdb.as_str(), "--target", "linux", "--arena", arena.as_str()]);
        args.extend_from_slice(&["--tasks", tasks]);
        vsplice(&args)
    };
    let before = g.run_ok("cat /proc/cmdline").unwrap();
    assert!(!before.contains("vsplice.marker"), "{before}");
    let o = cli(&["apply", path(&vsp)]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains("\"cause\":\"ok\""), "{}", text(&o.stdout));
    let source = format!("\"task_source\":\"{source}\"");
    assert!(text(&o.stdout).replace(": ", ":").contains(&source), "{source}: {}", text(&o.stdout));
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), format!("{} vsplice.marker=cmdline\n", before.trim_end()));
    let o = cli(&["status"]);
    assert!(o.status.success() && text(&o.stdout).contains("\"active\": true"), "{}", text(&o.stdout));
    let o = cli(&["revert", "cmdline_marker"]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// True when the guest runs with LA57; a loud skip otherwise.
fn has_la57(g: &mut Guest, label: &str) -> bool {
    let la57 = g.run_ok("grep -o -w la57 /proc/cpuinfo | head -n 1").unwrap();
    if la57.trim() != "la57" {
        skip(label, "QEMU's `-cpu max` has no LA57 here: the guest does not run with 5-level paging");
        return false;
    }
    true
}

#[test]
fn five_level_paging_on_the_kernel_is_identified_inspected_and_patched() {
    let _l = vm_lock();
    let label = "la57_on";
    let Some(mut g) = boot(label, Some("max"), false) else { return };
    if !has_la57(&mut g, label) {
        return;
    }
    check_the_kernel_view(&g, PagingMode::FiveLevel);
    check_the_direct_map(&g);
    check_inspect(&g, PagingMode::FiveLevel);
    apply_and_revert(&mut g, "la57-on", "agentless", "agentless");
    g.check_console().unwrap();
}

#[test]
fn four_level_paging_on_the_default_cpu_is_identified_inspected_and_patched() {
    let _l = vm_lock();
    let label = "la57_off";
    let Some(mut g) = boot(label, None, false) else { return };
    let la57 = g.run_ok("grep -c -w la57 /proc/cpuinfo || true").unwrap();
    assert_eq!(la57.trim(), "0", "the default CPU has LA57");
    check_the_kernel_view(&g, PagingMode::FourLevel);
    check_inspect(&g, PagingMode::FourLevel);
    apply_and_revert(&mut g, "la57-off", "agentless", "agentless");
    g.check_console().unwrap();
}

#[test]
fn the_agent_is_found_and_used_with_five_level_paging() {
    let _l = vm_lock();
    let label = "la57_agent";
    let Some(mut g) = boot(label, Some("max"), true) else { return };
    if !has_la57(&mut g, label) {
        return;
    }
    g.run_ok("grep -q '^vsplice_agent ' /proc/modules").expect("/init did not load the agent");
    // The agent's table, checked against the BTF walk.
    apply_and_revert(&mut g, "la57-agent", "agent", "agent+agentless");
    g.check_console().unwrap();
}
