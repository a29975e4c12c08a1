//! husk-agent: PID 1 of the husk guest. It sets up the guest (pseudo filesystems,
//! cgroup v2, loopback), listens on vsock port 1024 and runs containers for the host:
//! an overlay root over the read-only image, new mount/pid/uts/ipc namespaces, a
//! cgroup v2 leaf with limits, docker's default capabilities, stdio streamed as frames
//! of `husk-protocol`.
//!
//! The container-spawning part ([`agent::Agent`]) does not depend on being PID 1 or
//! on vsock, so it is tested on an ordinary Linux host as root.

#![deny(unsafe_code)]

pub mod agent;
pub mod cad;
pub mod caps;
pub mod cgroup;
#[allow(
    unsafe_code,
    reason = "fork-to-exec code: raw syscalls that must not allocate"
)]
pub mod child;
pub mod console;
#[allow(unsafe_code, reason = "mounts between fork and exec: raw syscalls")]
pub mod container_fs;
pub mod copy;
pub mod init;
#[allow(
    unsafe_code,
    reason = "TIOCSWINSZ, interface (SIOCSIF*) and route (SIOCADDRT) ioctls"
)]
pub mod ioctl;
pub mod network;
pub mod outbox;
pub mod prepare;
pub mod process;
pub mod reaper;
#[allow(unsafe_code, reason = "RNDADDENTROPY and RNDRESEEDCRNG ioctls")]
pub mod restore;
pub mod rootfs;
pub mod server;
pub mod shutdown;
#[allow(unsafe_code, reason = "fork and pipe2")]
pub mod spawn;
pub mod spec;
#[allow(unsafe_code, reason = "taking ownership of the fd accept4 returns")]
pub mod transport;
pub mod user;
pub mod warm;
#[allow(
    unsafe_code,
    reason = "the waiting container process: recvmsg with SCM_RIGHTS, raw syscalls after fork"
)]
pub mod zygote;
