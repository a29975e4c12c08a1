//! PID 1's duty and the source of exit statuses: one thread reaps every child with
//! `waitpid(-1)` (orphans included) and hands the statuses of registered container
//! processes to whoever waits for them. The agent marks itself a child subreaper so
//! the same holds when it runs as an ordinary process in tests.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// How a reaped process ended: `(exit code, killing signal)`, exactly one is set.
pub type RawExit = (Option<i32>, Option<i32>);

/// Registered processes, and a count of spawns so the reaper can sleep while the
/// agent has no children at all (none can appear but through a spawn).
#[derive(Default)]
struct Table {
    waiting: HashMap<i32, Sender<RawExit>>,
    spawns: u64,
}

/// The process-wide reaper (one per process: `waitpid(-1)` takes every child).
pub struct Reaper {
    table: Mutex<Table>,
    spawned: Condvar,
}

/// Registration rights; holding it keeps the reaper from handing out statuses, so a
/// process that exits before it is registered is not lost.
pub struct Registrar<'a>(MutexGuard<'a, Table>);

impl Registrar<'_> {
    /// Asks for `pid`'s exit status on the returned channel.
    pub fn register(&mut self, pid: i32) -> Receiver<RawExit> {
        let (tx, rx) = channel();
        self.0.waiting.insert(pid, tx);
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
            table: Mutex::default(),
            spawned: Condvar::new(),
        }
    })
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the table for registering a process that is about to be forked, and wakes
    /// the reaper if it sleeps for lack of children.
    pub fn registrar(&self) -> Registrar<'_> {
        let mut table = self.lock();
        table.spawns += 1;
        self.spawned.notify_all();
        Registrar(table)
    }

    fn spawns(&self) -> u64 {
        self.lock().spawns
    }

    /// Sleeps until a spawn after the `seen`-th one.
    fn wait_for_spawn(&self, seen: u64) {
        let table = self.lock();
        let _table = self
            .spawned
            .wait_while(table, |t| t.spawns == seen)
            .unwrap_or_else(|p| p.into_inner());
    }

    fn deliver(&self, pid: Pid, exit: RawExit) {
        if let Some(tx) = self.lock().waiting.remove(&pid.as_raw()) {
            let _ = tx.send(exit);
        }
    }
}

fn reap_forever(cell: &'static OnceLock<Reaper>) {
    loop {
        let seen = cell.get().map_or(0, Reaper::spawns);
        let exit = match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) => Some((pid, (Some(code), None))),
            Ok(WaitStatus::Signaled(pid, signal, _)) => Some((pid, (None, Some(signal as i32)))),
            Ok(_) | Err(Errno::EINTR) => None,
            Err(_) => {
                // ECHILD: no children until the next spawn.
                match cell.get() {
                    Some(reaper) => reaper.wait_for_spawn(seen),
                    None => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
                None
            }
        };
        if let (Some((pid, raw)), Some(reaper)) = (exit, cell.get()) {
            reaper.deliver(pid, raw);
        }
    }
}
