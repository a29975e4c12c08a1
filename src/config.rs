//! VM configuration: plain data, validated once, kept apart from live objects.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::devices::rate_limiter::RateLimiterConfig;
use crate::devices::virtio::block::BlockConfig;
use crate::devices::virtio::fs::FsConfig;
use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::vsock::VsockConfig;

/// Most vCPUs a husk VM may have (the guest kernel is built with NR_CPUS=32).
pub const MAX_VCPUS: u8 = 32;
/// Default guest RAM in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// The kernel command line husk always passes, before the user's additions.
///
/// `reboot=k` resets through the i8042 so a guest reboot ends the VM; `panic_warm` makes a
/// panic's reset distinguishable from a clean one (see `vmm::exit::classify`).
/// `noreplace-smp` keeps a one-vCPU guest from rewriting every lock prefix of its text at
/// boot (6% of kernel boot samples under the profiler; kernels/README.md). The `i8042.*`
/// options keep the guest's keyboard driver from probing what husk's i8042 does not have
/// (an AUX port, a multiplexer) and from commanding the keyboard (`dumbkbd`): each probe
/// is a port exit.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k,panic_warm panic=-1 8250.nr_uarts=1 \
     noreplace-smp i8042.noaux i8042.nomux i8042.dumbkbd";

/// Where the guest console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleConfig {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Discarded (still kept in memory to explain a panic).
    Off,
}

/// Everything needed to boot one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: ELF `vmlinux` with a PVH note, or a `bzImage`.
    pub kernel: PathBuf,
    /// Initial ramdisk (an uncompressed or compressed cpio archive).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line appended to [`BASE_CMDLINE`].
    #[serde(default)]
    pub cmdline: String,
    /// Number of vCPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u8,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Console destination.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Sample guest RIPs (about 1 kHz per vCPU) for the boot profiler.
    #[serde(default)]
    pub profile: bool,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<BlockConfig>,
    /// virtio-net cards backed by TAP devices.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// The virtio-vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// The virtio-rng entropy device (on by default).
    #[serde(default = "default_true")]
    pub rng: bool,
    /// Bytes and requests the entropy device serves (none: unlimited; Firecracker's
    /// `PUT /entropy` `rate_limiter`).
    #[serde(default)]
    pub rng_rate_limiter: Option<RateLimiterConfig>,
    /// virtio-fs devices, each served by a vhost-user daemon (`virtiofsd`) already
    /// listening on its socket. A VM with one cannot be snapshotted.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
}

fn default_true() -> bool {
    true
}

fn default_cpus() -> u8 {
    1
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY_MIB
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// vCPU count outside 1..=MAX_VCPUS.
    #[error("cpus {0} is out of range: a VM has 1 to {MAX_VCPUS} vCPUs")]
    Cpus(u8),
    /// The kernel path names no file.
    #[error("kernel {0} does not exist")]
    KernelMissing(PathBuf),
    /// The initrd path names no file.
    #[error("initrd {0} does not exist")]
    InitrdMissing(PathBuf),
    /// More than one disk is marked as the root disk.
    #[error("disks {0} and {1} are both marked root=true; only one disk can be the root")]
    TwoRootDisks(PathBuf, PathBuf),
    /// The memory size cannot work on this host.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            cpus: default_cpus(),
            memory_mib: default_memory(),
            console: ConsoleConfig::default(),
            profile: false,
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            rng: true,
            rng_rate_limiter: None,
            fs: Vec::new(),
        }
    }

    /// Check the vCPU count and the memory size (against this host's RAM).
    pub fn validate_resources(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > MAX_VCPUS {
            return Err(ConfigError::Cpus(self.cpus));
        }
        crate::memory::validate_size(self.memory_mib, crate::memory::host_ram_mib())?;
        Ok(())
    }

    /// Check everything that can be checked without opening KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_resources()?;
        if !self.kernel.is_file() {
            return Err(ConfigError::KernelMissing(self.kernel.clone()));
        }
        if let Some(p) = self.initrd.as_ref().filter(|p| !p.is_file()) {
            return Err(ConfigError::InitrdMissing(p.clone()));
        }
        let mut roots = self.disks.iter().filter(|d| d.root);
        if let (Some(a), Some(b)) = (roots.next(), roots.next()) {
            return Err(ConfigError::TwoRootDisks(a.path.clone(), b.path.clone()));
        }
        Ok(())
    }

    /// The full kernel command line.
    /// The full kernel command line: husk's base, the devices' announcements, then the
    /// user's additions (last, so they can override).
    pub fn full_cmdline(&self, devices: &str) -> String {
        [BASE_CMDLINE, devices.trim(), self.cmdline.trim()]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing_kernel() -> VmConfig {
        VmConfig::new("/proc/self/exe")
    }

    #[test]
    fn zero_cpus_is_rejected_with_the_value() {
        let cfg = VmConfig {
            cpus: 0,
            ..existing_kernel()
        };
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "cpus 0 is out of range: a VM has 1 to 32 vCPUs"
        );
    }

    #[test]
    fn too_many_cpus_is_rejected() {
        let cfg = VmConfig {
            cpus: 33,
            ..existing_kernel()
        };
        assert!(matches!(cfg.validate(), Err(ConfigError::Cpus(33))));
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let cfg = VmConfig::new("/nonexistent/vmlinux");
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "kernel /nonexistent/vmlinux does not exist"
        );
    }

    #[test]
    fn missing_initrd_names_the_path() {
        let cfg = VmConfig {
            initrd: Some("/nonexistent/initrd".into()),
            ..existing_kernel()
        };
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "initrd /nonexistent/initrd does not exist"
        );
    }

    #[test]
    fn memory_below_minimum_is_rejected_before_kvm() {
        let cfg = VmConfig {
            memory_mib: 1,
            ..existing_kernel()
        };
        assert!(matches!(cfg.validate(), Err(ConfigError::Memory(_))));
    }

    #[test]
    fn two_root_disks_are_rejected_naming_both() {
        let disk = |p: &str| BlockConfig {
            path: p.into(),
            read_only: false,
            id: None,
            root: true,
            rate_limiter: None,
        };
        let cfg = VmConfig {
            disks: vec![disk("/a"), disk("/b")],
            ..existing_kernel()
        };
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "disks /a and /b are both marked root=true; only one disk can be the root"
        );
    }

    #[test]
    fn user_cmdline_is_appended_to_the_base() {
        let cfg = VmConfig {
            cmdline: " quiet ".into(),
            ..existing_kernel()
        };
        assert_eq!(
            cfg.full_cmdline("virtio_mmio.device=4K@0xd0000000:5"),
            format!("{BASE_CMDLINE} virtio_mmio.device=4K@0xd0000000:5 quiet")
        );
    }

    #[test]
    fn unknown_config_field_is_rejected() {
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","cpu":2}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `cpu`"));
    }
}
