//! Boot register state: the GDT and IDT in guest memory, segment and control registers
//! for the 32-bit PVH entry or the 64-bit Linux entry (with identity page tables), the
//! general registers and the FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;
/// Page-table entry bits: present, writable, and (in a PD) a 2 MiB page.
const PTE_PRESENT_WRITABLE: u64 = 0x3;
const PDE_HUGE_PAGE: u64 = 0x80;
/// x87 control word and MXCSR values after FNINIT / reset.
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

/// GDT slots of the boot segments; the selector is the slot times 8. The 64-bit boot
/// protocol (Documentation/arch/x86/boot.rst) wants CS = __BOOT_CS (0x10) and
/// DS = __BOOT_DS (0x18); PVH accepts any selectors, so both modes share the layout.
const TSS_SLOT: u8 = 1;
const CODE_SLOT: u8 = 2;
const DATA_SLOT: u8 = 3;

/// Errors setting up the boot registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing a boot table (GDT, IDT, page tables) failed.
    #[error("cannot write the boot {what} at guest address {addr:#x}")]
    Write {
        /// Which table.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A vCPU register ioctl failed.
    #[error("{ioctl} failed")]
    Ioctl {
        /// The ioctl name.
        ioctl: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The CPU mode the boot vCPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit protected mode, paging off (PVH).
    Protected32,
    /// 64-bit long mode with identity-mapped page tables (Linux 64-bit boot protocol).
    Long64,
}

/// Encodes a GDT descriptor: `flags` holds the access byte in bits 0-7 and the G/DB/L
/// nibble in bits 12-15 (the layout of descriptor bits 40-55 with the limit removed).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT: null, a TSS descriptor, flat code (32-bit or 64-bit), flat data.
pub fn gdt(mode: EntryMode) -> [u64; 4] {
    let code_flags = match mode {
        EntryMode::Protected32 => 0xc09b, // G, D=32-bit, present, code exec/read, accessed
        EntryMode::Long64 => 0xa09b,      // G, L=64-bit, present, code exec/read, accessed
    };
    let mut table = [0u64; 4];
    table[usize::from(TSS_SLOT)] = gdt_entry(0x008b, 0, 0x67); // present, busy 32-bit TSS
    table[usize::from(CODE_SLOT)] = gdt_entry(code_flags, 0, 0xfffff);
    // G, B=32-bit, present, data read/write, accessed.
    table[usize::from(DATA_SLOT)] = gdt_entry(0xc093, 0, 0xfffff);
    table
}

/// Decodes GDT descriptor `slot` of `table` into the segment KVM loads.
pub fn segment_from_gdt(table: &[u64; 4], slot: u8) -> kvm_segment {
    let entry = table[usize::from(slot)];
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        // With 4 KiB granularity the limit counts pages; KVM wants it in bytes.
        limit: if granularity == 1 {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: u16::from(slot) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

/// The identity map for 64-bit entry: one PML4 and one PDPT entry, 512 2 MiB pages
/// covering the first 1 GiB (where the kernel, boot data and initrd-low sit).
pub fn page_tables() -> (u64, u64, [u64; 512]) {
    let pml4 = PDPTE_START | PTE_PRESENT_WRITABLE;
    let pdpt = PDE_START | PTE_PRESENT_WRITABLE;
    let mut pd = [0u64; 512];
    for (i, entry) in (0u64..).zip(pd.iter_mut()) {
        *entry = (i << 21) | PDE_HUGE_PAGE | PTE_PRESENT_WRITABLE;
    }
    (pml4, pdpt, pd)
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    value: T,
) -> Result<(), RegsError> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|source| RegsError::Write { what, addr, source })
}

fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let (pml4, pdpt, pd) = page_tables();
    write(mem, "PML4", PML4_START, pml4)?;
    write(mem, "PDPT", PDPTE_START, pdpt)?;
    let pd_bytes: Vec<u8> = pd.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&pd_bytes, GuestAddress(PDE_START))
        .map_err(|source| RegsError::Write {
            what: "page directory",
            addr: PDE_START,
            source,
        })
}

/// Writes the GDT, an empty IDT and (for long mode) the page tables, then builds the
/// special registers from `sregs` (as read from the vCPU) for `mode`.
pub fn boot_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let table = gdt(mode);
    write(mem, "GDT", BOOT_GDT_START, table)?;
    write(mem, "IDT", BOOT_IDT_START, 0u64)?;
    let code = segment_from_gdt(&table, CODE_SLOT);
    let data = segment_from_gdt(&table, DATA_SLOT);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment_from_gdt(&table, TSS_SLOT);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    if mode == EntryMode::Long64 {
        write_page_tables(mem)?;
        sregs.cr3 = PML4_START;
        sregs.cr4 |= X86_CR4_PAE;
        sregs.cr0 |= X86_CR0_PG;
        sregs.efer |= EFER_LME | EFER_LMA;
    }
    Ok(sregs)
}

/// General registers at entry: RIP, RFLAGS, the stack, and the boot-info pointer in RBX
/// (PVH) or RSI (Linux 64-bit).
pub fn boot_regs(mode: EntryMode, entry: GuestAddress, boot_info: GuestAddress) -> kvm_regs {
    let mut regs = kvm_regs {
        rip: entry.0,
        rflags: RFLAGS_RESERVED,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        ..Default::default()
    };
    match mode {
        EntryMode::Protected32 => regs.rbx = boot_info.0,
        EntryMode::Long64 => regs.rsi = boot_info.0,
    }
    regs
}

/// Sets the x87 control word and MXCSR to their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Ioctl {
        ioctl: "KVM_SET_FPU",
        source,
    })
}

/// Loads the boot special and general registers into `vcpu`.
pub fn setup_regs(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    entry: GuestAddress,
    boot_info: GuestAddress,
) -> Result<(), RegsError> {
    let ioctl = |ioctl| move |source| RegsError::Ioctl { ioctl, source };
    let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    let sregs = boot_sregs(mem, mode, sregs)?;
    vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&boot_regs(mode, entry, boot_info))
        .map_err(ioctl("KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mmap")
    }

    #[test]
    fn gdt_entries_encode_flat_64bit_code_and_data() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn gdt_entry_splits_base_across_its_three_fields() {
        assert_eq!(gdt_entry(0x008b, 0x1234_5678, 0x67), 0x1200_8b34_5678_0067);
    }

    #[test]
    fn long_mode_code_segment_is_64bit_flat_with_boot_cs_selector_0x10() {
        let cs = segment_from_gdt(&gdt(EntryMode::Long64), CODE_SLOT);
        assert_eq!((cs.selector, cs.base, cs.limit), (0x10, 0, 0xffff_ffff));
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.s, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
    }

    #[test]
    fn protected_mode_code_segment_is_32bit() {
        let cs = segment_from_gdt(&gdt(EntryMode::Protected32), CODE_SLOT);
        assert_eq!((cs.l, cs.db), (0, 1));
    }

    #[test]
    fn tss_segment_is_a_present_system_segment() {
        let tr = segment_from_gdt(&gdt(EntryMode::Long64), TSS_SLOT);
        assert_eq!(
            (
                tr.selector,
                tr.s,
                tr.type_,
                tr.present,
                tr.limit,
                tr.unusable
            ),
            (0x08, 0, 0xb, 1, 0x67, 0)
        );
    }

    #[test]
    fn page_tables_identity_map_the_first_gib_with_2mib_pages() {
        let (pml4, pdpt, pd) = page_tables();
        assert_eq!(pml4, PDPTE_START | 3);
        assert_eq!(pdpt, PDE_START | 3);
        assert_eq!(pd[0], 0x83);
        assert_eq!(pd[511], (511 << 21) | 0x83);
    }

    #[test]
    fn long_mode_sregs_enable_paging_pae_and_efer_lma() {
        let mem = mem();
        let sregs = boot_sregs(&mem, EntryMode::Long64, kvm_sregs::default()).expect("sregs");
        let pd1: u64 = mem.read_obj(GuestAddress(PDE_START + 8)).expect("read");
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET | X86_CR0_PG);
        assert_eq!(
            (sregs.cr3, sregs.cr4, sregs.efer),
            (PML4_START, X86_CR4_PAE, EFER_LME | EFER_LMA)
        );
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!(pd1, (1 << 21) | 0x83);
    }

    #[test]
    fn protected_mode_sregs_have_paging_off() {
        let sregs =
            boot_sregs(&mem(), EntryMode::Protected32, kvm_sregs::default()).expect("sregs");
        assert_eq!(
            (sregs.cr0, sregs.cr4, sregs.efer),
            (X86_CR0_PE | X86_CR0_ET, 0, 0)
        );
        assert_eq!(
            (sregs.ds.selector, sregs.ss.selector, sregs.cs.selector),
            (0x18, 0x18, 0x10)
        );
    }

    #[test]
    fn gdt_is_written_at_boot_gdt_start() {
        let mem = mem();
        boot_sregs(&mem, EntryMode::Long64, kvm_sregs::default()).expect("sregs");
        let code: u64 = mem
            .read_obj(GuestAddress(BOOT_GDT_START + 16))
            .expect("read");
        assert_eq!(code, 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn pvh_regs_pass_start_info_in_rbx() {
        let regs = boot_regs(
            EntryMode::Protected32,
            GuestAddress(0x1000000),
            GuestAddress(0x6000),
        );
        assert_eq!(
            (regs.rip, regs.rbx, regs.rsi, regs.rflags),
            (0x1000000, 0x6000, 0, 2)
        );
    }

    #[test]
    fn linux64_regs_pass_zero_page_in_rsi_and_set_the_stack() {
        let regs = boot_regs(
            EntryMode::Long64,
            GuestAddress(0x100200),
            GuestAddress(0x7000),
        );
        assert_eq!(
            (regs.rip, regs.rsi, regs.rbx, regs.rsp),
            (0x100200, 0x7000, 0, BOOT_STACK_POINTER)
        );
    }
}
