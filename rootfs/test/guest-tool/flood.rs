//! A guest's connection flood, as an attacker would send it: many non-blocking AF_VSOCK
//! connects from distinct source ports to one host port, all in flight at once, each
//! counted by how it ended (connected, refused, other error, still pending). The
//! connected ones can be held open until the tool is killed.
#![allow(
    unsafe_code,
    reason = "std has no AF_VSOCK: socket, setsockopt, connect, poll and getsockopt go through libc"
)]

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (linux/vm_sockets.h, the `struct timeval` form).
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

/// How the connects ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Established connections (held open by the caller as long as it likes).
    pub connected: Vec<OwnedFd>,
    /// Refused by the peer (an RST: ECONNRESET or ECONNREFUSED).
    pub refused: usize,
    /// Other errors, by errno name.
    pub errors: BTreeMap<String, usize>,
    /// Still connecting when the patience ran out.
    pub pending: usize,
}

impl Outcome {
    /// Prints `vsock-flood-KEY=VALUE` lines.
    pub fn print(&self) {
        println!("vsock-flood-connected={}", self.connected.len());
        println!("vsock-flood-refused={}", self.refused);
        println!("vsock-flood-pending={}", self.pending);
        let errors: usize = self.errors.values().sum();
        println!("vsock-flood-errors={errors}");
        for (name, n) in &self.errors {
            println!("vsock-flood-error-{name}={n}");
        }
    }

    fn record_error(&mut self, errno: i32) {
        match errno {
            libc::ECONNRESET | libc::ECONNREFUSED => self.refused += 1,
            e => *self.errors.entry(errno_name(e)).or_default() += 1,
        }
    }
}

fn errno_name(errno: i32) -> String {
    match errno {
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EMFILE => "EMFILE".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EAGAIN => "EAGAIN".into(),
        e => format!("errno{e}"),
    }
}

/// Lets this process hold `count` sockets and some more (root may raise the hard limit).
fn allow_fds(count: usize) -> io::Result<()> {
    let n = libc::rlim_t::try_from(count + 64).unwrap_or(libc::rlim_t::MAX);
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads one rlimit struct, valid for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts one non-blocking connect to `cid:port`; Ok(None) when it failed at once
/// (recorded in `out`).
fn start_connect(
    cid: u32,
    port: u32,
    patience: Duration,
    out: &mut Outcome,
) -> io::Result<Option<OwnedFd>> {
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket() has no memory arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: libc::time_t::try_from(patience.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: 0,
    };
    let len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    let ptr = (&timeout as *const libc::timeval).cast::<libc::c_void>();
    // SAFETY: ptr points to a live timeval of `len` bytes.
    let ret =
        unsafe { libc::setsockopt(fd, libc::AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, ptr, len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    let addr_len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    let addr_ptr = (&addr as *const libc::sockaddr_vm).cast::<libc::sockaddr>();
    // SAFETY: addr_ptr points to a live sockaddr_vm of addr_len bytes.
    if unsafe { libc::connect(fd, addr_ptr, addr_len) } == 0 {
        out.connected.push(sock);
        return Ok(None);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EINPROGRESS) => Ok(Some(sock)),
        Some(e) => {
            out.record_error(e);
            Ok(None)
        }
        None => Ok(None),
    }
}

/// The pending error of a socket whose connect finished (0 when it connected).
fn socket_error(sock: &OwnedFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let ptr = (&mut err as *mut libc::c_int).cast::<libc::c_void>();
    // SAFETY: ptr and len describe a live c_int, written by the call.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            ptr,
            &mut len,
        )
    };
    if ret < 0 {
        return io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
    }
    err
}

/// Waits up to `deadline` for the connects in `pending` to finish, recording each.
fn settle(mut pending: Vec<OwnedFd>, deadline: Instant, out: &mut Outcome) -> io::Result<()> {
    while !pending.is_empty() && Instant::now() < deadline {
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let count = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: fds is a live array of `count` pollfd structs, written by the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), count, 1000) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let mut still = Vec::new();
        for (sock, fd) in pending.into_iter().zip(&fds) {
            if fd.revents == 0 {
                still.push(sock);
                continue;
            }
            match socket_error(&sock) {
                0 => out.connected.push(sock),
                e => out.record_error(e),
            }
        }
        pending = still;
    }
    out.pending = pending.len();
    Ok(())
}

/// Opens `count` connections to `cid:port` at once, waits up to `patience` for them.
pub fn flood(cid: u32, port: u32, count: usize, patience: Duration) -> io::Result<Outcome> {
    allow_fds(count)?;
    let deadline = Instant::now() + patience;
    let mut out = Outcome::default();
    let mut pending = Vec::with_capacity(count);
    for _ in 0..count {
        if let Some(sock) = start_connect(cid, port, patience, &mut out)? {
            pending.push(sock);
        }
    }
    settle(pending, deadline, &mut out)?;
    Ok(out)
}
