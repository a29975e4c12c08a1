//! The configuration an API client builds before `InstanceStart`: machine, boot source,
//! drives and interfaces in the order they were put, vsock, entropy. Each request is
//! checked when it arrives (a bad value is refused naming it), and the whole becomes a
//! [`VmConfig`] at start.

use std::path::PathBuf;

use super::limits::optional_limiter;
use super::model::{
    BootSource, Drive, EntropyDevice, FullVmConfiguration, MachineConfig, MachineConfigUpdate,
    NetworkInterface, Vsock,
};
use super::ApiError;
use crate::config::{ConsoleConfig, VmConfig, BASE_CMDLINE};
use crate::devices::virtio::block::BlockConfig;
use crate::devices::virtio::net::{validate_ifname, MacAddr, NetConfig};
use crate::devices::virtio::vsock::VsockConfig;

/// The serial a drive shows its guest: the drive's id, cut to virtio-blk's 20 bytes.
pub fn drive_serial(drive_id: &str) -> String {
    drive_id.chars().take(20).collect()
}

/// What a client has configured so far.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Machine.
    pub machine: MachineConfig,
    /// Kernel and initrd.
    pub boot: Option<BootSource>,
    /// Drives, in the order first put.
    pub drives: Vec<Drive>,
    /// Interfaces, in the order first put.
    pub nets: Vec<NetworkInterface>,
    /// vsock.
    pub vsock: Option<Vsock>,
    /// Entropy device (husk always has one; this records a client's `PUT /entropy`).
    pub entropy: Option<EntropyDevice>,
    /// Where the console goes.
    pub console: ConsoleConfig,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            machine: MachineConfig {
                vcpu_count: 1,
                mem_size_mib: 128,
                smt: false,
                track_dirty_pages: false,
                cpu_template: None,
                huge_pages: None,
            },
            boot: None,
            drives: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            entropy: None,
            console: ConsoleConfig::Stdout,
        }
    }
}

fn bad(field: &str, value: impl std::fmt::Display, why: &str) -> ApiError {
    ApiError::BadRequest(format!("{field} {value}: {why}"))
}

/// Refuse what husk does not do, naming the field and value.
fn check_machine(m: &MachineConfig) -> Result<(), ApiError> {
    if !(1..=crate::config::MAX_VCPUS).contains(&m.vcpu_count) {
        return Err(bad("vcpu_count", m.vcpu_count, "must be 1 to 32"));
    }
    crate::memory::validate_size(m.mem_size_mib, crate::memory::host_ram_mib())
        .map_err(|e| ApiError::BadRequest(format!("mem_size_mib: {e}")))?;
    if m.smt {
        return Err(bad(
            "smt",
            true,
            "is not supported: every vCPU is a core of its own",
        ));
    }
    for (field, value) in [
        ("cpu_template", &m.cpu_template),
        ("huge_pages", &m.huge_pages),
    ] {
        if let Some(v) = value.as_deref().filter(|v| *v != "None") {
            return Err(bad(field, v, "is not supported (only \"None\")"));
        }
    }
    Ok(())
}

impl Resources {
    /// `PUT /machine-config`.
    pub fn set_machine(&mut self, m: MachineConfig) -> Result<(), ApiError> {
        check_machine(&m)?;
        self.machine = m;
        Ok(())
    }

    /// `PATCH /machine-config`.
    pub fn update_machine(&mut self, u: MachineConfigUpdate) -> Result<(), ApiError> {
        let m = MachineConfig {
            vcpu_count: u.vcpu_count.unwrap_or(self.machine.vcpu_count),
            mem_size_mib: u.mem_size_mib.unwrap_or(self.machine.mem_size_mib),
            smt: u.smt.unwrap_or(self.machine.smt),
            track_dirty_pages: u
                .track_dirty_pages
                .unwrap_or(self.machine.track_dirty_pages),
            cpu_template: u.cpu_template.or_else(|| self.machine.cpu_template.clone()),
            huge_pages: u.huge_pages.or_else(|| self.machine.huge_pages.clone()),
        };
        self.set_machine(m)
    }

    /// `PUT /boot-source`.
    pub fn set_boot(&mut self, b: BootSource) -> Result<(), ApiError> {
        if !std::path::Path::new(&b.kernel_image_path).is_file() {
            return Err(bad(
                "kernel_image_path",
                &b.kernel_image_path,
                "no such file",
            ));
        }
        if let Some(initrd) = b
            .initrd_path
            .as_deref()
            .filter(|p| !std::path::Path::new(p).is_file())
        {
            return Err(bad("initrd_path", initrd, "no such file"));
        }
        self.boot = Some(b);
        Ok(())
    }

    /// `PUT /drives/{id}`: a new drive, or a changed one.
    pub fn put_drive(&mut self, path_id: &str, d: Drive) -> Result<(), ApiError> {
        if d.drive_id != path_id {
            return Err(bad(
                "drive_id",
                &d.drive_id,
                &format!("does not match the path's {path_id}"),
            ));
        }
        if d.partuuid.is_some() {
            return Err(bad(
                "partuuid",
                d.partuuid.as_deref().unwrap_or(""),
                "is not supported: roots are whole disks",
            ));
        }
        if let Some(c) = d
            .cache_type
            .as_deref()
            .filter(|c| !matches!(*c, "Unsafe" | "Writeback"))
        {
            return Err(bad("cache_type", c, "must be Unsafe or Writeback"));
        }
        if let Some(e) = d
            .io_engine
            .as_deref()
            .filter(|e| !matches!(*e, "Sync" | "Async"))
        {
            return Err(bad("io_engine", e, "must be Sync or Async"));
        }
        optional_limiter("rate_limiter", d.rate_limiter.as_ref())?;
        if !std::path::Path::new(&d.path_on_host).exists() {
            return Err(bad("path_on_host", &d.path_on_host, "no such file"));
        }
        let other_root = self
            .drives
            .iter()
            .find(|o| o.is_root_device && o.drive_id != d.drive_id);
        if let (true, Some(root)) = (d.is_root_device, other_root) {
            return Err(bad(
                "is_root_device",
                true,
                &format!("drive {} is the root already", root.drive_id),
            ));
        }
        match self.drives.iter_mut().find(|o| o.drive_id == d.drive_id) {
            Some(old) => *old = d,
            None => self.drives.push(d),
        }
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`.
    pub fn put_net(&mut self, path_id: &str, n: NetworkInterface) -> Result<(), ApiError> {
        if n.iface_id != path_id {
            return Err(bad(
                "iface_id",
                &n.iface_id,
                &format!("does not match the path's {path_id}"),
            ));
        }
        validate_ifname(&n.host_dev_name)
            .map_err(|e| ApiError::BadRequest(format!("host_dev_name: {e}")))?;
        if let Some(mac) = &n.guest_mac {
            mac.parse::<MacAddr>()
                .map_err(|e| ApiError::BadRequest(format!("guest_mac: {e}")))?;
        }
        optional_limiter("rx_rate_limiter", n.rx_rate_limiter.as_ref())?;
        optional_limiter("tx_rate_limiter", n.tx_rate_limiter.as_ref())?;
        if n.vhost && !crate::vmm::seccomp::allows_vhost_net() {
            return Err(ApiError::BadRequest(
                "vhost: this husk vmm was started without --vhost-net".into(),
            ));
        }
        if n.vhost && (n.rx_rate_limiter.is_some() || n.tx_rate_limiter.is_some()) {
            return Err(ApiError::BadRequest(
                "vhost: a card on vhost-net takes no rate limiter (husk never sees its frames)"
                    .into(),
            ));
        }
        match self.nets.iter_mut().find(|o| o.iface_id == n.iface_id) {
            Some(old) => *old = n,
            None => self.nets.push(n),
        }
        Ok(())
    }

    /// `PUT /vsock`.
    pub fn set_vsock(&mut self, v: Vsock) -> Result<(), ApiError> {
        VsockConfig::new(v.guest_cid, PathBuf::from(&v.uds_path))
            .validate()
            .map_err(|e| ApiError::BadRequest(format!("guest_cid/uds_path: {e}")))?;
        self.vsock = Some(v);
        Ok(())
    }

    /// `PUT /entropy`: the entropy device's limits (husk always has the device).
    pub fn set_entropy(&mut self, e: EntropyDevice) -> Result<(), ApiError> {
        optional_limiter("rate_limiter", e.rate_limiter.as_ref())?;
        self.entropy = Some(e);
        Ok(())
    }

    /// The VM configuration to boot.
    pub fn vm_config(&self) -> Result<VmConfig, ApiError> {
        let boot = self
            .boot
            .as_ref()
            .ok_or_else(|| ApiError::BadRequest("no boot source: PUT /boot-source first".into()))?;
        let disks = self
            .drives
            .iter()
            .map(|d| {
                Ok(BlockConfig {
                    path: PathBuf::from(&d.path_on_host),
                    read_only: d.is_read_only,
                    id: Some(drive_serial(&d.drive_id)),
                    root: d.is_root_device,
                    rate_limiter: optional_limiter("rate_limiter", d.rate_limiter.as_ref())?,
                })
            })
            .collect::<Result<_, ApiError>>()?;
        let nets = self
            .nets
            .iter()
            .map(|n| {
                Ok(NetConfig {
                    tap: Some(n.host_dev_name.clone()),
                    mac: n.guest_mac.as_deref().and_then(|m| m.parse().ok()),
                    unplugged: false,
                    id: Some(n.iface_id.clone()),
                    claim: false,
                    rx_rate_limiter: optional_limiter(
                        "rx_rate_limiter",
                        n.rx_rate_limiter.as_ref(),
                    )?,
                    tx_rate_limiter: optional_limiter(
                        "tx_rate_limiter",
                        n.tx_rate_limiter.as_ref(),
                    )?,
                    vhost: n.vhost,
                })
            })
            .collect::<Result<_, ApiError>>()?;
        // Firecracker's boot_args replace its whole line; husk always keeps its base
        // line (the console, how a reset ends the VM) and appends the client's.
        let cmdline = boot.boot_args.clone().unwrap_or_default();
        let cmdline = cmdline.replace(BASE_CMDLINE, "");
        let entropy = self.entropy.as_ref().and_then(|e| e.rate_limiter.as_ref());
        Ok(VmConfig {
            initrd: boot.initrd_path.as_ref().map(PathBuf::from),
            cmdline,
            cpus: self.machine.vcpu_count,
            memory_mib: self.machine.mem_size_mib,
            console: self.console.clone(),
            disks,
            nets,
            vsock: self
                .vsock
                .as_ref()
                .map(|v| VsockConfig::new(v.guest_cid, PathBuf::from(&v.uds_path))),
            rng_rate_limiter: optional_limiter("rate_limiter", entropy)?,
            ..VmConfig::new(&boot.kernel_image_path)
        })
    }

    /// `GET /vm/config`.
    pub fn full(&self) -> FullVmConfiguration {
        FullVmConfiguration {
            machine_config: Some(self.machine.clone()),
            boot_source: self.boot.clone(),
            drives: self.drives.clone(),
            network_interfaces: self.nets.clone(),
            vsock: self.vsock.clone(),
            entropy: self.entropy.clone(),
            logger: None,
            metrics: None,
        }
    }

    /// Resources from a `--config-file` (Firecracker's config JSON shape).
    pub fn from_file(full: FullVmConfiguration) -> Result<Self, ApiError> {
        let mut r = Self::default();
        if let Some(m) = full.machine_config {
            r.set_machine(m)?;
        }
        if let Some(b) = full.boot_source {
            r.set_boot(b)?;
        }
        for d in full.drives {
            let id = d.drive_id.clone();
            r.put_drive(&id, d)?;
        }
        for n in full.network_interfaces {
            let id = n.iface_id.clone();
            r.put_net(&id, n)?;
        }
        if let Some(v) = full.vsock {
            r.set_vsock(v)?;
        }
        if let Some(e) = full.entropy {
            r.set_entropy(e)?;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(vcpus: u8) -> MachineConfig {
        MachineConfig {
            vcpu_count: vcpus,
            mem_size_mib: 64,
            ..Resources::default().machine
        }
    }

    #[test]
    fn too_many_vcpus_are_refused_naming_the_field_and_value() {
        let err = Resources::default().set_machine(machine(33)).unwrap_err();
        assert_eq!(err.to_string(), "vcpu_count 33: must be 1 to 32");
    }

    #[test]
    fn smt_is_refused() {
        let mut m = machine(2);
        m.smt = true;
        assert!(Resources::default()
            .set_machine(m)
            .unwrap_err()
            .to_string()
            .starts_with("smt true"));
    }

    #[test]
    fn a_drive_whose_id_differs_from_the_path_is_refused() {
        let d = Drive {
            drive_id: "a".into(),
            path_on_host: "/proc/self/exe".into(),
            is_root_device: false,
            is_read_only: true,
            partuuid: None,
            cache_type: None,
            rate_limiter: None,
            io_engine: None,
        };
        let err = Resources::default().put_drive("b", d).unwrap_err();
        assert_eq!(err.to_string(), "drive_id a: does not match the path's b");
    }

    #[test]
    fn a_second_root_drive_is_refused() {
        let mut r = Resources::default();
        let root = |id: &str| Drive {
            drive_id: id.into(),
            path_on_host: "/proc/self/exe".into(),
            is_root_device: true,
            is_read_only: true,
            partuuid: None,
            cache_type: None,
            rate_limiter: None,
            io_engine: None,
        };
        r.put_drive("a", root("a")).unwrap();
        let err = r.put_drive("b", root("b")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "is_root_device true: drive a is the root already"
        );
    }

    #[test]
    fn starting_without_a_boot_source_says_what_to_do() {
        let err = Resources::default().vm_config().unwrap_err();
        assert_eq!(err.to_string(), "no boot source: PUT /boot-source first");
    }
}
