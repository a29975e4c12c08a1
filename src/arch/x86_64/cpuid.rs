//! CPUID for a vCPU: KVM's supported leaves with the topology made consistent (APIC id,
//! logical processor counts) and the hypervisor bit set. Nothing else is hidden: feature
//! masking belongs to the host's KVM, and on paravirtual hosts to the guest command line.
//!
//! The topology presented is one package of `cpu_count` cores, one thread each.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Errors filtering CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The vCPU id is outside the vCPU count.
    #[error("vCPU id {vcpu_id} is out of range for {cpu_count} vCPUs")]
    BadVcpuId {
        /// The vCPU id.
        vcpu_id: u8,
        /// The vCPU count.
        cpu_count: u8,
    },
}

/// Adjustments beyond topology, off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidOptions {
    /// Clear CPUID.1:ECX.CX16 (`cmpxchg16b`), which some paravirtual KVM hosts cannot
    /// emulate in guest kernel mode.
    pub clear_cx16: bool,
    /// Set CPUID.1:ECX.TSC_DEADLINE (bit 24). KVM emulates the LAPIC TSC-deadline timer
    /// (KVM_CAP_TSC_DEADLINE_TIMER) but leaves the bit to the VMM; without it Linux
    /// calibrates the LAPIC timer against the PIT at every boot.
    pub tsc_deadline: bool,
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_ADDRESS_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXTENDED_APIC_ID: u32 = 0x8000_001e;

/// First four vendor-string bytes in CPUID.0:EBX: "Auth" (AuthenticAMD), "Hygo".
const VENDOR_AMD_EBX: u32 = 0x6874_7541;
const VENDOR_HYGON_EBX: u32 = 0x6f67_7948;

const ECX_CX16: u32 = 1 << 13;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// Topology level types in CPUID.0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Fixes the topology leaves of `cpuid` for vCPU `vcpu_id` of `cpu_count`.
pub fn filter_cpuid(cpuid: &mut CpuId, vcpu_id: u8, cpu_count: u8) -> Result<(), CpuidError> {
    filter_cpuid_with(cpuid, vcpu_id, cpu_count, CpuidOptions::default())
}

/// [`filter_cpuid`] with the extra adjustments of `options`.
pub fn filter_cpuid_with(
    cpuid: &mut CpuId,
    vcpu_id: u8,
    cpu_count: u8,
    options: CpuidOptions,
) -> Result<(), CpuidError> {
    if vcpu_id >= cpu_count {
        return Err(CpuidError::BadVcpuId { vcpu_id, cpu_count });
    }
    let topo = Topology {
        apic_id: vcpu_id,
        count: cpu_count,
    };
    let amd = is_amd(cpuid);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => topo.features(entry, options),
            LEAF_CACHE_PARAMS => topo.cache_params(entry),
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => topo.extended_topology(entry),
            LEAF_AMD_ADDRESS_SIZES if amd => topo.amd_core_count(entry),
            LEAF_AMD_EXTENDED_APIC_ID if amd => topo.amd_extended_apic_id(entry),
            _ => {}
        }
    }
    Ok(())
}

/// Whether leaf 0 names an AMD (or Hygon) CPU, whose leaf 0x8000_0008 ECX counts cores.
fn is_amd(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == 0 && (e.ebx == VENDOR_AMD_EBX || e.ebx == VENDOR_HYGON_EBX))
}

struct Topology {
    apic_id: u8,
    count: u8,
}

impl Topology {
    /// Bits needed to number the cores of the package (the x2APIC id shift).
    fn core_bits(&self) -> u32 {
        u32::from(self.count).next_power_of_two().trailing_zeros()
    }

    /// Leaf 1: initial APIC id and logical processor count in EBX, HTT, hypervisor bit.
    fn features(&self, entry: &mut kvm_cpuid_entry2, options: CpuidOptions) {
        entry.ebx = (entry.ebx & 0x0000_ffff)
            | (u32::from(self.apic_id) << 24)
            | (u32::from(self.count) << 16);
        if self.count > 1 {
            entry.edx |= EDX_HTT;
        } else {
            entry.edx &= !EDX_HTT;
        }
        entry.ecx |= ECX_HYPERVISOR;
        if options.clear_cx16 {
            entry.ecx &= !ECX_CX16;
        }
        if options.tsc_deadline {
            entry.ecx |= ECX_TSC_DEADLINE;
        }
    }

    /// Leaf 4 (Intel deterministic cache parameters): EAX[31:26] cores per package - 1,
    /// EAX[25:14] logical processors sharing the cache - 1 (L3 is shared, L1/L2 are not).
    fn cache_params(&self, entry: &mut kvm_cpuid_entry2) {
        if entry.eax & 0x1f == 0 {
            return; // cache type "null": no cache at this sub-leaf (and AMD has no leaf 4)
        }
        let cache_level = (entry.eax >> 5) & 0x7;
        let sharing = if cache_level >= 3 {
            u32::from(self.count) - 1
        } else {
            0
        };
        let cores = (u32::from(self.count) - 1) & 0x3f;
        entry.eax = (entry.eax & 0x3fff) | (cores << 26) | ((sharing & 0xfff) << 14);
    }

    /// Leaves 0xB and 0x1F: sub-leaf 0 is the SMT level (one thread per core), sub-leaf 1
    /// the core level (all vCPUs), higher sub-leaves are invalid; EDX is the x2APIC id.
    fn extended_topology(&self, entry: &mut kvm_cpuid_entry2) {
        let (eax, ebx, level_type) = match entry.index {
            0 => (0, 1, LEVEL_SMT),
            1 => (self.core_bits(), u32::from(self.count), LEVEL_CORE),
            _ => (0, 0, 0),
        };
        entry.eax = eax;
        entry.ebx = ebx;
        entry.ecx = (level_type << 8) | (entry.index & 0xff);
        entry.edx = u32::from(self.apic_id);
    }

    /// Leaf 0x8000_001E (AMD topology extensions): EAX extended APIC id, EBX core id with
    /// one thread per core, ECX node 0 of one node per package.
    fn amd_extended_apic_id(&self, entry: &mut kvm_cpuid_entry2) {
        entry.eax = u32::from(self.apic_id);
        entry.ebx = u32::from(self.apic_id);
        entry.ecx = 0;
    }

    /// Leaf 0x8000_0008 (AMD): ECX[7:0] cores per package - 1, ECX[15:12] APIC id bits.
    fn amd_core_count(&self, entry: &mut kvm_cpuid_entry2) {
        entry.ecx = (entry.ecx & !0xf0ff) | (self.core_bits() << 12) | (u32::from(self.count) - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// A hand-built CPUID like a host's: leaf 1 with CX16, an L1 and an L3 cache and the
    /// null cache entry, three 0xB sub-leaves, the KVM signature leaf.
    fn host_cpuid() -> CpuId {
        CpuId::from_entries(&[
            entry(0x1, 0, 0x000a_0f11, 0x0b10_0800, ECX_CX16 | 1, 0x178b_fbff),
            entry(0x4, 0, 0x0000_0121, 0, 0, 0),
            entry(0x4, 3, 0x0000_0163, 0, 0, 0),
            entry(0x4, 4, 0, 0, 0, 0),
            entry(0xb, 0, 1, 2, 0x100, 7),
            entry(0xb, 1, 4, 16, 0x201, 7),
            entry(0xb, 2, 0, 0, 2, 7),
            entry(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
        ])
        .expect("cpuid")
    }

    fn leaf(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    #[test]
    fn leaf_1_has_apic_id_logical_count_htt_and_hypervisor_bit() {
        let mut cpuid = host_cpuid();
        filter_cpuid(&mut cpuid, 2, 3).expect("filter");
        let l1 = leaf(&cpuid, 1, 0);
        assert_eq!(l1.ebx, 0x0203_0800);
        assert_eq!(l1.ecx, ECX_HYPERVISOR | ECX_CX16 | 1);
        assert_eq!(l1.edx & EDX_HTT, EDX_HTT);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut cpuid = host_cpuid();
        filter_cpuid(&mut cpuid, 0, 1).expect("filter");
        assert_eq!(leaf(&cpuid, 1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn clear_cx16_option_clears_only_cx16() {
        let mut cpuid = host_cpuid();
        let options = CpuidOptions {
            clear_cx16: true,
            ..Default::default()
        };
        filter_cpuid_with(&mut cpuid, 0, 1, options).expect("filter");
        assert_eq!(leaf(&cpuid, 1, 0).ecx, ECX_HYPERVISOR | 1);
    }

    #[test]
    fn tsc_deadline_option_sets_only_the_tsc_deadline_bit() {
        let mut cpuid = host_cpuid();
        let options = CpuidOptions {
            tsc_deadline: true,
            ..Default::default()
        };
        filter_cpuid_with(&mut cpuid, 0, 1, options).expect("filter");
        assert_eq!(
            leaf(&cpuid, 1, 0).ecx,
            ECX_HYPERVISOR | ECX_CX16 | ECX_TSC_DEADLINE | 1
        );
    }

    #[test]
    fn leaf_4_reports_cores_per_package_and_shared_l3() {
        let mut cpuid = host_cpuid();
        filter_cpuid(&mut cpuid, 0, 4).expect("filter");
        assert_eq!(leaf(&cpuid, 4, 0).eax, (3 << 26) | 0x121);
        assert_eq!(leaf(&cpuid, 4, 3).eax, (3 << 26) | (3 << 14) | 0x163);
        assert_eq!(leaf(&cpuid, 4, 4).eax, 0);
    }

    #[test]
    fn leaf_0xb_has_x2apic_id_and_smt_then_core_levels() {
        let mut cpuid = host_cpuid();
        filter_cpuid(&mut cpuid, 1, 3).expect("filter");
        let smt = leaf(&cpuid, 0xb, 0);
        let core = leaf(&cpuid, 0xb, 1);
        let invalid = leaf(&cpuid, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 1));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 1));
        assert_eq!(
            (invalid.eax, invalid.ebx, invalid.ecx, invalid.edx),
            (0, 0, 2, 1)
        );
    }

    #[test]
    fn kvm_signature_leaf_is_kept_unchanged() {
        let mut cpuid = host_cpuid();
        filter_cpuid(&mut cpuid, 0, 2).expect("filter");
        assert_eq!(leaf(&cpuid, 0x4000_0000, 0).ebx, 0x4b4d_564b);
        assert_eq!(cpuid.as_slice().len(), 8);
    }

    #[test]
    fn amd_leaves_report_core_count_apic_id_bits_and_extended_apic_id() {
        let mut cpuid = CpuId::from_entries(&[
            entry(0, 0, 0x10, VENDOR_AMD_EBX, 0x444d_4163, 0x6974_6e65),
            entry(0x8000_0008, 0, 0x3030, 0, 0x7000, 0),
            entry(0x8000_001e, 0, 0, 0x100, 0x300, 0),
        ])
        .expect("cpuid");
        filter_cpuid(&mut cpuid, 2, 3).expect("filter");
        let ext = leaf(&cpuid, 0x8000_001e, 0);
        assert_eq!(leaf(&cpuid, 0x8000_0008, 0).ecx, 0x2002);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (2, 2, 0));
    }

    #[test]
    fn vcpu_id_beyond_count_is_rejected() {
        let err = filter_cpuid(&mut host_cpuid(), 2, 2).expect_err("out of range");
        assert_eq!(err.to_string(), "vCPU id 2 is out of range for 2 vCPUs");
    }
}
