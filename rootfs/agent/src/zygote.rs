//! A prepared container's first process, the *zygote*: made ahead of any Run (for an
//! image template), it enters new namespaces and the container's root as a Run's
//! process would, then waits on a seqpacket socket for its command. The command comes
//! as one message (the encoding below) with the process's stdio and an error pipe
//! attached as SCM_RIGHTS; the zygote sets the hostname and finishes like any
//! container process (stdio, capabilities, user, cwd, execve), so the command is PID
//! 1 of the container.
//!
//! The zygote is a fork of the multi-threaded agent, so it must not allocate: every
//! buffer it parses into ([`ZygoteMemory`]) is allocated before the fork, and the
//! parser only indexes into them. Reports to the agent are 8 bytes, `(step, errno)`
//! as on the spawn error pipe, with step 0 meaning "ready, waiting for the command".
//!
//! The command's encoding (integers u32 little-endian, strings NUL-terminated):
//! `uid gid tty ngroups group* hostname cwd exe argc arg* envc env*`.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use crate::child::{self, ExecSteps, Namespaces, Step};

/// The largest encoded command (a seqpacket message must fit the socket's buffer).
pub const MAX_COMMAND: usize = 96 * 1024;
/// Most arguments, and most environment entries, a prepared container's command has.
pub const MAX_STRINGS: usize = 2048;
/// Most supplementary groups.
pub const MAX_GROUPS: usize = 64;
/// The fds sent with the command: stdin, stdout, stderr and the error pipe.
pub const SENT_FDS: usize = 4;
/// The report that says the zygote is ready.
pub const READY: u32 = 0;

/// Buffers the zygote parses its command into, allocated before the fork.
pub struct ZygoteMemory {
    buf: Vec<u8>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    groups: Vec<libc::gid_t>,
}

impl Default for ZygoteMemory {
    fn default() -> Self {
        Self {
            buf: vec![0; MAX_COMMAND],
            argv: vec![std::ptr::null(); MAX_STRINGS + 1],
            envp: vec![std::ptr::null(); MAX_STRINGS + 1],
            groups: vec![0; MAX_GROUPS],
        }
    }
}

/// A command decoded in place: every pointer points into the [`ZygoteMemory`].
pub struct Decoded<'a> {
    /// The user and group ids.
    pub uid: libc::uid_t,
    /// The group id.
    pub gid: libc::gid_t,
    /// Whether stdio is a terminal.
    pub tty: bool,
    /// Supplementary groups.
    pub groups: &'a [libc::gid_t],
    /// The hostname.
    pub hostname: &'a CStr,
    /// The working directory.
    pub cwd: &'a CStr,
    /// The executable.
    pub exe: &'a CStr,
    /// argv, NULL-terminated.
    pub argv: *const *const libc::c_char,
    /// envp, NULL-terminated.
    pub envp: *const *const libc::c_char,
}

/// What a prepared container's process is told to run.
pub struct Command<'a> {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Whether stdio is a terminal.
    pub tty: bool,
    /// Supplementary groups.
    pub groups: &'a [u32],
    /// The container's hostname.
    pub hostname: &'a CStr,
    /// Working directory.
    pub cwd: &'a CStr,
    /// The executable's path in the container.
    pub exe: &'a CStr,
    /// Arguments.
    pub argv: &'a [CString],
    /// Environment.
    pub envp: &'a [CString],
}

/// Encodes `command`, or `None` when it does not fit a prepared container's limits
/// (the caller then makes a container the ordinary way).
pub fn encode(command: &Command<'_>) -> Option<Vec<u8>> {
    if command.groups.len() > MAX_GROUPS
        || command.argv.len() > MAX_STRINGS
        || command.envp.len() > MAX_STRINGS
    {
        return None;
    }
    let mut out = Vec::new();
    let int = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
    int(&mut out, command.uid);
    int(&mut out, command.gid);
    int(&mut out, u32::from(command.tty));
    int(&mut out, command.groups.len() as u32);
    for g in command.groups {
        int(&mut out, *g);
    }
    for s in [command.hostname, command.cwd, command.exe] {
        out.extend_from_slice(s.to_bytes_with_nul());
    }
    for list in [command.argv, command.envp] {
        int(&mut out, list.len() as u32);
        for s in list {
            out.extend_from_slice(s.to_bytes_with_nul());
        }
    }
    (out.len() <= MAX_COMMAND).then_some(out)
}

/// A reader over the received bytes that never panics or allocates.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn int(&mut self) -> Option<u32> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(4)?)?;
        self.pos += 4;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn string(&mut self) -> Option<&'a CStr> {
        let rest = self.buf.get(self.pos..)?;
        let s = CStr::from_bytes_until_nul(rest).ok()?;
        self.pos += s.to_bytes_with_nul().len();
        Some(s)
    }
}

/// Decodes the first `len` bytes of `mem.buf` in place; `None` when they are not a
/// whole command within the limits.
pub fn decode(mem: &mut ZygoteMemory, len: usize) -> Option<Decoded<'_>> {
    let ZygoteMemory {
        buf,
        argv,
        envp,
        groups,
    } = mem;
    let mut c = Cursor {
        buf: buf.get(..len)?,
        pos: 0,
    };
    let (uid, gid, tty) = (c.int()?, c.int()?, c.int()? != 0);
    let ngroups = c.int()? as usize;
    let group_slots = groups.get_mut(..ngroups)?;
    for slot in group_slots.iter_mut() {
        *slot = c.int()?;
    }
    let (hostname, cwd, exe) = (c.string()?, c.string()?, c.string()?);
    for list in [&mut *argv, &mut *envp] {
        let n = c.int()? as usize;
        // One slot more than the strings, for the terminating NULL.
        let slots = list.get_mut(..n.checked_add(1)?)?;
        let (last, strings) = slots.split_last_mut()?;
        for slot in strings {
            *slot = c.string()?.as_ptr();
        }
        *last = std::ptr::null();
    }
    (c.pos == len).then_some(Decoded {
        uid,
        gid,
        tty,
        groups: &groups[..ngroups],
        hostname,
        cwd,
        exe,
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
    })
}

/// Writes an 8-byte report `(code, errno)` to `fd`.
fn report(fd: RawFd, code: u32, errno: i32) {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&code.to_le_bytes());
    bytes[4..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: writes 8 bytes from a live stack buffer.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// Closes every fd of the zygote but stdio and `keep`: it is a fork of the agent and
/// must not hold the agent's connections or listeners open while it waits.
fn close_others(keep: RawFd) {
    let close = |first: u32, last: u32| {
        if first <= last {
            // SAFETY: close_range takes integers; it closes fds this process owns.
            unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
        }
    };
    let keep = keep as u32;
    close(3, keep.saturating_sub(1));
    close(keep.saturating_add(1), u32::MAX);
}

/// Receives the command and its fds on `control` into `mem`: the message's length and
/// the fds, or `None`.
fn receive(control: RawFd, mem: &mut ZygoteMemory) -> Option<(usize, [RawFd; SENT_FDS])> {
    let mut iov = libc::iovec {
        iov_base: mem.buf.as_mut_ptr().cast(),
        iov_len: mem.buf.len(),
    };
    // Room for one SCM_RIGHTS header and SENT_FDS fds, 8-byte aligned.
    let mut space = [0u64; 8];
    // SAFETY: msghdr is plain data; zero is a valid start for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&space);
    let n = loop {
        // SAFETY: msg points to live buffers of the sizes it states; received fds
        // get FD_CLOEXEC, so none leaks into the command.
        let n = unsafe { libc::recvmsg(control, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        // SAFETY: reads this thread's errno.
        if n >= 0 || unsafe { *libc::__errno_location() } != libc::EINTR {
            break n;
        }
    };
    if n <= 0 || msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return None;
    }
    // SAFETY: msg's control buffer was filled by recvmsg; CMSG_FIRSTHDR checks its
    // length.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return None;
    }
    // SAFETY: cmsg points into `space`, at a header recvmsg wrote.
    let header = unsafe { &*cmsg };
    let want = std::mem::size_of::<[RawFd; SENT_FDS]>();
    // SAFETY: CMSG_LEN only computes a length.
    let expected = unsafe { libc::CMSG_LEN(want as u32) } as usize;
    if header.cmsg_level != libc::SOL_SOCKET
        || header.cmsg_type != libc::SCM_RIGHTS
        || header.cmsg_len != expected
    {
        return None;
    }
    let mut fds = [0; SENT_FDS];
    // SAFETY: the header holds exactly SENT_FDS fds (checked above); CMSG_DATA points
    // at them, possibly unaligned.
    unsafe {
        std::ptr::copy_nonoverlapping(libc::CMSG_DATA(cmsg), fds.as_mut_ptr().cast::<u8>(), want);
    }
    Some((n as usize, fds))
}

/// The zygote: enters the container's root, says it is ready on `control`, waits for
/// its command and runs it. Everything it reports before the command goes to
/// `control`; after, to the error pipe that came with the command.
pub fn zygote(namespaces: &Namespaces, mem: &mut ZygoteMemory, control: RawFd) -> ! {
    close_others(control);
    if let Namespaces::Create { hostname, rootfs } = namespaces {
        child::enter_new_root(hostname, rootfs, control);
    }
    report(control, READY, 0);
    let Some((len, [stdin, stdout, stderr, err_fd])) = receive(control, mem) else {
        child::fail(control, Step::Plan)
    };
    let Some(command) = decode(mem, len) else {
        child::fail(err_fd, Step::Plan)
    };
    let name = command.hostname.to_bytes();
    // SAFETY: name points to name.len() valid bytes.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    child::check(ret, err_fd, Step::Hostname);
    let steps = ExecSteps {
        stdio: [stdin, stdout, stderr],
        tty: command.tty,
        uid: command.uid,
        gid: command.gid,
        groups: command.groups,
        cwd: command.cwd,
        exe: command.exe,
        argv: command.argv,
        envp: command.envp,
    };
    child::exec(&steps, err_fd)
}

#[cfg(test)]
#[path = "zygote_tests.rs"]
mod tests;
