//! Detached sandboxes (`husk run -d`), without a daemon.
//!
//! `husk run -d` starts a *monitor*: a `husk` process of its own (its own process group,
//! so the shell's Ctrl-C does not reach it) that owns the VM of one sandbox, writes the
//! main process's output to log files, and serves a control socket. Every other command
//! works on the sandbox's folder `<root>/<name>/`:
//!
//! | file | what |
//! |---|---|
//! | `state.json` | [`State`]: image, command, monitor pid, status, exit code |
//! | `control.sock` | the monitor's control socket (exists while the sandbox runs) |
//! | `stdout.log`, `stderr.log` | the main process's output |
//! | `monitor.log` | the monitor's own warnings and errors |
//! | `husk-<id>-*/` | the VM's runtime folder (vsock socket, scratch disk) |
//!
//! The control socket speaks the husk protocol (framing, versions, messages of
//! `docs/protocol.md`): the monitor greets with `Hello`, the client answers `HelloAck`.
//! Then a client may send one `Exec` (the process gets number 1 on this connection;
//! `container_id` is ignored: it runs in the sandbox's container), its `Stdin`,
//! `StdinClose`, `Signal` and `Resize`; `Signal` to process 0 signals the sandbox's
//! main process; `Shutdown` stops the sandbox. The monitor answers `Started`, streams
//! `Stdout`/`Stderr` and ends with `Exited`. When the sandbox ends, the monitor removes
//! the control socket and the VM's folder, records the exit in `state.json` and exits;
//! the logs stay until `husk rm`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_protocol::{
    check_version, host_handshake, read_message, write_message, ExitStatus, Message, ProtocolError,
    MAX_DATA_CHUNK, PROTOCOL_VERSION, STDIN_WINDOW,
};
use serde::{Deserialize, Serialize};

use crate::sandbox::stdio::{forward_stdin, StdinWindow};
use crate::sandbox::{RunSpec, Sandbox, SandboxConfig, SandboxImage, Stdio};

/// Overrides where detached sandboxes live.
pub const ROOT_ENV: &str = "HUSK_RUNTIME_DIR";

/// How long a stopping monitor waits for the killed main process's exit status.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// On the control socket: the sandbox's main process.
pub const MAIN_PROCESS: u32 = 0;
/// On the control socket: the process this connection's `Exec` started.
pub const EXEC_PROCESS: u32 = 1;

/// Errors of detached sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum DetachedError {
    /// A name that cannot name a sandbox.
    #[error(
        "invalid sandbox name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ . -, not starting with . or -"
    )]
    BadName(String),
    /// `husk run -d --name N` with N taken.
    #[error("a sandbox named {0} already exists (remove it with `husk rm {0}`)")]
    Exists(String),
    /// No such sandbox.
    #[error("no sandbox named {0} (see `husk ps -a`)")]
    NotFound(String),
    /// The sandbox has ended.
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// `husk rm` of a running sandbox.
    #[error("sandbox {0} is running: stop it first or use `husk rm -f`")]
    Running(String),
    /// The monitor could not start the sandbox.
    #[error("sandbox {name} failed to start: {message}")]
    StartFailed {
        /// The sandbox.
        name: String,
        /// The monitor's error.
        message: String,
    },
    /// A file of the sandbox folder.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// To which file.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// The control socket.
    #[error("control socket of sandbox {name}: {source}")]
    Control {
        /// The sandbox.
        name: String,
        /// The protocol error.
        source: ProtocolError,
    },
    /// The exec'd process was refused or lost.
    #[error("{0}")]
    Exec(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DetachedError + 'a {
    move |source| DetachedError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where detached sandboxes live: `$HUSK_RUNTIME_DIR`, else `/run/husk` for root, else
/// `$XDG_RUNTIME_DIR/husk`, else `husk-<uid>` in the temp folder.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os(ROOT_ENV) {
        return PathBuf::from(dir);
    }
    let uid = fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if uid == 0 {
        return PathBuf::from("/run/husk");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_dir() => dir.join("husk"),
        _ => std::env::temp_dir().join(format!("husk-{uid}")),
    }
}

/// Checks a sandbox name: 1–64 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), DetachedError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with(['.', '-']) {
        return Err(DetachedError::BadName(name.to_string()));
    }
    Ok(())
}

/// A fresh name: `husk-` and 8 hex digits from the clock and the process id.
pub fn generate_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 20);
    format!("husk-{:08x}", (mixed ^ (mixed >> 32)) as u32)
}

/// Everything the monitor needs to start a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The sandbox's name.
    pub name: String,
    /// The image as the user named it (for `husk ps`).
    pub image_ref: String,
    /// The image.
    pub image: SandboxImage,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// `--net`.
    pub network: bool,
    /// `--disk`.
    pub scratch_disk_mib: Option<u64>,
    /// Guest console file, if any.
    pub console: Option<PathBuf>,
    /// The main process.
    pub spec: RunSpec,
    /// Remove the sandbox's folder when it ends (`--rm`).
    pub remove_on_exit: bool,
    /// Stop the sandbox this long after it was started (`--timeout`).
    pub timeout: Option<Duration>,
    /// Start from a template (false: `--cold`).
    #[serde(default = "yes")]
    pub warm: bool,
}

fn yes() -> bool {
    true
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The monitor is booting the VM.
    Starting,
    /// The main process runs.
    Running,
    /// The main process ended (or was killed when the sandbox was stopped).
    Exited {
        /// docker-style exit code: the code, or 128 + signal.
        code: i32,
        /// The memory limit killed it.
        oom_killed: bool,
    },
    /// Stopped (`husk stop`, a signal to the monitor) before the main process's exit
    /// status came back.
    Stopped {
        /// What stopped it.
        by: String,
    },
    /// The sandbox could not start, or ended without an exit status.
    Failed {
        /// Why.
        message: String,
    },
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The sandbox's name.
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// The main command.
    pub command: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// The monitor's process id.
    pub monitor_pid: u32,
    /// Where it is in its life.
    pub status: Status,
}

/// A sandbox folder.
#[derive(Debug, Clone)]
pub struct SandboxDir {
    name: String,
    path: PathBuf,
}

impl SandboxDir {
    /// The folder of an existing sandbox.
    pub fn open(name: &str) -> Result<Self, DetachedError> {
        validate_name(name)?;
        let path = root().join(name);
        if !path.join("state.json").is_file() {
            return Err(DetachedError::NotFound(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            path,
        })
    }

    /// Create the folder of a new sandbox; fails if the name is taken.
    pub fn create(name: &str) -> Result<Self, DetachedError> {
        validate_name(name)?;
        let root = root();
        fs::create_dir_all(&root).map_err(io_err("cannot create", &root))?;
        let path = root.join(name);
        match fs::create_dir(&path) {
            Ok(()) => Ok(Self {
                name: name.to_string(),
                path,
            }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(DetachedError::Exists(name.to_string()))
            }
            Err(e) => Err(io_err("cannot create", &path)(e)),
        }
    }

    /// Every sandbox folder, by name.
    pub fn list() -> Result<Vec<Self>, DetachedError> {
        let root = root();
        let entries = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot list", &root)(e)),
        };
        let mut dirs: Vec<Self> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| Self::open(&name).ok())
            .collect();
        dirs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(dirs)
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }

    /// The main process's stdout (`false`) or stderr (`true`) log.
    pub fn log(&self, stderr: bool) -> PathBuf {
        self.path
            .join(if stderr { "stderr.log" } else { "stdout.log" })
    }

    /// Read `state.json`.
    pub fn state(&self) -> Result<State, DetachedError> {
        let path = self.path.join("state.json");
        let text = fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
        serde_json::from_str(&text)
            .map_err(|e| io_err("corrupt", &path)(io::Error::new(io::ErrorKind::InvalidData, e)))
    }

    /// Write `state.json` atomically.
    pub fn write_state(&self, state: &State) -> Result<(), DetachedError> {
        let path = self.path.join("state.json");
        let tmp = self.path.join(".state.json.tmp");
        let json = serde_json::to_vec_pretty(state).map_err(|e| {
            io_err("cannot encode", &path)(io::Error::new(io::ErrorKind::InvalidData, e))
        })?;
        fs::write(&tmp, json).map_err(io_err("cannot write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("cannot replace", &path))
    }

    /// Whether a monitor answers on the control socket.
    pub fn is_running(&self) -> bool {
        UnixStream::connect(self.control_socket()).is_ok()
    }

    /// Remove the folder.
    pub fn remove(&self) -> Result<(), DetachedError> {
        fs::remove_dir_all(&self.path).map_err(io_err("cannot remove", &self.path))
    }
}

/// `husk ps`: what a sandbox is doing, as shown to the user.
pub fn describe(state: &State, running: bool) -> String {
    match (&state.status, running) {
        (Status::Running | Status::Starting, true) => "running".into(),
        (Status::Running | Status::Starting, false) => "dead (its monitor is gone)".into(),
        (Status::Exited { code, oom_killed }, _) => {
            format!("exited ({code}){}", if *oom_killed { ", OOM" } else { "" })
        }
        (Status::Stopped { by }, _) => format!("stopped ({by})"),
        (Status::Failed { message }, _) => format!("failed: {message}"),
    }
}

// ---------------------------------------------------------------------------------------
// The monitor.

enum Event {
    MainExited(Result<ExitStatus, String>),
    Stop(&'static str),
}

/// The monitor of `husk run -d` (the hidden `husk __monitor DIR` command): reads a
/// [`Request`] as JSON from stdin, starts the sandbox, prints `ok` (or `error: ...`) on
/// stdout for the waiting `husk run -d`, then serves the control socket until the
/// sandbox ends. Call before any other thread is started (it blocks signals).
pub fn monitor(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    crate::sandbox::signals::block()?;
    let created = Instant::now();
    let mut input = String::new();
    io::stdin().read_to_string(&mut input)?;
    let request: Request = serde_json::from_str(&input)?;
    let dir = SandboxDir {
        name: request.name.clone(),
        path: dir.to_path_buf(),
    };
    let mut state = State {
        name: request.name.clone(),
        image: request.image_ref.clone(),
        command: if request.spec.args.is_empty() {
            request.image.command.clone()
        } else {
            request.spec.args.clone()
        },
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        monitor_pid: std::process::id(),
        status: Status::Starting,
    };
    dir.write_state(&state)?;
    let started = start_main(&dir, &request);
    let (sandbox, main, listener) = match started {
        Ok(parts) => parts,
        Err(e) => {
            let message = crate::error_chain(e.as_ref());
            state.status = Status::Failed {
                message: message.clone(),
            };
            dir.write_state(&state)?;
            println!("error: {message}");
            return Ok(());
        }
    };
    state.status = Status::Running;
    dir.write_state(&state)?;
    println!("ok");
    io::stdout().flush()?;

    let (events, next) = mpsc::channel();
    {
        let (main, events) = (main.clone(), events.clone());
        std::thread::spawn(move || {
            drop(events.send(Event::MainExited(main.wait().map_err(|e| e.to_string()))));
        });
    }
    if let Some(timeout) = request.timeout {
        let events = events.clone();
        std::thread::spawn(move || {
            std::thread::sleep(timeout.saturating_sub(created.elapsed()));
            drop(events.send(Event::Stop("--timeout")));
        });
    }
    {
        let events = events.clone();
        std::thread::spawn(move || loop {
            let signal = crate::sandbox::signals::wait();
            // A detached sandbox outlives its terminal: only TERM/INT/QUIT stop it.
            if matches!(signal, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) {
                drop(events.send(Event::Stop("a signal")));
            }
        });
    }
    {
        let (sandbox, main) = (sandbox.clone(), main.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (sandbox, main, events) = (sandbox.clone(), main.clone(), events.clone());
                std::thread::spawn(move || serve_client(conn, &sandbox, &main, &events));
            }
        });
    }
    let (ended, stopped_by) = match next.recv() {
        Ok(Event::MainExited(result)) => (result, None),
        Ok(Event::Stop(why)) => {
            log::warn!("stopping sandbox {} on {why}", dir.name);
            // Kill the main process first so its exit status is known; the VM's
            // shutdown would kill it too, but a reset can cut its Exited frame off.
            drop(main.signal(libc::SIGKILL));
            let ended = loop {
                match next.recv_timeout(KILL_TIMEOUT) {
                    Ok(Event::MainExited(result)) => break result,
                    Ok(Event::Stop(_)) => {}
                    Err(_) => break Err(format!("stopped by {why}")),
                }
            };
            (ended, Some(why))
        }
        Err(_) => (Err("the monitor lost its event channel".into()), None),
    };
    drop(fs::remove_file(dir.control_socket()));
    if let Err(e) = sandbox.stop() {
        log::warn!("stopping the sandbox VM: {e}");
    }
    state.status = match ended {
        Ok(status) => Status::Exited {
            code: status.docker_code(),
            oom_killed: status.oom_killed,
        },
        Err(_) if stopped_by.is_some() => Status::Stopped {
            by: stopped_by.unwrap_or_default().to_string(),
        },
        Err(message) => Status::Failed { message },
    };
    drop(sandbox);
    if request.remove_on_exit {
        dir.remove()?;
    } else {
        dir.write_state(&state)?;
    }
    Ok(())
}

type Started = (Arc<Sandbox>, Arc<crate::sandbox::Process>, UnixListener);

fn start_main(dir: &SandboxDir, request: &Request) -> Result<Started, Box<dyn std::error::Error>> {
    let mut config = SandboxConfig::new(request.image.clone(), request.kernel.clone());
    if let Some(timeout) = request.timeout {
        config.boot_timeout = timeout;
    }
    config.cpus = request.cpus;
    config.memory_mib = request.memory_mib;
    config.network = request.network;
    config.scratch_disk_mib = request.scratch_disk_mib;
    config.runtime_parent = Some(dir.path.clone());
    config.warm = request.warm;
    if let Some(console) = &request.console {
        config.console = crate::config::ConsoleConfig::File(console.clone());
    }
    let sandbox = Sandbox::start(config)?;
    let log = |stderr: bool| {
        let path = dir.log(stderr);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("cannot open", &path))
    };
    let stdio = Stdio {
        stdin: None,
        stdout: Box::new(log(false)?),
        stderr: Box::new(log(true)?),
    };
    let main = sandbox.spawn(&request.spec, stdio)?;
    let socket = dir.control_socket();
    let listener = UnixListener::bind(&socket).map_err(io_err("cannot listen on", &socket))?;
    Ok((Arc::new(sandbox), Arc::new(main), listener))
}

/// The writing half of a control connection; `Started` goes out before any output.
struct ClientOut {
    conn: Mutex<UnixStream>,
    started: AtomicBool,
}

impl ClientOut {
    /// Send `message`, preceded by `Started` if that has not gone out yet.
    fn send(&self, message: &Message) -> Result<(), ProtocolError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        self.started_on(&mut conn)?;
        write_message(&mut *conn, message)
    }

    /// Send `Started` now unless it has gone out.
    fn send_started(&self) -> Result<(), ProtocolError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        self.started_on(&mut conn)
    }

    fn started_on(&self, conn: &mut UnixStream) -> Result<(), ProtocolError> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let started = Message::Started {
            process_id: EXEC_PROCESS,
        };
        write_message(conn, &started)
    }
}

/// Output of the exec'd process, framed to the client.
struct FrameSink {
    out: Arc<ClientOut>,
    stderr: bool,
}

impl Write for FrameSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let (process, data) = (EXEC_PROCESS, data.to_vec());
        let message = if self.stderr {
            Message::Stderr { process, data }
        } else {
            Message::Stdout { process, data }
        };
        let len = message_len(&message);
        self.out.send(&message).map_err(io::Error::other)?;
        Ok(len)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn message_len(message: &Message) -> usize {
    match message {
        Message::Stdout { data, .. } | Message::Stderr { data, .. } => data.len(),
        _ => 0,
    }
}

/// A client's stdin on its way to the exec'd process: the `Stdin` frames the client
/// sent and the monitor has not passed on yet. The client keeps at most
/// [`STDIN_WINDOW`] bytes unacknowledged, so that is all the monitor ever holds of it.
struct ClientStdin {
    tx: Sender<Vec<u8>>,
    unacked: Arc<AtomicU64>,
}

impl ClientStdin {
    /// A channel for the client's stdin, and the reader that feeds the process from it
    /// and acknowledges each chunk to the client through `acks`.
    fn new(acks: Arc<ClientOut>) -> (Self, ChannelReader) {
        let (tx, chunks) = mpsc::channel();
        let unacked = Arc::new(AtomicU64::new(0));
        let reader = ChannelReader {
            chunks,
            current: io::Cursor::default(),
            acks,
            unacked: unacked.clone(),
        };
        (Self { tx, unacked }, reader)
    }

    /// Queue `data`; false when the client overran its window (it ignores the acks).
    fn push(&self, data: Vec<u8>) -> bool {
        let len = data.len() as u64;
        let before = self.unacked.fetch_add(len, Ordering::SeqCst);
        if before + len > STDIN_WINDOW + MAX_DATA_CHUNK as u64 {
            return false;
        }
        drop(self.tx.send(data));
        true
    }
}

/// The exec'd process's stdin, read from a [`ClientStdin`] channel; ends when the
/// sender goes.
struct ChannelReader {
    chunks: Receiver<Vec<u8>>,
    current: io::Cursor<Vec<u8>>,
    acks: Arc<ClientOut>,
    unacked: Arc<AtomicU64>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Ok(chunk) = self.chunks.recv() else {
                return Ok(0);
            };
            let bytes = chunk.len() as u64;
            self.unacked.fetch_sub(bytes, Ordering::SeqCst);
            // A client that went away needs no acknowledgement.
            drop(self.acks.send(&Message::StdinAck {
                process: EXEC_PROCESS,
                bytes,
            }));
            self.current = io::Cursor::new(chunk);
        }
    }
}

fn greet(conn: &mut UnixStream) -> Result<(), ProtocolError> {
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        agent_version: format!("husk-monitor {}", env!("CARGO_PKG_VERSION")),
        generation: 0,
    };
    write_message(conn, &hello)?;
    match read_message(conn)? {
        Message::HelloAck { version } => check_version(version),
        other => Err(ProtocolError::Unexpected(format!("{other:?}"))),
    }
}

fn serve_client(
    mut conn: UnixStream,
    sandbox: &Sandbox,
    main: &crate::sandbox::Process,
    events: &Sender<Event>,
) {
    if let Err(e) = greet(&mut conn) {
        log::debug!("control client went away during the handshake: {e}");
        return;
    }
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let out = Arc::new(ClientOut {
        conn: Mutex::new(write_half),
        started: AtomicBool::new(false),
    });
    let mut stdin: Option<ClientStdin> = None;
    let mut exec: Option<Arc<crate::sandbox::Process>> = None;
    loop {
        let message = match read_message(&mut conn) {
            Ok(m) => m,
            Err(ProtocolError::UnknownKind(kind)) => {
                let message = format!("unknown frame kind {kind}");
                drop(out.send(&Message::Error { message }));
                continue;
            }
            Err(_) => return,
        };
        let reply = match message {
            Message::Exec {
                args,
                env,
                cwd,
                user,
                tty,
                ..
            } if exec.is_none() => {
                let (client_stdin, reader) = ClientStdin::new(out.clone());
                stdin = Some(client_stdin);
                let spec = RunSpec {
                    args,
                    env,
                    cwd,
                    user,
                    tty,
                    ..RunSpec::default()
                };
                let stdio = Stdio {
                    stdin: Some(Box::new(reader)),
                    stdout: Box::new(FrameSink {
                        out: out.clone(),
                        stderr: false,
                    }),
                    stderr: Box::new(FrameSink {
                        out: out.clone(),
                        stderr: true,
                    }),
                };
                match sandbox.exec(main.container_id(), &spec, stdio) {
                    Ok(process) => {
                        let process = Arc::new(process);
                        exec = Some(process.clone());
                        let exit_out = out.clone();
                        std::thread::spawn(move || {
                            let message = match process.wait() {
                                Ok(status) => Message::Exited {
                                    process: EXEC_PROCESS,
                                    status,
                                },
                                Err(e) => Message::Error {
                                    message: e.to_string(),
                                },
                            };
                            drop(exit_out.send(&message));
                        });
                        // Started, unless output already carried it.
                        if out.send_started().is_err() {
                            return;
                        }
                        None
                    }
                    Err(e) => Some(Message::Error {
                        message: e.to_string(),
                    }),
                }
            }
            Message::Exec { .. } => Some(Message::Error {
                message: "one Exec per control connection".into(),
            }),
            Message::Stdin { data, .. } => match &stdin {
                Some(client_stdin) if !client_stdin.push(data) => {
                    stdin = None;
                    Some(Message::Error {
                        message: format!(
                            "stdin sent beyond its window of {STDIN_WINDOW} unacknowledged \
                             bytes; the process's stdin is closed"
                        ),
                    })
                }
                _ => None,
            },
            Message::StdinClose { .. } => {
                stdin = None;
                None
            }
            Message::Signal { process, signal } => {
                let target = if process == MAIN_PROCESS {
                    Some(main)
                } else {
                    exec.as_deref()
                };
                target
                    .and_then(|p| p.signal(signal).err())
                    .map(|e| Message::Error {
                        message: e.to_string(),
                    })
            }
            Message::Resize { rows, cols, .. } => exec
                .as_deref()
                .and_then(|p| p.resize(crate::sandbox::TtySize { rows, cols }).err())
                .map(|e| Message::Error {
                    message: e.to_string(),
                }),
            Message::Shutdown => {
                drop(events.send(Event::Stop("husk stop")));
                None
            }
            other => Some(Message::Error {
                message: format!("not a control request: {other:?}"),
            }),
        };
        if let Some(reply) = reply {
            if out.send(&reply).is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients.

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
        let mut conn = UnixStream::connect(dir.control_socket())
            .map_err(|_| DetachedError::NotRunning(name.to_string()))?;
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
        self.send(&Message::Exec {
            container_id: String::new(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            user: spec.user.clone(),
            tty: spec.tty,
        })?;
        let control = |source| DetachedError::Control {
            name: self.name.clone(),
            source,
        };
        match read_message(&mut self.conn).map_err(control)? {
            Message::Started { .. } => {}
            Message::Error { message } => return Err(DetachedError::Exec(message)),
            other => return Err(control(ProtocolError::Unexpected(format!("{other:?}")))),
        }
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
            Ok(state) if !matches!(state.status, Status::Running | Status::Starting) => {
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

fn launch_in(dir: &SandboxDir, request: &Request, husk: &Path) -> Result<(), DetachedError> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio as ProcStdio};
    let log_path = dir.path.join("monitor.log");
    let log = File::create(&log_path).map_err(io_err("cannot create", &log_path))?;
    let mut child = Command::new(husk)
        .arg("__monitor")
        .arg(&dir.path)
        .stdin(ProcStdio::piped())
        .stdout(ProcStdio::piped())
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
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "web-1", "job_2.x", &"n".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", &"n".repeat(65)] {
            assert!(
                matches!(validate_name(bad), Err(DetachedError::BadName(_))),
                "{bad}"
            );
        }
        assert!(validate_name(&generate_name()).is_ok());
    }

    #[test]
    fn states_round_trip_and_read_well() {
        let state = State {
            name: "n".into(),
            image: "busybox".into(),
            command: vec!["sleep".into(), "1".into()],
            created: 1,
            monitor_pid: 2,
            status: Status::Exited {
                code: 137,
                oom_killed: true,
            },
        };
        let json = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        assert_eq!(back.status, state.status);
        assert_eq!(describe(&back, false), "exited (137), OOM");
        let running = State {
            status: Status::Running,
            ..state
        };
        assert_eq!(describe(&running, true), "running");
        assert!(describe(&running, false).starts_with("dead"));
    }

    /// A client's stdin channel whose acknowledgements go to the returned socket.
    fn client_stdin() -> (ClientStdin, ChannelReader, UnixStream) {
        let (monitor, client) = UnixStream::pair().unwrap();
        let out = Arc::new(ClientOut {
            conn: Mutex::new(monitor),
            started: AtomicBool::new(true),
        });
        let (stdin, reader) = ClientStdin::new(out);
        (stdin, reader, client)
    }

    #[test]
    fn channel_reader_reads_chunks_acknowledging_each_then_ends() {
        let (stdin, mut reader, mut client) = client_stdin();
        assert!(stdin.push(b"ab".to_vec()));
        assert!(stdin.push(Vec::new()));
        assert!(stdin.push(b"cde".to_vec()));
        drop(stdin);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcde");
        let acked: Vec<u64> = (0..3)
            .map(|_| match read_message(&mut client).unwrap() {
                Message::StdinAck { process, bytes } if process == EXEC_PROCESS => bytes,
                other => panic!("expected a StdinAck, got {other:?}"),
            })
            .collect();
        assert_eq!(acked, [2, 0, 3]);
        assert_eq!(reader.unacked.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn client_stdin_takes_a_window_and_a_chunk_then_refuses() {
        let (stdin, mut reader, _client) = client_stdin();
        let chunk = vec![7u8; MAX_DATA_CHUNK];
        let fits = STDIN_WINDOW as usize / MAX_DATA_CHUNK + 1;
        assert!((0..fits).all(|_| stdin.push(chunk.clone())));
        // What the reader takes no longer counts.
        let mut buf = vec![0u8; MAX_DATA_CHUNK];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(
            reader.unacked.load(Ordering::SeqCst),
            STDIN_WINDOW,
            "one chunk taken"
        );
        assert!(stdin.push(chunk.clone()));
        assert!(!stdin.push(chunk));
    }
}
