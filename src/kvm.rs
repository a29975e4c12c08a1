//! Opening `/dev/kvm`, checking what husk needs from it, and probing what kind of KVM it is.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// Where KVM lives.
pub const KVM_PATH: &str = "/dev/kvm";

/// Errors while opening KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` does not exist.
    #[error("{KVM_PATH} does not exist: load the kvm module (kvm-intel or kvm-amd) or run on a host with hardware virtualization")]
    Missing,
    /// No permission to open `/dev/kvm`.
    #[error(
        "no permission to open {KVM_PATH}: run as root or add this user to the group owning it"
    )]
    Permission,
    /// Opening failed otherwise.
    #[error("cannot open {KVM_PATH}: {0}")]
    Open(#[source] kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("{KVM_PATH} reports API version {0}, husk needs 12")]
    ApiVersion(i32),
    /// A capability husk depends on is missing.
    #[error("{KVM_PATH} lacks the capability {0:?}, which husk needs")]
    MissingCap(Cap),
}

/// What kind of KVM `/dev/kvm` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavor {
    /// Ordinary hardware-assisted KVM (VMX or SVM).
    Hardware,
    /// `kvm_pvm`: paravirtual nested KVM without VMX/SVM; guest kernel code is emulated.
    Paravirtual,
}

impl KvmFlavor {
    /// Probe the running host (the `kvm_pvm` module exposes `/sys/module/kvm_pvm`).
    pub fn probe() -> Self {
        Self::probe_at(Path::new("/sys/module"))
    }

    /// Probe with a different sysfs module root (for tests).
    pub fn probe_at(sys_module: &Path) -> Self {
        if sys_module.join("kvm_pvm").exists() {
            KvmFlavor::Paravirtual
        } else {
            KvmFlavor::Hardware
        }
    }

    /// A plain statement of what to expect on this flavor, if it is unusual.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            KvmFlavor::Hardware => None,
            KvmFlavor::Paravirtual => Some(
                "/dev/kvm is kvm_pvm, a paravirtual nested KVM without VMX/SVM: guest kernel \
                 code runs in KVM's instruction emulator (about 1M instructions/s), so a boot \
                 takes minutes and instructions the emulator lacks stop the guest; for real \
                 work use hardware KVM or the KVM test host (scripts/testhost)",
            ),
        }
    }
}

/// Capabilities the VMM relies on.
const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Pit2,
    Cap::Irqfd,
    Cap::Ioeventfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::ImmediateExit,
    Cap::ExtCpuid,
];

/// Open `/dev/kvm` and check its API version and the capabilities husk needs.
pub fn open() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::Permission,
        _ => KvmError::Open(e),
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(KvmError::ApiVersion(version));
    }
    if let Some(cap) = REQUIRED_CAPS.iter().find(|&&c| !kvm.check_extension(c)) {
        return Err(KvmError::MissingCap(*cap));
    }
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_without_kvm_pvm_is_hardware_flavor() {
        let dir = std::env::temp_dir().join(format!("husk-kvm-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(KvmFlavor::probe_at(&dir), KvmFlavor::Hardware);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_with_kvm_pvm_is_paravirtual_and_warned_about() {
        let dir = std::env::temp_dir().join(format!("husk-kvm-pvm-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
        let flavor = KvmFlavor::probe_at(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(flavor, KvmFlavor::Paravirtual);
        assert!(flavor.warning().unwrap().contains("kvm_pvm"));
    }

    #[test]
    fn missing_kvm_error_says_what_to_do() {
        assert!(KvmError::Missing
            .to_string()
            .contains("load the kvm module"));
    }
}
