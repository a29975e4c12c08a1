//! The monitor's side of the control socket: one client connection, its `Exec`, its
//! stdin with flow control, signals, resizes and `Shutdown`.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use husk_protocol::{
    check_version, read_message, write_message, Message, ProtocolError, MAX_DATA_CHUNK,
    PROTOCOL_VERSION, STDIN_WINDOW,
};

use super::monitor::{Event, Monitor};
use super::{EXEC_PROCESS, MAIN_PROCESS};
use crate::sandbox::{CopyRequest, RunSpec, Stdio};

/// The answer to a control request that has no process: `Done` or `Error`.
fn done(result: Result<String, String>) -> Message {
    match result {
        Ok(detail) => Message::Done { detail },
        Err(message) => Message::Error { message },
    }
}

/// The writing half of a control connection; `Started` goes out before any output.
pub(super) struct ClientOut {
    pub(super) conn: Mutex<UnixStream>,
    pub(super) started: AtomicBool,
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
        let started = Message::started(EXEC_PROCESS);
        write_message(conn, &started)
    }
}

/// Output of the exec'd process, framed to the client.
pub(super) struct FrameSink {
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
pub(super) struct ClientStdin {
    tx: Sender<Vec<u8>>,
    unacked: Arc<AtomicU64>,
}

impl ClientStdin {
    /// A channel for the client's stdin, and the reader that feeds the process from it
    /// and acknowledges each chunk to the client through `acks`.
    pub(super) fn new(acks: Arc<ClientOut>) -> (Self, ChannelReader) {
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
    pub(super) fn push(&self, data: Vec<u8>) -> bool {
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
pub(super) struct ChannelReader {
    chunks: Receiver<Vec<u8>>,
    current: io::Cursor<Vec<u8>>,
    acks: Arc<ClientOut>,
    pub(super) unacked: Arc<AtomicU64>,
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

/// The process an `Exec` asks for (no limits: those are the container's).
fn exec_spec(request: Message) -> Option<RunSpec> {
    match request {
        Message::Exec {
            args,
            env,
            cwd,
            user,
            tty,
            ..
        } => Some(RunSpec {
            args,
            env,
            cwd,
            user,
            tty,
            ..RunSpec::default()
        }),
        _ => None,
    }
}

/// A started process, and whether it is the parked sandbox's main one (its claim).
type StartedProcess = (Arc<crate::sandbox::Process>, bool);

/// Starts what an `Exec`, `CopyOut` or `CopyIn` asks for in the sandbox's container;
/// in a parked sandbox, the first `Exec` claims it and becomes its main process, in a
/// container of its own. A copy is refused while the sandbox is paused (its agent
/// could not answer).
fn start(monitor: &Monitor, request: Message, stdio: Stdio) -> Result<StartedProcess, String> {
    if monitor.request().parked {
        return claim(monitor, request, stdio);
    }
    let Some(main) = monitor.main.get() else {
        return Err("the sandbox has no main process".into());
    };
    let container = main.container_id();
    let copy = match request {
        Message::Exec { .. } => {
            let spec = exec_spec(request).unwrap_or_default();
            return monitor
                .sandbox
                .exec(container, &spec, stdio)
                .map(|p| (Arc::new(p), false))
                .map_err(|e| e.to_string());
        }
        Message::CopyOut { path, .. } => CopyRequest::Out { path },
        Message::CopyIn {
            path,
            contents,
            preserve_owner,
            as_is,
            ..
        } => CopyRequest::In {
            path,
            contents,
            preserve_owner,
            as_is,
        },
        other => return Err(format!("not a process request: {other:?}")),
    };
    if monitor.sandbox.is_paused() {
        return Err(format!(
            "sandbox {} is paused: `husk resume {}` first",
            monitor.dir().name,
            monitor.dir().name
        ));
    }
    monitor
        .sandbox
        .copy(container, &copy, stdio)
        .map(|p| (Arc::new(p), false))
        .map_err(|e| match e {
            crate::sandbox::SandboxError::Refused(message) => message,
            other => other.to_string(),
        })
}

/// A parked sandbox's claim: the first `Exec` starts its main process with the
/// parked request's limits; anything after it is refused, so a client that finds it
/// claimed tries the next one.
fn claim(monitor: &Monitor, request: Message, stdio: Stdio) -> Result<StartedProcess, String> {
    let _claiming = monitor.claiming.lock().unwrap_or_else(|e| e.into_inner());
    if monitor.main.get().is_some() {
        return Err(CLAIMED.into());
    }
    let Some(spec) = exec_spec(request) else {
        return Err("a parked sandbox takes only the Exec that claims it".into());
    };
    let spec = RunSpec {
        limits: monitor.request.spec.limits,
        ..spec
    };
    let process = monitor
        .sandbox
        .spawn(&spec, stdio)
        .map_err(|e| e.to_string())?;
    let process = Arc::new(process);
    drop(monitor.main.set(process.clone()));
    // Its status becomes Running once its client has Started (`serve_client`).
    Ok((process, true))
}

/// What a claimed parked sandbox answers to another claim.
pub(super) const CLAIMED: &str = "this parked sandbox is claimed";

/// Held by the connection that claimed a parked sandbox: if the connection ends before
/// the main process does (its `husk run` was killed), the sandbox is stopped.
struct Claim {
    events: Sender<Event>,
    main_ended: Arc<AtomicBool>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.main_ended.load(Ordering::SeqCst) {
            drop(self.events.send(Event::Stop("its husk run went away")));
        }
    }
}

pub(super) fn serve_client(mut conn: UnixStream, monitor: &Monitor, events: &Sender<Event>) {
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
    let mut _claim: Option<Claim> = None;
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
            Message::Exec { .. } | Message::CopyOut { .. } | Message::CopyIn { .. }
                if exec.is_none() =>
            {
                let (client_stdin, reader) = ClientStdin::new(out.clone());
                stdin = Some(client_stdin);
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
                match start(monitor, message, stdio) {
                    Ok((process, claimed)) => {
                        let main_ended = Arc::new(AtomicBool::new(false));
                        if claimed {
                            _claim = Some(Claim {
                                events: events.clone(),
                                main_ended: main_ended.clone(),
                            });
                        }
                        // Started (unless output already carried it) before anything
                        // else, as the client waits for it; a claim whose client is
                        // gone stops its sandbox (`Claim`'s drop).
                        if out.send_started().is_err() {
                            return;
                        }
                        if claimed {
                            monitor.set_status(super::Status::Running);
                        }
                        exec = Some(process.clone());
                        let exit_out = out.clone();
                        // The claim's main process: its exit ends the sandbox, after
                        // its client has the exit status.
                        let main_events = claimed.then(|| events.clone());
                        std::thread::spawn(move || {
                            let result = process.wait();
                            main_ended.store(true, Ordering::SeqCst);
                            let message = match &result {
                                Ok(status) => Message::Exited {
                                    process: EXEC_PROCESS,
                                    status: *status,
                                },
                                Err(e) => Message::Error {
                                    message: e.to_string(),
                                },
                            };
                            drop(exit_out.send(&message));
                            if let Some(events) = main_events {
                                let ended = result.map_err(|e| e.to_string());
                                drop(events.send(Event::MainExited(ended)));
                            }
                        });
                        None
                    }
                    Err(message) => Some(Message::Error { message }),
                }
            }
            Message::Exec { .. } | Message::CopyOut { .. } | Message::CopyIn { .. } => {
                Some(Message::Error {
                    message: "one Exec or copy per control connection".into(),
                })
            }
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
                    monitor.main.get().map(|m| &**m)
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
            Message::Adopt { .. } => Some(done(super::adopt::adopt(monitor, message, events))),
            Message::Pause => Some(done(monitor.pause())),
            Message::Resume => Some(done(monitor.resume())),
            Message::SnapshotTo { dir, durable } => Some(done(
                monitor.snapshot_to(std::path::Path::new(&dir), durable),
            )),
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
