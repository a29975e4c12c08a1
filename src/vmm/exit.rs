//! How a VM ended: what a vCPU saw, and how that is told to the user.

use std::fmt;

/// Where the guest's reset request came from, and what the VMM saw around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitCause {
    /// The guest pulsed the reset line through the i8042 (`reboot=k`).
    ResetRequested,
    /// KVM reported a system event (shutdown, reset or crash).
    SystemEvent(u32),
    /// KVM_EXIT_SHUTDOWN: the vCPU triple-faulted.
    TripleFault {
        /// vCPU index.
        vcpu: u8,
        /// Guest RIP when it happened; `None` when unreadable or lost (on AMD, KVM resets
        /// the vCPU before reporting the shutdown).
        rip: Option<u64>,
    },
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError(InternalError),
    /// KVM_EXIT_FAIL_ENTRY: hardware refused to enter the guest.
    FailEntry {
        /// vCPU index.
        vcpu: u8,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// A KVM_RUN call failed.
    RunFailed {
        /// vCPU index.
        vcpu: u8,
        /// errno of the failed ioctl.
        errno: i32,
    },
    /// A vCPU exit husk cannot handle.
    Unhandled {
        /// vCPU index.
        vcpu: u8,
        /// Debug rendering of the exit.
        exit: String,
    },
    /// The host asked the VM to stop.
    Stopped,
}

/// A KVM_EXIT_INTERNAL_ERROR, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalError {
    /// vCPU index.
    pub vcpu: u8,
    /// `suberror` (1 = KVM_INTERNAL_ERROR_EMULATION).
    pub suberror: u32,
    /// Guest RIP, if readable.
    pub rip: Option<u64>,
    /// The instruction bytes KVM failed on, when it reported them.
    pub insn: Vec<u8>,
}

impl InternalError {
    /// Decode from the `internal` member of `kvm_run`. With suberror 1 and flag bit 0 set
    /// in `data[0]`, `data[1..]` carries a length byte and up to 15 instruction bytes.
    pub fn decode(vcpu: u8, suberror: u32, ndata: u32, data: &[u64; 16], rip: Option<u64>) -> Self {
        let mut insn = Vec::new();
        if suberror == 1 && ndata >= 2 && data[0] & 1 == 1 {
            let bytes: Vec<u8> = data[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
            let len = usize::from(bytes[0]).min(15);
            insn = bytes[1..=len].to_vec();
        }
        Self {
            vcpu,
            suberror,
            rip,
            insn,
        }
    }
}

impl fmt::Display for InternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.suberror == 1 {
            " (instruction emulation failed)"
        } else {
            ""
        };
        write!(
            f,
            "KVM internal error on vCPU {}: suberror {}{kind}",
            self.vcpu, self.suberror
        )?;
        if let Some(rip) = self.rip {
            write!(f, ", guest RIP {rip:#x}")?;
        }
        if !self.insn.is_empty() {
            let hex: Vec<String> = self.insn.iter().map(|b| format!("{b:02x}")).collect();
            write!(f, ", instruction bytes {}", hex.join(" "))?;
        }
        Ok(())
    }
}

/// A clean end of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VmExit {
    /// The guest rebooted (for husk, a reboot ends the VM).
    Reset,
    /// The guest powered off.
    PowerOff,
    /// The host stopped the VM.
    Stopped,
}

/// A guest that ended badly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// The guest kernel panicked.
    #[error("guest kernel panic: {0}")]
    Panic(String),
    /// A vCPU triple-faulted.
    #[error("guest triple fault on vCPU {vcpu}{}", rip.map_or_else(|| " (RIP unknown: KVM reset the vCPU)".into(), |r| format!(" at RIP {r:#x}")))]
    TripleFault {
        /// vCPU index.
        vcpu: u8,
        /// Guest RIP; `None` when KVM reset the vCPU before reporting (AMD).
        rip: Option<u64>,
    },
    /// KVM could not run the guest.
    #[error("{0}")]
    Internal(InternalError),
    /// VM entry failed.
    #[error(
        "KVM could not enter the guest on vCPU {vcpu}: hardware entry failure reason {reason:#x}"
    )]
    FailEntry {
        /// vCPU index.
        vcpu: u8,
        /// Hardware reason.
        reason: u64,
    },
    /// KVM_RUN failed.
    #[error("KVM_RUN failed on vCPU {vcpu}: {}", std::io::Error::from_raw_os_error(*errno))]
    RunFailed {
        /// vCPU index.
        vcpu: u8,
        /// errno.
        errno: i32,
    },
    /// An exit husk does not handle.
    #[error("unhandled exit on vCPU {vcpu}: {exit}")]
    Unhandled {
        /// vCPU index.
        vcpu: u8,
        /// The exit.
        exit: String,
    },
}

/// Linux writes this warm-reboot flag to 0x472 before resetting, and husk boots it with
/// `reboot=panic_warm`, so the flag is set only when the reset comes from a panic.
pub const WARM_REBOOT_FLAG: u16 = 0x1234;
/// Guest physical address of the BIOS warm-reboot flag.
pub const WARM_REBOOT_FLAG_ADDR: u64 = 0x472;

/// Decide what a guest's end means. `warm_flag` is the u16 at 0x472, `console_tail` the
/// end of the console output.
///
/// Linux without ACPI cannot power a machine off: `poweroff` prints "reboot: Power down",
/// returns to init, init exits and the kernel panics. That sequence is a clean power-off.
pub fn classify(
    cause: ExitCause,
    warm_flag: u16,
    console_tail: &str,
) -> Result<VmExit, GuestError> {
    match cause {
        ExitCause::ResetRequested if warm_flag != WARM_REBOOT_FLAG => Ok(VmExit::Reset),
        ExitCause::ResetRequested
        | ExitCause::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_CRASH) => {
            if console_tail.contains("reboot: Power down") {
                Ok(VmExit::PowerOff)
            } else {
                Err(GuestError::Panic(panic_message(console_tail)))
            }
        }
        ExitCause::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN) => Ok(VmExit::PowerOff),
        ExitCause::SystemEvent(_) => Ok(VmExit::Reset),
        ExitCause::Stopped => Ok(VmExit::Stopped),
        ExitCause::TripleFault { vcpu, rip } => Err(GuestError::TripleFault { vcpu, rip }),
        ExitCause::InternalError(e) => Err(GuestError::Internal(e)),
        ExitCause::FailEntry { vcpu, reason } => Err(GuestError::FailEntry { vcpu, reason }),
        ExitCause::RunFailed { vcpu, errno } => Err(GuestError::RunFailed { vcpu, errno }),
        ExitCause::Unhandled { vcpu, exit } => Err(GuestError::Unhandled { vcpu, exit }),
    }
}

/// The "Kernel panic - not syncing: ..." line from the console, if it is there.
fn panic_message(console_tail: &str) -> String {
    console_tail
        .lines()
        .rev()
        .find_map(|l| {
            l.split_once("Kernel panic - not syncing: ")
                .map(|(_, m)| m.trim())
        })
        .map_or_else(
            || "no panic message on the console".to_string(),
            str::to_string,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_without_warm_flag_is_a_clean_reset() {
        assert_eq!(
            classify(ExitCause::ResetRequested, 0, ""),
            Ok(VmExit::Reset)
        );
    }

    #[test]
    fn reset_with_warm_flag_is_a_panic_with_its_message() {
        let tail =
            "[ 1.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n";
        assert_eq!(
            classify(ExitCause::ResetRequested, WARM_REBOOT_FLAG, tail),
            Err(GuestError::Panic(
                "Attempted to kill init! exitcode=0x00000100".into()
            ))
        );
    }

    #[test]
    fn panic_after_power_down_is_a_clean_power_off() {
        let tail = "reboot: Power down\nKernel panic - not syncing: Attempted to kill init!\n";
        assert_eq!(
            classify(ExitCause::ResetRequested, WARM_REBOOT_FLAG, tail),
            Ok(VmExit::PowerOff)
        );
    }

    #[test]
    fn panic_without_console_says_so() {
        let err = classify(ExitCause::ResetRequested, WARM_REBOOT_FLAG, "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest kernel panic: no panic message on the console"
        );
    }

    #[test]
    fn triple_fault_is_an_error_naming_the_rip() {
        let err = classify(
            ExitCause::TripleFault {
                vcpu: 1,
                rip: Some(0xffff_ffff_8100_0000),
            },
            0,
            "",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest triple fault on vCPU 1 at RIP 0xffffffff81000000"
        );
    }

    #[test]
    fn triple_fault_with_lost_registers_says_so() {
        let err = classify(ExitCause::TripleFault { vcpu: 0, rip: None }, 0, "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest triple fault on vCPU 0 (RIP unknown: KVM reset the vCPU)"
        );
    }

    #[test]
    fn emulation_failure_decodes_instruction_bytes() {
        let mut data = [0u64; 16];
        data[0] = 1;
        data[1] = u64::from_le_bytes([3, 0xf0, 0x48, 0x0f, 0, 0, 0, 0]);
        let e = InternalError::decode(0, 1, 3, &data, Some(0x1000));
        assert_eq!(e.insn, vec![0xf0, 0x48, 0x0f]);
        assert_eq!(
            e.to_string(),
            "KVM internal error on vCPU 0: suberror 1 (instruction emulation failed), guest RIP 0x1000, instruction bytes f0 48 0f"
        );
    }

    #[test]
    fn internal_error_without_bytes_has_none() {
        let data = [0u64; 16];
        assert!(InternalError::decode(0, 3, 0, &data, None).insn.is_empty());
    }

    #[test]
    fn oversized_instruction_length_is_clamped() {
        let mut data = [u64::MAX; 16];
        data[0] = 1;
        assert_eq!(InternalError::decode(0, 1, 16, &data, None).insn.len(), 15);
    }
}
