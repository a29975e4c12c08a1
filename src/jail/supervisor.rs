//! The outer side of a jail: the process its caller started, left outside the
//! namespaces, which lets the jailed child go once it is in its cgroup, forwards the
//! caller's signals to it, and ends as it ended once its cgroup leaf is removed.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use super::cgroup::Leaf;
use super::{check, JailError};

/// One pipe between the two sides: a byte from the supervisor lets the child go; the
/// pipe's end (the supervisor gone) is how the child knows it was left alone.
pub(super) struct Handshake {
    read: OwnedFd,
    write: OwnedFd,
}

impl Handshake {
    pub(super) fn new() -> Result<Self, JailError> {
        let (read, write) = std::io::pipe().map_err(|source| JailError::Os {
            what: "make the jail's handshake pipe".into(),
            source,
        })?;
        Ok(Self {
            read: read.into(),
            write: write.into(),
        })
    }

    /// In the child: wait for the supervisor's go; the read end, kept to watch it.
    pub(super) fn wait_for_go(self) -> Result<OwnedFd, JailError> {
        drop(self.write);
        let mut reader = std::io::PipeReader::from(self.read);
        let mut byte = [0u8; 1];
        match reader.read(&mut byte) {
            Ok(1) => Ok(reader.into()),
            Ok(_) => Err(JailError::Config(
                "the supervisor ended before letting the jailed process go".into(),
            )),
            Err(source) => Err(JailError::Os {
                what: "wait for the supervisor".into(),
                source,
            }),
        }
    }
}

/// What the supervisor removes once the child is gone.
pub(super) struct Cleanup {
    /// The VM's cgroup leaf.
    pub(super) leaf: Option<Leaf>,
    /// The jail folder, when the jail made it.
    pub(super) dir: Option<PathBuf>,
    /// The TAP made for the jail's uid slot and the slot's lock file.
    pub(super) slot_tap: Option<(String, PathBuf)>,
}

impl Cleanup {
    fn run(&self) {
        if let Some((tap, lock)) = &self.slot_tap {
            remove_slot_tap(tap, lock);
        }
        if let Some(leaf) = &self.leaf {
            leaf.remove();
        }
        if let Some(dir) = &self.dir {
            if let Err(e) = std::fs::remove_dir(dir) {
                log::warn!("cannot remove the jail folder {}: {e}", dir.display());
            }
        }
    }
}

/// Remove `tap`, made for this jail's slot, if the slot is free: its caller is gone
/// (killed before its VM claimed the TAP, or after), and nobody took the slot since.
/// A caller that still holds the slot removes an unclaimed TAP itself.
fn remove_slot_tap(tap: &str, lock: &std::path::Path) {
    let removed = super::ids::while_free(lock, || {
        crate::devices::virtio::net::tap::remove_persistent(tap)
    });
    if let Some(Err(e)) = removed {
        log::warn!(
            "cannot remove the jail's TAP {tap}: {}",
            crate::error_chain(&e)
        );
    }
}

/// Supervise the jailed `child` until it ends, then end the same way; first move it
/// into the cgroup leaf unless it was born there (`in_leaf`).
pub(super) fn supervise(
    child: libc::pid_t,
    in_leaf: bool,
    handshake: Handshake,
    cleanup: Cleanup,
) -> ! {
    drop(handshake.read);
    if let Some(leaf) = cleanup.leaf.as_ref().filter(|_| !in_leaf) {
        if let Err(e) = leaf.add(child) {
            eprintln!("husk: error: {e}");
            // SAFETY: kill and waitpid on our own child, with a valid status pointer.
            unsafe {
                libc::kill(child, libc::SIGKILL);
                libc::waitpid(child, std::ptr::null_mut(), 0);
            }
            cleanup.run();
            std::process::exit(1);
        }
    }
    let mut go = std::io::PipeWriter::from(handshake.write);
    // A failed write is the child already gone; its status says why.
    drop(go.write_all(b"g"));
    let status = forward_until_exit(child);
    log::debug!("jail: the child ended");
    // The pipe stays open until here: its end tells a still-running child to go.
    drop(go);
    cleanup.run();
    log::debug!("jail: cleaned up");
    end_like(status)
}

/// The signals the supervisor takes: the caller's stop signals, and the child's end.
fn taken_set() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigemptyset initializes the set we own; sigaddset only sets bits in it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGCHLD,
        ] {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Forward stop signals to `child` until it exits; its wait status.
fn forward_until_exit(child: libc::pid_t) -> libc::c_int {
    let set = taken_set();
    // SAFETY: a valid set; blocking SIGCHLD makes its arrival wait for sigwait.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
            return status;
        }
        let mut sig = 0;
        // SAFETY: a valid set and out pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            // SAFETY: kill on our own child, not yet reaped.
            unsafe { libc::kill(child, sig) };
        }
    }
}

/// Exit with `status`'s code, or die of its signal (without a core dump).
fn end_like(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        // SAFETY: plain calls on this process: no core file, the default action for
        // `sig`, `sig` unblocked, then raised; each takes valid arguments.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(sig, libc::SIG_DFL);
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigaddset(set.as_mut_ptr(), sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ptr(), std::ptr::null_mut());
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(libc::WEXITSTATUS(status))
}

/// In the child: with the supervisor's end as its own death (SIGKILL), and gone at once
/// if the supervisor already went (its pipe closed) before that was set.
pub(super) fn die_with_supervisor(alive: OwnedFd) -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments. Set after the uid change, which clears it.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(ret, "set the parent-death signal")?;
    let mut poll = libc::pollfd {
        fd: alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    if ready != 0 {
        // Nothing is ever written after the go: readable or hung up means it ended.
        std::process::exit(1);
    }
    // Kept open for the process's life, so the check above stays meaningful.
    std::mem::forget(alive);
    Ok(())
}
