//! The model-specific registers set on every vCPU before it first runs.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// IA32_TIME_STAMP_COUNTER.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// STAR: SYSCALL/SYSRET segment selectors.
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR: 64-bit SYSCALL target.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR: compatibility-mode SYSCALL target.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL_MASK (FMASK): RFLAGS bits cleared on SYSCALL.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE: the GS base SWAPGS exchanges.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE bit 0: fast-string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// IA32_MTRR_DEF_TYPE: MTRRs enabled (bit 11), default memory type write-back (6).
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

/// Errors setting the boot MSRs.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// The MSR list could not be built.
    #[error("cannot build the boot MSR list")]
    Build(#[source] vmm_sys_util::fam::Error),
    /// The KVM_SET_MSRS ioctl failed.
    #[error("KVM_SET_MSRS failed")]
    Set(#[source] kvm_ioctls::Error),
    /// KVM accepted only the MSRs before this one.
    #[error("KVM refused MSR {index:#x} (accepted {accepted} of {total})")]
    Refused {
        /// The first MSR KVM did not set.
        index: u32,
        /// How many were set.
        accepted: usize,
        /// How many were given.
        total: usize,
    },
}

/// The boot MSR values: syscall entry points zeroed (the kernel sets them), TSC at 0,
/// fast strings on, MTRRs on with write-back as the default type.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets [`boot_msr_entries`] on `vcpu`; a partial set is an error naming the first
/// refused MSR.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(MsrError::Build)?;
    let accepted = vcpu.set_msrs(&msrs).map_err(MsrError::Set)?;
    check_accepted(&entries, accepted)
}

fn check_accepted(entries: &[kvm_msr_entry], accepted: usize) -> Result<(), MsrError> {
    match entries.get(accepted) {
        Some(refused) => Err(MsrError::Refused {
            index: refused.index,
            accepted,
            total: entries.len(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(index: u32) -> Option<u64> {
        boot_msr_entries()
            .iter()
            .find(|e| e.index == index)
            .map(|e| e.data)
    }

    #[test]
    fn boot_list_has_eleven_msrs() {
        assert_eq!(boot_msr_entries().len(), 11);
    }

    #[test]
    fn tsc_starts_at_zero_and_syscall_msrs_are_present() {
        assert_eq!(value(MSR_IA32_TSC), Some(0));
        assert_eq!(value(MSR_LSTAR), Some(0));
        assert_eq!(value(MSR_KERNEL_GS_BASE), Some(0));
    }

    #[test]
    fn misc_enable_has_fast_strings_and_mtrr_default_is_write_back_enabled() {
        assert_eq!(value(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(value(MSR_MTRR_DEF_TYPE), Some(0x806));
    }

    #[test]
    fn partial_set_names_the_first_refused_msr() {
        let err = check_accepted(&boot_msr_entries(), 3).expect_err("partial");
        assert_eq!(
            err.to_string(),
            "KVM refused MSR 0xc0000081 (accepted 3 of 11)"
        );
    }

    #[test]
    fn full_set_is_accepted() {
        assert!(check_accepted(&boot_msr_entries(), 11).is_ok());
    }
}
