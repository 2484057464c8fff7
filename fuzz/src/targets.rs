//! The fuzz targets: each parser of untrusted bytes, fed one input, and
//! the name of what happened (`ok` or a stable error cause). A target
//! never unwraps what it is given: a panic in it is a finding.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vsplice_patcher::gdb::{link, packet, tdesc};
use vsplice_patcher::model::mem::BufferMemory;
use vsplice_patcher::model::symbols::SymbolTable;
use vsplice_patcher::os::linux::agent::layout;
use vsplice_patcher::os::linux::agent::read::Descriptor;
use vsplice_patcher::os::linux::btf::Btf;
use vsplice_patcher::os::linux::image::ImageMemory;
use vsplice_patcher::os::linux::kallsyms::Kallsyms;
use vsplice_patcher::os::linux::orc::OrcTable;
use vsplice_patcher::os::linux::tasks::{self, TaskOffsets};
use vsplice_patcher::os::linux::{notes, orc_object};
use vsplice_patcher::patch::format::PatchFile;
use vsplice_patcher::patch::link::Object;
use vsplice_patcher::patch::records;
use vsplice_patcher::testing::RamGuest;

use crate::seeds;

/// One parser under test.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name (also the corpus directory).
    pub name: &'static str,
    /// What it parses.
    pub what: &'static str,
    /// Runs one input; returns the outcome name.
    pub run: fn(&[u8]) -> String,
    /// Generated seeds (added to the saved corpus).
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Longest input mutations make.
    pub max_len: usize,
}

/// Every target.
pub fn all() -> Vec<Target> {
    vec![
        Target { name: "patch_file", what: "PatchFile::parse (header, manifest), then the object it carries", run: patch_file, seeds: seeds::patch_file, max_len: 256 << 10 },
        Target { name: "patch_object", what: "the ELF patch-object loader and linker, records, ORC rows", run: patch_object, seeds: seeds::patch_object, max_len: 128 << 10 },
        Target { name: "kallsyms", what: "the kallsyms scan and decoder", run: kallsyms, seeds: seeds::kallsyms, max_len: 256 << 10 },
        Target { name: "btf", what: "the BTF parser and member lookups, the task offsets", run: btf, seeds: seeds::btf, max_len: 64 << 10 },
        Target { name: "orc", what: "raw ORC tables and lookups", run: orc, seeds: seeds::orc, max_len: 16 << 10 },
        Target { name: "agent", what: "the guest agent's descriptor (header, block, table), parsed and read physically", run: agent, seeds: seeds::agent, max_len: 64 << 10 },
        Target { name: "gdb_packet", what: "GDB remote framing over a socket, RLE, escapes, hex, target descriptions", run: gdb_packet, seeds: seeds::gdb_packet, max_len: 64 << 10 },
        Target { name: "kernel_image", what: "bzImage / vmlinux ELF parsing and decompression, notes", run: kernel_image, seeds: seeds::kernel_image, max_len: 512 << 10 },
        Target { name: "vmm_loader", what: "the VMM's kernel loader (linux-loader ELF/bzImage into guest memory)", run: vmm_loader, seeds: seeds::kernel_image, max_len: 512 << 10 },
        Target { name: "module_ko", what: "a module's .ko as the --diff build reads it (symbols, sections, rewrite-site tables)", run: module_ko, seeds: seeds::patch_object, max_len: 128 << 10 },
        Target { name: "api", what: "API request bodies and queries (PUT /patches, GET /events)", run: api, seeds: seeds::api, max_len: 16 << 10 },
    ]
}

/// The target called `name`.
pub fn by_name(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}

const CODE: u64 = 0xffff_ffff_c000_0000;
const DATA: u64 = 0xffff_ffff_c010_0000;

fn link_object(data: &[u8]) -> String {
    match Object::parse(data) {
        Err(e) => format!("load:{}", e.cause()),
        Ok(obj) => match obj.link(CODE, DATA, &[], &SymbolTable::new(Vec::new())) {
            Ok(_) => "linked".into(),
            Err(e) => format!("link:{}", e.cause()),
        },
    }
}

fn patch_file(data: &[u8]) -> String {
    match PatchFile::parse(data) {
        Err(e) => format!("format:{}", e.reason()),
        Ok(pf) => {
            let _ = pf.manifest.to_json();
            link_object(&pf.object)
        }
    }
}

fn patch_object(data: &[u8]) -> String {
    let linked = link_object(data);
    let recs = match records::object_records(data) {
        Ok(r) => format!("records:{}", r.len().min(4)),
        Err(_) => "records:err".into(),
    };
    let orc = match orc_object::orc_rows(data, |_| Some(CODE)) {
        Ok(r) => format!("orc:{}", r.len().min(4)),
        Err(e) => format!("orc:{}", e.cause()),
    };
    format!("{linked} {recs} {orc}")
}

/// Where the kallsyms seeds are placed.
pub const KALLSYMS_BASE: u64 = 0xffff_ffff_8400_0000;

fn kallsyms(data: &[u8]) -> String {
    match Kallsyms::locate_in(data, KALLSYMS_BASE) {
        Err(e) => e.cause().into(),
        Ok(k) => {
            for s in k.symbols().iter().take(64) {
                let _ = k.lookup_addr(s.addr.wrapping_add(1));
                let _ = k.lookup_all(&s.name);
            }
            for i in 0..k.len().min(64) {
                let _ = k.size_of(i);
            }
            // The same tables read through kernel memory.
            let mut mem = BufferMemory { base: KALLSYMS_BASE, data: data.to_vec() };
            match Kallsyms::read(&mut mem, k.tables.clone()) {
                Ok(k2) if k2.len() == k.len() => "ok".into(),
                Ok(_) => "read_differs".into(),
                Err(e) => format!("read:{}", e.cause()),
            }
        }
    }
}

fn btf(data: &[u8]) -> String {
    let b = match Btf::parse(data) {
        Err(e) => return e.cause().into(),
        Ok(b) => b,
    };
    for id in 0..(b.len() as u32 + 2).min(512) {
        let _ = b.type_name(id);
        let _ = b.size_of(id);
        let _ = b.layout(id);
        let _ = b.member(id, "thread.sp");
    }
    match TaskOffsets::from_btf(&b) {
        Ok(off) => {
            // Walk a small fake memory with those offsets: the walk must
            // refuse, never panic, whatever the offsets are.
            let mut mem = BufferMemory { base: 0xffff_8880_0000_0000, data: vec![0u8; 4096] };
            match tasks::walk_tasks(&mut mem, &off, 0xffff_8880_0000_0000) {
                Ok(_) => "offsets walk_ok".into(),
                Err(e) => format!("offsets {}", e.cause()),
            }
        }
        Err(e) => e.cause().into(),
    }
}

fn orc(data: &[u8]) -> String {
    let Some((head, rest)) = data.split_first_chunk::<4>() else { return "short".into() };
    let split = (u32::from_le_bytes(*head) as usize).min(rest.len());
    let (ips, entries) = rest.split_at(split);
    match OrcTable::from_raw("fuzz", CODE, CODE + 0x10_0000, CODE, ips, entries) {
        Err(e) => e.cause().into(),
        Ok(t) => {
            for ip in [CODE, CODE + 1, CODE + 0x1000, CODE + 0xf_ffff, u64::MAX, 0] {
                let _ = t.find(ip);
                let _ = t.covers(ip);
            }
            "ok".into()
        }
    }
}

/// Guest-physical address of the agent seeds' header.
pub const AGENT_PHYS: u64 = 0x0123_4000;

fn agent(data: &[u8]) -> String {
    let parsed = match layout::parse_header(data, Some(AGENT_PHYS)) {
        Err(e) => e.cause().to_string(),
        Ok(h) => match layout::parse_block(&h, data) {
            Err(e) => format!("block:{}", e.cause()),
            Ok(_) => {
                let table = data.get(h.block_size as usize..).unwrap_or(&[]);
                match layout::parse_table(&h, table) {
                    Ok(_) => "ok".into(),
                    Err(e) => format!("table:{}", e.cause()),
                }
            }
        },
    };
    // The same bytes in a guest, read through the page list.
    let mut g = RamGuest::sparse();
    g.put(AGENT_PHYS, data);
    let read = match Descriptor::read_phys(&mut g, AGENT_PHYS) {
        Ok(_) => "ok".to_string(),
        Err(e) => e.cause().to_string(),
    };
    format!("{parsed} read:{read}")
}

fn gdb_packet(data: &[u8]) -> String {
    let _ = packet::rle_decode(data, 1 << 20);
    let _ = packet::unescape(data);
    let _ = packet::from_hex(data);
    let _ = packet::parse_hex_u64(&data[..data.len().min(20)]);
    let _ = packet::is_error_reply(data);
    let _ = tdesc::number(tdesc::scan(&String::from_utf8_lossy(data)));
    // The bytes as a stub's stream: packets until the stream ends.
    let Ok((a, mut b)) = UnixStream::pair() else { return "socketpair".into() };
    if b.write_all(data).is_err() || b.shutdown(std::net::Shutdown::Write).is_err() {
        return "write".into();
    }
    let mut l = link::Link::new(link::Stream::Unix(a));
    l.acks = false;
    let mut n = 0;
    loop {
        match l.recv(Duration::from_millis(200), b"fuzz") {
            Ok(_) if n < 1024 => n += 1,
            Ok(_) => return "many".into(),
            Err(e) => return format!("{} after {}", e.cause(), n.min(2)),
        }
    }
}

fn kernel_image(data: &[u8]) -> String {
    let _ = notes::scan_build_id(data);
    let _ = notes::scan_banner(data);
    let _ = notes::build_id_from_notes(data);
    match ImageMemory::from_bytes(data.to_vec()) {
        Err(e) => e.cause().into(),
        Ok(img) => {
            for s in [".text", ".rodata", ".notes", ".data..percpu"] {
                if let Some((a, l)) = img.section(s) {
                    let _ = img.slice(a, (l as usize).min(1 << 20));
                }
            }
            "ok".into()
        }
    }
}

fn vmm_loader(data: &[u8]) -> String {
    use vm_memory::GuestAddress;
    use vsplice_vmm::vstate::memory::{create_guest_memory, GuestMemory};
    thread_local! {
        static MEM: Option<GuestMemory> = create_guest_memory(&[(GuestAddress(0), 64 << 20)]).ok();
    }
    let path = std::env::temp_dir().join(format!("vsplice-fuzz-{}-kernel", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return "tmpfile".into();
    }
    MEM.with(|m| match m {
        None => "no_memory".into(),
        // RAM as the VMM's e820 would give it: below the 1 MiB hole and above, up to 60 MiB (a 4 MiB arena above).
        Some(mem) => match vsplice_vmm::loader::load_kernel(mem, &path, &[0..0x9_fc00, 0x10_0000..60 << 20]) {
            Ok(_) => "ok".into(),
            Err(e) => e.cause().into(),
        },
    })
}

fn api(data: &[u8]) -> String {
    use vsplice_vmm::api::http::{events, patches};
    let Some((&sel, rest)) = data.split_first() else { return "empty".into() };
    let ct = ["application/octet-stream", "application/json", "text/plain", ""][(sel & 3) as usize];
    let (query, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let query = String::from_utf8_lossy(query);
    let q = match events::check_query(&query, sel & 4 != 0) {
        Ok(()) => "ok".to_string(),
        Err(e) => e.cause.name().to_string(),
    };
    let declared = (sel & 8 != 0).then_some(body.len());
    let read = match patches::read_body(declared, &mut &body[..]) {
        Ok(b) => b,
        Err(e) => return format!("events:{q} body:{}", e.cause.name()),
    };
    match patches::parse_apply(ct, &query, read) {
        Ok(_) => format!("events:{q} apply:ok"),
        Err(e) => format!("events:{q} apply:{}", e.cause.name()),
    }
}

/// The kernel side of a `.ko` read: nothing (the `.ko` is what is fuzzed).
struct NoKernel(SymbolTable);

impl vsplice_patcher::patch::build::PatchImage for NoKernel {
    fn symbols(&self) -> &SymbolTable {
        &self.0
    }
    fn build_id(&self) -> Option<&str> {
        None
    }
    fn bytes_at(&self, _addr: u64, _len: u64) -> Option<&[u8]> {
        None
    }
    fn masks(&self, _addr: u64, _size: u64) -> Vec<vsplice_patcher::patch::manifest::ByteMask> {
        Vec::new()
    }
    fn check_env(&self) -> Box<dyn vsplice_patcher::patch::link::LinkEnv> {
        Box::new(vsplice_patcher::patch::link::UnknownEnv)
    }
}

fn module_ko(data: &[u8]) -> String {
    use vsplice_patcher::patch::build::PatchImage;
    let k = NoKernel(SymbolTable::default());
    match vsplice_patcher::patch::diff::ko::KoImage::parse("fuzz", data, &k) {
        Ok(ko) => {
            let mut masked = 0usize;
            for s in ko.own.iter().take(256) {
                let _ = ko.bytes_at(s.addr, s.size);
                masked += ko.masks(s.addr, s.size.min(1 << 20)).len();
            }
            format!("ok:{} masks:{}", ko.own.len().min(4), masked.min(4))
        }
        Err(_) => "not_a_ko".into(),
    }
}
