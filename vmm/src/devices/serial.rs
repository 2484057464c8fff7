//! COM1: a vm-superio 8250 UART whose interrupt is an irqfd on IRQ 4, whose
//! output goes to stdout, a file, or any writer, and whose input comes from
//! the VMM's stdin through the event loop.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::bus::PioDevice;
use super::DeviceAction;

/// Raises the UART's interrupt by signalling an eventfd registered as an irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where guest serial output goes.
pub type SerialOut = Box<dyn Write + Send>;

/// The UART as a port-I/O device.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, SerialOut>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART that interrupts through `irq` and writes to `out`.
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        Self { uart: Serial::new(IrqTrigger(irq), out) }
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = ?e, "serial input dropped");
                0
            }
        }
    }
}

impl PioDevice for SerialDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        if let Some(v) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, *v) {
                tracing::warn!(error = ?e, "serial output failed");
            }
        }
        DeviceAction::None
    }
}

/// Feeds the VMM's stdin into the UART from the event loop.
#[derive(Debug)]
pub struct SerialInput {
    serial: Arc<Mutex<SerialDevice>>,
    stdin: io::Stdin,
}

impl SerialInput {
    /// Input from this process's stdin into `serial`.
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        Self { serial, stdin: io::stdin() }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = if events.event_set().contains(EventSet::IN) {
            self.stdin.lock().read(&mut buf).unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            // EOF, error or hang-up: stop watching stdin so the loop does not spin.
            let _ = ops.remove(Events::empty(&self.stdin));
            return;
        }
        if let Ok(mut serial) = self.serial.lock() {
            let taken = serial.enqueue_input(&buf[..n]);
            if taken < n {
                tracing::debug!(dropped = n - taken, "serial input FIFO full");
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        match ops.add(Events::new(&self.stdin, EventSet::IN)) {
            Ok(()) => {}
            // epoll refuses regular files and /dev/null: there is no input to wait for.
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EPERM => {
                tracing::debug!(fd = self.stdin.as_raw_fd(), "stdin is not pollable; guest gets no serial input");
            }
            Err(e) => {
                tracing::warn!(error = %e, fd = self.stdin.as_raw_fd(), "stdin not watched; guest gets no serial input");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn thr_writes_reach_the_writer_and_input_is_readable() {
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // Enable the data-ready interrupt, queue input, read it back through RBR.
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }
}
