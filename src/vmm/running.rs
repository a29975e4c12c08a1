//! A VM whose vCPUs run: waiting for its end, stopping it, reports of a failed or
//! hung guest, metrics; pausing and resuming it ([`RunningVm::pause`]).

use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::boot;
use crate::config::VmConfig;
use crate::devices::i8042::I8042;
use crate::devices::serial::{ConsoleLog, SerialDevice};
use crate::memory::GuestRam;
use crate::metrics::{ms_since, ExitCounts, RunMetrics, Timeline};
use crate::profile::RipHistogram;

use super::exit::{classify, ExitCause};
use super::seccomp::{self, ThreadKind};
use super::vcpu::{self, Vcpu, VcpuShared};
use super::{
    devices, fd_limit, guest_log, hang_report, warm_flag, ExitWatch, RunReport, Stopper, VmError,
    FAILURE_LOG_LINES, PROFILE_INTERVAL, VCPU_STATE_TIMEOUT,
};

/// How long [`RunningVm::pause`] waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// When `start` (or `restore`) finished each setup stage.
#[derive(Debug, Clone, Copy)]
pub(super) struct SetupMarks {
    /// Guest RAM, devices and (on a boot) the kernel are in place.
    pub guest_loaded: Instant,
    /// The KVM VM exists with its memory, irqchip and eventfds.
    pub kvm_ready: Instant,
    /// Every vCPU is created and set up.
    pub vcpus_created: Instant,
    /// A restore's working set, mapped ahead of the guest.
    pub prefaulted: Option<super::prefault::Prefaulted>,
}

/// What `start` and `restore` built, before the threads run.
pub(super) struct Parts {
    pub shared: Arc<VcpuShared>,
    pub virtio: devices::VirtioDevices,
    pub vcpus: Vec<Vcpu>,
    pub ram: GuestRam,
    pub vm: VmFd,
    pub console: Arc<ConsoleLog>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub config: VmConfig,
    pub fds: fd_limit::FdReservation,
    pub started: Instant,
    pub setup: SetupMarks,
}

/// A VM whose vCPUs are running.
pub struct RunningVm {
    pub(super) shared: Arc<VcpuShared>,
    pub(super) device_loop: Option<devices::DeviceLoop>,
    vcpu_threads: Vec<JoinHandle<RipHistogram>>,
    profiler: Option<JoinHandle<()>>,
    profiler_stop: Arc<AtomicBool>,
    pub(super) memory: GuestMemoryMmap,
    console: Arc<ConsoleLog>,
    started: Instant,
    setup: SetupMarks,
    kernel: PathBuf,
    taps: Vec<String>,
    /// The configuration it runs with (a snapshot records it).
    pub(super) config: VmConfig,
    pub(super) serial: Arc<Mutex<SerialDevice>>,
    pub(super) i8042: Arc<Mutex<I8042>>,
    // Dropping these closes the VM and unmaps its memory; they go last.
    pub(super) vm: VmFd,
    pub(super) ram: GuestRam,
    /// This VM's share of the process's descriptor limit, given back last.
    fds: fd_limit::FdReservation,
}

impl RunningVm {
    /// Start the device loop and one thread per vCPU.
    pub(super) fn launch(parts: Parts) -> Result<Self, VmError> {
        vcpu::install_kick_handler().map_err(|source| VmError::Thread {
            what: "vCPU signal handler".into(),
            source,
        })?;
        let taps = parts.virtio.tap_names().to_vec();
        let mut running = RunningVm {
            shared: parts.shared,
            device_loop: Some(parts.virtio.start()?),
            vcpu_threads: Vec::new(),
            profiler: None,
            profiler_stop: Arc::new(AtomicBool::new(false)),
            memory: parts.ram.memory.clone(),
            console: parts.console,
            started: parts.started,
            setup: parts.setup,
            kernel: parts.config.kernel.clone(),
            taps,
            serial: parts.serial,
            i8042: parts.i8042,
            vm: parts.vm,
            ram: parts.ram,
            config: parts.config,
            fds: parts.fds,
        };
        for vcpu in parts.vcpus {
            running.spawn_vcpu(vcpu)?;
        }
        if running.config.profile {
            running.spawn_profiler()?;
        }
        Ok(running)
    }

    /// Press and release Ctrl+Alt+Del on the guest's keyboard (the API's
    /// `SendCtrlAltDel`): a Linux guest with its i8042 and AT keyboard drivers reboots
    /// (or tells its init), which ends the VM.
    pub fn send_ctrl_alt_del(&self) -> Result<(), VmError> {
        let mut i8042 = self.i8042.lock().unwrap_or_else(|e| e.into_inner());
        i8042
            .send_ctrl_alt_del()
            .map_err(|e| VmError::State(e.to_string()))
    }

    /// Park every vCPU out of KVM_RUN (see [`super::parking`]); the guest stops
    /// running until [`RunningVm::resume`]. Devices keep serving their host side.
    pub fn pause(&self) -> Result<(), VmError> {
        if !self.is_running() {
            return Err(VmError::State("the VM is not running".into()));
        }
        let parking = &self.shared.parking;
        parking.request_pause();
        let want = self.vcpu_threads.len();
        let parked = parking.wait_parked(want, PAUSE_TIMEOUT, || self.kick_vcpus());
        if parked < want {
            parking.resume();
            return Err(VmError::State(format!(
                "only {parked} of {want} vCPUs paused within {PAUSE_TIMEOUT:?}"
            )));
        }
        Ok(())
    }

    /// Let paused vCPUs run again.
    pub fn resume(&self) {
        self.shared.parking.resume();
    }

    /// Whether the vCPUs are (asked to be) paused.
    pub fn is_paused(&self) -> bool {
        self.shared.parking.pause_wanted()
    }

    /// The configuration the VM runs with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpu_threads.len()
    }

    pub(super) fn kick_vcpus(&self) {
        for handle in self.vcpu_threads.iter().filter(|h| !h.is_finished()) {
            vcpu::kick(handle.as_pthread_t());
        }
    }

    fn spawn_vcpu(&mut self, vcpu: Vcpu) -> Result<(), VmError> {
        let name = format!("husk-vcpu{}", self.vcpu_threads.len());
        let (filtered, result) = std::sync::mpsc::sync_channel(1);
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // The vCPU's own filter goes on before the guest runs a single instruction.
                let applied = seccomp::apply(ThreadKind::Vcpu);
                let ok = applied.is_ok();
                drop(filtered.send(applied));
                if ok {
                    seccomp::forbidden_call_if_testing();
                    vcpu.run()
                } else {
                    RipHistogram::default()
                }
            })
            .map_err(|source| VmError::Thread { what: name, source })?;
        let applied = result
            .recv()
            .unwrap_or_else(|_| Err(seccomp::SeccompError::thread_gone("vcpu")));
        self.vcpu_threads.push(handle);
        applied.map_err(VmError::Seccomp)
    }

    fn spawn_profiler(&mut self) -> Result<(), VmError> {
        let threads: Vec<libc::pthread_t> =
            self.vcpu_threads.iter().map(|t| t.as_pthread_t()).collect();
        let stop = self.profiler_stop.clone();
        let handle = std::thread::Builder::new()
            .name("husk-profiler".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(PROFILE_INTERVAL);
                    threads.iter().for_each(|&t| vcpu::kick(t));
                }
            })
            .map_err(|source| VmError::Thread {
                what: "husk-profiler".into(),
                source,
            })?;
        self.profiler = Some(handle);
        Ok(())
    }

    /// The file descriptors this VM reserved of the process's limit: the most it can
    /// hold at once (see [`fd_limit::vm_fds`]).
    pub fn reserved_fds(&self) -> usize {
        self.fds.fds()
    }

    /// A handle to stop this VM from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.exit.clone())
    }

    /// A handle that waits for this VM's end from another thread.
    pub fn exit_watch(&self) -> ExitWatch {
        ExitWatch {
            exit: self.shared.exit.clone(),
            memory: self.memory.clone(),
            console: self.console.clone(),
        }
    }

    /// Why the VM ended, if it has (not yet classified: see [`RunningVm::wait`]).
    pub fn exit_cause(&self) -> Option<ExitCause> {
        self.shared.exit.peek()
    }

    /// Whether the VM is still running (no vCPU or host has ended it yet).
    pub fn is_running(&self) -> bool {
        self.shared.exit.peek().is_none()
    }

    /// The guest's console output so far (the last few KiB).
    pub fn console_tail(&self) -> String {
        self.console.tail()
    }

    /// The last `lines` records of the guest kernel's log, read from guest memory: every
    /// message whatever the console's log level, even after a triple fault. Needs the
    /// kernel's symbol table (a `vmlinux`; a bzImage has none).
    pub fn kernel_log_tail(&self, lines: usize) -> Result<String, guest_log::GuestLogError> {
        guest_log::tail(&self.memory, &self.kernel, lines)
    }

    /// Where each running vCPU is now: its threads are kicked out of KVM_RUN and read
    /// their registers. A vCPU that does not answer within `timeout` (its thread has
    /// ended, or is busy in a device) is left out.
    pub fn vcpu_states(&self, timeout: Duration) -> Vec<hang_report::VcpuPlace> {
        let generation = self.shared.states.request();
        self.kick_vcpus();
        self.shared.states.collect(generation, timeout)
    }

    /// What to show when the guest failed or hangs: the console's tail, the end of the
    /// kernel's log from guest memory (a `quiet` guest prints little, and a triple
    /// fault prints nothing), or why that log could not be read, where the vCPUs are
    /// (named through the kernel's symbols when it has them), and where each virtio
    /// device's queues stand.
    pub fn failure_output(&self) -> String {
        let log = self
            .kernel_log_tail(FAILURE_LOG_LINES)
            .unwrap_or_else(|e| format!("(not available: {e})\n"));
        let mut vcpus = String::new();
        for state in self.vcpu_states(VCPU_STATE_TIMEOUT) {
            // A kernel-mode RIP in none of the kernel's functions means the guest's state
            // is corrupt (or it runs code it generated); say so rather than nothing.
            let symbol = (state.cpl == 0)
                .then(|| {
                    let address = vcpu::profile_address(state.rip, false);
                    match boot::symbols::describe_address(&self.kernel, address) {
                        Ok(Some(name)) => Some(name),
                        Ok(None) => Some("in none of the kernel's functions".to_string()),
                        Err(_) => None,
                    }
                })
                .flatten();
            vcpus.push_str(&state.describe(symbol.as_deref()));
            vcpus.push('\n');
        }
        if vcpus.is_empty() {
            vcpus.push_str("(no vCPU is running)\n");
        }
        let devices = match &self.device_loop {
            Some(devices) => devices.describe(VCPU_STATE_TIMEOUT),
            None => "(the devices are gone)\n".to_string(),
        };
        format!(
            "{}\n--- guest kernel log, read from guest memory ---\n{log}\
             --- vCPUs ---\n{vcpus}--- devices ---\n{devices}",
            self.console.tail()
        )
    }

    /// The host TAP interface of each network card, in the configuration's order; a TAP
    /// husk created exists as long as the VM does.
    pub fn tap_names(&self) -> &[String] {
        &self.taps
    }

    /// Wait up to `timeout` for the guest to end by itself, then stop it; report.
    pub fn wait_or_stop(self, timeout: Duration) -> RunReport {
        if self.shared.exit.wait_timeout(timeout).is_none() {
            self.shared.exit.report(ExitCause::Stopped);
        }
        self.wait()
    }

    /// Wait for the guest to end, stop every thread, and report.
    pub fn wait(mut self) -> RunReport {
        let cause = self.shared.exit.wait();
        let ended = Instant::now();
        let samples = self.shutdown();
        let outcome = classify(cause, warm_flag(&self.memory), &self.console.tail());
        let metrics = self.metrics(ended);
        log::debug!("vmm: metrics read");
        RunReport {
            outcome,
            metrics,
            samples,
        }
    }

    /// Stop the profiler and the vCPUs and join them; returns the merged RIP samples.
    fn shutdown(&mut self) -> RipHistogram {
        self.profiler_stop.store(true, Ordering::Release);
        if let Some(p) = self.profiler.take() {
            let _ = p.join();
        }
        self.shared.stop.store(true, Ordering::Release);
        self.shared.parking.wake();
        let mut samples = RipHistogram::default();
        for handle in self.vcpu_threads.drain(..) {
            // Kick until the thread is out of KVM_RUN: one kick can land just before the
            // thread re-enters, and immediate_exit covers that, but be certain.
            while !handle.is_finished() {
                vcpu::kick(handle.as_pthread_t());
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Ok(s) = handle.join() {
                samples.merge(&s);
            }
        }
        log::debug!("vmm: vCPUs stopped");
        if let Some(mut devices) = self.device_loop.take() {
            devices.stop();
        }
        log::debug!("vmm: devices stopped");
        samples
    }

    fn metrics(&self, ended: Instant) -> RunMetrics {
        let c = &self.shared.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        RunMetrics {
            timeline: Timeline {
                guest_loaded_ms: ms_since(self.started, Some(self.setup.guest_loaded)),
                kvm_ready_ms: ms_since(self.started, Some(self.setup.kvm_ready)),
                vcpus_created_ms: ms_since(self.started, Some(self.setup.vcpus_created)),
                prefaulted_pages: self.setup.prefaulted.map(|p| p.pages),
                prefaulted_written_pages: self.setup.prefaulted.map(|p| p.written),
                prefault_ms: self.setup.prefaulted.map(|p| p.took.as_secs_f64() * 1000.0),
                prefault_method: self.setup.prefaulted.map(|p| p.method),
                first_kvm_run_ms: ms_since(self.started, self.shared.first_run.get().copied()),
                first_console_byte_ms: ms_since(self.started, self.console.first_byte()),
                exit_ms: ms_since(self.started, Some(ended)),
            },
            exits: ExitCounts {
                io_in: get(&c.io_in),
                io_out: get(&c.io_out),
                mmio_read: get(&c.mmio_read),
                mmio_write: get(&c.mmio_write),
                interrupted: get(&c.interrupted),
                other: get(&c.other),
            },
            process: crate::metrics::ProcessStats::read(&self.ram.host_ranges())
                .unwrap_or_default(),
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if !self.vcpu_threads.is_empty() {
            self.shared.exit.report(ExitCause::Stopped);
            self.shutdown();
        }
    }
}
