//! The messages of the husk protocol and the plain data they carry.
//!
//! Control messages are serialized as JSON objects tagged by `"type"`; the three stdio
//! data messages ([`Message::Stdin`], [`Message::Stdout`], [`Message::Stderr`]) never go
//! through JSON: [`crate::frame`] encodes them as raw bytes.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The agent's number for a process it started, unique for the agent's lifetime.
pub type ProcessId = u32;

/// The read-only image the container's root is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// The guest block device holding the image, e.g. `/dev/vdb`.
    pub device: String,
    /// Its filesystem type, e.g. `erofs` or `ext4`.
    pub fstype: String,
}

/// A host folder shared into the container (`husk run -v`): a virtio-fs device of the
/// guest, mounted by the agent at `target` in the container's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// The virtio-fs tag (`mount -t virtiofs TAG ...`).
    pub tag: String,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Where the container's writable overlay layer (upper and work dirs) lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum WritableLayer {
    /// A tmpfs in guest memory, lost at exit.
    Tmpfs,
    /// A scratch block device the host formatted as ext4.
    Disk {
        /// The guest block device, e.g. `/dev/vdc`.
        device: String,
    },
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A CPU bandwidth limit: `quota_us` of CPU time per `period_us` (cgroup v2 `cpu.max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuQuota {
    /// Microseconds of CPU time allowed per period.
    pub quota_us: u64,
    /// The period in microseconds.
    pub period_us: u64,
}

/// Resource limits of a container (its cgroup v2 leaf). `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_bytes: Option<u64>,
    /// `pids.max`.
    pub pids: Option<u64>,
    /// `cpu.max`.
    pub cpu_quota: Option<CpuQuota>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    /// The exit code, if the process exited.
    pub code: Option<i32>,
    /// The signal number, if a signal killed it.
    pub signal: Option<i32>,
    /// Whether the container's cgroup recorded an OOM kill.
    pub oom_killed: bool,
}

impl Message {
    /// `Started` for a process that is not a prepared container's.
    pub fn started(process_id: ProcessId) -> Self {
        Self::Started {
            process_id,
            prepared: false,
        }
    }
}

impl ExitStatus {
    /// The docker-style exit code: the code itself, or 128 + the signal number.
    /// A status with neither (which the agent never sends) maps to 255.
    pub fn docker_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 255,
        }
    }
}

fn is_false(value: &bool) -> bool {
    !value
}

/// One protocol message. See `docs/protocol.md` for who sends which and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Message {
    /// Agent → host, first on every connection.
    Hello {
        /// The agent's [`crate::PROTOCOL_VERSION`].
        version: u32,
        /// The agent's crate version, for logs.
        agent_version: String,
        /// Which generation of the sandbox answers: 0 after a boot, then the number
        /// the host gave in the last [`Message::Restored`]. A guest restored from a
        /// snapshot greets with the snapshot's generation until the host gives it its own.
        generation: u64,
    },
    /// Host → agent, the answer to a compatible [`Message::Hello`].
    HelloAck {
        /// The host's [`crate::PROTOCOL_VERSION`].
        version: u32,
    },
    /// Host → agent: create a container and start its first process.
    Run {
        /// The container id, chosen by the host; letters, digits, `-`, `_`, `.`.
        id: String,
        /// The image to use as the read-only lower layer.
        image: ImageSpec,
        /// The command and its arguments; `args[0]` is looked up in the container's PATH.
        args: Vec<String>,
        /// `NAME=value` pairs; PATH gets a default when missing.
        env: Vec<String>,
        /// The working directory inside the container (default `/`).
        cwd: Option<String>,
        /// `uid[:gid]` or `name[:group]` from the container's /etc/passwd and /etc/group.
        user: Option<String>,
        /// A pseudo-terminal of this size instead of pipes.
        tty: Option<TtySize>,
        /// Resource limits.
        limits: Limits,
        /// Where the writable layer lives.
        writable_layer: WritableLayer,
        /// The container's hostname (default: its id).
        hostname: Option<String>,
        /// Host folders mounted into the container.
        volumes: Vec<VolumeMount>,
    },
    /// Host → agent: start another process in a running container.
    Exec {
        /// The container to enter.
        container_id: String,
        /// The command and its arguments.
        args: Vec<String>,
        /// `NAME=value` pairs.
        env: Vec<String>,
        /// The working directory (default `/`).
        cwd: Option<String>,
        /// The user, as in [`Message::Run`].
        user: Option<String>,
        /// A pseudo-terminal of this size instead of pipes.
        tty: Option<TtySize>,
    },
    /// Host → agent: stream `path` of the container's filesystem to the host as a tar
    /// archive (`husk cp NAME:PATH ...`). Answered like an Exec: `Started` (or `Error`
    /// when `path` does not exist), then the archive as the process's `Stdout`, then
    /// `Exited` (code 0, or 1 after a `Stderr` message). The archive's first component
    /// is `path`'s last one; modes, owners and times are kept.
    CopyOut {
        /// The container.
        container_id: String,
        /// The path in the container (relative paths start at its `/`).
        path: String,
    },
    /// Host → agent: unpack the tar archive that follows as the process's `Stdin` at
    /// `path` in the container, by docker's `cp` rules (`husk cp ... NAME:PATH`).
    /// Answered by `Started` (or `Error` when `path`'s parent does not exist); `Exited`
    /// after the host's `StdinClose` once everything is written (code 0, or 1 after a
    /// `Stderr` message).
    CopyIn {
        /// The container.
        container_id: String,
        /// The destination in the container.
        path: String,
        /// The source was written `DIR/.`: its contents go into `path`.
        contents: bool,
        /// Keep the archived owners (else files belong to root).
        preserve_owner: bool,
        /// The archive is the caller's own tar stream (`husk cp - NAME:DIR`): its
        /// entries go into the existing directory `path` as they are.
        #[serde(default)]
        as_is: bool,
    },
    /// Agent → host: the answer to Run, Exec, CopyOut or CopyIn, the new process's id.
    Started {
        /// The id that later frames about this process carry.
        process_id: ProcessId,
        /// A Run whose container was the one made ahead by [`Message::Prepare`].
        #[serde(default, skip_serializing_if = "is_false")]
        prepared: bool,
    },
    /// Host → agent: bytes for a process's stdin (a raw data frame, never JSON).
    #[serde(skip)]
    Stdin {
        /// The target process.
        process: ProcessId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Host → agent: close a process's stdin.
    StdinClose {
        /// The target process.
        process: ProcessId,
    },
    /// Agent → host: the agent is done with `bytes` more bytes of a process's stdin
    /// (written to the process, or dropped because its stdin is closed). The host keeps
    /// at most [`crate::STDIN_WINDOW`] unacknowledged stdin bytes per process, so a
    /// process that does not read holds up only its own input. A detached sandbox's
    /// monitor sends it to its control clients the same way.
    StdinAck {
        /// The process.
        process: ProcessId,
        /// Bytes finished with since the last acknowledgement.
        bytes: u64,
    },
    /// Agent → host: bytes a process wrote to stdout (or to its terminal).
    #[serde(skip)]
    Stdout {
        /// The source process.
        process: ProcessId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Agent → host: bytes a process wrote to stderr.
    #[serde(skip)]
    Stderr {
        /// The source process.
        process: ProcessId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Host → agent: send a signal to a process.
    Signal {
        /// The target process.
        process: ProcessId,
        /// The signal number.
        signal: i32,
    },
    /// Host → agent: resize a process's terminal.
    Resize {
        /// The target process.
        process: ProcessId,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Agent → host: a process ended; sent after its last output frame.
    Exited {
        /// The process.
        process: ProcessId,
        /// How it ended.
        status: ExitStatus,
    },
    /// Either way: a request failed, or the handshake was refused.
    Error {
        /// What failed, for a person.
        message: String,
    },
    /// Host → agent: kill every container, sync and reset the guest.
    Shutdown,
    /// Host → agent, right after the handshake and before any Run: configure the
    /// guest's network interface, bring it and `lo` up, route everything through
    /// `gateway`. Answered by [`Message::NetworkReady`] or [`Message::Error`].
    Network {
        /// The guest interface, e.g. `eth0`.
        interface: String,
        /// The guest's IPv4 address on it.
        address: Ipv4Addr,
        /// The link's prefix length (0–32).
        prefix_len: u8,
        /// The default gateway (the host's end of the link).
        gateway: Ipv4Addr,
        /// A MAC address to give the interface first (`aa:bb:cc:dd:ee:ff`): a guest
        /// restored from a snapshot keeps the snapshot's otherwise.
        #[serde(default)]
        mac: Option<String>,
        /// DNS servers for the guest's `/etc/resolv.conf`, which every container
        /// started afterwards gets a copy of (none: no resolver is configured).
        #[serde(default)]
        dns: Vec<Ipv4Addr>,
    },
    /// Agent → host: the answer to a successful [`Message::Network`].
    NetworkReady,
    /// Host → agent, right after the handshake with a guest restored from a snapshot,
    /// before anything else: become a sandbox of its own. The agent mixes `entropy`
    /// into the kernel's random pool and reseeds it (two clones of one snapshot must not
    /// share random numbers), sets the wall clock, takes `hostname`, and waits until
    /// each disk in `disks` shows its size (the host swapped the backing files and
    /// announced the change). Answered by [`Message::RestoredAck`] or [`Message::Error`].
    Restored {
        /// The sandbox's new generation; later Hellos carry it.
        generation: u64,
        /// Fresh random bytes from the host (at least 32).
        entropy: Vec<u8>,
        /// The host's wall clock, in ns since the Unix epoch.
        unix_time_ns: u64,
        /// The guest's hostname.
        hostname: String,
        /// Disks whose size changed, and the size to wait for.
        disks: Vec<DiskSize>,
    },
    /// Host → agent: make a container ahead of its Run, for a template of the image: the
    /// image mounted with a tmpfs writable layer, its cgroup, and its first process
    /// waiting in new namespaces inside the container's root for the command. The next
    /// Run with the same image and layer and no volumes takes it (its `Started` says
    /// `prepared`), with its own id, hostname, limits, command, user and stdio.
    /// Answered by [`Message::Prepared`] or [`Message::Error`].
    Prepare {
        /// The image, as a Run would give it.
        image: ImageSpec,
        /// The writable layer (only `Tmpfs`).
        writable_layer: WritableLayer,
        /// Read up to this many bytes of the image's likely-run files (libraries,
        /// executables) into the guest's page cache, so a snapshot taken now carries
        /// them; 0 reads nothing.
        #[serde(default)]
        warm_bytes: u64,
    },
    /// Agent → host: the answer to a successful [`Message::Prepare`].
    Prepared,
    /// Agent → host: the answer to a successful [`Message::Restored`].
    RestoredAck {
        /// The generation the agent took.
        generation: u64,
    },
    /// Control socket, client → monitor: pause the sandbox's guest. Answered by
    /// [`Message::Done`] or [`Message::Error`].
    Pause,
    /// Control socket, client → monitor: let a paused guest run again.
    Resume,
    /// Control socket, client → monitor: save the sandbox into the new folder `dir`
    /// (synced to disk when `durable`), for `husk snapshot create` and `husk fork`.
    SnapshotTo {
        /// The folder to create.
        dir: String,
        /// Sync the files before answering.
        durable: bool,
    },
    /// Control socket, client → monitor: `husk run -d` takes this parked sandbox (a
    /// pool's) as the detached sandbox `name`. Its folder is renamed to that name, the
    /// command runs as its main process with its output in the sandbox's logs, and from
    /// then on it is listed, stopped and removed as any detached sandbox. Answered by
    /// [`Message::Done`] or [`Message::Error`].
    Adopt {
        /// The detached sandbox's name.
        name: String,
        /// The command and its arguments (empty: the image's).
        args: Vec<String>,
        /// `NAME=value` pairs.
        env: Vec<String>,
        /// The working directory.
        cwd: Option<String>,
        /// The user, as in [`Message::Run`].
        user: Option<String>,
        /// A pseudo-terminal of this size instead of pipes.
        tty: Option<TtySize>,
        /// Remove the sandbox's folder when its main process ends (`--rm`).
        remove_on_exit: bool,
    },
    /// Control socket, monitor → client: the request is done; `detail` says how.
    Done {
        /// A line for the user.
        detail: String,
    },
}

/// A disk and the size it must show, for [`Message::Restored`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSize {
    /// The guest block device's name under /sys/block, e.g. `vda`.
    pub name: String,
    /// Its size in 512-byte sectors.
    pub sectors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_maps_to_itself() {
        let status = ExitStatus {
            code: Some(3),
            signal: None,
            oom_killed: false,
        };
        assert_eq!(status.docker_code(), 3);
    }

    #[test]
    fn signal_maps_to_128_plus_signal() {
        let status = ExitStatus {
            code: None,
            signal: Some(9),
            oom_killed: true,
        };
        assert_eq!(status.docker_code(), 137);
    }

    #[test]
    fn status_without_code_or_signal_maps_to_255() {
        let status = ExitStatus {
            code: None,
            signal: None,
            oom_killed: false,
        };
        assert_eq!(status.docker_code(), 255);
    }

    #[test]
    fn control_message_json_is_tagged_by_type() {
        let json = serde_json::to_string(&Message::Shutdown).expect("serializes");
        assert_eq!(json, r#"{"type":"Shutdown"}"#);
    }
}
