//! The Intel MultiProcessor table (MP spec 1.4) at the start of the EBDA, where Linux
//! looks for it: it tells the guest how many CPUs there are and how ISA IRQs reach the
//! IOAPIC.
//!
//! Written by hand: no maintained crate produces MP tables, and the format is a handful
//! of fixed-size little-endian records, serialised here byte by byte (no `unsafe`).
//!
//! Only kernels built with `CONFIG_X86_MPPARSE=y` read it (husk's own kernel does; the
//! Debian cloud kernel does not, and without ACPI tables boots with one CPU and no
//! IOAPIC). The table must end before 0xa0000, which caps the vCPU count at 37.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, IOAPIC_START, LOW_RAM_END};

/// Number of IOAPIC input lines (and of IO interrupt entries).
pub const IOAPIC_PINS: u8 = 24;
/// The most vCPUs the MP spec allows (APIC ids 0..=254, with one id left for the IOAPIC).
pub const MAX_SPEC_CPUS: u8 = 254;

const SPEC_REV: u8 = 4;
const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
/// Family 6 in the processor signature; Linux only prints it.
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPUID.1:EDX FPU and APIC bits.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
const ALL_LOCAL_APICS: u8 = 0xff;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Zero vCPUs.
    #[error("cannot build an MP table for 0 CPUs")]
    NoCpus,
    /// More vCPUs than the table can describe before 0xa0000 (or than the spec allows).
    #[error("cannot build an MP table for {count} CPUs, the maximum is {max}")]
    TooManyCpus {
        /// Requested vCPU count.
        count: u8,
        /// Largest supported count.
        max: u8,
    },
    /// Writing the table into guest memory failed.
    #[error("cannot write the MP table at guest address {:#x}", EBDA_START)]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Size of the whole MP structure (floating pointer + configuration table).
pub fn mptable_size(cpu_count: u8) -> usize {
    FLOATING_LEN + config_table_len(cpu_count)
}

fn config_table_len(cpu_count: u8) -> usize {
    HEADER_LEN
        + PROCESSOR_LEN * usize::from(cpu_count)
        + SMALL_ENTRY_LEN * (2 + usize::from(IOAPIC_PINS) + 2)
}

/// The largest vCPU count whose table fits between the EBDA start and 0xa0000.
pub fn max_cpus() -> u8 {
    let room = (LOW_RAM_END - EBDA_START) as usize - mptable_size(0);
    let fitting = u8::try_from(room / PROCESSOR_LEN).unwrap_or(u8::MAX);
    fitting.min(MAX_SPEC_CPUS)
}

/// Writes the MP floating pointer and configuration table at [`EBDA_START`]: one enabled
/// processor per vCPU (APIC id = index, BSP = 0), an ISA bus, the IOAPIC (id =
/// `cpu_count`, at [`IOAPIC_START`]) with IRQ n on pin n for the 24 pins, ExtINT on
/// LINT0 and NMI on LINT1.
pub fn setup_mptable(mem: &GuestMemoryMmap, cpu_count: u8) -> Result<(), MptableError> {
    let bytes = build(cpu_count)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

/// Serialises the MP structures for `cpu_count` vCPUs, as placed at [`EBDA_START`].
pub fn build(cpu_count: u8) -> Result<Vec<u8>, MptableError> {
    if cpu_count == 0 {
        return Err(MptableError::NoCpus);
    }
    if cpu_count > max_cpus() {
        return Err(MptableError::TooManyCpus {
            count: cpu_count,
            max: max_cpus(),
        });
    }
    let mut table = floating_pointer();
    table.extend(config_table(cpu_count));
    Ok(table)
}

fn floating_pointer() -> Vec<u8> {
    let config_addr = (EBDA_START + FLOATING_LEN as u64) as u32;
    let mut fp = Vec::with_capacity(FLOATING_LEN);
    fp.extend(b"_MP_");
    fp.extend(config_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(SPEC_REV);
    fp.push(0); // checksum
    fp.extend([0u8; 5]); // feature bytes: 0 = a configuration table is present
    fp[10] = checksum(&fp);
    fp
}

fn config_table(cpu_count: u8) -> Vec<u8> {
    let ioapic_id = cpu_count;
    let mut entries = Vec::new();
    for cpu in 0..cpu_count {
        entries.extend(processor_entry(cpu));
    }
    entries.extend([ENTRY_BUS, ISA_BUS_ID]);
    entries.extend(b"ISA   ");
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_START as u32).to_le_bytes());
    for irq in 0..IOAPIC_PINS {
        entries.extend(interrupt_entry(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            irq,
            ioapic_id,
            irq,
        ));
    }
    let (lint0, lint1) = (0, 1);
    entries.extend(interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        ALL_LOCAL_APICS,
        lint0,
    ));
    entries.extend(interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        ALL_LOCAL_APICS,
        lint1,
    ));
    let entry_count = u16::from(cpu_count) + 2 + u16::from(IOAPIC_PINS) + 2;

    let mut table = Vec::with_capacity(config_table_len(cpu_count));
    table.extend(b"PCMP");
    table.extend((config_table_len(cpu_count) as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum
    table.extend(b"HUSK    "); // OEM id
    table.extend(b"MICROVM     "); // product id
    table.extend(0u32.to_le_bytes()); // OEM table pointer
    table.extend(0u16.to_le_bytes()); // OEM table size
    table.extend(entry_count.to_le_bytes());
    table.extend((APIC_START as u32).to_le_bytes());
    table.extend([0u8; 4]); // extended table length, checksum, reserved
    table.extend(entries);
    table[7] = checksum(&table);
    table
}

fn processor_entry(cpu: u8) -> Vec<u8> {
    let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
    let mut entry = vec![ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags];
    entry.extend(CPU_SIGNATURE.to_le_bytes());
    entry.extend(CPU_FEATURES.to_le_bytes());
    entry.extend([0u8; 8]);
    entry
}

/// An IO (type 3) or local (type 4) interrupt assignment entry, polarity and trigger
/// "conforming to the bus" (flags 0), sourced from the ISA bus.
fn interrupt_entry(kind: u8, int_type: u8, src_irq: u8, dst_apic: u8, dst_pin: u8) -> [u8; 8] {
    [kind, int_type, 0, 0, ISA_BUS_ID, src_irq, dst_apic, dst_pin]
}

/// The byte that makes the sum of all bytes of `bytes` zero (its own slot holding 0).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn one_cpu_table_has_valid_checksums_and_30_entries() {
        let table = build(1).expect("build");
        assert_eq!(&table[0..4], b"_MP_");
        assert_eq!(sum(&table[..16]), 0);
        assert_eq!(&table[16..20], b"PCMP");
        assert_eq!(sum(&table[16..]), 0);
        assert_eq!(
            u16::from_le_bytes([table[16 + 34], table[16 + 35]]),
            1 + 2 + 24 + 2
        );
        assert_eq!(table.len(), mptable_size(1));
    }

    #[test]
    fn two_cpu_table_marks_only_cpu_0_as_bootstrap_and_ioapic_id_is_2() {
        let table = build(2).expect("build");
        let first = 16 + HEADER_LEN;
        let second = first + PROCESSOR_LEN;
        let ioapic = second + PROCESSOR_LEN + SMALL_ENTRY_LEN;
        assert_eq!(sum(&table[16..]), 0);
        assert_eq!(
            u16::from_le_bytes([table[16 + 34], table[16 + 35]]),
            2 + 2 + 24 + 2
        );
        assert_eq!(&table[first..first + 4], &[0, 0, 0x14, 3]);
        assert_eq!(&table[second..second + 4], &[0, 1, 0x14, 1]);
        assert_eq!(
            &table[ioapic..ioapic + 8],
            &[2, 2, 0x11, 1, 0, 0, 0xc0, 0xfe]
        );
    }

    #[test]
    fn local_interrupts_are_extint_on_lint0_and_nmi_on_lint1() {
        let table = build(1).expect("build");
        let end = table.len();
        assert_eq!(&table[end - 16..end - 8], &[4, 3, 0, 0, 0, 0, 0xff, 0]);
        assert_eq!(&table[end - 8..], &[4, 1, 0, 0, 0, 0, 0xff, 1]);
    }

    #[test]
    fn zero_cpus_is_rejected() {
        assert_eq!(
            build(0).expect_err("0").to_string(),
            "cannot build an MP table for 0 CPUs"
        );
    }

    #[test]
    fn cpu_count_that_does_not_fit_below_0xa0000_is_rejected_naming_it() {
        let err = build(255).expect_err("too many");
        assert_eq!(
            err.to_string(),
            "cannot build an MP table for 255 CPUs, the maximum is 37"
        );
    }

    #[test]
    fn largest_table_ends_before_0xa0000() {
        assert!(EBDA_START + mptable_size(max_cpus()) as u64 <= LOW_RAM_END);
    }

    #[test]
    fn table_is_written_at_the_ebda() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mmap");
        setup_mptable(&mem, 1).expect("write");
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START))
            .expect("read");
        assert_eq!(&sig, b"_MP_");
    }
}
