//! The port-I/O bus: a map from port ranges to devices. vCPU threads route
//! every `in`/`out` exit through it; unclaimed ports read as all-ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::DeviceAction;

/// A device on the port-I/O bus. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    /// Guest `in` from `base + offset`; fill `data`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Guest `out` to `base + offset`.
    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction;
}

/// A shared, lockable device.
pub type SharedDevice = Arc<Mutex<dyn PioDevice>>;

/// Port ranges overlap.
#[derive(Debug, thiserror::Error)]
#[error("port range {base:#x}+{len} overlaps a device already on the bus")]
pub struct Overlap {
    /// Base port of the rejected range.
    pub base: u16,
    /// Length of the rejected range.
    pub len: u16,
}

/// Routes port I/O to devices.
#[derive(Default, Clone)]
pub struct PioBus {
    devices: BTreeMap<u16, (u16, SharedDevice)>,
}

impl std::fmt::Debug for PioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.devices.iter().map(|(b, (l, _))| (b, l))).finish()
    }
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at ports `base..base+len`.
    pub fn insert(&mut self, base: u16, len: u16, device: SharedDevice) -> Result<(), Overlap> {
        let end = u32::from(base) + u32::from(len);
        let clash = self.devices.iter().any(|(b, (l, _))| {
            let (b, e) = (u32::from(*b), u32::from(*b) + u32::from(*l));
            u32::from(base) < e && b < end
        });
        if len == 0 || clash {
            return Err(Overlap { base, len });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(u16, &SharedDevice)> {
        let (base, (len, dev)) = self.devices.range(..=port).next_back()?;
        (u32::from(port) < u32::from(*base) + u32::from(*len)).then_some((port - base, dev))
    }

    /// Handles a guest `in`. Unclaimed ports read as 0xff.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((offset, dev)) => match dev.lock() {
                Ok(mut d) => d.read(offset, data),
                Err(_) => data.fill(0xff),
            },
            None => {
                tracing::trace!(port = format_args!("{port:#x}"), "read from unclaimed port");
                data.fill(0xff)
            }
        }
    }

    /// Handles a guest `out`. Writes to unclaimed ports are dropped.
    pub fn write(&self, port: u16, data: &[u8]) -> DeviceAction {
        match self.find(port) {
            Some((offset, dev)) => match dev.lock() {
                Ok(mut d) => d.write(offset, data),
                Err(_) => DeviceAction::None,
            },
            None => {
                tracing::trace!(port = format_args!("{port:#x}"), "write to unclaimed port");
                DeviceAction::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct Recorder(Vec<(u16, u8)>);
    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
            self.0.push((offset, data[0]));
            DeviceAction::PowerOff
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let dev = Arc::new(Mutex::new(Recorder(vec![])));
        let mut bus = PioBus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        assert!(bus.insert(0x3ff, 1, dev.clone()).is_err());
        assert!(bus.insert(0x3f0, 9, dev.clone()).is_err());
        bus.insert(0x3f0, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        bus.read(0x3fa, &mut b);
        assert_eq!(b[0], 2);
        bus.read(0x400, &mut b);
        assert_eq!(b[0], 0xff);
        assert_eq!(bus.write(0x3fd, &[7]), DeviceAction::PowerOff);
        assert_eq!(bus.write(0x500, &[7]), DeviceAction::None);
        assert_eq!(dev.lock().unwrap().0, vec![(5, 7)]);
    }
}
