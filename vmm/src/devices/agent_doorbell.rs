//! The guest agent's doorbell (ports `AGENT_DOORBELL_PORT`..+8): the
//! in-guest agent (`guest-agent/`) announces the guest-physical address of
//! its descriptor with two 32-bit `out`s, high half to +4 then low half to
//! +0 (the low write commits; 0 means the agent unloaded). The address is
//! kept in an [`AgentAnnouncement`] the live-patch path reads; the patcher
//! validates the descriptor itself, so a stale or bogus address costs a
//! failed check, never trust. An `in` from +0 answers "VSPL" so the agent
//! can tell a vsplice VMM from an unclaimed port, +4 the protocol version.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::bus::PioDevice;
use super::DeviceAction;

/// Ports the doorbell covers.
pub const PORT_COUNT: u16 = 8;
/// What `in` from +0 returns: "VSPL".
pub const SIGNATURE: u32 = 0x4c50_5356;
/// What `in` from +4 returns.
pub const PROTOCOL_VERSION: u32 = 1;

/// The last address the agent announced, shared with the live-patch path.
#[derive(Debug, Clone, Default)]
pub struct AgentAnnouncement {
    gpa: Arc<AtomicU64>,
    rings: Arc<AtomicU64>,
}

impl AgentAnnouncement {
    /// The descriptor's guest-physical address, `None` when no agent
    /// announced one (or it said goodbye).
    pub fn gpa(&self) -> Option<u64> {
        match self.gpa.load(Ordering::Acquire) {
            0 => None,
            g => Some(g),
        }
    }

    /// How many announcements (including goodbyes) arrived.
    pub fn rings(&self) -> u64 {
        self.rings.load(Ordering::Relaxed)
    }

    /// Forgets the address (e.g. when the guest reboots).
    pub fn clear(&self) {
        self.gpa.store(0, Ordering::Release);
    }

    fn set(&self, gpa: u64) {
        self.gpa.store(gpa, Ordering::Release);
        self.rings.fetch_add(1, Ordering::Relaxed);
    }
}

/// The doorbell device.
#[derive(Debug, Default)]
pub struct AgentDoorbell {
    high: u32,
    announced: AgentAnnouncement,
}

impl AgentDoorbell {
    /// A doorbell that records into `announced`.
    pub fn new(announced: AgentAnnouncement) -> Self {
        Self { high: 0, announced }
    }
}

fn u32_of(data: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(data).ok().map(u32::from_le_bytes)
}

impl PioDevice for AgentDoorbell {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let v = match offset {
            0 => SIGNATURE,
            4 => PROTOCOL_VERSION,
            _ => u32::MAX,
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.to_le_bytes().get(i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        let Some(v) = u32_of(data) else {
            tracing::debug!(offset, len = data.len(), "agent doorbell: ignoring a write that is not 32 bits");
            return DeviceAction::None;
        };
        match offset {
            4 => self.high = v,
            0 => {
                let gpa = (u64::from(self.high) << 32) | u64::from(v);
                self.high = 0;
                if gpa & 0xfff != 0 {
                    tracing::warn!(gpa = format_args!("{gpa:#x}"), "agent doorbell: address is not page aligned; ignored");
                } else {
                    tracing::info!(gpa = format_args!("{gpa:#x}"), "agent doorbell: {}", if gpa == 0 { "agent gone" } else { "descriptor announced" });
                    self.announced.set(gpa);
                }
            }
            _ => {}
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn announce_high_then_low_and_goodbye() {
        let a = AgentAnnouncement::default();
        let mut d = AgentDoorbell::new(a.clone());
        assert_eq!(a.gpa(), None);
        d.write(4, &1u32.to_le_bytes());
        assert_eq!(a.gpa(), None, "the high half alone commits nothing");
        d.write(0, &0x0187_c000u32.to_le_bytes());
        assert_eq!(a.gpa(), Some(0x1_0187_c000));
        // The next low write without a high one is below 4 GiB.
        d.write(0, &0x0200_0000u32.to_le_bytes());
        assert_eq!(a.gpa(), Some(0x0200_0000));
        d.write(4, &0u32.to_le_bytes());
        d.write(0, &0u32.to_le_bytes());
        assert_eq!(a.gpa(), None);
        assert_eq!(a.rings(), 3);
    }

    #[test]
    fn outs_on_the_bus_reach_the_announcement() {
        use crate::arch::x86_64::layout::AGENT_DOORBELL_PORT;
        let a = AgentAnnouncement::default();
        let mut bus = crate::devices::bus::PioBus::new();
        bus.insert(AGENT_DOORBELL_PORT, PORT_COUNT, std::sync::Arc::new(std::sync::Mutex::new(AgentDoorbell::new(a.clone())))).unwrap();
        // What the agent's ring() does: outl(high, port + 4); outl(low, port).
        bus.write(AGENT_DOORBELL_PORT + 4, &0u32.to_le_bytes());
        bus.write(AGENT_DOORBELL_PORT, &0x0188_4000u32.to_le_bytes());
        assert_eq!(a.gpa(), Some(0x0188_4000));
        let mut sig = [0u8; 4];
        bus.read(AGENT_DOORBELL_PORT, &mut sig);
        assert_eq!(u32::from_le_bytes(sig), SIGNATURE);
    }

    #[test]
    fn bad_writes_are_ignored_and_reads_identify_the_vmm() {
        let a = AgentAnnouncement::default();
        let mut d = AgentDoorbell::new(a.clone());
        d.write(0, &0x0187_c008u32.to_le_bytes());
        d.write(0, &[1, 2]);
        d.write(2, &0x1000u32.to_le_bytes());
        assert_eq!((a.gpa(), a.rings()), (None, 0));
        let mut b = [0u8; 4];
        d.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), SIGNATURE);
        d.read(4, &mut b);
        assert_eq!(u32::from_le_bytes(b), PROTOCOL_VERSION);
        let mut one = [0u8; 1];
        d.read(6, &mut one);
        assert_eq!(one, [0xff]);
        d.write(0, &0x3000u32.to_le_bytes());
        assert_eq!(a.gpa(), Some(0x3000));
        a.clear();
        assert_eq!(a.gpa(), None);
    }
}
