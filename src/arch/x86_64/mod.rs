//! x86_64 specifics: memory layout, vCPU register/CPUID/MSR setup, MP table.

pub mod cpuid;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

pub use cpuid::{filter_cpuid, filter_cpuid_with, CpuidError, CpuidOptions};
pub use interrupts::InterruptsError;
pub use mptable::{setup_mptable, MptableError};
pub use msr::MsrError;
pub use regs::{EntryMode, RegsError};

use crate::boot::BootEntry;

/// Errors configuring a vCPU for boot.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// CPUID filtering failed.
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    /// KVM_SET_CPUID2 failed.
    #[error("KVM_SET_CPUID2 failed for vCPU {vcpu_id}")]
    SetCpuid {
        /// The vCPU.
        vcpu_id: u8,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Setting the boot MSRs failed.
    #[error(transparent)]
    Msr(#[from] MsrError),
    /// Setting registers, the FPU or the boot tables failed.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// Programming the local APIC failed.
    #[error(transparent)]
    Interrupts(#[from] InterruptsError),
}

/// Configures vCPU `vcpu_id` of `cpu_count`: CPUID (a filtered copy of
/// `supported_cpuid`), the boot MSRs, the FPU and LAPIC LINT0 = ExtINT, LINT1 = NMI.
/// The VM must already have its in-kernel irqchip.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    supported_cpuid: &CpuId,
    vcpu_id: u8,
    cpu_count: u8,
) -> Result<(), ArchError> {
    configure_vcpu_with(
        vcpu,
        supported_cpuid,
        vcpu_id,
        cpu_count,
        CpuidOptions::default(),
    )
}

/// [`configure_vcpu`] with CPUID adjustments (e.g. clearing CX16 on paravirtual hosts).
pub fn configure_vcpu_with(
    vcpu: &VcpuFd,
    supported_cpuid: &CpuId,
    vcpu_id: u8,
    cpu_count: u8,
    options: CpuidOptions,
) -> Result<(), ArchError> {
    let mut cpuid = supported_cpuid.clone();
    filter_cpuid_with(&mut cpuid, vcpu_id, cpu_count, options)?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|source| ArchError::SetCpuid { vcpu_id, source })?;
    msr::setup_msrs(vcpu)?;
    regs::setup_fpu(vcpu)?;
    interrupts::setup_lint(vcpu)?;
    Ok(())
}

/// Boot vCPU only: writes the GDT/IDT (and page tables for 64-bit entry) into `mem`,
/// then sets the special registers for `entry`'s mode and the general registers
/// (RIP, RBX or RSI, RSP, RFLAGS).
pub fn setup_boot_regs(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: &BootEntry,
) -> Result<(), ArchError> {
    let (mode, rip, boot_info) = match *entry {
        BootEntry::Pvh { entry, start_info } => (EntryMode::Protected32, entry, start_info),
        BootEntry::Linux64 { entry, zero_page } => (EntryMode::Long64, entry, zero_page),
    };
    regs::setup_regs(vcpu, mem, mode, rip, boot_info)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
    use kvm_ioctls::Kvm;
    use vm_memory::GuestAddress;

    /// KVM, or `None` when this machine has no /dev/kvm (the test then checks nothing).
    fn kvm_if_present() -> Option<Kvm> {
        std::path::Path::new("/dev/kvm")
            .exists()
            .then(|| Kvm::new().expect("/dev/kvm exists but cannot be opened"))
    }

    /// Skipped (passes without checking) when /dev/kvm is absent.
    #[test]
    fn vcpu_is_configured_and_enters_linux64_when_kvm_is_present() {
        let Some(kvm) = kvm_if_present() else { return };
        let vm = kvm.create_vm().expect("vm");
        vm.create_irq_chip().expect("irqchip");
        let vcpu = vm.create_vcpu(0).expect("vcpu");
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .expect("cpuid");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mmap");
        let entry = BootEntry::Linux64 {
            entry: GuestAddress(0x10_0200),
            zero_page: GuestAddress(layout::ZERO_PAGE_START),
        };
        configure_vcpu(&vcpu, &supported, 0, 1).expect("configure");
        setup_boot_regs(&vcpu, &mem, &entry).expect("regs");
        let regs = vcpu.get_regs().expect("regs");
        let sregs = vcpu.get_sregs().expect("sregs");
        assert_eq!((regs.rip, regs.rsi), (0x10_0200, layout::ZERO_PAGE_START));
        assert_eq!(sregs.cr3, layout::PML4_START);
    }

    /// Skipped (passes without checking) when /dev/kvm is absent.
    #[test]
    fn boot_vcpu_enters_pvh_in_protected_mode_when_kvm_is_present() {
        let Some(kvm) = kvm_if_present() else { return };
        let vm = kvm.create_vm().expect("vm");
        let vcpu = vm.create_vcpu(0).expect("vcpu");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mmap");
        let entry = BootEntry::Pvh {
            entry: GuestAddress(0x100_0000),
            start_info: GuestAddress(layout::PVH_INFO_START),
        };
        setup_boot_regs(&vcpu, &mem, &entry).expect("regs");
        let regs = vcpu.get_regs().expect("regs");
        let sregs = vcpu.get_sregs().expect("sregs");
        assert_eq!((regs.rip, regs.rbx), (0x100_0000, layout::PVH_INFO_START));
        assert_eq!((sregs.cr0 & 0x8000_0001, sregs.efer & 0x400), (1, 0));
    }
}
