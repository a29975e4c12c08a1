//! The 8250 UART console (COM1) on top of `vm-superio`, and where its output goes.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// Bytes of console output kept in memory to explain how a guest ended.
const TAIL_BYTES: usize = 8192;

/// An irqfd-backed interrupt line for the UART.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// What the guest printed: when it started, and the last few KiB.
#[derive(Default)]
pub struct ConsoleLog {
    first_byte: OnceLock<Instant>,
    tail: Mutex<VecDeque<u8>>,
}

impl ConsoleLog {
    /// When the guest wrote its first console byte.
    pub fn first_byte(&self) -> Option<Instant> {
        self.first_byte.get().copied()
    }

    /// The last [`TAIL_BYTES`] of output, lossily decoded.
    pub fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = tail.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn record(&self, data: &[u8]) {
        self.first_byte.get_or_init(Instant::now);
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.extend(data);
        let excess = tail.len().saturating_sub(TAIL_BYTES);
        tail.drain(..excess);
    }
}

/// The console sink: a writer (stdout, a file, or nothing) plus the [`ConsoleLog`].
pub struct ConsoleOut {
    sink: Option<Box<dyn Write + Send>>,
    log: Arc<ConsoleLog>,
}

impl ConsoleOut {
    /// Output to `sink` (or discard when `None`), recorded in `log`.
    pub fn new(sink: Option<Box<dyn Write + Send>>, log: Arc<ConsoleLog>) -> Self {
        Self { sink, log }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.log.record(data);
        if let Some(sink) = self.sink.as_mut() {
            // A console whose reader went away must not stop the guest.
            if sink.write_all(data).is_err() {
                self.sink = None;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.sink.as_mut() {
            Some(sink) => sink.flush(),
            None => Ok(()),
        }
    }
}

/// COM1 as a bus device.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, ConsoleOut>,
}

/// The UART's registers and unread input as plain data (vm-superio's `SerialState`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialPersist {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Input the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// A UART in the saved state `saved`; a FIFO longer than the UART's is refused.
    pub fn from_state(
        saved: &SerialPersist,
        irq: EventFd,
        out: ConsoleOut,
    ) -> Result<Self, crate::vmm::VmError> {
        let state = SerialState {
            baud_divisor_low: saved.baud_divisor[0],
            baud_divisor_high: saved.baud_divisor[1],
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        let uart = Serial::from_state(&state, IrqTrigger(irq), NoEvents, out)
            .map_err(|e| crate::vmm::VmError::Serial(format!("{e:?}")))?;
        Ok(Self { uart })
    }

    /// The UART's state.
    pub fn persist(&self) -> SerialPersist {
        let s = self.uart.state();
        SerialPersist {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Queue host input for the guest to read.
    pub fn enqueue_input(&mut self, data: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(data).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |off| self.uart.read(off));
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(off), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(e) = self.uart.write(off, value) {
            log::warn!("serial: write at offset {off} failed: {e:?}");
        }
        if off == 0 {
            // Line-buffered sinks (pipes, files) would otherwise hold partial lines.
            let _ = self.uart.writer_mut().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, d: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(d);
            Ok(d.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn device() -> (SerialDevice, Arc<Mutex<Vec<u8>>>, Arc<ConsoleLog>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(ConsoleLog::default());
        let out = ConsoleOut::new(Some(Box::new(Shared(buf.clone()))), log.clone());
        let dev = SerialDevice::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), out);
        (dev, buf, log)
    }

    #[test]
    fn bytes_written_to_thr_reach_the_sink_and_the_log() {
        let (mut dev, buf, log) = device();
        dev.write(0, b"h");
        dev.write(0, b"i");
        assert_eq!(&*buf.lock().unwrap(), b"hi");
        assert_eq!(log.tail(), "hi");
        assert!(log.first_byte().is_some());
    }

    #[test]
    fn console_tail_keeps_only_the_last_bytes() {
        let log = ConsoleLog::default();
        log.record(&vec![b'a'; TAIL_BYTES]);
        log.record(b"end");
        let tail = log.tail();
        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(tail.ends_with("aend"));
    }

    #[test]
    fn registers_and_unread_input_survive_a_restore() {
        let (mut dev, _, _) = device();
        dev.write(3, &[0x03]);
        dev.write(7, &[0x5a]);
        dev.enqueue_input(b"ab");
        let saved = dev.persist();
        let out = ConsoleOut::new(None, Arc::new(ConsoleLog::default()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut back = SerialDevice::from_state(&saved, irq, out).unwrap();
        assert_eq!(back.persist(), saved);
        let mut data = [0u8; 1];
        back.read(0, &mut data);
        assert_eq!(data[0], b'a');
    }

    #[test]
    fn out_of_range_offset_reads_as_absent() {
        let (mut dev, _, _) = device();
        let mut data = [0u8; 1];
        dev.read(0x1000, &mut data);
        assert_eq!(data[0], 0xff);
    }
}
