//! Forwarding the signals a user sends to `husk run` (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT)
//! to the container instead of letting them kill husk half-way through its cleanup.
#![allow(
    unsafe_code,
    reason = "signal masks and sigwait have no safe std wrapper"
)]

/// The signals `husk run` forwards.
pub const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The forwarded signals and SIGWINCH (the terminal was resized; its default action
/// is to be ignored, so taking it never changes what a process does).
const TAKEN: [i32; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGWINCH,
];

fn forwarded_set() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigemptyset initializes the set we own; sigaddset only sets bits in it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in TAKEN {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Block the forwarded signals in this thread and in every thread it starts later. Call
/// it before any other thread exists, then take them with [`wait`] on one thread.
pub fn block() -> std::io::Result<()> {
    let set = forwarded_set();
    // SAFETY: a valid set; the old mask is not needed.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(ret))
    }
}

/// Wait for the next forwarded signal or SIGWINCH.
pub fn wait() -> i32 {
    let set = forwarded_set();
    let mut sig = 0;
    // SAFETY: a valid set and a valid out pointer; sigwait only writes `sig`.
    let ret = unsafe { libc::sigwait(&set, &mut sig) };
    if ret == 0 {
        sig
    } else {
        libc::SIGTERM
    }
}

/// Wait for the next forwarded signal, letting SIGWINCH pass.
pub fn wait_forwarded() -> i32 {
    loop {
        let sig = wait();
        if sig != libc::SIGWINCH {
            return sig;
        }
    }
}

/// Send `signal` to process `pid` (a child the caller has not reaped).
pub fn send(pid: i32, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill only reads its integer arguments.
    match unsafe { libc::kill(pid, signal) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}
