//! The terminal side of a process `husk run` or `husk exec` runs in a sandbox: Ctrl-C
//! and friends forwarded to it, terminal resizes, and raw mode for `-it`.

/// Where forwarded signals and terminal resizes go once a process runs.
pub(crate) trait Forward: Send {
    fn signal(&self, signal: i32) -> bool;
    fn resize(&self, size: husk::sandbox::TtySize) -> bool;
}

impl Forward for husk::sandbox::Signaller {
    fn signal(&self, signal: i32) -> bool {
        self.send(signal)
    }
    fn resize(&self, size: husk::sandbox::TtySize) -> bool {
        husk::sandbox::Signaller::resize(self, size)
    }
}

impl Forward for husk::detached::ControlSignaller {
    fn signal(&self, signal: i32) -> bool {
        husk::detached::ControlSignaller::signal(self, signal)
    }
    fn resize(&self, size: husk::sandbox::TtySize) -> bool {
        husk::detached::ControlSignaller::resize(self, size)
    }
}

pub(crate) type ForwardTarget = std::sync::Arc<std::sync::Mutex<Option<Box<dyn Forward>>>>;

/// Block Ctrl-C and friends (call before any thread starts) and forward them, and
/// terminal resizes, to the target once it is set. Returns the target and the signal
/// that arrived while there was none (0 if none did).
pub(crate) fn forward_signals(
) -> std::io::Result<(ForwardTarget, std::sync::Arc<std::sync::atomic::AtomicI32>)> {
    use husk::sandbox::{signals, terminal};
    use std::sync::atomic::Ordering;
    signals::block()?;
    let pending = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let target: ForwardTarget = std::sync::Arc::default();
    let (early, to) = (pending.clone(), target.clone());
    std::thread::spawn(move || loop {
        let sig = signals::wait();
        let guard = to.lock().unwrap_or_else(|e| e.into_inner());
        if sig == libc::SIGWINCH {
            if let (Some(t), Some(size)) = (guard.as_ref(), terminal::window_size()) {
                t.resize(size);
            }
        } else if !guard.as_ref().is_some_and(|t| t.signal(sig)) {
            early.store(sig, Ordering::SeqCst);
        }
    });
    Ok((target, pending))
}

/// The terminal of `-t`: its size, and raw mode when stdin is one and is read.
pub(crate) fn tty_setup(
    tty: bool,
    interactive: bool,
) -> std::io::Result<(
    Option<husk::sandbox::TtySize>,
    Option<husk::sandbox::terminal::RawMode>,
)> {
    use husk::sandbox::terminal;
    if !tty {
        return Ok((None, None));
    }
    let size = terminal::window_size().unwrap_or(terminal::DEFAULT_SIZE);
    let raw = if interactive {
        terminal::RawMode::enable()?
    } else {
        None
    };
    Ok((Some(size), raw))
}
