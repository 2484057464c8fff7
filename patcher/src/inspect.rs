//! `vsplice inspect`: look at a guest kernel (over a gdbstub) or a kernel
//! image file: summary, symbols, addresses, tasks, struct layouts. Readable
//! tables by default, JSON with `--json`.
//!
//! The VMM binary parses the command line (with the `cli` feature this
//! module's types derive `clap::Args`/`clap::Subcommand`) and calls
//! [`run_inspect`] with any `Write`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thiserror::Error;

use crate::arch::x86::paging::PagingMode;
use crate::attach::{attach_gdb, AttachError, ResumeGuard};
use crate::model::backend::{Backend, BackendError, VcpuState};
use crate::gdb::{GdbError, GdbOptions};
use crate::os::linux::btf::Btf;
use crate::os::linux::image::{ImageError, ImageMemory};
use crate::os::linux::kallsyms::Kallsyms;
use crate::os::linux::kernel::{self, KernelError, KernelInfo, LiveKernel};
use crate::os::linux::notes;
use crate::os::linux::tasks::{self, TaskError, TaskOffsets};

/// Arguments of `vsplice inspect`.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct InspectArgs {
    /// gdbstub to attach to: HOST:PORT or a Unix socket path.
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR"))]
    pub gdb: Option<String>,
    /// Kernel image (bzImage or vmlinux) to read offline, or to take link
    /// addresses from when attached.
    #[cfg_attr(feature = "cli", arg(long, value_name = "PATH"))]
    pub image: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
    /// Time-out of each gdbstub request, in milliseconds.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5000, value_name = "MS"))]
    pub timeout_ms: u64,
    /// What to show.
    #[cfg_attr(feature = "cli", command(subcommand))]
    pub what: InspectWhat,
}

/// What `vsplice inspect` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::Subcommand))]
pub enum InspectWhat {
    /// Kernel version, build-id, KASLR slide, symbol count, BTF, ORC.
    Summary,
    /// Every symbol of this name (with its position, for duplicates).
    Symbol {
        /// Symbol name.
        name: String,
    },
    /// The symbol containing an address (hex, 0x optional).
    Addr {
        /// Address.
        addr: String,
    },
    /// Every task (live guests only).
    Tasks,
    /// A struct's layout from BTF.
    Struct {
        /// Struct name (without `struct`).
        name: String,
    },
}

/// Why inspect failed.
#[derive(Debug, Error)]
pub enum InspectError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Attaching to the gdbstub failed.
    #[error("gdbstub")]
    Gdb(#[from] #[source] GdbError),
    /// Attaching (stop, physical access) failed.
    #[error("attach")]
    Attach(#[from] #[source] AttachError),
    /// The backend failed.
    #[error("backend")]
    Backend(#[from] #[source] BackendError),
    /// The kernel could not be identified.
    #[error("kernel")]
    Kernel(#[from] #[source] KernelError),
    /// The image could not be read.
    #[error("image")]
    Image(#[from] #[source] ImageError),
    /// The task walk failed.
    #[error("tasks")]
    Tasks(#[from] #[source] TaskError),
    /// Nothing matched.
    #[error("{0}")]
    NotFound(String),
    /// Writing the output failed.
    #[error("writing output")]
    Io(#[from] #[source] std::io::Error),
}

impl InspectError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Usage(_) => "usage",
            Self::Gdb(e) => e.cause(),
            Self::Attach(e) => e.cause(),
            Self::Backend(e) => e.cause(),
            Self::Kernel(e) => e.cause(),
            Self::Image(e) => e.cause(),
            Self::Tasks(e) => e.cause(),
            Self::NotFound(_) => "not_found",
            Self::Io(_) => "io",
        }
    }
}

/// Run `inspect`, writing the result to `out`.
pub fn run_inspect(args: &InspectArgs, out: &mut dyn Write) -> Result<(), InspectError> {
    match (&args.gdb, &args.image) {
        (Some(addr), image) => {
            let text_link = match image {
                Some(p) => {
                    let mut img = ImageMemory::open(p)?;
                    let info = kernel::open_image(&mut img)?;
                    info.kallsyms.first_addr("_text")
                }
                None => None,
            };
            let opts = GdbOptions {
                timeout: Duration::from_millis(args.timeout_ms),
                stop_timeout: Duration::from_millis(args.timeout_ms),
                ..GdbOptions::default()
            };
            let t = Instant::now();
            let (be, vcpus) = attach_gdb(addr, opts)?;
            // Always let the guest go, even when the command fails or panics.
            let mut be = ResumeGuard::new(be);
            let attach = t.elapsed();
            let r = live(&mut *be, vcpus, text_link, attach, args, out);
            let d = be.detach();
            r?;
            d?;
            Ok(())
        }
        (None, Some(p)) => {
            if args.what == InspectWhat::Tasks {
                return Err(InspectError::Usage("`tasks` needs a live guest (--gdb)".into()));
            }
            let t = Instant::now();
            let mut img = ImageMemory::open(p)?;
            let open = t.elapsed();
            let info = kernel::open_image(&mut img)?;
            show(&info, None, Some(open), args, out)
        }
        (None, None) => Err(InspectError::Usage("give --gdb ADDR or --image PATH".into())),
    }
}

fn live<B: Backend>(
    be: &mut B,
    vcpus: Vec<VcpuState>,
    text_link: Option<u64>,
    attach: Duration,
    args: &InspectArgs,
    out: &mut dyn Write,
) -> Result<(), InspectError> {
    let t = Instant::now();
    let mut lk = LiveKernel::open(be, vcpus, text_link)?;
    let ident = t.elapsed();
    if args.what == InspectWhat::Tasks {
        return show_tasks(&mut lk, args, out);
    }
    let extra = LiveExtra { vcpus: lk.vcpus.clone(), attach, ident };
    show(&lk.info, Some(&extra), None, args, out)
}

struct LiveExtra {
    vcpus: Vec<VcpuState>,
    attach: Duration,
    ident: Duration,
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

fn parse_addr(s: &str) -> Result<u64, InspectError> {
    let t = s.trim().trim_start_matches("0x").trim_start_matches("0X").replace('_', "");
    u64::from_str_radix(&t, 16).map_err(|_| InspectError::Usage(format!("not a hex address: {s}")))
}

fn sym_at(k: &Kallsyms, a: u64) -> String {
    match k.lookup_addr(a) {
        Some(h) if h.offset < 1 << 20 => format!("{}+{:#x}", h.symbol.name, h.offset),
        _ => "?".into(),
    }
}

fn emit(out: &mut dyn Write, args: &InspectArgs, v: &Value, text: &str) -> Result<(), InspectError> {
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(v).unwrap_or_default())?;
    } else {
        write!(out, "{text}")?;
    }
    Ok(())
}

fn show(info: &KernelInfo, live: Option<&LiveExtra>, open: Option<Duration>, args: &InspectArgs, out: &mut dyn Write) -> Result<(), InspectError> {
    let k = &info.kallsyms;
    match &args.what {
        InspectWhat::Summary => summary(info, live, open, args, out),
        InspectWhat::Symbol { name } => {
            let hits = k.lookup_all(name);
            if hits.is_empty() {
                return Err(InspectError::NotFound(format!("no symbol named {name}")));
            }
            let rows: Vec<Value> = hits
                .iter()
                .map(|(i, s)| json!({"name": s.name, "index": i, "addr": hex(s.addr), "type": s.kind.to_string(), "size": k.size_of(*i)}))
                .collect();
            let mut t = format!("{:>8}  {:<18}  {:4}  {:>8}  {}\n", "INDEX", "ADDRESS", "TYPE", "SIZE", "NAME");
            for (i, s) in &hits {
                let size = k.size_of(*i).map(|z| z.to_string()).unwrap_or_else(|| "-".into());
                t.push_str(&format!("{:>8}  {:#018x}  {:4}  {:>8}  {}\n", i, s.addr, s.kind, size, s.name));
            }
            emit(out, args, &json!(rows), &t)
        }
        InspectWhat::Addr { addr } => {
            let a = parse_addr(addr)?;
            let h = k.lookup_addr(a).ok_or_else(|| InspectError::NotFound(format!("no symbol at or below {a:#x}")))?;
            let v = json!({"addr": hex(a), "symbol": h.symbol.name, "index": h.index, "type": h.symbol.kind.to_string(),
                "start": hex(h.symbol.addr), "offset": h.offset, "size": h.size});
            let size = h.size.map(|s| format!("{s:#x}")).unwrap_or_else(|| "?".into());
            let t = format!("{a:#x} = {}+{:#x}/{size} ({} at {:#x}, index {})\n", h.symbol.name, h.offset, h.symbol.kind, h.symbol.addr, h.index);
            emit(out, args, &v, &t)
        }
        InspectWhat::Struct { name } => {
            let (btf, _, _) = info.btf.as_ref().ok_or_else(|| InspectError::NotFound("the kernel has no BTF".into()))?;
            show_struct(btf, name, args, out)
        }
        InspectWhat::Tasks => Err(InspectError::Usage("`tasks` needs a live guest (--gdb)".into())),
    }
}

fn summary(info: &KernelInfo, live: Option<&LiveExtra>, open: Option<Duration>, args: &InspectArgs, out: &mut dyn Write) -> Result<(), InspectError> {
    let k = &info.kallsyms;
    let tb = &k.tables;
    let build_id = info.build_id.as_deref().map(notes::hex);
    let orc = info.orc.as_ref().map(|o| {
        json!({"ip_table": hex(o.ip_table), "ip_entries": o.ip_entries, "unwind_table": hex(o.unwind_table),
               "unwind_entries": o.unwind_entries, "lookup": o.lookup.map(|(a, n)| json!({"addr": hex(a), "entries": n}))})
    });
    let slide = info.slide.as_ref().map(|s| {
        json!({"text": hex(s.text), "text_link": hex(s.text_link), "virt_slide": hex(s.virt), "phys_base": hex(s.phys_base)})
    });
    let syscall = k.first_addr("entry_SYSCALL_64");
    let vcpus: Vec<Value> = live
        .map(|l| {
            l.vcpus
                .iter()
                .map(|v| json!({"index": v.index, "rip": hex(v.rip), "at": sym_at(k, v.rip), "cpl": v.cpl(), "cr3": hex(v.cr3), "cr4": hex(v.cr4)}))
                .collect()
        })
        .unwrap_or_default();
    // The paging mode of the vCPUs in long mode (live guests only).
    let paging = live.and_then(|l| l.vcpus.iter().find(|v| v.long_mode()).map(|v| PagingMode::from_cr4(v.cr4)));
    let tm = &info.timings;
    let v = json!({
        "paging": paging.map(|m| json!({"levels": m.levels(), "la57": m == PagingMode::FiveLevel})),
        "source": if live.is_some() { "gdb" } else { "image" },
        "banner": info.banner, "build_id": build_id, "slide": slide,
        "symbols": k.len(),
        "kallsyms": {"offsets": hex(tb.offsets), "relative_base": hex(tb.relative_base), "names": hex(tb.names),
                     "markers": hex(tb.markers), "seqs_of_names": tb.seqs_of_names.map(hex),
                     "token_table": hex(tb.token_table), "token_index": hex(tb.token_index)},
        "btf": info.btf.as_ref().map(|(b, s, e)| json!({"types": b.len(), "start": hex(*s), "size": e - s})),
        "orc": orc,
        "syscall_entry": syscall.map(hex),
        "vcpus": vcpus,
        "timings_ms": {"attach": live.map(|l| l.attach.as_secs_f64() * 1e3), "identify": live.map(|l| l.ident.as_secs_f64() * 1e3),
                       "image_open": open.map(|d| d.as_secs_f64() * 1e3),
                       "region_read": tm.region_read.as_secs_f64() * 1e3, "region_bytes": tm.region_bytes,
                       "kallsyms_decode": tm.kallsyms_decode.as_secs_f64() * 1e3, "notes_btf_orc": tm.rest.as_secs_f64() * 1e3},
    });
    let mut t = String::new();
    let line = |t: &mut String, k: &str, v: String| t.push_str(&format!("{k:<16} {v}\n"));
    line(&mut t, "kernel", info.banner.clone().unwrap_or_else(|| "?".into()));
    line(&mut t, "build-id", build_id.unwrap_or_else(|| "?".into()));
    if let Some(s) = &info.slide {
        line(&mut t, "_text", format!("{:#x} (link {:#x})", s.text, s.text_link));
        line(&mut t, "KASLR slide", format!("{:#x}", s.virt));
        line(&mut t, "physical base", format!("{:#x}", s.phys_base));
    }
    line(&mut t, "symbols", format!("{} (kallsyms_names at {:#x}, token table at {:#x})", k.len(), tb.names, tb.token_table));
    line(&mut t, "BTF", match &info.btf {
        Some((b, s, e)) => format!("yes, {} types, {} bytes at {s:#x}", b.len(), e - s),
        None => "no".into(),
    });
    line(&mut t, "ORC", match &info.orc {
        Some(o) => format!("{} ip entries at {:#x}, {} unwind entries at {:#x}", o.ip_entries, o.ip_table, o.unwind_entries, o.unwind_table),
        None => "no".into(),
    });
    if let Some(a) = syscall {
        let how = if live.is_some() { "entry_SYSCALL_64 from kallsyms; LSTAR is not readable over gdbstub" } else { "entry_SYSCALL_64, link address" };
        line(&mut t, "syscall entry", format!("{a:#x} ({how})"));
    }
    if let Some(m) = paging {
        line(&mut t, "paging", match m {
            PagingMode::FiveLevel => "5-level (CR4.LA57)".to_owned(),
            PagingMode::FourLevel => "4-level".to_owned(),
        });
    }
    if let Some(l) = live {
        for v in &l.vcpus {
            line(&mut t, &format!("vcpu {}", v.index), format!("rip {:#x} {} cpl {}", v.rip, sym_at(k, v.rip), v.cpl()));
        }
        line(&mut t, "timings", format!("attach {:?}, identify {:?} (read {} KiB in {:?}, kallsyms decode {:?})",
            l.attach, l.ident, tm.region_bytes / 1024, tm.region_read, tm.kallsyms_decode));
    } else {
        line(&mut t, "timings", format!("open {:?}, kallsyms decode {:?}", open.unwrap_or_default(), tm.kallsyms_decode));
    }
    emit(out, args, &v, &t)
}

fn show_struct(btf: &Btf, name: &str, args: &InspectArgs, out: &mut dyn Write) -> Result<(), InspectError> {
    let name = name.trim_start_matches("struct ").trim();
    let id = btf.find_struct(name).ok_or_else(|| InspectError::NotFound(format!("BTF has no struct {name}")))?;
    let size = btf.size_of(id);
    let rows = btf.layout(id);
    let v = json!({"name": name, "size": size, "members": rows.iter().map(|(n, o, s, ty)| json!({"name": n, "offset": o, "size": s, "type": ty})).collect::<Vec<_>>()});
    let mut t = format!("struct {name} (size {})\n{:>8}  {:>6}  {:<40}  {}\n", size.map(|s| s.to_string()).unwrap_or_else(|| "?".into()), "OFFSET", "SIZE", "TYPE", "NAME");
    for (n, o, s, ty) in &rows {
        t.push_str(&format!("{o:>8}  {:>6}  {ty:<40}  {n}\n", s.map(|s| s.to_string()).unwrap_or_else(|| "?".into())));
    }
    emit(out, args, &v, &t)
}

fn show_tasks<B: Backend>(lk: &mut LiveKernel<B>, args: &InspectArgs, out: &mut dyn Write) -> Result<(), InspectError> {
    let (btf, _, _) = lk.info.btf.as_ref().ok_or_else(|| InspectError::NotFound("the kernel has no BTF".into()))?;
    let off = TaskOffsets::from_btf(btf)?;
    let t = Instant::now();
    let list = tasks::all_tasks(&mut lk.vm, &lk.info.kallsyms, &off)?;
    let cur = tasks::current_tasks(&mut lk.vm, &lk.info.kallsyms, &lk.vcpus)?;
    let walk = t.elapsed();
    let on_vcpu = |a: u64| cur.iter().find(|(_, _, t)| *t == a).map(|(v, _, _)| *v);
    let rows: Vec<Value> = list
        .iter()
        .map(|x| {
            json!({"pid": x.pid, "tgid": x.tgid, "comm": x.comm, "state": x.state_char().to_string(), "state_raw": x.state,
                   "cpu": x.cpu, "on_cpu": x.on_cpu, "running_on_vcpu": on_vcpu(x.addr), "task": hex(x.addr),
                   "stack": hex(x.stack), "stack_end": hex(x.stack_end()), "sp": hex(x.sp)})
        })
        .collect();
    let v = json!({"tasks": rows, "current": cur.iter().map(|(v, c, t)| json!({"vcpu": v, "cpu": c, "task": hex(*t)})).collect::<Vec<_>>(),
                   "walk_ms": walk.as_secs_f64() * 1e3});
    let mut t = format!("{:>7} {:>7} {:<16} {:2} {:>3} {:>5} {:<18} {:<18} {:<18}\n", "PID", "TGID", "COMM", "ST", "CPU", "VCPU", "TASK", "STACK", "SP");
    for x in &list {
        let vc = on_vcpu(x.addr).map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        t.push_str(&format!("{:>7} {:>7} {:<16} {:2} {:>3} {:>5} {:#018x} {:#018x} {:#018x}\n", x.pid, x.tgid, x.comm, x.state_char(), x.cpu, vc, x.addr, x.stack, x.sp));
    }
    t.push_str(&format!("{} tasks, walked in {walk:?}\n", list.len()));
    emit(out, args, &v, &t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn inspect_offline_on_the_debian_image() {
        let img = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images/debian-amd64/vmlinuz");
        if !img.exists() {
            eprintln!("SKIPPED inspect_offline_on_the_debian_image: {} missing", img.display());
            return;
        }
        let run = |what: InspectWhat, json: bool| {
            let args = InspectArgs { gdb: None, image: Some(img.clone()), json, timeout_ms: 1000, what };
            let mut out = Vec::new();
            run_inspect(&args, &mut out).map(|_| String::from_utf8(out).unwrap())
        };
        let s: serde_json::Value = serde_json::from_str(&run(InspectWhat::Summary, true).unwrap()).unwrap();
        assert!(s["banner"].as_str().unwrap().starts_with("Linux version 6.1"));
        assert!(s["symbols"].as_u64().unwrap() > 50_000);
        assert_eq!(s["build_id"].as_str().unwrap().len(), 40);
        let sym: serde_json::Value = serde_json::from_str(&run(InspectWhat::Symbol { name: "_text".into() }, true).unwrap()).unwrap();
        assert_eq!(sym[0]["addr"], "0xffffffff81000000");
        let a = run(InspectWhat::Addr { addr: "ffffffff81000010".into() }, false).unwrap();
        assert!(a.contains("+0x10"), "{a}");
        let st = run(InspectWhat::Struct { name: "list_head".into() }, false).unwrap();
        assert!(st.contains("next") && st.contains("prev"), "{st}");
        assert_eq!(run(InspectWhat::Tasks, false).unwrap_err().cause(), "usage");
        assert_eq!(run(InspectWhat::Symbol { name: "no_such_symbol_xyz".into() }, false).unwrap_err().cause(), "not_found");
    }
}
