//! Building a VM from a [`VmConfig`], in one fixed boot order:
//!
//! 1. validate the configuration (before any resource exists);
//! 2. create the KVM VM with its irqchip and PIT;
//! 3. map guest RAM (split around the 32-bit MMIO hole) and register it;
//! 4. load the kernel (ELF or bzImage), the command line and the initrd;
//! 5. write the firmware tables: e820 with the patch arena reserved, MP table,
//!    ACPI (RSDP, XSDT, FADT, DSDT, MADT), and the boot_params zero page;
//! 6. create the devices (COM1 on an irqfd, i8042, ACPI PM) on the port bus;
//! 7. create and configure the vCPUs (CPUID, MSRs, LAPIC LINT0/1, FPU; the
//!    boot CPU also gets the 64-bit entry registers, page tables and GDT;
//!    the others wait for INIT/SIPI);
//! 8. start one thread per vCPU.

use std::fs::File;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{acpi, boot_params, cpuid, interrupts, layout, mptable, msr, regs};
use crate::arch::ArchError;
use crate::config::{ConfigError, SerialConfig, VmConfig};
use crate::devices::acpi_pm::{self, AcpiPm};
use crate::devices::agent_doorbell::{self, AgentAnnouncement, AgentDoorbell};
use crate::devices::bus::PioBus;
use crate::devices::i8042::I8042;
use crate::devices::console_watch::{ConsoleCounters, ConsoleWatch};
use crate::devices::serial::{SerialDevice, SerialOut};
use crate::loader::{self, LoadError, LoadedKernel};
use crate::vmm::{Vmm, VmmParts};
use crate::vstate::memory::{create_guest_memory, GuestMemory, MemoryError};
use crate::vstate::pause::{ExitNotifier, SpawnError, VcpuThreads};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError, MAX_SUPPORTED_VCPUS};

/// Why a VM could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM refused.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest RAM could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel or initrd could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A firmware table or boot structure (IRQ routing, e820 map, initrd
    /// placement, MP table, ACPI, zero page) could not be built or written.
    #[error("cannot set up the guest's boot structures")]
    Boot(#[from] ArchError),
    /// A device could not be created.
    #[error("cannot create device {what}")]
    Device {
        /// Which device.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A vCPU could not be created or configured.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The vCPU threads could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The serial output could not be set up.
    #[error("cannot set up the serial output")]
    Serial(#[from] std::io::Error),
}

impl BuildError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Config(e) => e.cause(),
            Self::Vm(e) => e.cause(),
            Self::Memory(e) => e.cause(),
            Self::Load(e) => e.cause(),
            Self::Boot(e) => e.cause(),
            Self::Device { .. } => "device_create_failed",
            Self::Vcpu(e) => e.cause(),
            Self::Spawn(e) => e.cause(),
            Self::Serial(_) => "serial_output_unwritable",
        }
    }
}

fn serial_out(serial: SerialConfig) -> Result<(SerialOut, bool), BuildError> {
    Ok(match serial {
        SerialConfig::Stdio => (Box::new(std::io::stdout()), true),
        SerialConfig::File(path) => {
            let file = File::create(&path).map_err(|source| BuildError::Device { what: "serial output file", source })?;
            (Box::new(file), false)
        }
        SerialConfig::Writer(w) => (w, false),
        SerialConfig::Null => (Box::new(std::io::sink()), false),
    })
}

/// Loads kernel, command line and initrd; returns the kernel and the initrd's place.
fn load_images(
    config: &VmConfig,
    mem: &GuestMemory,
    e820: &[boot_params::E820Entry],
) -> Result<(LoadedKernel, Option<(u64, u64)>), BuildError> {
    let ram: Vec<std::ops::Range<u64>> = e820.iter().filter(|e| e.kind == boot_params::E820Kind::Ram).map(|e| e.addr..e.end()).collect();
    let kernel = loader::load_kernel(mem, &config.kernel, &ram)?;
    loader::load_cmdline(mem, &config.effective_cmdline())?;
    let initrd = match &config.initrd {
        None => None,
        Some(path) => {
            let size = loader::initrd_size(path)?;
            let max = kernel.setup_header.map_or(u64::from(u32::MAX), |h| u64::from(h.initrd_addr_max));
            let addr = boot_params::initrd_load_addr_above(e820, size, kernel.end, max).map_err(ArchError::from)?;
            loader::load_initrd(mem, path, addr)?;
            Some((addr, size))
        }
    };
    Ok((kernel, initrd))
}

/// Writes e820, MP table, ACPI and boot_params for `vcpus` CPUs.
fn write_firmware(
    config: &VmConfig,
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    initrd: Option<(u64, u64)>,
    e820: &[boot_params::E820Entry],
) -> Result<(), BuildError> {
    let cpus = u8::try_from(config.vcpus).map_err(|_| ConfigError::VcpuCount { requested: config.vcpus, max: MAX_SUPPORTED_VCPUS })?;
    mptable::setup_mptable(mem, cpus).map_err(ArchError::from)?;
    let rsdp = acpi::setup_acpi(mem, cpus).map_err(ArchError::from)?;
    let cmdline_size = config.effective_cmdline().len() + 1;
    boot_params::configure_boot_params(
        mem,
        kernel.setup_header,
        layout::CMDLINE_START,
        cmdline_size,
        initrd,
        e820,
        rsdp,
    )
    .map_err(ArchError::from)?;
    Ok(())
}

/// Creates COM1, the i8042, the ACPI PM block and the agent doorbell on a fresh port bus.
fn create_devices(vm: &Vm, out: SerialOut) -> Result<(PioBus, Arc<Mutex<SerialDevice>>, AgentAnnouncement), BuildError> {
    let dev_err = |what| move |source| BuildError::Device { what, source };
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(dev_err("serial irqfd"))?;
    vm.fd()
        .register_irqfd(&irq, layout::SERIAL_IRQ)
        .map_err(|e| BuildError::Device { what: "serial irqfd", source: std::io::Error::from_raw_os_error(e.errno()) })?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq, out)));
    let overlap = |what| move |e: crate::devices::bus::Overlap| BuildError::Device { what, source: std::io::Error::other(e) };
    let mut bus = PioBus::new();
    bus.insert(layout::SERIAL_PORT_BASE, layout::SERIAL_PORT_SIZE, serial.clone()).map_err(overlap("serial"))?;
    bus.insert(layout::I8042_DATA_PORT, layout::I8042_COMMAND_PORT - layout::I8042_DATA_PORT + 1, Arc::new(Mutex::new(I8042::new())))
        .map_err(overlap("i8042"))?;
    bus.insert(layout::ACPI_PM1A_EVT_PORT, acpi_pm::PORT_COUNT, Arc::new(Mutex::new(AcpiPm::new())))
        .map_err(overlap("ACPI PM"))?;
    let agent = AgentAnnouncement::default();
    bus.insert(layout::AGENT_DOORBELL_PORT, agent_doorbell::PORT_COUNT, Arc::new(Mutex::new(AgentDoorbell::new(agent.clone()))))
        .map_err(overlap("agent doorbell"))?;
    Ok((bus, serial, agent))
}

/// Creates and configures every vCPU; only vCPU 0 gets entry registers.
fn create_vcpus(vm: &Vm, mem: &GuestMemory, count: usize, entry: GuestAddress) -> Result<Vec<Vcpu>, BuildError> {
    let supported = vm.supported_cpuid()?;
    let total = count as u8;
    let mut vcpus = Vec::with_capacity(count);
    for index in 0..count {
        let vcpu = Vcpu::new(vm.fd(), index)?;
        let mut leaves = supported.clone();
        cpuid::filter_cpuid(&mut leaves, index as u8, total);
        cpuid::set_cpuid(&vcpu.fd, &leaves).map_err(vcpu.configure_err())?;
        msr::setup_msrs(&vcpu.fd).map_err(vcpu.configure_err())?;
        interrupts::set_lint(&vcpu.fd).map_err(vcpu.configure_err())?;
        regs::setup_fpu(&vcpu.fd).map_err(vcpu.configure_err())?;
        if index == 0 {
            regs::setup_regs(&vcpu.fd, entry.0, layout::ZERO_PAGE_START).map_err(vcpu.configure_err())?;
            regs::setup_sregs(mem, &vcpu.fd).map_err(vcpu.configure_err())?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Builds and starts a VM. The guest is running when this returns.
pub fn build(config: VmConfig) -> Result<Vmm, BuildError> {
    // 1. Configuration, checked before any resource exists (then against this host's KVM).
    config.validate(MAX_SUPPORTED_VCPUS)?;
    let vm = Vm::new()?;
    let routing = interrupts::legacy_gsi_routing().map_err(ArchError::from)?;
    vm.fd().set_gsi_routing(&routing).map_err(|source| VmError::Configure { what: "set IRQ routing", source })?;
    if config.vcpus > vm.max_vcpus() {
        return Err(ConfigError::VcpuCount { requested: config.vcpus, max: vm.max_vcpus() }.into());
    }
    // 2-3. Memory.
    let mem_size = config.memory_mib << 20;
    let mem = create_guest_memory(&boot_params::guest_ram_regions(mem_size))?;
    vm.register_memory(&mem)?;
    let (e820, arena): (Vec<boot_params::E820Entry>, Range<u64>) =
        boot_params::e820_map(mem_size, config.arena_mib << 20).map_err(ArchError::from)?;
    let arena = config.placed_arena(arena)?;
    // 4. Images.
    let (kernel, initrd) = load_images(&config, &mem, &e820)?;
    tracing::info!(format = ?kernel.format, entry = format_args!("{:#x}", kernel.entry.0), "kernel loaded");
    // 5. Firmware tables.
    write_firmware(&config, &mem, &kernel, initrd, &e820)?;
    // 6. Devices.
    let (out, stdin_input) = serial_out(config.serial)?;
    let console = Arc::new(ConsoleCounters::default());
    let out: SerialOut = Box::new(ConsoleWatch::new(out, console.clone()));
    let (bus, serial, agent) = create_devices(&vm, out)?;
    // 7. vCPUs.
    let vcpus = create_vcpus(&vm, &mem, config.vcpus, kernel.entry)?;
    // 8. Threads.
    let exit_evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(|source| BuildError::Device { what: "exit eventfd", source })?);
    let (notifier, exits) = ExitNotifier::new(exit_evt.clone());
    let mut threads = VcpuThreads::spawn(vcpus, &bus, &mem, &notifier)?;
    threads.set_pause_timeout(config.pause_timeout);
    Ok(Vmm::new(VmmParts { vm, mem, vcpus: threads, exits, exit_evt, serial, stdin_input, arena, agent, console }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::mptable::MptableError;

    #[test]
    fn a_boot_failure_keeps_the_arch_cause_and_its_chain() {
        let e = BuildError::from(ArchError::from(MptableError::TooManyCpus { requested: 200, max: 20 }));
        assert_eq!(e.cause(), "mptable_too_many_cpus");
        let line = vsplice_patcher::model::chain(&e);
        assert!(line.starts_with("cannot set up the guest's boot structures: MP table: "), "{line}");
        assert!(line.contains("200 CPUs do not fit in the MP table"), "{line}");
    }
}
