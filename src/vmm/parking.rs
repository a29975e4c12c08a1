//! Pausing a VM's vCPUs: each vCPU thread, kicked out of KVM_RUN, sees the pause
//! request and parks on a condition variable until it is resumed (or the VM stops).
//! While parked it can be asked to save its whole state ([`VcpuState`]), which only its
//! own thread reads: the vCPU fd belongs to that thread, and a vCPU parked this way has
//! re-entered KVM_RUN after its last port or MMIO exit (the kick's `immediate_exit`),
//! so no emulated access is half done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::vstate::VcpuState;

/// A vCPU's answer to a save request.
pub type Saved = Result<VcpuState, String>;

#[derive(Default)]
struct Board {
    /// vCPU threads parked now.
    parked: usize,
    /// The save request asked for last (0: none).
    save_generation: u64,
    /// Per vCPU: the generation it answered and its state.
    saved: Vec<(u64, Option<Saved>)>,
}

/// Pause and save requests for the vCPUs of one VM.
#[derive(Default)]
pub struct Parking {
    /// Read by each vCPU after every exit, without the lock.
    wanted: AtomicBool,
    board: Mutex<Board>,
    changed: Condvar,
}

impl Parking {
    /// Requests for `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> Self {
        let board = Board {
            saved: (0..vcpus).map(|_| (0, None)).collect(),
            ..Board::default()
        };
        Self {
            wanted: AtomicBool::new(false),
            board: Mutex::new(board),
            changed: Condvar::new(),
        }
    }

    fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the vCPUs should park (checked by each vCPU out of KVM_RUN).
    pub fn pause_wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    /// Ask every vCPU to park; the caller kicks the threads.
    pub fn request_pause(&self) {
        let _board = self.board();
        self.wanted.store(true, Ordering::Release);
    }

    /// Let parked vCPUs run again.
    pub fn resume(&self) {
        let _board = self.board();
        self.wanted.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    /// Wake parked vCPUs so that they see a stop.
    pub fn wake(&self) {
        let _board = self.board();
        self.changed.notify_all();
    }

    /// Called by vCPU `id` when [`Parking::pause_wanted`]: parks until resumed or
    /// `stopping()` says the VM ends, answering save requests with `save()` meanwhile.
    pub fn park(&self, id: u8, stopping: impl Fn() -> bool, save: impl Fn() -> Saved) {
        let mut board = self.board();
        board.parked += 1;
        self.changed.notify_all();
        while self.pause_wanted() && !stopping() {
            let wanted = board.save_generation;
            let slot = usize::from(id);
            if board.saved.get(slot).is_some_and(|(g, _)| *g < wanted) {
                board.saved[slot] = (wanted, Some(save()));
                self.changed.notify_all();
                continue;
            }
            board = self.changed.wait(board).unwrap_or_else(|e| e.into_inner());
        }
        board.parked -= 1;
        self.changed.notify_all();
    }

    /// Wait up to `timeout` until `count` vCPUs are parked; the number parked. `kick`
    /// runs every millisecond meanwhile (a kick can land just before a thread enters
    /// KVM_RUN; `immediate_exit` covers that, but kicking again costs nothing).
    pub fn wait_parked(&self, count: usize, timeout: Duration, kick: impl Fn()) -> usize {
        let deadline = Instant::now() + timeout;
        let mut board = self.board();
        while board.parked < count {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            drop(board);
            kick();
            board = self.board();
            let wait = (deadline - now).min(Duration::from_millis(1));
            board = self
                .changed
                .wait_timeout(board, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        board.parked
    }

    /// Ask every parked vCPU for its state and wait up to `timeout` for all `count`;
    /// the answers in vCPU order, or `None` for a vCPU that did not answer.
    pub fn save_all(&self, count: usize, timeout: Duration) -> Vec<Option<Saved>> {
        let mut board = self.board();
        board.save_generation += 1;
        let generation = board.save_generation;
        self.changed.notify_all();
        let (mut board, _) = self
            .changed
            .wait_timeout_while(board, timeout, |b| {
                b.saved.iter().take(count).any(|(g, _)| *g < generation)
            })
            .unwrap_or_else(|e| e.into_inner());
        board
            .saved
            .iter_mut()
            .take(count)
            .map(|(g, s)| if *g >= generation { s.take() } else { None })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn never() -> bool {
        false
    }

    #[test]
    fn a_parked_vcpu_waits_until_resumed() {
        let parking = Arc::new(Parking::new(1));
        parking.request_pause();
        let p = parking.clone();
        let t = std::thread::spawn(move || p.park(0, never, || Err("unused".into())));
        assert_eq!(parking.wait_parked(1, Duration::from_secs(10), || {}), 1);
        assert!(!t.is_finished());
        parking.resume();
        t.join().unwrap();
        assert_eq!(parking.wait_parked(1, Duration::ZERO, || {}), 0);
    }

    #[test]
    fn a_parked_vcpu_answers_a_save_request_once() {
        let parking = Arc::new(Parking::new(1));
        parking.request_pause();
        let p = parking.clone();
        let saves = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s = saves.clone();
        let t = std::thread::spawn(move || {
            p.park(0, never, || {
                s.fetch_add(1, Ordering::SeqCst);
                Err("no KVM here".into())
            })
        });
        parking.wait_parked(1, Duration::from_secs(10), || {});
        let answers = parking.save_all(1, Duration::from_secs(10));
        assert!(matches!(answers.as_slice(), [Some(Err(e))] if e == "no KVM here"));
        parking.resume();
        t.join().unwrap();
        assert_eq!(saves.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_vcpu_that_is_not_parked_is_missing_from_the_answers() {
        let parking = Parking::new(2);
        let answers = parking.save_all(2, Duration::from_millis(10));
        assert!(answers.iter().all(Option::is_none));
    }

    #[test]
    fn a_stop_ends_the_park() {
        let parking = Arc::new(Parking::new(1));
        parking.request_pause();
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (parking.clone(), stop.clone());
        let t = std::thread::spawn(move || {
            p.park(0, || s.load(Ordering::SeqCst), || Err("unused".into()))
        });
        parking.wait_parked(1, Duration::from_secs(10), || {});
        stop.store(true, Ordering::SeqCst);
        parking.wake();
        t.join().unwrap();
    }
}
