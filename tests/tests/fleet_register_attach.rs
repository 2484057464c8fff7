//! `vsplice attach --register`: a stock Debian kernel under QEMU (TCG)
//! behind `vsplice attach --api-sock … --register dir:… --label host=q`
//! registers itself with the kernel's release and build-id (identified from
//! guest memory at attach); `vsplice fleet plan --inventory dir:…` finds it
//! with its labels and where it came from; SIGTERM (the daemon's clean
//! exit) removes the registration. Skips loudly (the QEMU helpers) where
//! QEMU or the Debian images are missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_tests::api::build_example;
use vsplice_tests::attach::AttachDaemon;
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::fleet::{fleet, registered, said};
use vsplice_tests::qemu::Guest;
use vsplice_tests::{linuxpatch, testguest};

/// Attaching and identifying a kernel under TCG on a loaded host takes a while.
const READY_WITHIN: Duration = Duration::from_secs(600);

#[test]
fn an_attach_daemon_registers_its_debian_kernel_and_removes_it_on_sigterm() {
    let _g = testguest::vm_lock();
    let Some(mut cfg) = linuxpatch::config_with_headers(Flavour::Amd64, "register-attach") else { return };
    cfg.extra_append.push("vsplice.agent=0".into());
    cfg.smp = 1;
    let Some(mut guest) = Guest::spawn_or_skip(cfg) else { return };
    guest.wait_ready().unwrap_or_else(|e| panic!("the Debian guest does not boot: {e}"));
    let img = debian_images(Flavour::Amd64).unwrap();
    let build_id = LinuxImage::open(&img.vmlinuz).unwrap().build_id().unwrap().to_owned();

    let dir = vsplice_tests::scratch::tmp_dir("register-attach");
    let store = format!("dir:{}", dir.join("targets").display());
    let extra = ["--register", &store, "--register-id", "deb1", "--label", "host=q", "--label", "flavour=amd64"];
    let mut d = AttachDaemon::start(&dir, guest.gdb_addr().unwrap(), &linuxpatch::arena_arg(&guest), &extra, READY_WITHIN).unwrap();
    let (all, notes) = registered(&store);
    let r = all.get("deb1").unwrap_or_else(|| panic!("not registered: {notes:?}\n{}", d.stderr_text()));
    let k = r.kernel.clone().expect("the kernel is known at attach");
    assert_eq!((k.kind.as_str(), k.release.as_deref(), k.build_id.as_deref()), ("linux", Some(img.release.as_str()), Some(build_id.as_str())));
    assert_eq!((r.labels["host"].as_str(), r.labels["flavour"].as_str()), ("q", "amd64"));
    assert_eq!(r.api_sock, std::path::absolute(&d.sock).unwrap());

    // The fleet finds it in the store, by its labels, and says where from.
    let patch = build_example(&dir, "step_b_v2.c");
    let plan = dir.join("plan.json");
    std::fs::write(&plan, serde_json::json!({"patches": [&patch], "allow_unsigned": true, "selector": {"host": "q"}}).to_string()).unwrap();
    let o = fleet(&dir.join("dry.redb"), &["--json", "plan", "--inventory", &store, "--plan", plan.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", said(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = &v["targets"][0];
    assert_eq!((t["target"]["name"].as_str(), t["skip"].as_str(), t["build_id"].as_str()), (Some("deb1"), Some("no_patch_for_kernel"), Some(build_id.as_str())), "{v}");
    assert_eq!(t["target"]["origin"]["key"].as_str(), Some(dir.join("targets/deb1.json").to_str().unwrap()), "{v}");

    d.signal(libc::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(120)).expect("the daemon never ended on SIGTERM");
    assert!(st.success(), "{}", d.stderr_text());
    assert!(!dir.join("targets/deb1.json").exists(), "SIGTERM (a clean exit) removes the registration");
}
