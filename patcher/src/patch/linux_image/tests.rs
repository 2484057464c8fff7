//! The Linux builder's view of the stock Debian images offline (skipped,
//! saying so, when images/debian-kernels.sh has not run): the KASLR
//! relocation table is found at the end of the payload, every kind of
//! boot-rewrite table is read, every site lies in the kernel, and a
//! function's masks cover its fentry call and its return thunk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use super::LinuxImage;

fn image(flavour: &str) -> Option<PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/images/debian-{flavour}/vmlinuz"));
    if p.exists() {
        return Some(p);
    }
    let line = format!("SKIPPED patch::linux offline ({flavour}): {} missing (run images/debian-kernels.sh)", p.display());
    eprintln!("{line}");
    if let Ok(log) = std::env::var("VSPLICE_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{line}");
        }
    }
    None
}

#[test]
fn debian_images_have_every_boot_rewrite_table() {
    for flavour in ["amd64", "cloud-amd64"] {
        let Some(path) = image(flavour) else { continue };
        let img = LinuxImage::open(&path).unwrap();
        let counts: HashMap<&str, usize> = img.rewrites().counts.0.iter().copied().collect();
        for (kind, at_least) in [
            ("reloc", 100_000),
            ("fentry", 20_000),
            ("return_thunk", 20_000),
            ("retpoline", 1_000),
            ("alternative", 1_000),
            ("paravirt", 1_000),
            ("static_call", 1_000),
            ("jump_label", 1_000),
            ("smp_lock", 1_000),
            ("static_call_trampoline", 100),
        ] {
            let n = counts.get(kind).copied().unwrap_or(0);
            assert!(n >= at_least, "{flavour}: {n} {kind} sites");
        }
        let k = img.kallsyms();
        let (text, end) = (k.first_addr("_text").unwrap(), k.first_addr("_end").unwrap());
        let bad: Vec<_> =
            img.rewrites().sites().iter().filter(|s| !(s.addr >= text && s.addr + u64::from(s.len) <= end && (1..=255).contains(&s.len))).take(5).collect();
        assert!(bad.is_empty(), "{flavour}: {bad:x?}");
        // A /proc show function: fentry at its entry, a return thunk near its end.
        let f = img.symbols().resolve("cmdline_proc_show", None).unwrap();
        let m = img.masks(f.addr, f.size);
        assert_eq!((m[0].offset, m[0].len, m[0].why.as_str()), (0, 5, "fentry"), "{m:?}");
        assert!(m.iter().any(|x| x.why.contains("return_thunk") && x.offset + x.len <= f.size), "{m:?}");
        assert_eq!(img.build_id().map(str::len), Some(40));
    }
}
