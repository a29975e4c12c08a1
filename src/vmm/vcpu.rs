//! The vCPU threads: KVM_RUN in a loop, exits dispatched to the buses, and a signal to
//! kick a vCPU out of KVM_RUN (to stop it, or to sample its RIP for the profiler).
#![allow(
    unsafe_code,
    reason = "the kick handler writes the mmapped kvm_run of its thread"
)]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Instant;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::exit::{ExitCause, InternalError};
use super::hang_report::{StateBoard, VcpuPlace};
use super::parking::{Parking, Saved};
use super::vstate::vcpu::{saveable_msrs, VcpuState};
use crate::devices::bus::Bus;
use crate::profile::RipHistogram;

/// Offset from SIGRTMIN of the signal that kicks vCPUs out of KVM_RUN.
const KICK_SIGNAL_OFFSET: i32 = 0;

/// The signal number used to kick vCPU threads.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

thread_local! {
    /// The kvm_run page of the vCPU running on this thread, for the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is set by this thread's vCPU loop while its VcpuFd (and so
        // the kvm_run mapping) is alive, and cleared before it is dropped. A volatile
        // byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Install the kick handler once per process. The signal is a real-time one that husk
/// reserves; embedders must not use SIGRTMIN for anything else.
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), handle_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// The first reason any vCPU (or the host) gave for ending the VM.
#[derive(Default)]
pub struct ExitSink {
    cause: Mutex<Option<ExitCause>>,
    changed: Condvar,
}

impl ExitSink {
    /// Record `cause` unless another one came first.
    pub fn report(&self, cause: ExitCause) {
        let mut slot = self.cause.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(cause);
            self.changed.notify_all();
        }
    }

    /// The reported cause, if any, without waiting.
    pub fn peek(&self) -> Option<ExitCause> {
        self.cause.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Block until a cause is reported or `timeout` passes.
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> Option<ExitCause> {
        let slot = self.cause.lock().unwrap_or_else(|e| e.into_inner());
        let (slot, _) = self
            .changed
            .wait_timeout_while(slot, timeout, |c| c.is_none())
            .unwrap_or_else(|e| e.into_inner());
        slot.clone()
    }

    /// Block until a cause is reported.
    pub fn wait(&self) -> ExitCause {
        let mut slot = self.cause.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(cause) = slot.as_ref() {
                return cause.clone();
            }
            slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Counts of VM exits by kind, shared by all vCPUs.
#[derive(Default, Debug)]
pub struct ExitCounters {
    /// Port reads.
    pub io_in: AtomicU64,
    /// Port writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// KVM_RUN interrupted by a signal (kicks, profiler samples).
    pub interrupted: AtomicU64,
    /// Anything else.
    pub other: AtomicU64,
}

/// State shared by every vCPU of one VM.
pub struct VcpuShared {
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    /// Where the VM's end is reported.
    pub exit: Arc<ExitSink>,
    /// Set to make every vCPU leave its loop.
    pub stop: AtomicBool,
    /// Exit statistics.
    pub counters: ExitCounters,
    /// When the first KVM_RUN started.
    pub first_run: std::sync::OnceLock<Instant>,
    /// Sample the RIP on every kick (the guest profiler is on).
    pub profiling: bool,
    /// Requests for the vCPUs' registers (a hung guest's report).
    pub states: StateBoard,
    /// Pause and save requests.
    pub parking: Parking,
    /// What saving a vCPU's state needs to know about this host's KVM.
    pub save: SaveContext,
}

/// What a vCPU needs to save its state: KVM's MSR list and XSAVE2 size.
#[derive(Debug, Clone, Default)]
pub struct SaveContext {
    /// The MSRs KVM lists as saveable (KVM_GET_MSR_INDEX_LIST).
    pub msr_list: Vec<u32>,
    /// This host's KVM_CAP_XSAVE2 size (0: the legacy area suffices).
    pub xsave2_size: usize,
}

/// One vCPU and its loop.
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    shared: Arc<VcpuShared>,
    samples: RipHistogram,
}

impl Vcpu {
    /// Wrap a configured vCPU.
    pub fn new(fd: VcpuFd, id: u8, shared: Arc<VcpuShared>) -> Self {
        Self {
            fd,
            id,
            shared,
            samples: RipHistogram::default(),
        }
    }

    /// Run until the VM stops; returns the RIP samples taken (empty unless profiling).
    pub fn run(mut self) -> RipHistogram {
        KVM_RUN.with(|c| c.set(self.fd.get_kvm_run()));
        self.shared.first_run.get_or_init(Instant::now);
        while !self.shared.stop.load(Ordering::Acquire) {
            if let Some(cause) = self.run_once() {
                self.shared.exit.report(cause);
                break;
            }
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
        self.samples
    }

    /// One KVM_RUN and its exit; `Some` when the VM must end.
    fn run_once(&mut self) -> Option<ExitCause> {
        let shared = &self.shared;
        let c = &shared.counters;
        let vcpu = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                c.io_in.fetch_add(1, Ordering::Relaxed);
                if !shared.pio.read(u64::from(port), data) {
                    // Absent hardware floats high; answering keeps probes short.
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                c.io_out.fetch_add(1, Ordering::Relaxed);
                shared.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                c.mmio_read.fetch_add(1, Ordering::Relaxed);
                if !shared.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                c.mmio_write.fetch_add(1, Ordering::Relaxed);
                shared.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(ExitCause::SystemEvent(kind)),
            Ok(VcpuExit::Shutdown) => Some(ExitCause::TripleFault {
                vcpu,
                rip: self.triple_fault_rip(),
            }),
            Ok(VcpuExit::FailEntry(reason, _)) => Some(ExitCause::FailEntry { vcpu, reason }),
            Ok(VcpuExit::InternalError) => Some(ExitCause::InternalError(self.internal_error())),
            Ok(exit) => {
                c.other.fetch_add(1, Ordering::Relaxed);
                let exit = format!("{exit:?}");
                Some(ExitCause::Unhandled { vcpu, exit })
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                c.interrupted.fetch_add(1, Ordering::Relaxed);
                self.fd.set_kvm_immediate_exit(0);
                if self.shared.profiling {
                    self.sample();
                }
                let fd = &self.fd;
                self.shared
                    .states
                    .answer_if_asked(vcpu, || VcpuPlace::read(vcpu, fd));
                if self.shared.parking.pause_wanted() {
                    self.park();
                }
                None
            }
            Err(e) => Some(ExitCause::RunFailed {
                vcpu,
                errno: e.errno(),
            }),
        }
    }

    /// Park until resumed, saving this vCPU's state when asked. Reached only after an
    /// `EINTR` exit, so the port or MMIO access of any earlier exit is complete.
    fn park(&self) {
        let shared = &self.shared;
        let stopping = || shared.stop.load(Ordering::Acquire);
        shared.parking.park(self.id, stopping, || self.save_state());
    }

    fn save_state(&self) -> Saved {
        let ctx = &self.shared.save;
        let msrs = saveable_msrs(&ctx.msr_list, self.id, &self.fd).map_err(|e| e.to_string())?;
        VcpuState::save(self.id, &self.fd, &msrs, ctx.xsave2_size).map_err(|e| e.to_string())
    }

    /// Record where the guest is. Kernel code that runs before paging (the PVH entry)
    /// has physical RIPs; they are moved into the kernel's virtual map so they resolve.
    fn sample(&mut self) {
        let (Ok(regs), Ok(sregs)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return;
        };
        self.samples
            .add(profile_address(regs.rip, sregs.cs.selector & 3 == 3));
    }

    fn rip(&self) -> Option<u64> {
        self.fd.get_regs().ok().map(|r| r.rip)
    }

    /// Where a triple-faulting vCPU was, or `None` when that is lost: on AMD, KVM INITs
    /// the vCPU before it reports KVM_EXIT_SHUTDOWN (the VMCB is undefined after a
    /// shutdown), so its registers then hold the reset state, not the guest's.
    fn triple_fault_rip(&self) -> Option<u64> {
        let regs = self.fd.get_regs().ok()?;
        let sregs = self.fd.get_sregs().ok()?;
        (!is_reset_state(regs.rip, sregs.cs.base)).then_some(regs.rip)
    }

    fn internal_error(&mut self) -> InternalError {
        let rip = self.rip();
        let run = self.fd.get_kvm_run();
        // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active
        // member of the exit union; it is plain integers, valid for any bit pattern.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        InternalError::decode(
            self.id,
            internal.suberror,
            internal.ndata,
            &internal.data,
            rip,
        )
    }
}

/// x86 state after RESET or INIT: CS base 0xffff0000, RIP 0xfff0 (the reset vector).
pub fn is_reset_state(rip: u64, cs_base: u64) -> bool {
    rip == 0xfff0 && cs_base == 0xffff_0000
}

/// Kick a vCPU thread out of KVM_RUN.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a live thread of this process (the caller joins it only after
    // kicking); pthread_kill with a handled signal has no other effect.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}

/// Linux x86_64 maps the kernel image at this virtual base plus its physical address.
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// Lowest kernel-half address.
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;

/// The address a profile sample is filed under: user-mode RIPs as they are, kernel-mode
/// RIPs below the kernel half (code running before paging) moved into the kernel map.
pub fn profile_address(rip: u64, user_mode: bool) -> u64 {
    if user_mode || rip >= KERNEL_HALF {
        rip
    } else {
        rip.wrapping_add(START_KERNEL_MAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_kernel_rip_maps_into_the_kernel_image() {
        assert_eq!(profile_address(0x0100_0040, false), 0xffff_ffff_8100_0040);
    }

    #[test]
    fn user_rip_stays_as_it_is() {
        assert_eq!(profile_address(0x40_1000, true), 0x40_1000);
    }

    #[test]
    fn virtual_kernel_rip_stays_as_it_is() {
        assert_eq!(
            profile_address(0xffff_ffff_8123_4567, false),
            0xffff_ffff_8123_4567
        );
    }

    #[test]
    fn reset_vector_with_reset_cs_base_is_the_reset_state() {
        assert!(is_reset_state(0xfff0, 0xffff_0000));
    }

    #[test]
    fn reset_vector_offset_in_a_flat_segment_is_not_the_reset_state() {
        assert!(!is_reset_state(0xfff0, 0));
    }

    #[test]
    fn first_reported_cause_wins() {
        let sink = ExitSink::default();
        sink.report(ExitCause::ResetRequested);
        sink.report(ExitCause::Stopped);
        assert_eq!(sink.wait(), ExitCause::ResetRequested);
    }
}
