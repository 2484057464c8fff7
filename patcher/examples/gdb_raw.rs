//! Send raw requests to a gdbstub and print the replies (development aid).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use vsplice_patcher::gdb::link::{Link, Stream};
fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap();
    let mut l = Link::new(Stream::connect(&addr, std::time::Duration::from_secs(2)).unwrap());
    for req in args {
        l.send(req.as_bytes(), std::time::Duration::from_secs(2)).unwrap();
        let r = l.recv(std::time::Duration::from_secs(2), req.as_bytes()).unwrap();
        println!("{req} -> {}", String::from_utf8_lossy(&r[..r.len().min(300)]));
    }
}
