//! x86-64 architecture knowledge: paging structures and a virtual-memory
//! reader built on them. Nothing here knows about Linux.

pub mod guest;
pub mod paging;
pub mod vmem;
#[cfg(test)]
mod tests;
