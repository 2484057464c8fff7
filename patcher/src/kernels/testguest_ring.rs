//! The test guest's change ring (`images/testguest/task_table.h`): under
//! the pause, only the task-table entries that changed since the
//! incremental pre-check's read are read again, so the pause costs
//! O(changed tasks), not O(all tasks).
//!
//! The guest appends an entry's index to the ring every time the fields the
//! host reads change after boot (`saved_sp`, `on_cpu`, `switches`: the task
//! switched away and the one switched to, a CPU's first task), and counts
//! the appends in the header's `changes`, under the same seq as the change.
//! The pre-check read the whole table in one seq window at `changes` = c0;
//! the pause reads the header (c1), the ring slots c0..c1, and exactly those
//! entries into the pre-check's list. Every other entry is the one the
//! pre-check read, so the result is the list a whole read returns.
//!
//! Whenever the ring cannot say that — no ring (an older image,
//! `tg.ring=0`), more than `ring_size` changes since c0 (overwritten), a
//! count or ring that moved, an index past the count, a counter that went
//! back — the caller reads the whole table: never a guess. The ring is the
//! guest's word like the table itself; `--incremental compare` reads the
//! whole table as well and refuses any difference (`txn/incremental.rs`).

use super::testguest_table::{self as table, Header};
use crate::model::mem::KernelMemory;
use crate::model::{TargetError, TaskInfo};

/// Largest ring believed (the guest's `TG_TASK_RING_MAX`).
const MAX_RING: u32 = 4096;
/// Largest entry read (the table's own bound).
const MAX_ENTRY: usize = 4096;

/// What [`read_changed`] did.
#[derive(Debug)]
pub(super) enum Reread {
    /// The list now, the positions re-read (sorted, distinct), the header's `changes`.
    Changed(Vec<TaskInfo>, Vec<usize>, u64),
    /// The ring cannot tell (why), the list handed in back: read the whole table.
    Whole(Vec<TaskInfo>, &'static str),
}

/// Re-reads into `prev` (the list read at `changes` = `since`) the entries
/// the ring names since then.
pub(super) fn read_changed(mem: &mut dyn KernelMemory, at: u64, mut prev: Vec<TaskInfo>, since: u64) -> Result<Reread, TargetError> {
    let h = Header::read(mem, at)?;
    let why = if h.ring == 0 || h.ring_size == 0 || !h.ring_size.is_power_of_two() || h.ring_size > MAX_RING {
        Some("no_ring")
    } else if h.count as usize != prev.len() {
        Some("count_changed")
    } else if h.changes < since {
        Some("changes_went_back")
    } else if h.changes - since > u64::from(h.ring_size) {
        Some("ring_overflowed")
    } else {
        None
    };
    if let Some(why) = why {
        return Ok(Reread::Whole(prev, why));
    }
    let Some(changed) = ring_indices(mem, &h, since)? else {
        return Ok(Reread::Whole(prev, "index_out_of_range"));
    };
    let esize = h.entry_size as usize;
    let mut buf = [0u8; MAX_ENTRY];
    let e = buf.get_mut(..esize).ok_or_else(|| TargetError::Malformed(format!("entry_size {esize}")))?;
    for &i in &changed {
        let addr = h.entry_at(i);
        mem.read(addr, e)?;
        let t = table::entry(e, h.version, addr)?;
        if let Some(old) = prev.get_mut(i) {
            table::overwrite(old, t, e);
        }
    }
    h.still(mem, at)?;
    Ok(Reread::Changed(prev, changed, h.changes))
}

/// The distinct entry indices of ring slots `since..h.changes` (at most
/// `ring_size` of them), sorted; `None` when one is past the count.
fn ring_indices(mem: &mut dyn KernelMemory, h: &Header, since: u64) -> Result<Option<Vec<usize>>, TargetError> {
    let n = (h.changes - since) as usize;
    let size = h.ring_size as usize;
    let mut raw = [0u8; 4 * MAX_RING as usize];
    // The slots, in at most two spans (the ring wraps once at most).
    let first = (since % u64::from(h.ring_size)) as usize;
    let a = n.min(size - first);
    mem.read(h.ring.wrapping_add(4 * first as u64), &mut raw[..4 * a])?;
    if n > a {
        mem.read(h.ring, &mut raw[4 * a..4 * n])?;
    }
    let mut out = Vec::with_capacity(n);
    for w in raw[..4 * n].chunks_exact(4) {
        let i = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        if i >= h.count {
            return Ok(None);
        }
        out.push(i as usize);
    }
    out.sort_unstable();
    out.dedup();
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kernels::testguest_table::tests::{table, Flat, TABLE};

    const RING: usize = 8;

    /// A table of `n` tasks with a ring of [`RING`] slots after it, no change yet.
    fn guest(n: usize) -> Flat {
        let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut m = table(2, &refs, 1);
        let ring = TABLE + m.0.len() as u64;
        m.0.extend_from_slice(&[0u8; 4 * RING]);
        m.0[0x30..0x38].copy_from_slice(&ring.to_le_bytes());
        m.0[0x38..0x3c].copy_from_slice(&(RING as u32).to_le_bytes());
        m
    }

    /// Task `i` switches away (the guest's way: fields, ring, changes).
    fn switch(m: &mut Flat, i: usize) {
        let e = 64 + 64 * i;
        let sw = u32::from_le_bytes(m.0[e + 0x3c..e + 0x40].try_into().unwrap()) + 1;
        m.0[e + 0x3c..e + 0x40].copy_from_slice(&sw.to_le_bytes());
        let sp = u64::from_le_bytes(m.0[e + 0x30..e + 0x38].try_into().unwrap()) - 8;
        m.0[e + 0x30..e + 0x38].copy_from_slice(&sp.to_le_bytes());
        let changes = u64::from_le_bytes(m.0[0x28..0x30].try_into().unwrap());
        let ring = m.0.len() - 4 * RING;
        let slot = ring + 4 * (changes as usize % RING);
        m.0[slot..slot + 4].copy_from_slice(&(i as u32).to_le_bytes());
        m.0[0x28..0x30].copy_from_slice(&(changes + 1).to_le_bytes());
    }

    fn fresh(m: &mut Flat) -> Vec<TaskInfo> {
        table::read(m, TABLE, Vec::new()).unwrap().0
    }

    #[test]
    fn the_ring_rereads_exactly_what_changed_and_matches_a_whole_read() {
        let mut m = guest(20);
        let (pre, h) = table::read(&mut m, TABLE, Vec::new()).unwrap();
        assert_eq!(h.changes, 0);
        // Nothing ran: nothing read again.
        match read_changed(&mut m, TABLE, pre.clone(), 0).unwrap() {
            Reread::Changed(l, c, n) => assert_eq!((l, c, n), (pre.clone(), vec![], 0)),
            r => panic!("{r:?}"),
        }
        // Five changes, one task twice, wrapping the ring (start at slot 6).
        for _ in 0..6 {
            switch(&mut m, 0);
        }
        let (pre, h) = table::read(&mut m, TABLE, Vec::new()).unwrap();
        for i in [3, 17, 3, 5, 19] {
            switch(&mut m, i);
        }
        match read_changed(&mut m, TABLE, pre, h.changes).unwrap() {
            Reread::Changed(l, c, n) => assert_eq!((l, c, n), (fresh(&mut m), vec![3, 5, 17, 19], 11)),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn whenever_the_ring_cannot_tell_the_whole_table_is_read() {
        let mut m = guest(20);
        let pre = fresh(&mut m);
        // More changes than slots: overwritten.
        for i in 0..=RING {
            switch(&mut m, i);
        }
        assert!(matches!(read_changed(&mut m, TABLE, pre.clone(), 0).unwrap(), Reread::Whole(_, "ring_overflowed")));
        // A counter behind the host's, a list of another length, an index past the count, no ring.
        assert!(matches!(read_changed(&mut m, TABLE, pre.clone(), 100).unwrap(), Reread::Whole(_, "changes_went_back")));
        assert!(matches!(read_changed(&mut m, TABLE, pre[..5].to_vec(), RING as u64 + 1).unwrap(), Reread::Whole(_, "count_changed")));
        let ring = m.0.len() - 4 * RING;
        m.0[ring..ring + 4].copy_from_slice(&20u32.to_le_bytes());
        assert!(matches!(read_changed(&mut m, TABLE, pre.clone(), 1).unwrap(), Reread::Whole(_, "index_out_of_range")));
        for size in [0u32, 3, MAX_RING * 2] {
            m.0[0x38..0x3c].copy_from_slice(&size.to_le_bytes());
            assert!(matches!(read_changed(&mut m, TABLE, pre.clone(), 1).unwrap(), Reread::Whole(_, "no_ring")), "{size}");
        }
        // A ring address nothing maps: an error, not a panic.
        let mut m = guest(4);
        switch(&mut m, 1);
        m.0[0x30..0x38].copy_from_slice(&0x1000u64.to_le_bytes());
        assert!(read_changed(&mut m, TABLE, pre[..4].to_vec(), 0).is_err());
    }

    /// Garbage in the ring fields and slots (a hostile guest): never a
    /// panic, and whatever the pause builds from the ring over a table
    /// that did not change is the table.
    #[test]
    fn a_hostile_ring_never_panics_and_never_yields_another_table() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut m = guest(12);
            let pre = fresh(&mut m);
            let ring = m.0.len() - 4 * RING;
            for slot in 0..RING {
                let v = (rnd() % 16) as u32;
                m.0[ring + 4 * slot..ring + 4 * slot + 4].copy_from_slice(&v.to_le_bytes());
            }
            let changes = rnd() % 24;
            m.0[0x28..0x30].copy_from_slice(&changes.to_le_bytes());
            if rnd() % 4 == 0 {
                let size = (rnd() % 9) as u32;
                m.0[0x38..0x3c].copy_from_slice(&size.to_le_bytes());
            }
            let since = rnd() % 24;
            match read_changed(&mut m, TABLE, pre.clone(), since) {
                Ok(Reread::Changed(l, c, _)) => {
                    assert_eq!(l, pre, "the table did not change");
                    assert!(c.windows(2).all(|w| w[0] < w[1]) && c.iter().all(|&i| i < 12), "{c:?}");
                }
                Ok(Reread::Whole(l, _)) => assert_eq!(l, pre),
                Err(e) => panic!("{e}"),
            }
        }
    }
}
