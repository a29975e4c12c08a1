//! The caller's side: `husk exec` through the control socket, `husk stop`, and
//! `husk run -d` starting a monitor.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_protocol::{
    host_handshake, read_message, write_message, ExitStatus, Message, ProtocolError,
};

use super::{
    generate_name, io_err, DetachedError, DetachedSnapshot, Request, RestoreFrom, SandboxDir,
    State, Status, DETACHED_FILE, EXEC_PROCESS, MAIN_PROCESS,
};
use crate::sandbox::stdio::{forward_stdin, StdinWindow};
use crate::sandbox::{CopyRequest, RunSpec, Stdio};

/// A connection to a detached sandbox's monitor.
pub struct Control {
    name: String,
    conn: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
}

/// Sends signals and resizes to a process over a control connection, from any thread.
#[derive(Clone)]
pub struct ControlSignaller {
    writer: Arc<Mutex<UnixStream>>,
}

impl ControlSignaller {
    fn send(&self, message: &Message) -> bool {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        write_message(&mut *conn, message).is_ok()
    }

    /// Signal the exec'd process.
    pub fn signal(&self, signal: i32) -> bool {
        self.send(&Message::Signal {
            process: EXEC_PROCESS,
            signal,
        })
    }

    /// Resize the exec'd process's terminal.
    pub fn resize(&self, size: crate::sandbox::TtySize) -> bool {
        self.send(&Message::Resize {
            process: EXEC_PROCESS,
            rows: size.rows,
            cols: size.cols,
        })
    }
}

impl Control {
    /// Connect to the monitor of sandbox `name`.
    pub fn connect(name: &str) -> Result<Self, DetachedError> {
        let dir = SandboxDir::open(name)?;
        Self::connect_at(&dir.control_socket(), name)
    }

    /// Connect to the monitor listening on `socket`, the control socket of sandbox
    /// `name`.
    pub(super) fn connect_at(socket: &Path, name: &str) -> Result<Self, DetachedError> {
        let mut conn =
            UnixStream::connect(socket).map_err(|_| DetachedError::NotRunning(name.to_string()))?;
        let control = |source| DetachedError::Control {
            name: name.to_string(),
            source,
        };
        host_handshake(&mut conn).map_err(control)?;
        let writer = Arc::new(Mutex::new(conn.try_clone().map_err(|e| control(e.into()))?));
        Ok(Self {
            name: name.to_string(),
            conn,
            writer,
        })
    }

    fn send(&self, message: &Message) -> Result<(), DetachedError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        write_message(&mut *conn, message).map_err(|source| DetachedError::Control {
            name: self.name.clone(),
            source,
        })
    }

    /// A handle for signals and resizes while [`Control::exec`] runs.
    pub fn signaller(&self) -> ControlSignaller {
        ControlSignaller {
            writer: self.writer.clone(),
        }
    }

    /// Run `spec` in the sandbox's container and stream its stdio; returns its status.
    pub fn exec(&mut self, spec: &RunSpec, stdio: Stdio) -> Result<ExitStatus, DetachedError> {
        self.begin_exec(spec)?;
        self.stream(stdio)
    }

    /// Ask for `spec` to run (as [`Control::exec`]) and wait until it has started.
    pub(super) fn begin_exec(&mut self, spec: &RunSpec) -> Result<(), DetachedError> {
        let exec = Message::Exec {
            container_id: String::new(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            user: spec.user.clone(),
            tty: spec.tty,
        };
        self.begin(&exec)
    }

    /// Run `copy` with the sandbox's container (`husk cp`): the archive comes as the
    /// process's stdout, or goes as its stdin; returns its status (code 1 after the
    /// reason on stderr). Refused while the sandbox is paused.
    pub fn copy(&mut self, copy: &CopyRequest, stdio: Stdio) -> Result<ExitStatus, DetachedError> {
        self.run(&crate::sandbox::copy_message(copy, ""), stdio)
    }

    /// Send a process request and stream its stdio until it exits.
    fn run(&mut self, request: &Message, stdio: Stdio) -> Result<ExitStatus, DetachedError> {
        self.begin(request)?;
        self.stream(stdio)
    }

    /// Send a process request and wait for its `Started`.
    fn begin(&mut self, request: &Message) -> Result<(), DetachedError> {
        self.send(request)?;
        let control = |source| DetachedError::Control {
            name: self.name.clone(),
            source,
        };
        match read_message(&mut self.conn).map_err(control)? {
            Message::Started { .. } => Ok(()),
            Message::Error { message } => Err(DetachedError::Exec(message)),
            other => Err(control(ProtocolError::Unexpected(format!("{other:?}")))),
        }
    }

    /// Stream the started process's stdio until it exits; its status.
    pub fn stream(&mut self, stdio: Stdio) -> Result<ExitStatus, DetachedError> {
        let control = |source| DetachedError::Control {
            name: self.name.clone(),
            source,
        };
        // The monitor acknowledges stdin as it passes it on; at most STDIN_WINDOW
        // bytes are on their way, whatever the process does with them. Closed when
        // this call returns, which ends the stdin thread at its next chunk.
        let window = Arc::new(StdinWindow::default());
        let _close = CloseOnDrop(window.clone());
        match stdio.stdin {
            Some(input) => {
                let writer = self.writer.clone();
                let window = window.clone();
                // The user's stdin may block forever (a terminal); the thread is not joined.
                std::thread::spawn(move || {
                    forward_stdin(input, EXEC_PROCESS, &window, |message| {
                        let mut conn = writer.lock().unwrap_or_else(|e| e.into_inner());
                        write_message(&mut *conn, message).is_ok()
                    });
                });
            }
            None => self.send(&Message::StdinClose {
                process: EXEC_PROCESS,
            })?,
        }
        let (mut stdout, mut stderr) = (stdio.stdout, stdio.stderr);
        loop {
            match read_message(&mut self.conn).map_err(control)? {
                Message::Stdout { data, .. } => {
                    drop(stdout.write_all(&data).and_then(|()| stdout.flush()))
                }
                Message::Stderr { data, .. } => {
                    drop(stderr.write_all(&data).and_then(|()| stderr.flush()))
                }
                Message::StdinAck { bytes, .. } => window.release(bytes),
                Message::Exited { status, .. } => return Ok(status),
                Message::Error { message } => return Err(DetachedError::Exec(message)),
                other => log::debug!("control: ignoring {other:?}"),
            }
        }
    }

    /// Send a request that is answered by `Done` or `Error`; the `Done`'s detail.
    pub(super) fn request(&mut self, message: &Message) -> Result<String, DetachedError> {
        self.send(message)?;
        let control = |source| DetachedError::Control {
            name: self.name.clone(),
            source,
        };
        loop {
            match read_message(&mut self.conn).map_err(control)? {
                Message::Done { detail } => return Ok(detail),
                Message::Error { message } => return Err(DetachedError::Exec(message)),
                other => log::debug!("control: ignoring {other:?}"),
            }
        }
    }

    /// Pause the sandbox's guest.
    pub fn pause(&mut self) -> Result<String, DetachedError> {
        self.request(&Message::Pause)
    }

    /// Let the sandbox's guest run again.
    pub fn resume(&mut self) -> Result<String, DetachedError> {
        self.request(&Message::Resume)
    }

    /// Save the sandbox into the new folder `dir` (absolute: the monitor resolves it).
    pub fn snapshot_to(&mut self, dir: &Path, durable: bool) -> Result<String, DetachedError> {
        let dir = dir.to_string_lossy().into_owned();
        self.request(&Message::SnapshotTo { dir, durable })
    }

    /// Signal the sandbox's main process.
    pub fn signal_main(&self, signal: i32) -> Result<(), DetachedError> {
        self.send(&Message::Signal {
            process: MAIN_PROCESS,
            signal,
        })
    }

    /// Stop the sandbox now (its processes are killed).
    pub fn shutdown(&self) -> Result<(), DetachedError> {
        self.send(&Message::Shutdown)
    }

    /// Wait until the monitor has gone (the connection closes), at most `timeout`;
    /// true if it has.
    pub fn wait_gone(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.conn.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            match read_message(&mut self.conn) {
                Err(ProtocolError::Closed) => return true,
                Err(ProtocolError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
                Ok(_) => {}
            }
        }
    }
}

/// Closes a stdin window when dropped, so its sender stops on every way out.
struct CloseOnDrop(Arc<StdinWindow>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// `husk snapshot restore DIR --name NAME`: start a detached sandbox named `name`
/// (`None`: a new name) from the snapshot `husk snapshot create` wrote in `dir`.
pub fn restore_snapshot(
    dir: &Path,
    name: Option<String>,
    husk: &Path,
) -> Result<SandboxDir, DetachedError> {
    let dir = absolute(dir)?;
    let path = dir.join(DETACHED_FILE);
    let text = fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
    let saved: DetachedSnapshot = serde_json::from_str(&text)
        .map_err(|e| io_err("corrupt", &path)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    let request = restore_request(saved, dir, name.unwrap_or_else(generate_name), false);
    launch(&request, husk)
}

/// `husk fork NAME --name NEW`: snapshot the running sandbox `name` into the new
/// sandbox's folder and start that one from it; `name` runs on. The new sandbox's
/// logs start with a copy of `name`'s.
pub fn fork(
    name: &str,
    new_name: Option<String>,
    husk: &Path,
) -> Result<SandboxDir, DetachedError> {
    let source = SandboxDir::open(name)?;
    let new_name = new_name.unwrap_or_else(generate_name);
    let dir = SandboxDir::create(&new_name)?;
    let result = fork_into(&source, &dir, husk);
    if result.is_err() {
        drop(dir.remove());
    }
    result.map(|()| dir)
}

fn fork_into(source: &SandboxDir, dir: &SandboxDir, husk: &Path) -> Result<(), DetachedError> {
    let snapshot = dir.path.join("fork-snapshot");
    let mut control = Control::connect(&source.name)?;
    control.snapshot_to(&snapshot, false)?;
    for stderr in [false, true] {
        // Best effort: a missing log is an empty one.
        drop(fs::copy(source.log(stderr), dir.log(stderr)));
    }
    let path = snapshot.join(DETACHED_FILE);
    let text = fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
    let saved: DetachedSnapshot = serde_json::from_str(&text)
        .map_err(|e| io_err("corrupt", &path)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    let request = restore_request(saved, snapshot, dir.name.clone(), true);
    launch_in(dir, &request, husk)
}

/// The monitor request that restores `saved` from `dir` as sandbox `name`.
fn restore_request(
    saved: DetachedSnapshot,
    dir: PathBuf,
    name: String,
    remove_after: bool,
) -> Request {
    // A fork's original runs on and keeps its published ports.
    let publish = match remove_after {
        true => Vec::new(),
        false => saved.request.publish.clone(),
    };
    Request {
        name,
        restore: Some(RestoreFrom {
            dir,
            main_process: saved.main_process,
            main_container: saved.main_container,
            remove_after,
        }),
        // The new sandbox's own timeout would start again; a restored one has none.
        timeout: None,
        publish,
        parked: false,
        ..saved.request
    }
}

fn absolute(dir: &Path) -> Result<PathBuf, DetachedError> {
    std::path::absolute(dir).map_err(io_err("cannot resolve", dir))
}

/// `husk pause`, `husk resume`: ask sandbox `name`'s monitor.
pub fn pause_or_resume(name: &str, pause: bool) -> Result<String, DetachedError> {
    let mut control = Control::connect(name)?;
    match pause {
        true => control.pause(),
        false => control.resume(),
    }
}

/// `husk snapshot create NAME DIR`.
pub fn snapshot_create(name: &str, dir: &Path) -> Result<String, DetachedError> {
    let dir = absolute(dir)?;
    Control::connect(name)?.snapshot_to(&dir, true)
}

/// `husk stop`: SIGTERM to the main process, then after `grace` a shutdown; returns
/// once the monitor is gone and the sandbox's final state is written.
pub fn stop(name: &str, grace: Duration) -> Result<State, DetachedError> {
    let dir = SandboxDir::open(name)?;
    match Control::connect(name) {
        Ok(mut control) => {
            control.signal_main(libc::SIGTERM)?;
            if !control.wait_gone(grace) {
                control.shutdown()?;
                // The guest resets within a few seconds; the VMM's own timeout is 30 s.
                control.wait_gone(Duration::from_secs(60));
            }
        }
        Err(DetachedError::NotRunning(_)) => {}
        Err(e) => return Err(e),
    }
    wait_for_final_state(&dir, Duration::from_secs(10))
}

/// The monitor writes its final state right after closing its connections.
fn wait_for_final_state(dir: &SandboxDir, timeout: Duration) -> Result<State, DetachedError> {
    let deadline = Instant::now() + timeout;
    loop {
        match dir.state() {
            Ok(state)
                if !matches!(
                    state.status,
                    Status::Running | Status::Starting | Status::Parked
                ) =>
            {
                return Ok(state)
            }
            // `--rm`: the folder is gone with the sandbox.
            Err(_) if !dir.path.exists() => return Err(DetachedError::NotFound(dir.name.clone())),
            other if Instant::now() >= deadline => return other,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `husk run -d`: create the folder, start the monitor (`husk __monitor DIR`, stdin =
/// the request, stdout = its first word) and wait until the main process runs.
pub fn launch(request: &Request, husk: &Path) -> Result<SandboxDir, DetachedError> {
    let dir = SandboxDir::create(&request.name)?;
    let result = launch_in(&dir, request, husk);
    if result.is_err() {
        // Let the monitor finish its own cleanup, then remove what is left.
        drop(dir.remove());
    }
    result.map(|()| dir)
}

/// Start the monitor of `dir` for `request`; with `answer`, its stdout is a pipe for
/// its first word, else /dev/null (nobody waits for it).
pub(super) fn spawn_monitor(
    dir: &SandboxDir,
    request: &Request,
    husk: &Path,
    answer: bool,
) -> Result<std::process::Child, DetachedError> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio as ProcStdio};
    let log_path = dir.path.join("monitor.log");
    let log = File::create(&log_path).map_err(io_err("cannot create", &log_path))?;
    let mut child = Command::new(husk)
        .arg("__monitor")
        .arg(&dir.path)
        .stdin(ProcStdio::piped())
        .stdout(match answer {
            true => ProcStdio::piped(),
            false => ProcStdio::null(),
        })
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(io_err("cannot start", husk))?;
    let json = serde_json::to_vec(request).map_err(|e| {
        io_err("cannot encode the request for", husk)(io::Error::new(io::ErrorKind::InvalidData, e))
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&json)
            .map_err(io_err("cannot hand the request to", husk))?;
    }
    Ok(child)
}

pub(super) fn launch_in(
    dir: &SandboxDir,
    request: &Request,
    husk: &Path,
) -> Result<(), DetachedError> {
    let mut child = spawn_monitor(dir, request, husk, true)?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        drop(BufReader::new(stdout).read_line(&mut line));
    }
    match line.trim() {
        "ok" => Ok(()),
        answer => {
            drop(child.wait());
            let message = match answer.strip_prefix("error: ") {
                Some(message) => message.to_string(),
                None => {
                    let log = fs::read_to_string(dir.path.join("monitor.log")).unwrap_or_default();
                    format!("the monitor ended without an answer; its log:\n{log}")
                }
            };
            Err(DetachedError::StartFailed {
                name: dir.name.clone(),
                message,
            })
        }
    }
}
