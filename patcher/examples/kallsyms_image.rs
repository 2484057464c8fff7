//! Decode kallsyms from a bzImage offline and print timing (development aid).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Instant;
use vsplice_patcher::os::linux::image::ImageMemory;
use vsplice_patcher::os::linux::kallsyms::Kallsyms;

fn main() {
    let path = std::env::args().nth(1).expect("usage: kallsyms_image BZIMAGE");
    let t = Instant::now();
    let img = ImageMemory::open(path.as_ref()).unwrap();
    let t_open = t.elapsed();
    let (ro, rosz) = img.section(".rodata").unwrap();
    let region = img.slice(ro, rosz as usize).unwrap();
    let t = Instant::now();
    let k = Kallsyms::locate_in(region, ro).unwrap();
    println!("open+decompress {:?}; locate+decode {:?}; {} symbols; tables {:x?}", t_open, t.elapsed(), k.len(), k.tables);
    for n in ["_text", "startup_64", "init_task", "linux_banner", "__start_BTF", "__stop_BTF", "__start_notes", "__stop_notes", "current_task", "__per_cpu_offset", "__start_orc_unwind_ip", "orc_lookup", "entry_SYSCALL_64", "_end"] {
        println!("{n}: {:x?}", k.lookup_all(n).iter().map(|(i, s)| (i, s.addr, s.kind)).collect::<Vec<_>>());
    }
}
