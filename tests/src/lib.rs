//! Shared helpers for the end-to-end tests in `tests/tests/`.

pub mod skip;
pub mod cli;
pub mod scratch;
pub mod checks;
pub mod livepatch;
pub mod testguest;
pub mod harness_error;
pub mod guestcmd;
pub mod debian;
pub mod qemu;
pub mod shared_ram;
pub mod linuxpatch;
pub mod modcorpus;
pub mod ko_tamper;
pub mod nfsd;
pub mod api;
pub mod etcd;
pub mod fleet;
pub mod attach;
pub mod openapi;
