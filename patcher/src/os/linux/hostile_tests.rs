//! Structures a hostile guest can corrupt, each built here and each
//! answered by its named refusal (never a panic, hang or huge allocation):
//! BTF type cycles and fan-out, absurd kallsyms scalars, garbage token
//! tables, anchor look-alikes that would make the kallsyms scan quadratic.
//! Task lists are in `tests.rs` (`btf_and_tasks`), page tables in
//! `arch/x86/tests.rs`, the agent's descriptor in `agent/tests.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::btf::{Btf, MAX_LAYOUT_MEMBERS};
use super::kallsyms::Kallsyms;
use super::kallsyms_locate::{self, KallsymsTables};
use super::testutil::{kallsyms_blob, sample_syms, BtfBuilder};
use crate::model::mem::BufferMemory;

const TEXT: u64 = 0xffff_ffff_8320_0000;

#[test]
fn btf_type_cycles_end_in_bounded_answers() {
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    // Type `self_arr` is an array of itself; `p` a pointer to itself.
    let self_arr = b.next_id();
    assert_eq!(b.array(self_arr, int, 4), self_arr);
    let p = b.next_id();
    assert_eq!(b.ptr(p), p);
    let blob = b.blob();
    let btf = Btf::parse(&blob).unwrap();
    assert_eq!(btf.size_of(self_arr), None);
    assert!(btf.type_name(p).contains("too deep"), "{}", btf.type_name(p));
    assert!(btf.type_name(self_arr).contains("too deep"));
}

#[test]
fn btf_array_size_overflow_is_none() {
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    let a = b.array(int, int, u32::MAX);
    let a2 = b.array(a, int, u32::MAX);
    let btf = Btf::parse(&b.blob()).unwrap();
    assert_eq!(btf.size_of(a), Some(4 * u64::from(u32::MAX)));
    assert_eq!(btf.size_of(a2), None);
}

#[test]
fn btf_anonymous_member_fan_out_is_bounded() {
    // A struct whose 64 anonymous members are each the struct itself: a
    // depth-16 search would visit 64^16 records without the step bound.
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    let me = b.next_id();
    let mut members: Vec<(&str, u32, u32, u32)> = (0..64).map(|i| ("", me, i * 32, 0)).collect();
    members.push(("x", int, 0, 0));
    assert_eq!(b.composite("loop", false, 256, &members), me);
    let btf = Btf::parse(&b.blob()).unwrap();
    // A name that is not there: the search gives up, it does not hang,
    // and says it gave up (`btf_bound`), not that the member is absent.
    assert!(btf.member(me, "nope").is_none());
    assert_eq!(btf.member_checked(me, "nope").unwrap_err().cause(), "btf_bound");
    assert!(btf.member(me, "x").is_some());
    assert!(btf.member_checked(me, "x").unwrap().is_some());
    // A struct without anonymous members: absent is absent.
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    let plain = b.composite("plain", false, 4, &[("a", int, 0, 0)]);
    let btf = Btf::parse(&b.blob()).unwrap();
    assert!(btf.member_checked(plain, "nope").unwrap().is_none());
    let lay = btf.layout(me);
    assert!(!lay.is_empty() && lay.len() <= MAX_LAYOUT_MEMBERS, "{}", lay.len());
}

#[test]
fn btf_truncated_and_absurd_headers_are_named() {
    let mut b = BtfBuilder::new();
    b.int("int", 4);
    let good = b.blob();
    // Type section length far past the blob.
    let mut bad = good.clone();
    bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(Btf::parse(&bad).unwrap_err().cause(), "btf_header");
    // A struct claiming 65535 members in a tiny section.
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    b.composite("s", false, 4, &[("a", int, 0, 0)]);
    let mut bad = b.blob();
    let s_info = 24 + 16 + 4; // header, the int record (12 + 4), then name_off
    bad[s_info..s_info + 2].copy_from_slice(&0xffffu16.to_le_bytes());
    assert_eq!(Btf::parse(&bad).unwrap_err().cause(), "btf_type");
    for n in 0..good.len() {
        let _ = Btf::parse(&good[..n]);
    }
}

fn tables() -> (Vec<u8>, u64, KallsymsTables) {
    let base = 0xffff_ffff_8400_0000u64;
    let (blob, _) = kallsyms_blob(&sample_syms(TEXT), base, 64, true);
    let t = kallsyms_locate::locate(&blob, base).unwrap();
    (blob, base, t)
}

#[test]
fn kallsyms_absurd_scalars_are_refused_before_reading() {
    let (blob, base, good) = tables();
    let mut mem = BufferMemory { base, data: blob };
    assert!(Kallsyms::read(&mut mem, good.clone()).is_ok());
    let cases = [
        KallsymsTables { num_syms: u32::MAX, ..good.clone() },
        KallsymsTables { names_len: u64::MAX, ..good.clone() },
        // token_index below token_table: a subtraction that would underflow.
        KallsymsTables { token_index: good.token_table - 8, ..good.clone() },
        KallsymsTables { token_index: good.token_table + (1 << 30), ..good.clone() },
    ];
    for t in cases {
        let e = Kallsyms::read(&mut mem, t.clone()).unwrap_err();
        assert_eq!(e.cause(), "kallsyms_corrupt", "{t:?}: {e}");
    }
    // Tables pointing into unmapped space: a memory error.
    let e = Kallsyms::read(&mut mem, KallsymsTables { names: 0xdead_0000, ..good }).unwrap_err();
    assert_eq!(e.cause(), "memory", "{e}");
}

#[test]
fn kallsyms_garbage_token_tables_are_refused() {
    let (blob, base, t) = tables();
    let tt = (t.token_table - base) as usize;
    let ti = (t.token_index - base) as usize;
    let mut mem = BufferMemory { base, data: blob.clone() };
    // Tokens with no terminator: the token table does not parse.
    mem.data[tt..ti].fill(b'A');
    let e = Kallsyms::read(&mut mem, t.clone()).unwrap_err();
    assert_eq!(e.cause(), "kallsyms_corrupt", "{e}");
    // Control bytes in the tokens: not a token table either.
    let mut mem = BufferMemory { base, data: blob.clone() };
    mem.data[tt..ti].fill(1);
    assert_eq!(Kallsyms::read(&mut mem, t.clone()).unwrap_err().cause(), "kallsyms_corrupt");
    // And the scan does not find such tables at all.
    let mut bad = blob;
    bad[tt..ti].fill(b'A');
    assert_eq!(Kallsyms::locate_in(&bad, base).unwrap_err().cause(), "kallsyms_not_found");
}

#[test]
fn kallsyms_scan_of_anchor_look_alikes_stops_at_its_bound() {
    // A region of anchors (kernel address, 1000 symbols, zero pad), each
    // followed by plausible one-token names that run on for pages: every
    // candidate costs ~1000 steps before it fails.
    let mut region = vec![1u8; 1 << 20];
    let mut q = 8192;
    while q + 16 <= region.len() {
        region[q..q + 8].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        region[q + 8..q + 12].copy_from_slice(&1000u32.to_le_bytes());
        region[q + 12..q + 16].fill(0);
        q += 4096;
    }
    let base = 0xffff_ffff_8400_0000u64;
    let e = kallsyms_locate::locate_bounded(&region, base, 10_000).unwrap_err();
    assert_eq!(e.cause(), "kallsyms_scan_bound", "{e}");
    // Within the real bound the same region is simply not kallsyms.
    assert_eq!(kallsyms_locate::locate(&region, base).unwrap_err().cause(), "kallsyms_not_found");
}

#[test]
fn orc_tables_with_absurd_counts_or_unmapped_pointers_are_refused() {
    use super::orc::OrcTable;
    let base = 0xffff_ffff_8100_0000u64;
    let mut mem = BufferMemory { base, data: vec![0u8; 0x1000] };
    for entries in [0u64, (8 << 20) + 1, u64::MAX] {
        let e = OrcTable::read(&mut mem, "m", (base, base + 0x1000), base, base + 0x800, entries).unwrap_err();
        assert_eq!(e.cause(), "orc_counts", "{entries}: {e}");
    }
    // A plausible count whose tables are not there.
    let e = OrcTable::read(&mut mem, "m", (base, base + 0x1000), 0xdead_0000, base, 16).unwrap_err();
    assert_ne!(e.cause(), "orc_counts", "{e}");
    // Unsorted addresses in the raw tables.
    let mut ips = Vec::new();
    for rel in [0x100i32, 0x10] {
        ips.extend_from_slice(&rel.to_le_bytes());
    }
    let e = OrcTable::from_raw("m", base, base + 0x1000, base, &ips, &[0u8; 12]).unwrap_err();
    assert_eq!(e.cause(), "orc_unsorted", "{e}");
}
