//! The i8042 keyboard controller: vm-superio's [`I8042Device`], which reads
//! as zero (enough for Linux to probe it) and triggers a reset when the guest
//! sends the reset pulse (command 0xFE to port 0x64), the way both Linux
//! (`reboot=k`, the default fallback) and the test guest reboot. The pulse
//! ends the access with [`DeviceAction::Reset`], so the vCPU that sent it
//! stops the VM at once.

use std::cell::Cell;
use std::convert::Infallible;

use vm_superio::{I8042Device, Trigger};

use super::bus::PioDevice;
use super::DeviceAction;

/// Offset of the command/status port (0x64) from the data port (0x60).
pub const COMMAND_OFFSET: u16 = 4;

/// The [`Trigger`] vm-superio pulls on a reset pulse: it only notes the
/// request, which the bus access that caused it then reports.
#[derive(Debug, Default)]
struct ResetRequest(Cell<bool>);

impl ResetRequest {
    /// Whether a reset was requested since the last call (and clears it).
    fn take(&self) -> bool {
        self.0.replace(false)
    }
}

impl Trigger for ResetRequest {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.0.set(true);
        Ok(())
    }
}

/// The i8042 controller, mapped at 0x60..0x65.
#[derive(Debug)]
pub struct I8042 {
    device: I8042Device<ResetRequest>,
    resets: u64,
}

impl Default for I8042 {
    fn default() -> Self {
        Self { device: I8042Device::new(ResetRequest::default()), resets: 0 }
    }
}

impl I8042 {
    /// A controller with an empty output buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many reset pulses the guest has sent.
    pub fn resets(&self) -> u64 {
        self.resets
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; data port reads 0.
        let value = u8::try_from(offset).map_or(0, |offset| self.device.read(offset));
        data.fill(value);
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return DeviceAction::None;
        };
        // The trigger cannot fail (its error type is `Infallible`).
        let Ok(()) = self.device.write(offset, value);
        if self.device.reset_evt().take() {
            self.resets += 1;
            return DeviceAction::Reset;
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The i8042 "pulse reset line" command.
    const CMD_RESET_CPU: u8 = 0xfe;

    #[test]
    fn reset_pulse_on_command_port_only() {
        let mut dev = I8042::new();
        assert_eq!(dev.write(0, &[CMD_RESET_CPU]), DeviceAction::None);
        assert_eq!(dev.write(COMMAND_OFFSET, &[0xaa]), DeviceAction::None);
        assert_eq!(dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]), DeviceAction::Reset);
        assert_eq!(dev.resets(), 1);
        let mut b = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut b);
        assert_eq!(b[0], 0);
    }

    #[test]
    fn every_pulse_resets_once() {
        let mut dev = I8042::new();
        assert_eq!(dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]), DeviceAction::Reset);
        assert_eq!(dev.write(COMMAND_OFFSET, &[0xaa]), DeviceAction::None);
        assert_eq!(dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU, 0]), DeviceAction::Reset);
        assert_eq!(dev.resets(), 2);
    }
}
