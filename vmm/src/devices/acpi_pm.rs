//! The ACPI PM1a event and control blocks the FADT points at: writing
//! SLP_EN with the `_S5_` sleep type (5) powers the guest off, which is how
//! Linux's `poweroff` ends the VM when ACPI is in use.

use super::bus::PioDevice;
use super::DeviceAction;

/// Offset of PM1a_CNT from the PM1a_EVT base (the FADT places them 4 apart).
pub const PM1_CNT_OFFSET: u16 = 4;
/// Ports covered: PM1a_EVT (status, enable: 2 + 2 bytes) and PM1a_CNT (2 bytes).
pub const PORT_COUNT: u16 = 6;
/// The `_S5_` sleep type written by the DSDT.
pub const S5_SLEEP_TYPE: u16 = 5;
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SCI_EN: u16 = 1;

/// PM1a registers.
#[derive(Debug, Default)]
pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
}

impl AcpiPm {
    /// Registers after reset, with SCI_EN set (ACPI mode, no SMI handshake needed).
    pub fn new() -> Self {
        Self { status: 0, enable: 0, control: SCI_EN }
    }
}

fn read_u16(reg: u16, byte: u16, data: &mut [u8]) {
    let bytes = reg.to_le_bytes();
    for (i, out) in data.iter_mut().enumerate() {
        *out = bytes.get(byte as usize + i).copied().unwrap_or(0);
    }
}

fn merge_u16(reg: &mut u16, byte: u16, data: &[u8]) {
    let mut bytes = reg.to_le_bytes();
    for (i, v) in data.iter().enumerate() {
        if let Some(b) = bytes.get_mut(byte as usize + i) {
            *b = *v;
        }
    }
    *reg = u16::from_le_bytes(bytes);
}

impl PioDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match offset {
            0..=1 => read_u16(self.status, offset, data),
            2..=3 => read_u16(self.enable, offset - 2, data),
            4..=5 => read_u16(self.control, offset - PM1_CNT_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        match offset {
            // Status bits are write-one-to-clear.
            0..=1 => {
                let mut w = 0u16;
                merge_u16(&mut w, offset, data);
                self.status &= !w;
            }
            2..=3 => merge_u16(&mut self.enable, offset - 2, data),
            4..=5 => {
                let mut value = self.control;
                merge_u16(&mut value, offset - PM1_CNT_OFFSET, data);
                self.control = (value & !SLP_EN) | SCI_EN;
                let sleep_type = (value >> SLP_TYP_SHIFT) & 7;
                if value & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE {
                    return DeviceAction::PowerOff;
                }
            }
            _ => {}
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut pm = AcpiPm::new();
        let v = (S5_SLEEP_TYPE << SLP_TYP_SHIFT).to_le_bytes();
        assert_eq!(pm.write(PM1_CNT_OFFSET, &v), DeviceAction::None);
        let v = ((S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes();
        assert_eq!(pm.write(PM1_CNT_OFFSET, &v), DeviceAction::PowerOff);
    }

    #[test]
    fn other_sleep_states_do_not_power_off_and_sci_en_reads_back() {
        let mut pm = AcpiPm::new();
        let v = ((3 << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes();
        assert_eq!(pm.write(PM1_CNT_OFFSET, &v), DeviceAction::None);
        let mut b = [0u8; 2];
        pm.read(PM1_CNT_OFFSET, &mut b);
        assert_eq!(u16::from_le_bytes(b) & SCI_EN, SCI_EN);
        pm.write(2, &[0x21, 0x01]);
        pm.read(2, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x0121);
    }
}
