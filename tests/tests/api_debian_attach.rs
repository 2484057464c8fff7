//! `vsplice attach` on stock Debian kernels under QEMU (TCG, KASLR on,
//! agentless, the harness's `memmap=` arena): the real binary attaches
//! once to QEMU's gdbstub and serves the API; through `vsplice remote` the
//! example patch `cmdline_marker.c` (built with Kbuild) is applied, listed
//! and reverted while `/proc/cmdline` inside the guest shows each step; `GET
//! /vm` names the kernel (release, build-id, KASLR slide) and the gdbstub;
//! the metrics and events count the transactions; every JSON reply conforms
//! to docs/openapi.yaml. Then the daemon ends: on SIGTERM it detaches (the
//! guest runs on) and removes its socket; when QEMU dies under it, it ends
//! with `gdbstub_gone` and exit status 2. A half-written transaction (a
//! `vsplice patch apply` killed between its two jump writes) found at attach
//! keeps the guest stopped (`paused`) until `remote patch recover`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_tests::attach::AttachDaemon;
use vsplice_tests::cli::{text, vsplice_killed_after};
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::{Guest, RunOptions};
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::testguest::vm_lock;

/// Attaching and identifying a kernel under TCG takes seconds; be generous.
const READY_WITHIN: Duration = Duration::from_secs(600);

/// Boots the flavour, builds the example patch, starts the daemon and runs
/// the patch's round trip through `vsplice remote`; returns the guest, the
/// daemon and `/proc/cmdline` as booted. `None` after a loud skip.
fn round_trip(flavour: Flavour, label: &str) -> Option<(Guest, AttachDaemon, String)> {
    let mut g = linuxpatch::boot_agentless(flavour, label)?;
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    let dir = tmp_dir(label);
    let vsp = dir.join("cmdline_marker.vsp");
    std::fs::write(&vsp, patch.to_bytes().unwrap()).unwrap();
    let vsp = vsp.to_str().unwrap();
    let before = g.run_ok("cat /proc/cmdline").unwrap();
    let marked = format!("{} vsplice.marker=cmdline\n", before.trim_end());

    let d = AttachDaemon::start(&dir, g.gdb_addr().unwrap(), &linuxpatch::arena_arg(&g), &shm_args(&g), READY_WITHIN).unwrap();
    let build_id = image.build_id().unwrap().to_owned();
    let ready = d.stderr_text();
    assert!(ready.contains(&img.release) && ready.contains(&build_id), "the ready line names the kernel:\n{ready}");
    assert_eq!(std::fs::metadata(&d.sock).unwrap().permissions().mode() & 0o777, 0o600);
    // Attached, the guest runs between requests.
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), before);

    // The VM: the gdbstub (with the RAM file when the guest has one: said
    // so, with its size), the kernel identified once.
    let (o, vm) = d.remote_json(&["vm"], "VmInfo");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let hypervisor = if g.shared_ram().is_some() { "gdbstub_shm" } else { "gdbstub" };
    assert_eq!((vm["hypervisor"].as_str(), vm["state"].as_str(), vm["boot"].as_u64()), (Some(hypervisor), Some("running"), Some(1)), "{vm}");
    match g.shared_ram() {
        Some(_) => {
            assert_eq!(vm["memory_mib"].as_u64(), Some(u64::from(g.config().mem_mib)), "{vm}");
            let shm = &vm["shared_memory"];
            assert_eq!((shm["stop_via"].as_str(), shm["writes"].as_str()), (Some("gdb"), Some("gdbstub")), "TCG: writes through the stub: {vm}");
            assert!(shm["mem_path"].as_str().is_some_and(|p| !p.is_empty()), "{vm}");
        }
        None => assert_eq!((&vm["memory_mib"], &vm["shared_memory"]), (&serde_json::Value::Null, &serde_json::Value::Null), "{vm}"),
    }
    assert_eq!(vm["vcpus"].as_u64(), Some(u64::from(g.config().smp)), "{vm}");
    assert_eq!(vm["arena"], "0x3f000000:4M");
    let kernel = &vm["kernel"];
    assert_eq!((kernel["kind"].as_str(), kernel["release"].as_str(), kernel["build_id"].as_str()), (Some("linux"), Some(img.release.as_str()), Some(build_id.as_str())), "{vm}");
    assert!(kernel["kaslr_slide"].as_str().is_some_and(|s| s != "0x0"), "KASLR is on: {vm}");
    let o = d.remote(&["vm"]);
    assert!(text(&o.stdout).contains(&format!("state: running ({hypervisor})")), "{}", text(&o.stdout));
    assert_eq!(text(&o.stdout).contains("shared memory: "), g.shared_ram().is_some(), "{}", text(&o.stdout));

    // Apply through `vsplice remote`; the guest's /proc/cmdline changes.
    let (_, list) = d.remote_json(&["patch", "list"], "Status");
    assert_eq!(list["patches"], serde_json::json!([]), "{list}");
    let (o, r) = d.remote_json(&["patch", "apply", vsp], "TxnReport");
    assert!(o.status.success() && r["cause"] == "ok", "{r}\n{}", text(&o.stderr));
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), marked);
    let (_, list) = d.remote_json(&["patch", "list"], "Status");
    assert_eq!((list["patches"][0]["name"].as_str(), list["patches"][0]["state"].as_str()), (Some("cmdline_marker"), Some("applied")), "{list}");
    let one = d.req("GET", "/patches/cmdline_marker", None, b"");
    assert_eq!(one.status, 200, "{}", one.text());
    // The same again: refused, exit 3, nothing changes.
    let (o, r) = d.remote_json(&["patch", "apply", vsp], "TxnReport");
    assert_eq!((o.status.code(), r["cause"].as_str()), (Some(3), Some("already_applied")), "{r}");

    // Metrics and events.
    let m = d.req("GET", "/metrics", None, b"");
    assert_eq!(m.status, 200);
    let metrics = m.text();
    assert!(metrics.contains(r#"vsplice_transactions_total{op="apply",cause="ok"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"vsplice_transactions_total{op="apply",cause="already_applied"} 1"#), "{metrics}");
    let o = d.remote(&["metrics"]);
    assert!(o.status.success() && text(&o.stdout).contains("vsplice_transactions_total"), "{}", text(&o.stdout));
    let (_, ev) = d.remote_json(&["events", "--since", "0"], "Events");
    let kinds: Vec<&str> = ev["events"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"txn"), "{ev}");

    // Revert; /proc/cmdline is back.
    let (o, r) = d.remote_json(&["patch", "revert", "cmdline_marker"], "TxnReport");
    assert!(o.status.success() && r["cause"] == "ok", "{r}\n{}", text(&o.stderr));
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), before);
    let (_, list) = d.remote_json(&["patch", "list"], "Status");
    assert_eq!(list["patches"], serde_json::json!([]), "{list}");
    Some((g, d, before))
}

#[test]
fn attach_daemon_patches_debian_amd64_through_the_api_and_ends_on_sigterm() {
    let _l = vm_lock();
    let Some((mut g, mut d, before)) = round_trip(Flavour::Amd64, "api_attach_amd64") else { return };
    d.signal(libc::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(60)).expect("the daemon ends on SIGTERM");
    assert!(st.success(), "{st}: {}", d.stderr_text());
    assert!(!d.sock.exists(), "the socket is removed");
    assert!(d.stderr_text().contains("detached; the guest runs on"), "{}", d.stderr_text());
    // Detached: the guest runs on and answers.
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), before);
    g.check_console().unwrap();
}

#[test]
fn attach_daemon_on_debian_cloud_ends_with_gdbstub_gone_when_qemu_dies() {
    let _l = vm_lock();
    let Some((g, mut d, _)) = round_trip(Flavour::CloudAmd64, "api_attach_cloud") else { return };
    g.check_console().unwrap();
    // QEMU goes away under the daemon.
    drop(g);
    let st = d.wait_exit(Duration::from_secs(60)).expect("the daemon ends when QEMU dies");
    assert_eq!(st.code(), Some(2), "{}", d.stderr_text());
    assert!(d.stderr_text().contains("[gdbstub_gone]"), "{}", d.stderr_text());
    assert!(!d.sock.exists(), "the socket is removed");
}

/// Kills `vsplice patch apply` of a two-function patch at each write in turn
/// until the guest's registry says the text is half-written (the CLI then
/// leaves the guest stopped). `false` when no kill left it so.
fn leave_half_written(g: &mut Guest, vsp: &str) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let (gdb, arena) = (g.gdb_addr().unwrap().to_owned(), linuxpatch::arena_arg(g));
    let run = |args: &[&str], kill: Option<usize>| {
        let a = [&["patch"], args, &["--gdb", &gdb, "--target", "linux", "--arena", &arena]].concat();
        vsplice_killed_after(&a, kill)
    };
    for kill_at in 0..40 {
        let o = run(&["apply", vsp], Some(kill_at));
        if o.status.signal() != Some(9) {
            return false;
        }
        if text(&run(&["status"], None).stdout).contains("\"text\": \"partial\"") {
            return true;
        }
        let o = run(&["status", "--recover"], None);
        assert!(o.status.success(), "{}", text(&o.stderr));
        if text(&run(&["list"], None).stdout).contains("two_sites") {
            assert!(run(&["revert", "two_sites"], None).status.success());
        }
    }
    false
}

#[test]
fn attach_daemon_keeps_a_half_written_guest_stopped_until_recovered() {
    let _l = vm_lock();
    let label = "api_attach_half_written";
    let Some(mut g) = linuxpatch::boot_agentless(Flavour::Amd64, label) else { return };
    let img = debian_images(Flavour::Amd64).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build_text(&img, &image, "two_sites", linuxpatch::TWO_SITES, true).unwrap();
    let dir = tmp_dir(label);
    let vsp = dir.join("two.vsp");
    std::fs::write(&vsp, patch.to_bytes().unwrap()).unwrap();
    let (c0, e0) = (g.run_ok("cat /proc/cmdline").unwrap(), g.run_ok("cat /proc/execdomains").unwrap());
    assert!(leave_half_written(&mut g, vsp.to_str().unwrap()), "no kill left the text half-written");

    let mut d = AttachDaemon::start(&dir, g.gdb_addr().unwrap(), &linuxpatch::arena_arg(&g), &shm_args(&g), READY_WITHIN).unwrap();
    let said = d.stderr_text();
    assert!(said.contains("the guest stays stopped") && said.contains("kept stopped"), "{said}");
    assert_eq!(d.req("GET", "/vm", None, b"").json()["state"], "paused");
    let r = g.run_with("echo running", RunOptions::new(Duration::from_secs(3)));
    assert!(r.is_err(), "the guest runs half-patched under the daemon");
    let (_, st) = d.remote_json(&["patch", "list"], "Status");
    assert_eq!(st["intent"]["text"], "partial", "{st}");

    let (o, r) = d.remote_json(&["patch", "recover"], "TxnReport");
    assert!(o.status.success() && r["cause"] == "ok", "{r}\n{}", text(&o.stderr));
    // The recovery resumed the guest; the daemon publishes it at its next turn.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while d.req("GET", "/vm", None, b"").json()["state"] != "running" {
        assert!(std::time::Instant::now() < end, "GET /vm never says running after the recovery");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, ev) = d.remote_json(&["events", "--since", "0"], "Events");
    let states: Vec<&str> = ev["events"].as_array().unwrap().iter().filter_map(|e| e["state"].as_str()).collect();
    assert_eq!(states, ["paused", "running"], "{ev}");
    // Both functions patched, or neither.
    let (_, st) = d.remote_json(&["patch", "list"], "Status");
    assert_eq!(st["intent"], serde_json::Value::Null, "{st}");
    let applied = st["patches"].as_array().unwrap().iter().any(|p| p["name"] == "two_sites");
    let (c, e) = (g.run_ok("cat /proc/cmdline").unwrap(), g.run_ok("cat /proc/execdomains").unwrap());
    if applied {
        assert_eq!((c, e), (format!("{} two\n", c0.trim_end()), "two\n".to_owned()));
        let (o, r) = d.remote_json(&["patch", "revert", "two_sites"], "TxnReport");
        assert!(o.status.success(), "{r}");
    } else {
        assert_eq!((c, e), (c0.clone(), e0.clone()));
    }
    d.signal(libc::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(60)).expect("the daemon ends on SIGTERM");
    assert!(st.success(), "{st}: {}", d.stderr_text());
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), c0);
    g.check_console().unwrap();
}

/// `--mem-path FILE --qmp SOCK` when the harness gave the guest shared RAM
/// (`VSPLICE_TEST_SHM=1`): the daemon then reads memory through the file.
fn shm_args(g: &vsplice_tests::qemu::Guest) -> Vec<&str> {
    g.shared_ram().map(|r| vec!["--mem-path", r.mem_path.to_str().unwrap_or(""), "--qmp", r.qmp.to_str().unwrap_or("")]).unwrap_or_default()
}
