//! Where a snapshot may be restored: the host CPU, the CPUID KVM offers there, KVM's
//! XSAVE size, and what the VM is (memory, vCPUs, devices, kernel and agent digests).
//! A restore compares each field and refuses on the first difference, naming the
//! field and both values.

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;

/// One CPUID entry: function, index, eax, ebx, ecx, edx.
pub type CpuidEntry = [u32; 6];

/// What a snapshot was taken on, and of what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The host: CPU and KVM.
    pub host: HostFingerprint,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The virtio devices, in slot order (`blk,blk,net,vsock,rng`).
    pub devices: String,
    /// sha256 of the kernel the VM booted.
    pub kernel_sha256: String,
    /// Digest of the guest agent, for sandbox snapshots.
    pub agent_digest: Option<String>,
}

/// The host side of a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFingerprint {
    /// `vendor_id` of /proc/cpuinfo.
    pub cpu_vendor: String,
    /// `cpu family`.
    pub cpu_family: u32,
    /// `model`.
    pub cpu_model: u32,
    /// KVM_GET_SUPPORTED_CPUID: what the guest's CPUID is made from.
    pub supported_cpuid: Vec<CpuidEntry>,
    /// KVM_CAP_XSAVE2's size (0: the legacy 4 KiB area).
    pub xsave2_size: usize,
}

/// A field that differs between a snapshot and where it is restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot {field} {snapshot} ≠ this {here_name} {here}")]
pub struct Mismatch {
    /// The field, as a user reads it (`kernel sha256`, `CPU model`).
    pub field: String,
    /// What the snapshot has.
    pub snapshot: String,
    /// How "this" side is called (`host's`, `kernel`...).
    pub here_name: String,
    /// What this side has.
    pub here: String,
}

fn mismatch(
    field: &str,
    snapshot: impl ToString,
    here_name: &str,
    here: impl ToString,
) -> Mismatch {
    Mismatch {
        field: field.into(),
        snapshot: snapshot.to_string(),
        here_name: here_name.into(),
        here: here.to_string(),
    }
}

/// A digest shortened for a message.
fn short(digest: &str) -> String {
    match digest.get(..12) {
        Some(head) if digest.len() > 12 => format!("{head}…"),
        _ => digest.to_string(),
    }
}

/// What a caller expects of the VM in a snapshot (fields left `None` are not checked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The kernel's sha256.
    pub kernel_sha256: Option<String>,
    /// The agent's digest.
    pub agent_digest: Option<String>,
    /// Guest RAM in MiB.
    pub memory_mib: Option<u64>,
    /// vCPUs.
    pub vcpus: Option<u8>,
    /// The device list.
    pub devices: Option<String>,
}

/// The device list of `config` as a fingerprint names it.
pub fn device_list(config: &VmConfig) -> String {
    let mut kinds: Vec<&str> = Vec::new();
    kinds.extend(config.disks.iter().map(|_| "blk"));
    kinds.extend(config.nets.iter().map(|_| "net"));
    kinds.extend(config.vsock.iter().map(|_| "vsock"));
    kinds.extend(config.rng.then_some("rng"));
    kinds.join(",")
}

impl HostFingerprint {
    /// Compare with `here`, the host a restore runs on.
    pub fn check(&self, here: &HostFingerprint) -> Result<(), Mismatch> {
        if self.cpu_vendor != here.cpu_vendor {
            return Err(mismatch(
                "CPU vendor",
                &self.cpu_vendor,
                "host's",
                &here.cpu_vendor,
            ));
        }
        if self.cpu_family != here.cpu_family {
            return Err(mismatch(
                "CPU family",
                self.cpu_family,
                "host's",
                here.cpu_family,
            ));
        }
        if self.cpu_model != here.cpu_model {
            return Err(mismatch(
                "CPU model",
                self.cpu_model,
                "host's",
                here.cpu_model,
            ));
        }
        if here.xsave2_size != 0 && self.xsave2_size > here.xsave2_size {
            return Err(mismatch(
                "XSAVE size",
                self.xsave2_size,
                "host's",
                here.xsave2_size,
            ));
        }
        check_cpuid(&self.supported_cpuid, &here.supported_cpuid)
    }
}

/// The first CPUID leaf that differs, named with both values.
fn check_cpuid(snapshot: &[CpuidEntry], here: &[CpuidEntry]) -> Result<(), Mismatch> {
    let show = |e: &CpuidEntry| {
        format!(
            "eax={:#x} ebx={:#x} ecx={:#x} edx={:#x}",
            e[2], e[3], e[4], e[5]
        )
    };
    for entry in snapshot {
        let leaf = format!("CPUID leaf {:#x}.{}", entry[0], entry[1]);
        match here.iter().find(|h| h[0] == entry[0] && h[1] == entry[1]) {
            Some(h) if h == entry => {}
            Some(h) => return Err(mismatch(&leaf, show(entry), "host's", show(h))),
            None => return Err(mismatch(&leaf, show(entry), "host's", "absent")),
        }
    }
    if let Some(extra) = here
        .iter()
        .find(|h| !snapshot.iter().any(|e| e[..2] == h[..2]))
    {
        let leaf = format!("CPUID leaf {:#x}.{}", extra[0], extra[1]);
        return Err(mismatch(&leaf, "absent", "host's", show(extra)));
    }
    Ok(())
}

impl Fingerprint {
    /// Compare the VM's side with what the caller expects.
    pub fn check_expected(&self, expect: &Expect) -> Result<(), Mismatch> {
        if let Some(k) = expect
            .kernel_sha256
            .as_deref()
            .filter(|k| *k != self.kernel_sha256)
        {
            return Err(mismatch(
                "kernel sha256",
                short(&self.kernel_sha256),
                "kernel",
                short(k),
            ));
        }
        if let Some(a) = &expect.agent_digest {
            let saved = self.agent_digest.as_deref().unwrap_or("(none)");
            if saved != a {
                return Err(mismatch("agent digest", short(saved), "agent", short(a)));
            }
        }
        if let Some(m) = expect.memory_mib.filter(|m| *m != self.memory_mib) {
            return Err(mismatch("memory (MiB)", self.memory_mib, "request's", m));
        }
        if let Some(c) = expect.vcpus.filter(|c| *c != self.vcpus) {
            return Err(mismatch("vCPU count", self.vcpus, "request's", c));
        }
        if let Some(d) = expect.devices.as_deref().filter(|d| *d != self.devices) {
            return Err(mismatch("devices", &self.devices, "request's", d));
        }
        Ok(())
    }
}

/// This host's CPU from /proc/cpuinfo (the first processor's lines).
pub fn host_cpu() -> (String, u32, u32) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let number = |name: &str| field(name).parse().unwrap_or(0);
    (field("vendor_id"), number("cpu family"), number("model"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostFingerprint {
        HostFingerprint {
            cpu_vendor: "AuthenticAMD".into(),
            cpu_family: 25,
            cpu_model: 1,
            supported_cpuid: vec![[0, 0, 0x10, 1, 2, 3], [7, 0, 0, 0x1000, 0, 0]],
            xsave2_size: 0,
        }
    }

    fn vm() -> Fingerprint {
        Fingerprint {
            host: host(),
            memory_mib: 320,
            vcpus: 1,
            devices: "blk,blk,net,vsock,rng".into(),
            kernel_sha256: "ab12".repeat(16),
            agent_digest: Some("ee".repeat(8)),
        }
    }

    #[test]
    fn the_same_host_passes() {
        assert_eq!(host().check(&host()), Ok(()));
    }

    #[test]
    fn another_cpu_model_is_named_with_both_values() {
        let mut here = host();
        here.cpu_model = 17;
        assert_eq!(
            host().check(&here).unwrap_err().to_string(),
            "snapshot CPU model 1 ≠ this host's 17"
        );
    }

    #[test]
    fn a_changed_cpuid_leaf_is_named() {
        let mut here = host();
        here.supported_cpuid[1][3] = 0;
        assert_eq!(
            host().check(&here).unwrap_err().to_string(),
            "snapshot CPUID leaf 0x7.0 eax=0x0 ebx=0x1000 ecx=0x0 edx=0x0 ≠ this host's \
             eax=0x0 ebx=0x0 ecx=0x0 edx=0x0"
        );
    }

    #[test]
    fn another_kernel_is_named_by_shortened_digests() {
        let expect = Expect {
            kernel_sha256: Some("cd34".repeat(16)),
            ..Expect::default()
        };
        assert_eq!(
            vm().check_expected(&expect).unwrap_err().to_string(),
            "snapshot kernel sha256 ab12ab12ab12… ≠ this kernel cd34cd34cd34…"
        );
    }

    #[test]
    fn another_memory_size_is_named() {
        let expect = Expect {
            memory_mib: Some(512),
            ..Expect::default()
        };
        assert_eq!(
            vm().check_expected(&expect).unwrap_err().to_string(),
            "snapshot memory (MiB) 320 ≠ this request's 512"
        );
    }

    #[test]
    fn nothing_expected_passes() {
        assert_eq!(vm().check_expected(&Expect::default()), Ok(()));
    }
}
