//! One vCPU's whole KVM state as plain data: read on the vCPU's own thread while it is
//! parked out of KVM_RUN (so every port or MMIO exit it took has been completed by the
//! re-entry that parked it), and written into a fresh vCPU before its first KVM_RUN.
#![allow(
    unsafe_code,
    reason = "KVM_GET_XSAVE2/KVM_SET_XSAVE are unsafe ioctls in kvm-ioctls"
)]

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// MSR_IA32_TSC_DEADLINE: restored after the TSC, or its deadline means another time.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Errors saving or restoring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM ioctl failed.
    #[error("vCPU {vcpu}: {what}: {source}")]
    Kvm {
        /// The vCPU.
        vcpu: u8,
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// KVM took only part of the MSRs.
    #[error("vCPU {vcpu}: KVM set {set} of {total} MSRs; it refused MSR {index:#x}")]
    MsrsRefused {
        /// The vCPU.
        vcpu: u8,
        /// MSRs set.
        set: usize,
        /// MSRs given.
        total: usize,
        /// The first one refused.
        index: u32,
    },
    /// A buffer for KVM could not be built.
    #[error("vCPU {vcpu}: {what}: {source}")]
    Fam {
        /// The vCPU.
        vcpu: u8,
        /// What was built.
        what: &'static str,
        /// The error.
        source: vmm_sys_util::fam::Error,
    },
    /// The host's TSC runs at another rate and KVM cannot scale it.
    #[error(
        "vCPU {vcpu}: the snapshot's TSC runs at {saved} kHz, this host's at {host} kHz, \
         and KVM cannot scale it: {source}"
    )]
    TscRate {
        /// The vCPU.
        vcpu: u8,
        /// The snapshot's rate.
        saved: u32,
        /// This host's rate.
        host: u32,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
}

/// The extended FPU state: the legacy 4 KiB area, or KVM_GET_XSAVE2's larger one on
/// hosts with dynamically enabled features.
#[derive(Serialize, Deserialize)]
pub enum XsaveState {
    /// `KVM_GET_XSAVE`.
    Legacy(Box<kvm_xsave>),
    /// `KVM_GET_XSAVE2`.
    Extended(Xsave),
}

/// Everything KVM keeps about one vCPU that a restore needs.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's index (its APIC id).
    pub id: u8,
    /// The CPUID the guest sees (as set by KVM_SET_CPUID2).
    pub cpuid: CpuId,
    /// Every saveable MSR KVM reported, TSC before TSC_DEADLINE.
    pub msrs: Msrs,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state.
    pub xsave: XsaveState,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: Box<kvm_lapic_state>,
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub vcpu_events: kvm_vcpu_events,
    /// The guest's TSC rate, if KVM reports it.
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("id", &self.id)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.as_slice().len())
            .field("mp_state", &self.mp_state.mp_state)
            .finish_non_exhaustive()
    }
}

/// Which MSRs to save, found once per VM by [`saveable_msrs`].
#[derive(Clone, Debug, Default)]
pub struct MsrIndexes(pub Vec<u32>);

/// Of the MSRs KVM lists, those this vCPU can read, sorted so that the TSC comes before
/// the TSC deadline. KVM lists some MSRs it then refuses to read on a given CPU; each
/// refusal stops KVM_GET_MSRS at that entry, which is dropped and the rest retried.
pub fn saveable_msrs(
    kvm_list: &[u32],
    id: u8,
    vcpu: &VcpuFd,
) -> Result<MsrIndexes, VcpuStateError> {
    let mut indexes: Vec<u32> = kvm_list.to_vec();
    indexes.sort_unstable_by_key(|&i| (i == MSR_IA32_TSC_DEADLINE, i));
    indexes.dedup();
    let mut start = 0;
    while start < indexes.len() {
        let mut msrs = msr_buffer(id, &indexes[start..])?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm(id, "KVM_GET_MSRS"))?;
        if start + read >= indexes.len() {
            break;
        }
        log::debug!("vCPU {id}: MSR {:#x} not saveable", indexes[start + read]);
        indexes.remove(start + read);
        start += read;
    }
    Ok(MsrIndexes(indexes))
}

fn msr_buffer(id: u8, indexes: &[u32]) -> Result<Msrs, VcpuStateError> {
    let entries: Vec<kvm_msr_entry> = indexes
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|source| VcpuStateError::Fam {
        vcpu: id,
        what: "MSR list",
        source,
    })
}

fn kvm(vcpu: u8, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm { vcpu, what, source }
}

/// Bytes KVM_GET_XSAVE2 needs (`KVM_CAP_XSAVE2`), or 0 when the legacy call suffices.
pub fn xsave2_size(vm: &kvm_ioctls::VmFd) -> usize {
    let size = usize::try_from(vm.check_extension_int(kvm_ioctls::Cap::Xsave2)).unwrap_or(0);
    if size > std::mem::size_of::<kvm_xsave>() {
        size
    } else {
        0
    }
}

impl VcpuState {
    /// Read vCPU `id`'s state. Call on the vCPU's thread, out of KVM_RUN.
    pub fn save(
        id: u8,
        vcpu: &VcpuFd,
        msrs: &MsrIndexes,
        xsave2_size: usize,
    ) -> Result<Self, VcpuStateError> {
        let mut msr_values = msr_buffer(id, &msrs.0)?;
        let read = vcpu
            .get_msrs(&mut msr_values)
            .map_err(kvm(id, "KVM_GET_MSRS"))?;
        if read != msrs.0.len() {
            return Err(VcpuStateError::MsrsRefused {
                vcpu: id,
                set: read,
                total: msrs.0.len(),
                index: msrs.0[read],
            });
        }
        Ok(Self {
            id,
            cpuid: vcpu
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm(id, "KVM_GET_CPUID2"))?,
            msrs: msr_values,
            regs: vcpu.get_regs().map_err(kvm(id, "KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm(id, "KVM_GET_SREGS"))?,
            xsave: save_xsave(id, vcpu, xsave2_size)?,
            xcrs: vcpu.get_xcrs().map_err(kvm(id, "KVM_GET_XCRS"))?,
            debug_regs: vcpu
                .get_debug_regs()
                .map_err(kvm(id, "KVM_GET_DEBUGREGS"))?,
            lapic: Box::new(vcpu.get_lapic().map_err(kvm(id, "KVM_GET_LAPIC"))?),
            mp_state: vcpu.get_mp_state().map_err(kvm(id, "KVM_GET_MP_STATE"))?,
            vcpu_events: vcpu
                .get_vcpu_events()
                .map_err(kvm(id, "KVM_GET_VCPU_EVENTS"))?,
            tsc_khz: vcpu.get_tsc_khz().ok(),
        })
    }

    /// Write this state into a fresh vCPU of a VM that already has its irqchip. The
    /// order matters: CPUID first (KVM checks MSRs and XCR0 against it), the TSC rate
    /// before any TSC value, and the LAPIC before the MSRs: KVM drops a write of
    /// TSC_DEADLINE unless the LAPIC's timer is already in TSC-deadline mode, and the
    /// guest would wait forever for its next timer interrupt. Pending events last.
    /// `host_xsave2_size` is this host's [`xsave2_size`].
    pub fn restore(&self, vcpu: &VcpuFd, host_xsave2_size: usize) -> Result<(), VcpuStateError> {
        let id = self.id;
        vcpu.set_cpuid2(&self.cpuid)
            .map_err(kvm(id, "KVM_SET_CPUID2"))?;
        self.restore_tsc_rate(vcpu)?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm(id, "KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&self.regs).map_err(kvm(id, "KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(kvm(id, "KVM_SET_SREGS"))?;
        restore_xsave(id, vcpu, &self.xsave, host_xsave2_size)?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm(id, "KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debug_regs)
            .map_err(kvm(id, "KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic)
            .map_err(kvm(id, "KVM_SET_LAPIC"))?;
        let total = self.msrs.as_slice().len();
        let set = vcpu.set_msrs(&self.msrs).map_err(kvm(id, "KVM_SET_MSRS"))?;
        if set != total {
            return Err(VcpuStateError::MsrsRefused {
                vcpu: id,
                set,
                total,
                index: self.msrs.as_slice()[set].index,
            });
        }
        vcpu.set_vcpu_events(&self.vcpu_events)
            .map_err(kvm(id, "KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    /// A snapshot taken where the TSC ran at another rate needs KVM's TSC scaling.
    fn restore_tsc_rate(&self, vcpu: &VcpuFd) -> Result<(), VcpuStateError> {
        let (Some(saved), Ok(host)) = (self.tsc_khz, vcpu.get_tsc_khz()) else {
            return Ok(());
        };
        // KVM itself tolerates 250 ppm of difference without scaling.
        if u64::from(saved.abs_diff(host)) * 4000 <= u64::from(host) {
            return Ok(());
        }
        vcpu.set_tsc_khz(saved)
            .map_err(|source| VcpuStateError::TscRate {
                vcpu: self.id,
                saved,
                host,
                source,
            })
    }
}

fn save_xsave(id: u8, vcpu: &VcpuFd, xsave2_size: usize) -> Result<XsaveState, VcpuStateError> {
    if xsave2_size == 0 {
        let legacy = vcpu.get_xsave().map_err(kvm(id, "KVM_GET_XSAVE"))?;
        return Ok(XsaveState::Legacy(Box::new(legacy)));
    }
    let entry = std::mem::size_of::<u32>();
    let fam_len = (xsave2_size - std::mem::size_of::<kvm_xsave>()).div_ceil(entry);
    let mut xsave = Xsave::new(fam_len).map_err(|source| VcpuStateError::Fam {
        vcpu: id,
        what: "XSAVE2 buffer",
        source,
    })?;
    // SAFETY: the buffer holds KVM_CAP_XSAVE2's size (header plus `fam_len` u32s,
    // rounded up), which is what KVM writes; no feature is enabled after that size was
    // read, so it cannot grow.
    unsafe { vcpu.get_xsave2(&mut xsave) }.map_err(kvm(id, "KVM_GET_XSAVE2"))?;
    Ok(XsaveState::Extended(xsave))
}

fn restore_xsave(
    id: u8,
    vcpu: &VcpuFd,
    xsave: &XsaveState,
    host_xsave2_size: usize,
) -> Result<(), VcpuStateError> {
    let set = kvm(id, "KVM_SET_XSAVE");
    if host_xsave2_size == 0 {
        let legacy = match xsave {
            XsaveState::Legacy(area) => area.as_ref(),
            XsaveState::Extended(area) => &area.as_fam_struct_ref().xsave,
        };
        // SAFETY: without XSAVE2, KVM_SET_XSAVE reads exactly one `kvm_xsave`.
        return unsafe { vcpu.set_xsave(legacy) }.map_err(set);
    }
    // KVM_SET_XSAVE reads as many bytes as this host's XSAVE2 size, whatever the
    // snapshot's was: copy the saved area into a buffer of at least that size.
    let saved: Vec<u32> = match xsave {
        XsaveState::Legacy(area) => area.region.to_vec(),
        XsaveState::Extended(area) => {
            let mut words = area.as_fam_struct_ref().xsave.region.to_vec();
            words.extend_from_slice(area.as_slice());
            words
        }
    };
    let legacy_words = std::mem::size_of::<kvm_xsave>() / std::mem::size_of::<u32>();
    let host_words = host_xsave2_size.div_ceil(std::mem::size_of::<u32>());
    let fam_len = saved.len().max(host_words) - legacy_words;
    let mut buffer = Xsave::new(fam_len).map_err(|source| VcpuStateError::Fam {
        vcpu: id,
        what: "XSAVE2 buffer",
        source,
    })?;
    // SAFETY: only the plain-integer header region is written through the mutable
    // reference; the FAM length stays as `Xsave::new` set it.
    let header = unsafe { buffer.as_mut_fam_struct() };
    header.xsave.region.copy_from_slice(&saved[..legacy_words]);
    let extended = &saved[legacy_words..];
    buffer.as_mut_slice()[..extended.len()].copy_from_slice(extended);
    // SAFETY: the buffer holds at least this host's XSAVE2 size, which is what
    // KVM_SET_XSAVE reads.
    unsafe { vcpu.set_xsave2(&buffer) }.map_err(set)
}
