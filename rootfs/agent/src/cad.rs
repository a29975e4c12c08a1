//! Ctrl+Alt+Del as a request to shut down. By default the kernel restarts at once on
//! Ctrl+Alt+Del, without syncing; PID 1 turns that off (`reboot(CAD_OFF)`), and the
//! kernel then sends it SIGINT instead. No signal handler does the work: SIGINT is
//! blocked before the agent's first thread (every later thread inherits the mask) and
//! taken with `sigwait` on a thread of its own, which then runs the shutdown. Processes
//! the agent starts get an empty mask back before `execve` (`child::exec`).

use std::io;
use std::thread::JoinHandle;

use nix::sys::signal::{SigSet, Signal};

/// The signal the kernel sends PID 1 for Ctrl+Alt+Del once the restart is off.
pub const SIGNAL: Signal = Signal::SIGINT;

/// Blocks [`SIGNAL`] on the calling thread, then turns the kernel's immediate restart
/// off. Call it as PID 1, before any thread starts: only threads made afterwards
/// inherit the mask. Never in tests: it changes the whole machine's Ctrl+Alt+Del.
pub fn take_over() -> nix::Result<()> {
    block()?;
    nix::sys::reboot::set_cad_enabled(false)
}

/// Blocks [`SIGNAL`] on the calling thread (and the threads it makes from now on).
pub fn block() -> nix::Result<()> {
    SigSet::from(SIGNAL).thread_block()
}

/// Waits until [`SIGNAL`] is pending for the calling thread or the process, and takes
/// it. The caller must have it blocked ([`block`]), or it is delivered instead.
pub fn wait() -> nix::Result<()> {
    let set = SigSet::from(SIGNAL);
    while set.wait()? != SIGNAL {}
    Ok(())
}

/// Starts the thread that waits for Ctrl+Alt+Del ([`wait`]) and then runs `then`.
/// The caller has [`SIGNAL`] blocked, so the new thread has it blocked too.
pub fn on_ctrl_alt_del(then: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ctrl-alt-del".into())
        .spawn(move || match wait() {
            Ok(()) => then(),
            Err(e) => crate::console::log(&format!("waiting for Ctrl+Alt+Del: {e}")),
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use nix::sys::pthread::pthread_kill;

    use super::*;

    #[test]
    fn the_waiting_thread_runs_its_work_on_sigint_and_not_before() {
        // This test's thread only: the waiter inherits the mask, the harness is untouched.
        block().expect("block SIGINT");
        let (tx, rx) = channel();
        let waiter = on_ctrl_alt_del(move || tx.send(()).expect("report")).expect("spawn");
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        // Directed at the waiter, which has it blocked: pending until sigwait takes it.
        pthread_kill(waiter.as_pthread_t(), SIGNAL).expect("signal the waiter");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("work ran after SIGINT");
        waiter.join().expect("waiter ends");
    }

    #[test]
    fn a_blocked_sigint_stays_pending_until_wait_takes_it() {
        block().expect("block SIGINT");
        pthread_kill(nix::sys::pthread::pthread_self(), SIGNAL).expect("signal self");
        // Returns at once: the signal was kept, not lost or delivered.
        wait().expect("wait");
    }
}
