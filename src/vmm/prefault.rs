//! Mapping a restored guest's working set (see `snapshot::working_set`) before its
//! first instruction. With `KVM_PRE_FAULT_MEMORY` (Linux 6.10+), KVM fills its
//! second-level page tables for those pages as a guest read would, without breaking
//! copy-on-write, so each page costs neither a VM exit nor a host page fault later.
//! Without it, `MADV_POPULATE_READ` (Linux 5.14+) maps them in husk's own page tables,
//! which saves the host page fault; on older kernels nothing is done. Pages the
//! recorded run wrote are first copied into husk's private mapping with
//! `MADV_POPULATE_WRITE` (Linux 5.14+; a hole gets a zeroed page), so KVM maps them
//! writable and the guest's first write to each is neither a VM exit nor a host
//! copy-on-write fault. Either way the result is only an optimisation: any failure
//! leaves pages to load on first touch.
#![allow(
    unsafe_code,
    reason = "KVM_PRE_FAULT_MEMORY and MADV_POPULATE_* have no safe wrapper"
)]

use std::time::{Duration, Instant};

use kvm_bindings::kvm_pre_fault_memory;
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::snapshot::working_set::{WorkingSet, PAGE};

/// `KVM_CAP_PRE_FAULT_MEMORY`.
const CAP_PRE_FAULT_MEMORY: libc::c_int = 236;
/// `MADV_POPULATE_READ`.
const MADV_POPULATE_READ: libc::c_int = 22;
/// `MADV_POPULATE_WRITE`.
const MADV_POPULATE_WRITE: libc::c_int = 23;

mod ioctls {
    use kvm_bindings::kvm_pre_fault_memory;
    vmm_sys_util::ioctl_iowr_nr!(KVM_PRE_FAULT_MEMORY, 0xAE, 0xd5, kvm_pre_fault_memory);
}
use ioctls::KVM_PRE_FAULT_MEMORY;

/// How the working set was mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Method {
    /// In KVM's page tables (`KVM_PRE_FAULT_MEMORY`).
    Kvm,
    /// In the VMM's page tables only (`MADV_POPULATE_READ`).
    Host,
}

/// What a prefault did.
#[derive(Debug, Clone, Copy)]
pub struct Prefaulted {
    /// Pages mapped.
    pub pages: u64,
    /// Of which copied ahead (the run wrote them).
    pub written: u64,
    /// How.
    pub method: Method,
    /// How long it took.
    pub took: Duration,
}

/// Map `set` (pages of the memory file behind `memory`, whose regions follow each
/// other in it) ahead of the guest, through `vcpu` when KVM can. `None` when nothing
/// could be mapped.
pub fn prefault(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    memory: &GuestMemoryMmap,
    set: &WorkingSet,
) -> Option<Prefaulted> {
    let started = Instant::now();
    let method = if kvm.check_extension_raw(CAP_PRE_FAULT_MEMORY as libc::c_ulong) > 0 {
        Method::Kvm
    } else {
        Method::Host
    };
    let map = |gpa: GuestAddress, len: u64| match method {
        Method::Kvm => pre_fault_kvm(vcpu, gpa, len),
        Method::Host => populate_host(memory, gpa, len, MADV_POPULATE_READ),
    };
    let mut written = 0;
    let copies = guest_ranges(memory, &set.written);
    log::debug!("prefault: {} written ranges", copies.len());
    for (gpa, len) in copies {
        let copied = populate_host(memory, gpa, len, MADV_POPULATE_WRITE);
        match copied.and_then(|()| match method {
            Method::Kvm => map(gpa, len),
            Method::Host => Ok(()),
        }) {
            Ok(()) => written += len / PAGE,
            Err(e) => {
                log::debug!("prefault: copies stopped at {:#x} (+{len:#x}): {e}", gpa.0);
                break;
            }
        }
    }
    let mut pages = written;
    let reads = guest_ranges(memory, &set.ranges);
    log::debug!(
        "prefault: {written} pages copied and mapped; {} read ranges",
        reads.len()
    );
    for (gpa, len) in reads {
        match map(gpa, len) {
            Ok(()) => pages += len / PAGE,
            Err(e) => {
                log::debug!("prefault: stopped at {:#x} (+{len:#x}): {e}", gpa.0);
                break;
            }
        }
    }
    log::debug!("prefault: {pages} pages mapped");
    (pages > 0).then(|| Prefaulted {
        pages,
        written,
        method,
        took: started.elapsed(),
    })
}

/// The working set's file pages as guest-physical ranges `(address, bytes)`: file
/// offsets run through the regions in order.
fn guest_ranges(memory: &GuestMemoryMmap, set: &[(u64, u64)]) -> Vec<(GuestAddress, u64)> {
    let mut regions = Vec::new();
    let mut offset = 0;
    for region in memory.iter() {
        let len = region.len();
        regions.push((offset, region.start_addr(), len));
        offset += len;
    }
    let mut out = Vec::new();
    for &(first, n) in set {
        let (mut at, end) = (first * PAGE, (first + n) * PAGE);
        for &(file_start, gpa, len) in &regions {
            let file_end = file_start + len;
            if at >= end || at >= file_end || end <= file_start {
                continue;
            }
            let stop = end.min(file_end);
            out.push((GuestAddress(gpa.0 + (at - file_start)), stop - at));
            at = stop;
        }
    }
    out
}

fn pre_fault_kvm(vcpu: &VcpuFd, gpa: GuestAddress, len: u64) -> std::io::Result<()> {
    let mut range = kvm_pre_fault_memory {
        gpa: gpa.0,
        size: len,
        ..Default::default()
    };
    while range.size > 0 {
        // SAFETY: the request's struct is KVM's layout and lives across the call; KVM
        // only updates its gpa and size as it progresses.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(vcpu, KVM_PRE_FAULT_MEMORY(), &mut range)
        };
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN) => continue,
                _ => return Err(e),
            }
        }
    }
    Ok(())
}

fn populate_host(
    memory: &GuestMemoryMmap,
    gpa: GuestAddress,
    len: u64,
    advice: libc::c_int,
) -> std::io::Result<()> {
    let host = memory
        .get_host_address(gpa)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: the range lies inside one mapped guest region (the ranges are cut at
    // region ends); populating it only faults pages in (a write fault makes the private
    // copy the guest's next write would), it changes no contents.
    let ret = unsafe { libc::madvise(host.cast(), len, advice) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_pages_map_through_the_regions_in_order() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x4000),
            (GuestAddress(0x1_0000_0000), 0x4000),
        ])
        .unwrap();
        // Pages 3..6 straddle the two regions.
        let set = [(0, 1), (3, 3)];
        assert_eq!(
            guest_ranges(&memory, &set),
            vec![
                (GuestAddress(0), 0x1000),
                (GuestAddress(0x3000), 0x1000),
                (GuestAddress(0x1_0000_0000), 0x2000),
            ]
        );
    }

    #[test]
    fn pages_past_the_memory_are_dropped() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
        let set = [(1, 5)];
        assert_eq!(
            guest_ranges(&memory, &set),
            vec![(GuestAddress(0x1000), 0x1000)]
        );
    }
}
