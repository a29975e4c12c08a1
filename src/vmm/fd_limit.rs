//! The process's file-descriptor limit (RLIMIT_NOFILE) and what each VM may take of it.
//!
//! Many VMs can run in one process (sandboxes of a CI runner, `examples/ci_runner.rs`),
//! so one VM must not be able to take the descriptors the others, or the embedder, need.
//! At the first VM start the soft limit is raised to the hard limit, once. Each VM then
//! reserves, before anything of it is created, the most descriptors it can hold: its
//! fixed ones (RAM, KVM, vCPUs, the device loop) and each device's, the vsock device's
//! budget of host sockets included ([`vm_fds`]). A start that would take the VMs of the
//! process past the limit, less [`PROCESS_RESERVE`] for the rest of the process, fails
//! naming the numbers instead of starting a VM that could starve its neighbours.
#![allow(unsafe_code, reason = "getrlimit/setrlimit have no safe wrapper")]

use std::sync::{Mutex, Once};

use crate::config::VmConfig;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;

/// Descriptors no VM may reserve: the embedder's own, standard streams, a sandbox's
/// runtime files and agent connection.
pub const PROCESS_RESERVE: usize = 256;

/// Descriptors of a VM whatever its devices: guest RAM's memfd, `/dev/kvm` (during the
/// start), the VM, the serial and keyboard irqfds, a console file, the device loop's
/// epoll and its stop eventfd.
const VM_FIXED_FDS: usize = 8;

/// Room for files a VM opens for a moment: the kernel and initrd while loading, the
/// `vmlinux` symbols and `/proc` files of a failure report.
const VM_TRANSIENT_FDS: usize = 8;

/// Errors reserving descriptors for a VM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdLimitError {
    /// The VMs of this process would hold more than the limit allows them.
    #[error(
        "no room for another VM's {needed} file descriptors: running VMs reserved {reserved} \
         of the {available} this process gives VMs (RLIMIT_NOFILE {limit}, less \
         {PROCESS_RESERVE} for the rest of the process); lower the VM's vsock max_sockets or \
         raise the hard limit"
    )]
    Exhausted {
        /// What the new VM may hold.
        needed: usize,
        /// What the running VMs reserved.
        reserved: usize,
        /// What VMs may reserve together.
        available: usize,
        /// The soft RLIMIT_NOFILE.
        limit: usize,
    },
}

/// The most descriptors a VM built from `config` holds at once.
pub fn vm_fds(config: &VmConfig) -> usize {
    let vsock = config.vsock.as_ref().map_or(0, Vsock::max_fds);
    let rng = if config.rng { Rng::MAX_FDS } else { 0 };
    VM_FIXED_FDS
        + VM_TRANSIENT_FDS
        + usize::from(config.cpus)
        + config.disks.len() * Block::MAX_FDS
        + config.nets.len() * Net::MAX_FDS
        + vsock
        + rng
        + config.fs.len() * Fs::MAX_FDS
}

/// Descriptors reserved by every running VM of the process.
static RESERVED: Mutex<usize> = Mutex::new(0);

/// A VM's share of the descriptor limit; given back when dropped.
#[derive(Debug)]
pub struct FdReservation {
    fds: usize,
}

impl FdReservation {
    /// How many descriptors this VM reserved.
    pub fn fds(&self) -> usize {
        self.fds
    }
}

impl Drop for FdReservation {
    fn drop(&mut self) {
        let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        *reserved = reserved.saturating_sub(self.fds);
    }
}

/// Reserve `fds` descriptors for a VM (raising the soft limit first, once).
pub fn reserve(fds: usize) -> Result<FdReservation, FdLimitError> {
    raise_soft_limit();
    let limit = soft_limit();
    let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    *reserved = admit(*reserved, fds, limit)?;
    Ok(FdReservation { fds })
}

/// The new total when `needed` more fit beside `reserved` under `limit`.
fn admit(reserved: usize, needed: usize, limit: usize) -> Result<usize, FdLimitError> {
    let available = limit.saturating_sub(PROCESS_RESERVE);
    match reserved.checked_add(needed) {
        Some(total) if total <= available => Ok(total),
        _ => Err(FdLimitError::Exhausted {
            needed,
            reserved,
            available,
            limit,
        }),
    }
}

/// What all running VMs of the process reserved.
pub fn reserved_total() -> usize {
    *RESERVED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raise the soft RLIMIT_NOFILE to the hard limit, once per process. A failure (a
/// sandbox that forbids it) leaves the limit as it was: the reservations then fit
/// into less.
pub fn raise_soft_limit() {
    static RAISE: Once = Once::new();
    RAISE.call_once(|| {
        let Some(mut limit) = nofile() else {
            return;
        };
        if limit.rlim_cur >= limit.rlim_max {
            return;
        }
        let old = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one rlimit struct, valid for the call.
        match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } {
            0 => log::debug!("RLIMIT_NOFILE raised from {old} to {}", limit.rlim_cur),
            _ => log::warn!(
                "cannot raise RLIMIT_NOFILE from {old} to {}: {}",
                limit.rlim_max,
                std::io::Error::last_os_error()
            ),
        }
    });
}

/// The soft RLIMIT_NOFILE (1024, Linux's default, if it cannot be read).
pub fn soft_limit() -> usize {
    nofile().map_or(1024, |l| usize::try_from(l.rlim_cur).unwrap_or(usize::MAX))
}

fn nofile() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `limit` is, valid for the call.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => Some(limit),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::VsockConfig;

    #[test]
    fn vm_fits_when_the_total_stays_within_the_limit_less_the_reserve() {
        assert_eq!(admit(100, 400, 1024), Ok(500));
        assert_eq!(admit(368, 400, 1024), Ok(768));
    }

    #[test]
    fn vm_past_the_limit_is_refused_naming_the_numbers() {
        let e = admit(369, 400, 1024).unwrap_err();
        assert_eq!(
            e,
            FdLimitError::Exhausted {
                needed: 400,
                reserved: 369,
                available: 768,
                limit: 1024
            }
        );
        assert!(e.to_string().starts_with(
            "no room for another VM's 400 file descriptors: running VMs reserved 369 of the 768"
        ));
    }

    #[test]
    fn limit_below_the_process_reserve_admits_no_vm() {
        assert!(admit(0, 1, 100).is_err());
    }

    #[test]
    fn vsock_budget_counts_in_full_toward_a_vm() {
        let mut config = VmConfig::new("/vmlinux");
        let without = vm_fds(&config);
        config.vsock = Some(VsockConfig::new(3, "/v.sock"));
        let with_128 = vm_fds(&config);
        config.vsock.as_mut().unwrap().max_sockets = 1000;
        assert_eq!(vm_fds(&config) - with_128, 1000 - 128);
        assert!(with_128 - without > 128);
    }

    #[test]
    fn each_vcpu_and_device_adds_to_a_vm() {
        let mut config = VmConfig::new("/vmlinux");
        let one = vm_fds(&config);
        config.cpus = 4;
        config.rng = false;
        assert_eq!(vm_fds(&config), one + 3 - Rng::MAX_FDS);
    }

    #[test]
    fn reservation_counts_until_dropped() {
        let before = reserved_total();
        let r = reserve(10).unwrap();
        let during = reserved_total();
        drop(r);
        assert_eq!((during, reserved_total()), (before + 10, before));
    }

    #[test]
    fn soft_limit_is_the_hard_limit_after_raising() {
        raise_soft_limit();
        let limit = nofile().unwrap();
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
