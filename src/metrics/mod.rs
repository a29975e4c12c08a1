//! What a VM run cost: milestones, exits, VMM CPU time outside the guest, VMM memory
//! (`rss`: resident memory split into guest RAM and the VMM's own).

pub mod rss;

use std::ops::Range;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Milestones of one VM run, in milliseconds from the start of `Vm::start`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Timeline {
    /// Guest RAM created, devices built, kernel, initrd and boot tables loaded.
    pub guest_loaded_ms: Option<f64>,
    /// KVM VM created with its memory, irqchip, PIT and device eventfds.
    pub kvm_ready_ms: Option<f64>,
    /// vCPUs created and set up (registers, CPUID, MSRs; a restore's working set
    /// mapped).
    pub vcpus_created_ms: Option<f64>,
    /// A restore: pages of the snapshot's working set mapped before the guest ran.
    #[serde(default)]
    pub prefaulted_pages: Option<u64>,
    /// Of those, pages copied ahead because the recorded run wrote them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefaulted_written_pages: Option<u64>,
    /// A restore: how long mapping them took.
    #[serde(default)]
    pub prefault_ms: Option<f64>,
    /// A restore: how they were mapped.
    #[serde(default)]
    pub prefault_method: Option<crate::vmm::prefault::Method>,
    /// First KVM_RUN of the boot vCPU.
    pub first_kvm_run_ms: Option<f64>,
    /// First byte the guest wrote to its console.
    pub first_console_byte_ms: Option<f64>,
    /// The VM ended.
    pub exit_ms: Option<f64>,
}

/// Milliseconds from `start` to `at`.
pub fn ms_since(start: Instant, at: Option<Instant>) -> Option<f64> {
    at.map(|t| t.saturating_duration_since(start).as_secs_f64() * 1000.0)
}

/// VM exits by kind.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ExitCounts {
    /// Port reads.
    pub io_in: u64,
    /// Port writes.
    pub io_out: u64,
    /// MMIO reads.
    pub mmio_read: u64,
    /// MMIO writes.
    pub mmio_write: u64,
    /// KVM_RUN interrupted by a kick or profiler sample.
    pub interrupted: u64,
    /// Other exits.
    pub other: u64,
}

/// CPU time and memory of this process, from procfs.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ProcessStats {
    /// User + system CPU time not spent running the guest, in ms.
    pub vmm_cpu_ms: f64,
    /// The user-mode part of `vmm_cpu_ms`: husk's own code.
    pub vmm_user_ms: f64,
    /// The kernel part of `vmm_cpu_ms`: syscalls, KVM exit handling, page faults.
    pub vmm_system_ms: f64,
    /// CPU time spent in guest mode, in ms.
    pub guest_cpu_ms: f64,
    /// Resident memory outside guest RAM's mappings, in KiB: the VMM's own (the husk
    /// binary's pages included, which every process running it shares).
    pub vmm_rss_kib: u64,
    /// The anonymous part of `vmm_rss_kib` (heap, stacks, written data), in KiB: what
    /// this VMM holds that no other process shares.
    #[serde(default)]
    pub vmm_anon_kib: u64,
    /// Resident memory of guest RAM's mappings (memfd pages, or a snapshot file's
    /// pages and the private copies of those written), in KiB.
    pub guest_rss_kib: u64,
}

impl ProcessStats {
    /// Read `/proc/self/stat` and `/proc/self/smaps`; `guest` are the host address
    /// ranges of guest RAM.
    pub fn read(guest: &[Range<u64>]) -> std::io::Result<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let rss = rss::split(&smaps, guest);
        Ok(Self {
            vmm_rss_kib: rss.vmm_kib,
            vmm_anon_kib: rss.vmm_anon_kib,
            guest_rss_kib: rss.guest_kib,
            ..Self::parse(&stat, clock_ticks_per_second())
        })
    }

    /// The CPU times of a `stat` file. Its fields are counted after the command name,
    /// which may itself contain spaces and parentheses.
    pub fn parse(stat: &str, ticks: f64) -> Self {
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // After ")": field 3 is index 0, so field N is index N - 3.
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let to_ms = |t: f64| t * 1000.0 / ticks;
        let (utime, stime, guest) = (field(14), field(15), field(43));
        Self {
            // The kernel counts guest time inside utime as well.
            vmm_cpu_ms: to_ms((utime - guest).max(0.0) + stime),
            vmm_user_ms: to_ms((utime - guest).max(0.0)),
            vmm_system_ms: to_ms(stime),
            guest_cpu_ms: to_ms(guest),
            ..Self::default()
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code, reason = "sysconf has no safe wrapper in std")]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Everything measured about one run.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RunMetrics {
    /// Milestones.
    pub timeline: Timeline,
    /// Exits by kind.
    pub exits: ExitCounts,
    /// Process CPU and memory, read when the VM ended.
    pub process: ProcessStats,
}

/// A duration in milliseconds as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "1234 (husk (x) y) S 1 1234 1234 0 -1 4194304 100 0 0 0 \
        150 30 0 0 20 0 3 0 100 1000 200 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 \
        120 0 0";

    #[test]
    fn vmm_cpu_time_excludes_guest_time() {
        let s = ProcessStats::parse(STAT, 100.0);
        assert_eq!(s.guest_cpu_ms, 1200.0);
        assert_eq!(s.vmm_cpu_ms, 600.0);
    }

    #[test]
    fn unreadable_stat_gives_zeroes() {
        let s = ProcessStats::parse("garbage", 100.0);
        assert_eq!(s.vmm_cpu_ms, 0.0);
    }
}
