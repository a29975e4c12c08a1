//! A stock of things made ahead by a thread of its own (pre-spawned VMMs, started
//! sandboxes): up to `size` wait; taking one wakes the thread to make the next, at once
//! ([`Stock::take`]) or when the [`Lease`] of what was taken is dropped
//! ([`Stock::take_leased`]: what is out counts against the size, so the next is made
//! after its job, not beside it). A failed make is logged and retried after a pause.
//! Dropping the stock stops the thread and drops what still waits.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::SandboxError;

/// How long the stock waits after a failed make before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Makes one item of a stock.
pub(crate) type Make<T> = Box<dyn Fn() -> Result<T, SandboxError> + Send + Sync>;

struct State<T> {
    ready: VecDeque<T>,
    /// Taken with a lease not yet dropped.
    out: usize,
    closed: bool,
}

/// What a [`Stock::take_leased`] item holds: dropping it lets the stock make the next.
pub(crate) struct Lease(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(end) = self.0.take() {
            end();
        }
    }
}

struct Shared<T> {
    size: usize,
    what: &'static str,
    make: Make<T>,
    state: Mutex<State<T>>,
    changed: Condvar,
}

/// Up to `size` items made ahead (see the module's doc).
pub(crate) struct Stock<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    filler: Option<JoinHandle<()>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep `size` items ready until the stock closes.
    fn fill(&self) {
        loop {
            {
                let mut state = self.lock();
                while !state.closed && state.ready.len() + state.out >= self.size {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                if state.closed {
                    return;
                }
            }
            match (self.make)() {
                Ok(item) => {
                    let mut state = self.lock();
                    if state.closed {
                        return;
                    }
                    state.ready.push_back(item);
                    drop(state);
                    self.changed.notify_all();
                }
                Err(e) => {
                    log::warn!("{}: {}", self.what, crate::error_chain(&e));
                    let state = self.lock();
                    drop(self.changed.wait_timeout(state, RETRY_AFTER));
                }
            }
        }
    }
}

impl<T: Send + 'static> Stock<T> {
    /// A stock of `size` items made by `make` on a thread named `thread`; `what` names
    /// the stock in warnings.
    pub(crate) fn new(
        size: usize,
        what: &'static str,
        thread: &str,
        make: Make<T>,
    ) -> Result<Self, SandboxError> {
        let shared = Arc::new(Shared {
            size,
            what,
            make,
            state: Mutex::new(State {
                ready: VecDeque::new(),
                out: 0,
                closed: false,
            }),
            changed: Condvar::new(),
        });
        let filling = shared.clone();
        let filler = std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || filling.fill())
            .map_err(|e| SandboxError::Vmm(format!("cannot start the {what}'s thread: {e}")))?;
        Ok(Self {
            shared,
            filler: Some(filler),
        })
    }

    /// How many wait now.
    pub(crate) fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }

    /// Block until `n` wait (at most the size), or `timeout` passed; whether they do.
    pub(crate) fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        let n = n.min(self.shared.size);
        let state = self.shared.lock();
        let (state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |s| s.ready.len() < n)
            .unwrap_or_else(|e| e.into_inner());
        state.ready.len() >= n
    }

    /// The oldest waiting item that is still `alive` (the dead ones are dropped), if
    /// the oldest `fits`; the thread makes the next.
    pub(crate) fn take(&self, fits: impl Fn(&T) -> bool, alive: impl Fn(&T) -> bool) -> Option<T> {
        self.take_counted(fits, alive, false)
    }

    /// [`Stock::take`], but the thread makes the next only when the returned lease is
    /// dropped (the taken item's job is over).
    pub(crate) fn take_leased(
        &self,
        fits: impl Fn(&T) -> bool,
        alive: impl Fn(&T) -> bool,
    ) -> Option<(T, Lease)> {
        let item = self.take_counted(fits, alive, true)?;
        let shared = Arc::downgrade(&self.shared);
        let end = move || {
            if let Some(shared) = shared.upgrade() {
                let mut state = shared.lock();
                state.out = state.out.saturating_sub(1);
                drop(state);
                shared.changed.notify_all();
            }
        };
        Some((item, Lease(Some(Box::new(end)))))
    }

    fn take_counted(
        &self,
        fits: impl Fn(&T) -> bool,
        alive: impl Fn(&T) -> bool,
        leased: bool,
    ) -> Option<T> {
        let mut state = self.shared.lock();
        if !state.ready.front().is_some_and(fits) {
            return None;
        }
        let taken = loop {
            match state.ready.pop_front() {
                Some(item) if alive(&item) => break Some(item),
                Some(_) => continue,
                None => break None,
            }
        };
        if taken.is_some() && leased {
            state.out += 1;
        }
        drop(state);
        self.shared.changed.notify_all();
        taken
    }
}

impl<T: Send + 'static> Drop for Stock<T> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        if let Some(filler) = self.filler.take() {
            drop(filler.join());
        }
        let waiting = std::mem::take(&mut self.shared.lock().ready);
        drop(waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(size: usize) -> (Stock<usize>, Arc<AtomicUsize>) {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let make: Make<usize> = Box::new(move || Ok(counter.fetch_add(1, Ordering::SeqCst)));
        (
            Stock::new(size, "test stock", "test-stock", make).unwrap(),
            made,
        )
    }

    #[test]
    fn it_fills_to_its_size_and_refills_what_is_taken() {
        let (stock, made) = counting(2);
        assert!(stock.wait_ready(2, Duration::from_secs(10)));
        assert_eq!(stock.take(|_| true, |_| true), Some(0));
        assert!(stock.wait_ready(2, Duration::from_secs(10)));
        assert_eq!(made.load(Ordering::SeqCst), 3);
        assert_eq!(stock.ready(), 2);
    }

    #[test]
    fn an_unfit_front_is_not_taken_and_dead_ones_are_skipped() {
        let (stock, _) = counting(3);
        assert!(stock.wait_ready(3, Duration::from_secs(10)));
        assert_eq!(stock.take(|n| *n == 1, |_| true), None);
        assert_eq!(stock.take(|_| true, |n| *n != 0), Some(1));
    }

    #[test]
    fn a_leased_item_is_replaced_only_when_its_lease_ends() {
        let (stock, made) = counting(1);
        assert!(stock.wait_ready(1, Duration::from_secs(10)));
        let (item, lease) = stock.take_leased(|_| true, |_| true).unwrap();
        assert_eq!(item, 0);
        assert!(!stock.wait_ready(1, Duration::from_millis(100)));
        assert_eq!(made.load(Ordering::SeqCst), 1);
        drop(lease);
        assert!(stock.wait_ready(1, Duration::from_secs(10)));
        assert_eq!(made.load(Ordering::SeqCst), 2);
        // A lease that outlives its stock ends quietly.
        let (_, lease) = stock.take_leased(|_| true, |_| true).unwrap();
        drop(stock);
        drop(lease);
    }

    #[test]
    fn a_failing_make_leaves_it_empty() {
        let make: Make<u8> = Box::new(|| Err(SandboxError::Vmm("no".into())));
        let stock = Stock::new(1, "test stock", "test-stock", make).unwrap();
        assert!(!stock.wait_ready(1, Duration::from_millis(50)));
        assert_eq!(stock.take(|_| true, |_| true), None);
    }
}
