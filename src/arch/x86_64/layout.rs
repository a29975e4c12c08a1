//! The guest physical memory map of an x86_64 husk VM.
//!
//! Low memory holds the boot structures, the kernel loads at 1 MiB, and a 1 GiB hole
//! below 4 GiB is kept free of RAM for device MMIO (virtio-mmio slots, IOAPIC, LAPIC).
//! RAM that does not fit below the hole continues at 4 GiB.

/// Boot GDT (protected/long mode segments used at entry).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty; interrupts stay disabled until the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (`hvm_memmap_table_entry` array).
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux zero page (`boot_params`) for the 64-bit boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-map page tables for 64-bit entry: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Linux x86 `COMMAND_LINE_SIZE`, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area; the MP table is written here, where Linux searches first.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of the legacy video/BIOS hole; RAM below 1 MiB ends at [`EBDA_START`].
pub const LOW_RAM_END: u64 = 0xa0000;
/// Where the kernel is loaded (1 MiB), and where "high memory" starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO hole (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window; one [`MMIO_SLOT_SIZE`] window per device.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// IOAPIC base address (in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// First legacy IRQ line handed to virtio-mmio devices (serial uses 4).
pub const IRQ_DEVICES_START: u32 = 5;
/// Last IRQ line routable through the in-kernel IOAPIC.
pub const IRQ_DEVICES_END: u32 = 23;
/// Legacy COM1 port and IRQ.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1 interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 data and command/status ports.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port; writing 0xfe there resets the machine.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The i8042's keyboard interrupt line.
pub const KEYBOARD_IRQ: u32 = 1;
/// Debug port: the guest writes a byte here to mark a boot milestone (see docs/design.md).
pub const DEBUG_PORT: u16 = 0x3f0;
/// The TSS and identity-map pages KVM needs on Intel hosts, inside the MMIO hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
