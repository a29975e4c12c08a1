//! The jail of a `husk vmm` process, set up by the process itself before it serves
//! anything. As root (`--jail DIR --uid U --gid G`):
//!
//! ```text
//! outer process (the pid its caller knows; root)
//!   close every inherited fd but stdio; make the cgroup leaf (if cgroup v2 is there)
//!   unshare the pid namespace; fork
//!   -> supervisor: put the child in the cgroup, let it go; forward SIGTERM/INT/HUP/QUIT
//!      to it; when it ends, remove the cgroup leaf and end the same way it did
//!      (its exit code, or the same signal: a SIGSYS stays a SIGSYS)
//! child (pid 1 of the new pid namespace)
//!   unshare mount, ipc and uts namespaces; join --netns; root = a fresh tmpfs on DIR holding only the binds (same absolute
//!   paths as on the host, read-only unless asked), /dev/kvm, /dev/net/tun and /dev/vhost-net (each
//!   when the host has it) as nodes owned by U, /dev/null, /dev/urandom, /proc; pivot_root into it, the old root
//!   detached; the root made read-only; hostname = the VM's id
//!   rlimits (NOFILE, FSIZE, CORE 0); bounding set and ambient capabilities dropped;
//!   groups cleared, gid and uid set to G and U (which clears every capability);
//!   no_new_privs; SIGKILL when the supervisor goes
//!   -> returns to `husk vmm`, which serves its API from inside
//! ```
//!
//! The files a VM needs are bound at the paths the API names, so the same requests
//! work jailed or not; they must be readable (and, for disks and the folder of the API
//! socket, writable) by U, or be held: a file given with `--hold` is opened as root by
//! the child before it drops to U (after its fds were closed, before pivot_root), and
//! a disk at that path uses the open file ([`held_file`]), with the access it was opened
//! with. A TAP must exist and be owned by U (`ip tuntap add NAME mode
//! tap user U`): without CAP_NET_ADMIN the jailed VMM can attach to it but not make it;
//! or be held: a TAP given with `--hold-tap` is attached by the child as root, next to
//! the held files, and a card on that TAP uses the attached descriptor ([`held_tap`]).
//!
//! Started by another user (`--jail DIR`, or `--jail DIR --userns`), the same steps run
//! in a user namespace ([`userns`]) that maps only the caller's uid and gid, made by the
//! outer process before it unshares the pid namespace: no cgroup leaf, no --netns, no
//! device nodes (mknod is not allowed there: /dev/kvm, /dev/net/tun, /dev/vhost-net, /dev/null
//! and /dev/urandom are bind-mounted from the host instead), no uid change (the process
//! keeps the caller's uid and groups); every capability of the user namespace is
//! dropped (bounding, ambient, effective, permitted, inheritable), in the supervisor
//! too, before the child serves.
#![allow(
    unsafe_code,
    reason = "namespaces, mounts, pivot_root, credentials and fork have no safe std wrappers"
)]

mod cgroup;
mod config;
mod creds;
mod held;
pub mod ids;
mod mounts;
mod spawn;
mod supervisor;
pub mod userns;

use std::path::{Path, PathBuf};

pub use cgroup::CgroupLimit;
pub use config::{Bind, JailConfig, JailMode};
pub use held::{held_file, held_tap};
pub use ids::JailIds;

/// Errors setting up a jail; each names what it was doing and on what.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The configuration cannot be jailed.
    #[error("jail: {0}")]
    Config(String),
    /// The kernel refuses a user-namespace jail; the cause.
    #[error("jail: no user namespace: {0}")]
    NoUserNamespace(String),
    /// A system call failed.
    #[error("jail: {what}: {source}")]
    Os {
        /// What was being done, and on what.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// `Err(JailError::Os)` for a failed call doing `what`, from errno.
pub(crate) fn os_error(what: impl Into<String>) -> JailError {
    JailError::Os {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

/// A `-1` return is an error doing `what`.
pub(crate) fn check(ret: libc::c_int, what: impl Into<String>) -> Result<libc::c_int, JailError> {
    if ret == -1 {
        Err(os_error(what))
    } else {
        Ok(ret)
    }
}

/// Where jails live: `HUSK_JAIL_ROOT`, else `/run/husk/jails` (`ids/` holds the uid
/// slots' lock files, `<uid>/` each jail's root while it runs).
pub fn jails_root() -> PathBuf {
    std::env::var_os("HUSK_JAIL_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/husk/jails"))
}

/// Remove what the jail in `dir` of the VM `id` leaves when its supervisor (`pid`) was
/// killed before cleaning up: the folder (empty: the jail's mounts were its child's)
/// and the cgroup leaf (empty: the child died with the supervisor). Errors are ignored:
/// each may be gone already.
pub fn remove_leftovers(dir: &Path, id: &str, supervisor: u32) {
    drop(std::fs::remove_dir(dir));
    cgroup::remove_leaf_of(id, supervisor);
}

/// Whether this process runs as root (effective uid 0), which a jail needs.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid only returns a value.
    unsafe { libc::geteuid() == 0 }
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid only returns a value.
    unsafe { libc::geteuid() }
}

/// A path as a C string.
pub(crate) fn c_path(path: &Path) -> Result<std::ffi::CString, JailError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::Config(format!("{} holds a NUL byte", path.display())))
}

/// Jail this process. Returns in the jailed child only, which goes on to serve; the
/// calling process becomes its supervisor and exits as the child does. Call it before
/// any thread starts (unsharing the mount namespace needs a single thread) and with
/// SIGTERM, SIGINT, SIGHUP and SIGQUIT blocked (`sandbox::signals::block`).
pub fn enter(config: &JailConfig) -> Result<(), JailError> {
    config.validate()?;
    let threads = std::fs::read_dir("/proc/self/task")
        .map(Iterator::count)
        .unwrap_or(1);
    if threads != 1 {
        return Err(JailError::Config(format!(
            "the process has {threads} threads; a jail is entered before any starts"
        )));
    }
    creds::close_inherited_fds()?;
    log::debug!("jail: inherited fds closed");
    let made_dir = mounts::prepare_dir(&config.dir)?;
    log::debug!("jail: folder ready");
    let root = config.dropped_ids().is_some();
    // A user-namespace jail has no cgroup leaf: the caller's cgroup is not its to split.
    let leaf = match root {
        true => cgroup::Leaf::create(&config.id, &config.cgroup)?,
        false => None,
    };
    log::debug!("jail: cgroup made");
    let netns = config.netns.as_deref().map(creds::open_netns).transpose()?;
    if !root {
        // Made by the outer process: the pid namespace below needs its capabilities.
        if let Err(e) = userns::enter() {
            if made_dir {
                drop(std::fs::remove_dir(&config.dir));
            }
            return Err(e);
        }
        log::debug!("jail: user namespace made");
    }
    // The pid namespace is the child's (the caller's process stays outside it, in the
    // host's namespaces, to supervise); the others are made by the child itself, so the
    // supervisor keeps the host's mounts.
    let handshake = supervisor::Handshake::new()?;
    if let spawn::Forked::Parent { pid, in_leaf } = spawn::fork_child(leaf.as_ref())? {
        if !root {
            // The supervisor only waits, forwards signals and removes the folder: it
            // keeps none of the user namespace's capabilities either.
            if let Err(e) = creds::drop_capabilities() {
                log::warn!("the jail's supervisor keeps its capabilities: {e}");
            }
        }
        let cleanup = supervisor::Cleanup {
            leaf,
            dir: made_dir.then(|| config.dir.clone()),
            slot_tap: config.slot_tap.clone(),
        };
        supervisor::supervise(pid, in_leaf, handshake, cleanup);
    }
    let alive = handshake.wait_for_go()?;
    log::debug!("jail: forked, supervisor said go");
    jail_child(config, netns)?;
    supervisor::die_with_supervisor(alive)?;
    log::debug!("jail: privileges dropped");
    Ok(())
}

/// The child's part: its namespaces, held files, root, hostname, limits, and the drop
/// of its privileges.
fn jail_child(config: &JailConfig, netns: Option<std::os::fd::OwnedFd>) -> Result<(), JailError> {
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: as above; the child of a single-threaded fork has one thread.
    if unsafe { libc::unshare(flags) } == -1 {
        let source = std::io::Error::last_os_error();
        return Err(match config.mode {
            JailMode::UserNamespace => userns::namespaces_refused(source),
            JailMode::Root { .. } => JailError::Os {
                what: "unshare the mount, ipc and uts namespaces".into(),
                source,
            },
        });
    }
    if let Some(fd) = netns {
        creds::join_netns(fd, config.netns.as_deref().unwrap_or(Path::new("")))?;
    }
    // Opened with the host's paths and the caller's rights, before both go.
    let held = held::HeldFiles::open(&config.held, &config.held_taps)?;
    log::debug!("jail: namespaces made, files held");
    mounts::build_root(config)?;
    log::debug!("jail: root built");
    creds::set_hostname(&config.id)?;
    creds::limit(config)?;
    match config.dropped_ids() {
        Some((uid, gid)) => creds::drop_privileges(uid, gid)?,
        None => creds::drop_capabilities()?,
    }
    held.install();
    Ok(())
}
