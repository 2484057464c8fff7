//! Tests of the Linux layer on synthetic tables and, when present, on the
//! Debian kernel image built by images/debian-kernels.sh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::kallsyms::Kallsyms;
use super::testutil::{kallsyms_blob, sample_syms};

const TEXT: u64 = 0xffff_ffff_8320_0000;

#[test]
fn kallsyms_located_and_decoded_with_and_without_seqs() {
    for seqs in [false, true] {
        let syms = sample_syms(TEXT);
        let base = 0xffff_ffff_8400_0000u64;
        let (blob, rb) = kallsyms_blob(&syms, base, 4096 + 8, seqs);
        let k = Kallsyms::locate_in(&blob, base).unwrap();
        assert_eq!(k.len(), syms.len());
        assert_eq!(k.tables.relative_base, rb);
        assert_eq!(k.tables.seqs_of_names.is_some(), seqs);
        for (i, (kind, name, addr, _)) in syms.iter().enumerate() {
            let s = &k.symbols()[i];
            assert_eq!((s.kind, &s.name, s.addr), (*kind, name, *addr), "symbol {i}");
        }
        // Duplicates, with positions.
        let d = k.lookup_all("__dup_local");
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|(_, s)| s.kind == 't'));
        assert_eq!(k.addr_of("__dup_local"), None);
        assert_eq!(k.addr_of("_text"), Some(TEXT));
        // Two-byte length name.
        assert_eq!(k.lookup_all(&"x".repeat(200)).len(), 1);
        // By address: aliases resolve to the first, sizes to the next address.
        let h = k.lookup_addr(TEXT + 0x10).unwrap();
        assert_eq!((h.symbol.name.as_str(), h.offset, h.size), ("_text", 0x10, Some(0x100)));
        let f1 = k.lookup_all("func_1")[0].1.addr;
        let h = k.lookup_addr(f1 + 3).unwrap();
        assert_eq!((h.symbol.name.as_str(), h.offset, h.size), ("func_1", 3, Some(0x50)));
        // Per-CPU offsets resolve to absolute symbols, kernel addresses never do.
        assert_eq!(k.lookup_addr(0x1fb80).unwrap().symbol.name, "current_task");
        assert!(k.lookup_addr(TEXT - 0x1000).is_none());
    }
}

#[test]
fn kallsyms_rejects_corrupted_tables() {
    let syms = sample_syms(TEXT);
    let base = 0xffff_ffff_8400_0000u64;
    let (mut blob, _) = kallsyms_blob(&syms, base, 64, true);
    // Break one token-index entry: the tables no longer validate.
    let n = blob.len();
    blob[n - 64 - 2] ^= 0x40;
    let e = Kallsyms::locate_in(&blob, base).unwrap_err();
    assert_eq!(e.cause(), "kallsyms_not_found");
}

#[test]
fn debian_image_offline() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images/debian-amd64/vmlinuz");
    if !root.exists() {
        eprintln!("SKIPPED debian_image_offline: {} missing (run images/debian-kernels.sh)", root.display());
        return;
    }
    let mut img = super::image::ImageMemory::open(&root).unwrap();
    let info = super::kernel::open_image(&mut img).unwrap();
    let k = &info.kallsyms;
    assert!(k.len() > 50_000);
    assert_eq!(k.addr_of("_text"), Some(super::layout::DEFAULT_TEXT_LINK));
    assert!(info.banner.as_deref().unwrap().starts_with("Linux version 6.1"));
    assert_eq!(info.build_id.as_ref().unwrap().len(), 20);
    let (btf, _, _) = info.btf.as_ref().unwrap();
    let off = super::tasks::TaskOffsets::from_btf(btf).unwrap();
    assert!(off.task_size > 4096 && off.cpu < 64 && off.thread_sp > off.tasks);
    let orc = info.orc.as_ref().unwrap();
    assert!(orc.ip_entries > 10_000 && orc.ip_entries == orc.unwind_entries);
}
