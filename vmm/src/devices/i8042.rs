//! A minimal i8042 keyboard controller: enough for Linux to probe it and for
//! the guest's reset pulse (command 0xFE) to end the VM, the way both Linux
//! (`reboot=k`, the default fallback) and the test guest power off.

use super::bus::PioDevice;
use super::DeviceAction;

/// Offset of the command/status port (0x64) from the data port (0x60).
pub const COMMAND_OFFSET: u16 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 controller, mapped at 0x60..0x65.
#[derive(Debug, Default)]
pub struct I8042 {
    resets: u64,
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
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; data port reads 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.resets += 1;
            return DeviceAction::Reset;
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
