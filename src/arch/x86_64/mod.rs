//! x86_64 specifics: memory layout, vCPU register/CPUID/MSR setup, MP table.
pub mod layout;
