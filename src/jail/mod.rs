//! The jail of a `husk vmm` process (`--jail DIR --uid U --gid G`), set up by the process
//! itself before it serves anything:
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
//!   paths as on the host, read-only unless asked), /dev/kvm and /dev/net/tun as nodes
//!   owned by U, /dev/null, /dev/urandom, /proc; pivot_root into it, the old root
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
#![allow(
    unsafe_code,
    reason = "namespaces, mounts, pivot_root, credentials and fork have no safe std wrappers"
)]

mod cgroup;
mod creds;
mod held;
pub mod ids;
mod mounts;
mod supervisor;

use std::path::{Path, PathBuf};

pub use cgroup::CgroupLimit;
pub use held::{held_file, held_tap};
pub use ids::JailIds;

/// A path bound into the jail at the same absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path (a file or a folder), absolute.
    pub path: PathBuf,
    /// Writable from the jail (read-only otherwise).
    pub writable: bool,
}

impl std::str::FromStr for Bind {
    type Err = String;

    /// `PATH` (read-only) or `PATH:rw`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, writable) = match s.strip_suffix(":rw") {
            Some(path) => (path, true),
            None => (s.strip_suffix(":ro").unwrap_or(s), false),
        };
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!("bind {s:?}: the path must be absolute"));
        }
        Ok(Self { path, writable })
    }
}

/// How to jail a VMM process.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The folder that becomes the root (made if missing; must be empty).
    pub dir: PathBuf,
    /// The uid the process drops to.
    pub uid: u32,
    /// The gid the process drops to.
    pub gid: u32,
    /// A network namespace to join (a file such as /run/netns/NAME).
    pub netns: Option<PathBuf>,
    /// cgroup v2 limits of the VM's leaf (`memory.max=...`, `pids.max=...`).
    pub cgroup: Vec<CgroupLimit>,
    /// What the jail holds besides its devices.
    pub binds: Vec<Bind>,
    /// Files opened as root before the uid drop, read-only or read-write (`writable`),
    /// and kept open for the VM's disks ([`held_file`]).
    pub held: Vec<Bind>,
    /// TAPs attached as root before the uid drop (in the jail's network namespace), for
    /// the VM's cards on them ([`held_tap`]).
    pub held_taps: Vec<String>,
    /// A persistent TAP made for the jail's uid slot, and the slot's lock file: when
    /// the jailed process ends and nobody holds the lock (the caller that reserved the
    /// slot is gone), the supervisor removes the TAP, claimed by the VM or not.
    pub slot_tap: Option<(String, PathBuf)>,
    /// The VM's id: the hostname in the jail and the cgroup leaf's name.
    pub id: String,
    /// RLIMIT_NOFILE (soft and hard).
    pub max_files: u64,
    /// RLIMIT_FSIZE in bytes (`None`: unlimited).
    pub max_file_size: Option<u64>,
}

/// Errors setting up a jail; each names what it was doing and on what.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The configuration cannot be jailed.
    #[error("jail: {0}")]
    Config(String),
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

/// A path as a C string.
pub(crate) fn c_path(path: &Path) -> Result<std::ffi::CString, JailError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::Config(format!("{} holds a NUL byte", path.display())))
}

impl JailConfig {
    /// Check what can be checked before anything changes.
    fn validate(&self) -> Result<(), JailError> {
        let bad = |m: String| Err(JailError::Config(m));
        if !self.dir.is_absolute() {
            return bad(format!(
                "--jail {}: the folder must be absolute",
                self.dir.display()
            ));
        }
        if self.uid == 0 || self.gid == 0 {
            return bad(format!(
                "--uid {} --gid {}: a jail keeps neither uid 0 nor gid 0",
                self.uid, self.gid
            ));
        }
        if !running_as_root() {
            return bad(
                "--jail needs root: it makes namespaces and device nodes, then drops to --uid"
                    .into(),
            );
        }
        if let Some(bind) = self
            .binds
            .iter()
            .chain(&self.held)
            .find(|b| !b.path.exists())
        {
            return bad(format!(
                "bind {}: no such file or folder",
                bind.path.display()
            ));
        }
        if let Some(netns) = &self.netns {
            if !netns.exists() {
                return bad(format!("--netns {}: no such file", netns.display()));
            }
        }
        Ok(())
    }
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
    let leaf = cgroup::Leaf::create(&config.id, &config.cgroup)?;
    log::debug!("jail: cgroup made");
    let netns = config.netns.as_deref().map(creds::open_netns).transpose()?;
    // The pid namespace is the child's (the caller's process stays outside it, in the
    // host's namespaces, to supervise); the others are made by the child itself, so the
    // supervisor keeps the host's mounts.
    // SAFETY: unshare takes flags only; the process is single-threaded (checked above).
    let ret = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    check(ret, "unshare the pid namespace")?;
    let handshake = supervisor::Handshake::new()?;
    // SAFETY: single-threaded, so the child may run any code after the fork.
    let pid = check(unsafe { libc::fork() }, "fork the jailed process")?;
    if pid != 0 {
        let cleanup = supervisor::Cleanup {
            leaf,
            dir: made_dir.then(|| config.dir.clone()),
            slot_tap: config.slot_tap.clone(),
        };
        supervisor::supervise(pid, handshake, cleanup);
    }
    let alive = handshake.wait_for_go()?;
    log::debug!("jail: forked, supervisor said go");
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: as above; the child of a single-threaded fork has one thread.
    let ret = unsafe { libc::unshare(flags) };
    check(ret, "unshare the mount, ipc and uts namespaces")?;
    if let Some(fd) = netns {
        creds::join_netns(fd, config.netns.as_deref().unwrap_or(Path::new("")))?;
    }
    // Opened with the host's paths and root's rights, before both go.
    let held = held::HeldFiles::open(&config.held, &config.held_taps)?;
    log::debug!("jail: namespaces made, files held");
    mounts::build_root(config)?;
    log::debug!("jail: root built");
    creds::set_hostname(&config.id)?;
    creds::limit(config)?;
    creds::drop_privileges(config.uid, config.gid)?;
    held.install();
    supervisor::die_with_supervisor(alive)?;
    log::debug!("jail: privileges dropped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bind_is_read_only_unless_it_ends_in_rw() {
        let ro: Bind = "/srv/kernel".parse().unwrap();
        assert_eq!(
            (ro.path.as_path(), ro.writable),
            (Path::new("/srv/kernel"), false)
        );
        let also_ro: Bind = "/srv/kernel:ro".parse().unwrap();
        assert!(!also_ro.writable);
        let rw: Bind = "/run/vm:rw".parse().unwrap();
        assert_eq!(
            (rw.path.as_path(), rw.writable),
            (Path::new("/run/vm"), true)
        );
        let err = "kernel".parse::<Bind>().unwrap_err();
        assert!(err.contains("must be absolute"), "{err}");
    }

    fn config() -> JailConfig {
        JailConfig {
            dir: PathBuf::from("/srv/jail"),
            uid: 1000,
            gid: 1000,
            netns: None,
            cgroup: Vec::new(),
            binds: Vec::new(),
            held: Vec::new(),
            held_taps: Vec::new(),
            slot_tap: None,
            id: "vm".into(),
            max_files: 1024,
            max_file_size: None,
        }
    }

    #[test]
    fn a_jail_refuses_root_ids_and_relative_folders() {
        let root = JailConfig { uid: 0, ..config() };
        let err = root.validate().unwrap_err().to_string();
        assert!(err.contains("neither uid 0 nor gid 0"), "{err}");
        let relative = JailConfig {
            dir: PathBuf::from("jail"),
            ..config()
        };
        let err = relative.validate().unwrap_err().to_string();
        assert!(
            err.contains("--jail jail: the folder must be absolute"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_bind_is_named() {
        let missing = JailConfig {
            binds: vec!["/nonexistent/husk-kernel".parse().unwrap()],
            ..config()
        };
        // As root the bind is checked; otherwise root is what is missing.
        let err = missing.validate().unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/husk-kernel: no such file") || err.contains("needs root"),
            "{err}"
        );
    }
}
