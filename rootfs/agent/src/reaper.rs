//! PID 1's duty and the source of exit statuses: one thread reaps every child with
//! `waitpid(-1)` (orphans included) and hands the statuses of registered container
//! processes to whoever waits for them. The agent marks itself a child subreaper so
//! the same holds when it runs as an ordinary process in tests.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// How a reaped process ended: `(exit code, killing signal)`, exactly one is set.
pub type RawExit = (Option<i32>, Option<i32>);

type Table = HashMap<i32, Sender<RawExit>>;

/// The process-wide reaper (one per process: `waitpid(-1)` takes every child).
pub struct Reaper {
    table: Mutex<Table>,
}

/// Registration rights; holding it keeps the reaper from handing out statuses, so a
/// process that exits before it is registered is not lost.
pub struct Registrar<'a>(MutexGuard<'a, Table>);

impl Registrar<'_> {
    /// Asks for `pid`'s exit status on the returned channel.
    pub fn register(&mut self, pid: i32) -> Receiver<RawExit> {
        let (tx, rx) = channel();
        self.0.insert(pid, tx);
        rx
    }
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// The reaper, started on first use.
pub fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| {
        // Orphaned grandchildren (the container processes) come back to the agent.
        let _ = nix::sys::prctl::set_child_subreaper(true);
        let spawned = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(|| reap_forever(&REAPER));
        if let Err(e) = spawned {
            crate::console::fatal(&format!("cannot start the reaper thread: {e}"));
        }
        Reaper {
            table: Mutex::new(HashMap::new()),
        }
    })
}

impl Reaper {
    /// Locks the table for registering a process that is being spawned.
    pub fn registrar(&self) -> Registrar<'_> {
        Registrar(self.table.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn deliver(&self, pid: Pid, exit: RawExit) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = table.remove(&pid.as_raw()) {
            let _ = tx.send(exit);
        }
    }
}

fn reap_forever(cell: &'static OnceLock<Reaper>) {
    loop {
        let exit = match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) => Some((pid, (Some(code), None))),
            Ok(WaitStatus::Signaled(pid, signal, _)) => Some((pid, (None, Some(signal as i32)))),
            Ok(_) | Err(Errno::EINTR) => None,
            Err(_) => {
                // No children right now (ECHILD): poll again shortly.
                std::thread::sleep(Duration::from_millis(20));
                None
            }
        };
        if let (Some((pid, raw)), Some(reaper)) = (exit, cell.get()) {
            reaper.deliver(pid, raw);
        }
    }
}
