//! The API's JSON bodies: a Firecracker-compatible subset (same field names, same
//! meaning), each refusing fields it does not know, so a typo is an error naming the
//! field rather than a setting silently left out.

use serde::{Deserialize, Serialize};

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Application name.
    pub app_name: String,
    /// The instance id (`husk vmm --id`).
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: String,
    /// husk's version.
    pub vmm_version: String,
}

/// `PUT|PATCH|GET /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs, 1 to 32.
    pub vcpu_count: u8,
    /// Guest RAM in MiB.
    pub mem_size_mib: u64,
    /// SMT: only `false` (husk gives each vCPU its own core).
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking: accepted for compatibility; snapshots are always full.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// CPU template: only `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Huge pages: only `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
}

/// `PATCH /machine-config`: any subset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// vCPUs.
    pub vcpu_count: Option<u8>,
    /// Guest RAM in MiB.
    pub mem_size_mib: Option<u64>,
    /// SMT.
    pub smt: Option<bool>,
    /// Dirty page tracking.
    pub track_dirty_pages: Option<bool>,
    /// CPU template.
    pub cpu_template: Option<String>,
    /// Huge pages.
    pub huge_pages: Option<String>,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// The guest kernel (ELF vmlinux with a PVH note, or a bzImage).
    pub kernel_image_path: String,
    /// Kernel command line (replaces husk's additions, not its base line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// An initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// A token bucket: `size` tokens, refilled over `refill_time` ms; `size` 0 disables
/// it (in a `PATCH`: removes the limit). A value that is not a whole number 0 or more
/// is refused naming the field and the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Capacity in tokens (bytes or operations).
    #[serde(deserialize_with = "tokens::size")]
    pub size: u64,
    /// A first burst beyond the capacity, spent once.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "tokens::one_time_burst"
    )]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill an empty bucket.
    #[serde(deserialize_with = "tokens::refill_time")]
    pub refill_time: u64,
}

/// A token bucket's numbers, read as JSON values first so that a bad one is named.
mod tokens {
    use serde::de::{Deserializer, Error};
    use serde::Deserialize;
    use serde_json::Value;

    fn whole<E: Error>(value: &Value, field: &str) -> Result<u64, E> {
        value.as_u64().ok_or_else(|| {
            E::custom(format!(
                "{field} {value}: a token bucket's {field} is a whole number, 0 or more"
            ))
        })
    }

    pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        whole(&Value::deserialize(d)?, "size")
    }

    pub(super) fn refill_time<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        whole(&Value::deserialize(d)?, "refill_time")
    }

    /// Absent or `null`: none.
    pub(super) fn one_time_burst<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(None),
            value => whole(&value, "one_time_burst").map(Some),
        }
    }
}

/// Limits on bytes and operations per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Requests or frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id (must equal the path's).
    pub drive_id: String,
    /// The backing file.
    pub path_on_host: String,
    /// Boot from it (`root=/dev/vdX`).
    pub is_root_device: bool,
    /// Read-only.
    #[serde(default)]
    pub is_read_only: bool,
    /// The root partition's UUID: not supported (whole-disk roots only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// `Unsafe` (default) or `Writeback` (flushes honoured either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    /// Limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// `Sync` (default); `Async` is accepted and served the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
}

/// `PATCH /drives/{drive_id}` (after start: a new backing file, new limits).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// The drive's id.
    pub drive_id: String,
    /// A new backing file.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// New limits.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id (must equal the path's).
    pub iface_id: String,
    /// The host TAP.
    pub host_dev_name: String,
    /// The guest's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Receive limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
    /// husk's own: frames move through the host kernel's vhost-net (no rate limits).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vhost: bool,
}

/// `PATCH /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// The interface's id.
    pub iface_id: String,
    /// New receive limits.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New transmit limits.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest CID (3 or more).
    pub guest_cid: u64,
    /// The host's Unix socket.
    pub uds_path: String,
    /// Deprecated; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `PUT /entropy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    /// Limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// `InstanceStart`, `SendCtrlAltDel` or `FlushMetrics`.
    pub action_type: String,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateRequest {
    /// `Paused` or `Resumed`.
    pub state: String,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// The state file to write.
    pub snapshot_path: String,
    /// The memory file to write.
    pub mem_file_path: String,
    /// `Full` (default); `Diff` is refused.
    #[serde(default)]
    pub snapshot_type: Option<String>,
    /// Deprecated; ignored.
    #[serde(default)]
    pub version: Option<String>,
}

/// Where a snapshot's memory comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// `File` (`Uffd` is refused).
    pub backend_type: String,
    /// The memory file.
    pub backend_path: String,
}

/// A new TAP for a restored interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface.
    pub iface_id: String,
    /// Its new TAP.
    pub host_dev_name: String,
}

/// A new socket for the restored vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The new socket path.
    pub uds_path: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The state file.
    pub snapshot_path: String,
    /// The memory file (or `mem_backend`).
    #[serde(default)]
    pub mem_file_path: Option<String>,
    /// The memory file, newer form.
    #[serde(default)]
    pub mem_backend: Option<MemoryBackend>,
    /// Accepted for compatibility; ignored.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    /// Accepted for compatibility; ignored.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// Run the guest once loaded.
    #[serde(default)]
    pub resume_vm: Option<bool>,
    /// New TAPs.
    #[serde(default)]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// A new vsock socket.
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    /// Advance the guest's clock by the time the snapshot waited: refused (husk's
    /// agent sets the wall clock; the monotonic clock goes on from the snapshot).
    #[serde(default)]
    pub clock_realtime: Option<bool>,
}

/// `PUT /logger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// Where log lines go (a file or a named pipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Put the level in each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Put the source location in each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only lines from this module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where metrics are written as JSON lines.
    pub metrics_path: String,
}

/// `GET /vm/config` (and `--config-file`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfiguration {
    /// Machine.
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfig>,
    /// Kernel and initrd.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// Disks.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// Network cards.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// vsock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// Entropy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDevice>,
    /// Logger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// Metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_field_is_named() {
        let err = serde_json::from_str::<MachineConfig>(
            r#"{"vcpu_count":1,"mem_size_mib":128,"cpus":2}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `cpus`"), "{err}");
    }

    #[test]
    fn the_getting_started_bodies_parse() {
        let boot: BootSource = serde_json::from_str(
            r#"{"kernel_image_path":"./vmlinux","boot_args":"console=ttyS0 reboot=k panic=1"}"#,
        )
        .unwrap();
        assert_eq!(boot.kernel_image_path, "./vmlinux");
        let drive: Drive = serde_json::from_str(
            r#"{"drive_id":"rootfs","path_on_host":"./rootfs.ext4","is_root_device":true,"is_read_only":false}"#,
        )
        .unwrap();
        assert!(drive.is_root_device);
        let net: NetworkInterface = serde_json::from_str(
            r#"{"iface_id":"net1","guest_mac":"06:00:AC:10:00:02","host_dev_name":"tap0"}"#,
        )
        .unwrap();
        assert_eq!(net.host_dev_name, "tap0");
        let full: FullVmConfiguration = serde_json::from_str(
            r#"{"boot-source":{"kernel_image_path":"k"},"drives":[],"machine-config":{"vcpu_count":2,"mem_size_mib":1024}}"#,
        )
        .unwrap();
        assert_eq!(full.machine_config.unwrap().vcpu_count, 2);
    }
}
