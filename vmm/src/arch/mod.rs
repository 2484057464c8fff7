//! Architecture-specific boot support. vsplice runs x86-64 guests only; the
//! `x86_64` module builds everything a guest needs in memory and in its vCPU
//! registers before the first `KVM_RUN`.

pub mod x86_64;

pub use self::x86_64::{layout, ArchError};
