//! Opening the connections the tool measures: AF_VSOCK (libc, std has none), the hybrid
//! vsock model's Unix sockets (`CONNECT <port>` handshake) and TCP. Every connection is
//! returned as a `File`, since read, write and shutdown are all the exchange needs.
#![allow(
    unsafe_code,
    reason = "std has no AF_VSOCK: socket, bind, listen, accept and connect go through libc"
)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a client keeps retrying while its peer is not there yet (the guest is
/// booting, or the host has not started listening).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(ret)
    }
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory arguments; the result is checked before use.
    let ret = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let fd = check(ret, "socket(AF_VSOCK)")?;
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const VM_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// Accepts one AF_VSOCK connection on `port` (any CID).
pub fn vsock_accept(port: u32) -> io::Result<File> {
    let sock = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    let ptr = (&addr as *const libc::sockaddr_vm).cast::<libc::sockaddr>();
    // SAFETY: ptr points to a live sockaddr_vm of VM_LEN bytes.
    check(unsafe { libc::bind(sock.as_raw_fd(), ptr, VM_LEN) }, "bind")?;
    // SAFETY: listen() has no memory arguments.
    check(unsafe { libc::listen(sock.as_raw_fd(), 1) }, "listen")?;
    println!("vsock-listening={port}");
    let (no_addr, no_len) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: null address pointers are allowed: the peer's address is not wanted.
    let ret = unsafe { libc::accept(sock.as_raw_fd(), no_addr, no_len) };
    let fd = check(ret, "accept")?;
    // SAFETY: fd was just returned by accept() and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Connects to `cid:port` over AF_VSOCK, retrying refused connections until `patience`.
pub fn vsock_connect(cid: u32, port: u32, patience: Duration) -> io::Result<File> {
    retry(patience, || {
        let sock = vsock_socket()?;
        let addr = vsock_addr(cid, port);
        let ptr = (&addr as *const libc::sockaddr_vm).cast::<libc::sockaddr>();
        // SAFETY: ptr points to a live sockaddr_vm of VM_LEN bytes.
        let ret = unsafe { libc::connect(sock.as_raw_fd(), ptr, VM_LEN) };
        check(ret, "connect")?;
        Ok(File::from(sock))
    })
}

/// Host side of the hybrid model: connects to `uds`, asks for guest `port` and waits for
/// `OK <n>`, retrying (the socket appears when husk starts, the guest listens later).
/// Returns the stream and the host port husk reported.
pub fn uds_connect(uds: &str, port: u32, patience: Duration) -> io::Result<(File, String)> {
    retry(patience, || {
        let mut stream = UnixStream::connect(uds)?;
        stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
        let line = read_line(&mut stream)?;
        match line.strip_prefix("OK ") {
            Some(n) => Ok((File::from(OwnedFd::from(stream)), n.to_string())),
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("vsock handshake answered {line:?}"),
            )),
        }
    })
}

/// Reads one `\n`-terminated line byte by byte, so no stream data after it is consumed.
fn read_line(stream: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte)? == 1 {
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
    }
    Err(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("vsock handshake: end of stream after {line:?}"),
    ))
}

/// Listens on the Unix socket `path` (replacing a stale file) and accepts one connection.
pub fn uds_accept(path: &str) -> io::Result<File> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    println!("uds-listening={path}");
    let (stream, _) = listener.accept()?;
    let _ = std::fs::remove_file(path);
    Ok(File::from(OwnedFd::from(stream)))
}

/// Listens on the Unix socket `path` and accepts every connection, holding each open
/// without reading, until killed: a host service with many clients. Raises its own
/// descriptor limit as far as it may first.
pub fn uds_hold(path: &str) -> io::Result<()> {
    raise_fd_limit();
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    println!("uds-hold-listening={path}");
    let mut held = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _)) => held.push(stream),
            // Out of descriptors: keep what is held and try again later.
            Err(_) => sleep(RETRY_PAUSE),
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, valid for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one rlimit struct, valid for the call.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

/// Accepts one TCP connection on `port` (all addresses).
pub fn tcp_accept(port: u16) -> io::Result<File> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    println!("tcp-listening={port}");
    let (stream, _) = listener.accept()?;
    Ok(File::from(OwnedFd::from(stream)))
}

/// Connects to `addr:port` over TCP, retrying until `patience`.
pub fn tcp_connect(addr: &str, port: u16, patience: Duration) -> io::Result<File> {
    retry(patience, || {
        let stream = TcpStream::connect((addr, port))?;
        Ok(File::from(OwnedFd::from(stream)))
    })
}

/// Turns off Nagle's algorithm on a TCP socket (a request of a round trip goes out at
/// once); other sockets ignore it.
pub fn no_delay(conn: &File) {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one int through the pointer, valid for the call; a
    // socket that is not TCP fails with an error, which is ignored.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Ends the sending half of a socket, so the peer reads end of stream.
pub fn half_close(conn: &File) -> io::Result<()> {
    // SAFETY: shutdown() has no memory arguments; conn's fd is open.
    let ret = unsafe { libc::shutdown(conn.as_raw_fd(), libc::SHUT_WR) };
    check(ret, "shutdown")?;
    Ok(())
}

/// Runs `attempt` until it succeeds or `patience` has passed (then its last error).
fn retry<T>(patience: Duration, mut attempt: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = Instant::now() + patience;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => sleep(RETRY_PAUSE),
        }
    }
}
