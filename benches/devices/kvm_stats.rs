//! KVM's own counters of the VM under test, for husk and QEMU alike: the per-VM
//! directory `kvm/<pid>-<fd>/` of debugfs, read every few milliseconds while the VM
//! runs (it goes away with the VM), so a phase of the workload (the stream to the
//! guest, the round trips) can be cut out of the samples by time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const KVM_DIR: &str = "/sys/kernel/debug/kvm";
const PERIOD: Duration = Duration::from_millis(40);

/// The counters read, as KVM names them. `halt_wait_ns` is the time the vCPU spent
/// halted (the guest idle, waiting for an interrupt).
pub(crate) const COUNTERS: [&str; 6] = [
    "exits",
    "irq_injections",
    "halt_exits",
    "halt_wait_ns",
    "insn_emulation",
    "pf_fixed",
];

/// Makes sure debugfs is mounted; whether KVM's per-VM directories can be read.
pub(crate) fn available() -> bool {
    if !Path::new(KVM_DIR).is_dir() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "debugfs", "none", "/sys/kernel/debug"])
            .status();
    }
    Path::new(KVM_DIR).is_dir()
}

/// One reading of the counters.
#[derive(Debug)]
struct Sample {
    at: Instant,
    values: [u64; COUNTERS.len()],
    /// The host's idle time so far (all CPUs, `/proc/stat`), in clock ticks.
    idle_ticks: u64,
    /// Page faults the VMM process took so far (its `/proc/PID/stat`).
    faults: u64,
}

/// Minor and major page faults of process `pid` so far, 0 when it is gone.
fn faults(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is the 3rd of the line,
    // minflt the 10th, majflt the 12th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    fields.get(7).copied().unwrap_or(0) + fields.get(9).copied().unwrap_or(0)
}

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on Linux x86-64).
const TICKS: f64 = 100.0;

/// The host's idle and I/O-wait ticks, from `/proc/stat`'s first line.
fn idle_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0)
}

/// CPUs of the host, for the idle share.
fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// The per-VM directories (`PID-FD`), each with the VMM's pid.
fn vm_dirs() -> Vec<(PathBuf, u32)> {
    let Ok(entries) = std::fs::read_dir(KVM_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let (pid, fd) = name.to_str()?.split_once('-')?;
            fd.parse::<u32>().ok()?;
            Some((e.path(), pid.parse().ok()?))
        })
        .collect()
}

fn read(dir: &Path) -> Option<[u64; COUNTERS.len()]> {
    let mut values = [0; COUNTERS.len()];
    for (value, name) in values.iter_mut().zip(COUNTERS) {
        *value = std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
    }
    Some(values)
}

/// Reads the counters of the first VM created after it started, until stopped.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub(crate) fn start() -> Self {
        let before = vm_dirs();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut vm: Option<(PathBuf, u32)> = None;
            while !stopped.load(Ordering::Relaxed) {
                if vm.is_none() {
                    vm = vm_dirs().into_iter().find(|d| !before.contains(d));
                }
                if let Some((dir, pid)) = &vm {
                    if let Some(values) = read(dir) {
                        samples.push(Sample {
                            at: Instant::now(),
                            values,
                            idle_ticks: idle_ticks(),
                            faults: faults(*pid),
                        });
                    }
                }
                std::thread::sleep(PERIOD);
            }
            samples
        });
        Self { stop, thread }
    }

    pub(crate) fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        Samples(self.thread.join().unwrap_or_default())
    }
}

/// What a [`Sampler`] read.
pub(crate) struct Samples(Vec<Sample>);

impl Samples {
    /// The counters' growth between the readings nearest before `from` and before
    /// `to` (by name), with `halt_wait_ns` as the share of that time (in %) the vCPU
    /// was halted, and the share of the host's CPU time that was idle (`host idle %`:
    /// nothing to run, everyone waiting, e.g. for a timer); None without two distinct
    /// readings. Shares are the names ending in `%`.
    pub(crate) fn window(&self, from: Instant, to: Instant) -> Option<BTreeMap<&'static str, f64>> {
        let at = |t: Instant| self.0.iter().rev().find(|s| s.at <= t).or(self.0.first());
        let (a, b) = (at(from)?, at(to)?);
        let secs = b.at.checked_duration_since(a.at)?.as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let mut rows: BTreeMap<&'static str, f64> = COUNTERS
            .iter()
            .zip(a.values.iter().zip(b.values))
            .map(|(&name, (&x, y))| {
                let grown = y.saturating_sub(x) as f64;
                match name {
                    "halt_wait_ns" => ("halted %", grown / 1e9 / secs * 100.0),
                    _ => (name, grown),
                }
            })
            .collect();
        let idle = b.idle_ticks.saturating_sub(a.idle_ticks) as f64 / TICKS;
        rows.insert("host idle %", idle / cpus() / secs * 100.0);
        rows.insert("VMM page faults", b.faults.saturating_sub(a.faults) as f64);
        Some(rows)
    }
}

/// A phase that ended at `end` after `secs` seconds (a tool's own `-secs` figure).
pub(crate) fn phase(end: Instant, secs: f64) -> (Instant, Instant) {
    let secs = if secs.is_finite() && secs > 0.0 {
        secs
    } else {
        0.0
    };
    (end - Duration::from_secs_f64(secs), end)
}
