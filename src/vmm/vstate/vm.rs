//! The VM-wide KVM state as plain data: both 8259 PICs, the IOAPIC, the PIT and the
//! kvmclock. Read while every vCPU is parked; written after the irqchip and the PIT
//! are created and before any vCPU runs.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Errors saving or restoring the VM's state.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct VmStateError {
    what: &'static str,
    source: kvm_ioctls::Error,
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { what, source }
}

/// The in-kernel devices and the clock of one VM.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock: the guest's clock in ns when it was saved.
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock_ns", &self.clock.clock)
            .finish_non_exhaustive()
    }
}

fn irqchip(vm: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(kvm(what))?;
    Ok(chip)
}

impl VmState {
    /// Read the VM's state (every vCPU parked).
    pub fn save(vm: &VmFd) -> Result<Self, VmStateError> {
        let mut clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
        // Only the clock value goes back in: KVM_SET_CLOCK refuses flags it does not
        // take, and the stability flag describes this host's TSCs at this moment.
        clock.flags = 0;
        Ok(Self {
            pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (master PIC)")?,
            pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (slave PIC)")?,
            ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
            pit: vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
            clock,
        })
    }

    /// Write the state into a VM whose irqchip and PIT exist, before its vCPUs run.
    /// The guest's clock continues from where it was saved: its monotonic time does
    /// not jump (its wall clock is stepped by the agent, which the host tells the time).
    pub fn restore(&self, vm: &VmFd) -> Result<(), VmStateError> {
        vm.set_pit2(&self.pit).map_err(kvm("KVM_SET_PIT2"))?;
        vm.set_clock(&self.clock).map_err(kvm("KVM_SET_CLOCK"))?;
        vm.set_irqchip(&self.pic_master)
            .map_err(kvm("KVM_SET_IRQCHIP (master PIC)"))?;
        vm.set_irqchip(&self.pic_slave)
            .map_err(kvm("KVM_SET_IRQCHIP (slave PIC)"))?;
        vm.set_irqchip(&self.ioapic)
            .map_err(kvm("KVM_SET_IRQCHIP (IOAPIC)"))
    }
}
