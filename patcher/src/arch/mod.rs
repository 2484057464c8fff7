//! Architecture: how a guest's memory is reached through its page tables.
//! Knows nothing about any operating system.

pub mod x86;
