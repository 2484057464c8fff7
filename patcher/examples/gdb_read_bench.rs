//! Physical read throughput over a gdbstub for several pipeline depths
//! (development aid): `gdb_read_bench HOST:PORT`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Instant;
use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::gdb::{GdbBackend, GdbOptions};

fn main() {
    let addr = std::env::args().nth(1).expect("usage: gdb_read_bench HOST:PORT");
    for depth in [1usize, 4, 8, 16, 32] {
        let mut be = GdbBackend::connect(&addr, GdbOptions { pipeline: depth, ..GdbOptions::default() }).unwrap();
        be.stop().unwrap();
        let mut buf = vec![0u8; 8 << 20];
        let t = Instant::now();
        be.read_phys(0x100_0000, &mut buf).unwrap();
        let dt = t.elapsed();
        println!("pipeline {depth:2}: 8 MiB in {dt:?} = {:.1} MiB/s", 8.0 / dt.as_secs_f64());
        be.detach().unwrap();
    }
}
