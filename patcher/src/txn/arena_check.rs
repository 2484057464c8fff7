//! The arena is never guest RAM: before the first write of any transaction
//! (apply, revert, recover; recovery at the start of apply and revert writes
//! too) the kernel's own memory map ([`TargetKernel::ram_map`]) is read and
//! the arena checked against it ([`check_arena`]); a refusal is
//! `arena_in_use` with the rule's reason (`arena_in_ram`,
//! `arena_not_reserved`, `ram_map_unreadable`), and nothing is written.
//! Under `vsplice run` the VMM reserved the arena in the e820 map it built;
//! the same check runs anyway, through the same code. The map read then
//! also bounds where guest pointers may lead for the rest of the
//! transaction ([`crate::model::phys_filter`]: `not_ram`).
//!
//! [`TargetKernel::ram_map`]: crate::kernels::TargetKernel::ram_map

use super::result::{Cause, Failure, Stage};
use super::Patcher;
use crate::model::backend::Backend;
use crate::model::phys_filter::PhysFilter;
use crate::model::ram::check_arena;

impl<B: Backend> Patcher<'_, B> {
    /// Refuses `arena_in_use` unless the arena is outside the guest's RAM
    /// by every source the target can read; sources it could not read
    /// become notes of the report.
    pub fn check_arena(&mut self, stage: Stage) -> Result<(), Failure> {
        let target = self.target;
        let Some(map) = target.ram_map(&mut self.guest) else {
            return Ok(());
        };
        let arena = self.cfg.arena;
        let range = arena.phys()..arena.phys() + arena.size();
        if let Err(e) = check_arena(&map, range.clone()) {
            tracing::warn!(reason = e.reason(), arena = format_args!("{:#x}+{:#x}", arena.phys(), arena.size()), "{e}");
            return Err(Failure::new(stage, Cause::ArenaInUse, e.reason(), e.to_string()));
        }
        // From here on, a guest pointer leading outside the kernel's memory
        // map (a device, a hole) is refused `not_ram`; the arena is reserved
        // memory, allowed whatever the map says.
        if let Some(f) = PhysFilter::from_map(&map, std::slice::from_ref(&range)) {
            self.guest.set_filter(f);
        }
        let names: Vec<&str> = map.sources.iter().map(|s| s.name).collect();
        tracing::debug!(sources = ?names, "arena is outside guest RAM");
        for u in map.unread {
            self.notes.push(format!("arena checked without {u}"));
        }
        Ok(())
    }
}
