//! Local APIC setup: LINT0 delivers the legacy PIC's ExtINT and LINT1 delivers NMI, the
//! "virtual wire" wiring Linux expects before it programs the IOAPIC.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

/// Offset of the LVT LINT0 register in the APIC page.
const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register.
const APIC_LVT1: usize = 0x360;
/// LVT delivery-mode field, bits 8-10.
const DELIVERY_MODE_MASK: u32 = 0x700;
/// Delivery mode NMI.
const DELIVERY_MODE_NMI: u32 = 0x4;
/// Delivery mode ExtINT.
const DELIVERY_MODE_EXTINT: u32 = 0x7;

/// Errors programming the local APIC.
#[derive(Debug, thiserror::Error)]
pub enum InterruptsError {
    /// Reading or writing the LAPIC state failed.
    #[error("{0} failed")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
}

/// Reads the 32-bit APIC register at `offset`.
pub fn get_apic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

/// Writes the 32-bit APIC register at `offset`.
pub fn set_apic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (slot, byte) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *slot = byte as std::os::raw::c_char;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !DELIVERY_MODE_MASK) | (mode << 8)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in `lapic`, keeping the other LVT bits.
pub fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    let lint0 = get_apic_reg(lapic, APIC_LVT0);
    let lint1 = get_apic_reg(lapic, APIC_LVT1);
    set_apic_reg(
        lapic,
        APIC_LVT0,
        with_delivery_mode(lint0, DELIVERY_MODE_EXTINT),
    );
    set_apic_reg(
        lapic,
        APIC_LVT1,
        with_delivery_mode(lint1, DELIVERY_MODE_NMI),
    );
}

/// Programs LINT0 = ExtINT and LINT1 = NMI on `vcpu`'s in-kernel LAPIC (the VM must have
/// an irqchip).
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), InterruptsError> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| InterruptsError::Ioctl("KVM_GET_LAPIC", e))?;
    set_lint_modes(&mut lapic);
    vcpu.set_lapic(&lapic)
        .map_err(|e| InterruptsError::Ioctl("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_register_round_trips_little_endian() {
        let mut lapic = kvm_lapic_state::default();
        set_apic_reg(&mut lapic, 0x20, 0x8765_4321);
        assert_eq!(lapic.regs[0x20] as u8, 0x21);
        assert_eq!(get_apic_reg(&lapic, 0x20), 0x8765_4321);
    }

    #[test]
    fn lint0_becomes_extint_and_lint1_nmi_keeping_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        set_apic_reg(&mut lapic, APIC_LVT0, 0x0001_0000);
        set_apic_reg(&mut lapic, APIC_LVT1, 0x0001_0700);
        set_lint_modes(&mut lapic);
        assert_eq!(get_apic_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_apic_reg(&lapic, APIC_LVT1), 0x0001_0400);
    }
}
