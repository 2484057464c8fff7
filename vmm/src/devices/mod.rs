//! Legacy port-I/O devices and the bus that routes vCPU port accesses to them.

pub mod acpi_pm;
pub mod agent_doorbell;
pub mod bus;
pub mod console_watch;
pub mod i8042;
pub mod serial;

/// What a device asks the VMM to do after a guest access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// Nothing: the guest goes on.
    None,
    /// The guest asked to be reset (reboot).
    Reset,
    /// The guest asked to be powered off.
    PowerOff,
}
