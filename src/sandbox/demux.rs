//! Routing the agent's frames to the processes of a sandbox.
//!
//! One reader thread per agent connection reads every frame. The agent answers each
//! Run and Exec with exactly one `Started` or `Error`, in request order, so requests
//! wait in a FIFO: a `Started` pops the oldest request and turns its output sinks into
//! the route of the new process id. `Stdout`/`Stderr` frames are written to the
//! process's sinks; `Exited` removes the route and wakes whoever waits for the process.
//! Sending a request and queueing it happen under one lock, so the FIFO and the wire
//! always agree, whatever threads request at once.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use husk_protocol::{read_message, ExitStatus, Message, ProcessId, ProtocolError};

use super::stdio::StdinWindow;
use super::{send, SandboxError, Writer};

/// Where a process's output goes.
pub type Sink = Box<dyn Write + Send>;

/// How a process ended, or why its end will never be known.
pub(crate) type ExitResult = Result<ExitStatus, String>;

struct Route {
    stdout: Sink,
    stderr: Sink,
    exit: Sender<ExitResult>,
    stdin: Arc<StdinWindow>,
}

struct Request {
    route: Route,
    /// The process's id and whether it is a prepared container's (`Started`).
    reply: Sender<Result<(ProcessId, bool), String>>,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Request>,
    routes: HashMap<ProcessId, Route>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

/// The routing table of one agent connection.
pub(crate) struct Demux {
    state: Mutex<State>,
    /// Held while a request is queued and sent.
    order: Mutex<()>,
    writer: Writer,
    /// Why the connection is being ended from the host side, when that is known better
    /// than by the read error it causes (the VM ended). Not under `state`: the reader
    /// holds that while it writes output, which can block.
    end_reason: Mutex<Option<String>>,
}

/// A request the agent accepted.
pub(crate) struct Accepted {
    pub process: ProcessId,
    /// A Run that took the container its agent prepared ahead (an image template's).
    pub prepared: bool,
    pub exit: Receiver<ExitResult>,
    /// The process's stdin window, moved by the agent's `StdinAck`s.
    pub stdin: Arc<StdinWindow>,
}

impl Demux {
    /// Start routing the frames read from `conn`; writes go through `writer`.
    #[cfg(test)]
    pub fn start(conn: UnixStream, writer: Writer) -> std::io::Result<(Arc<Self>, JoinHandle<()>)> {
        let (demux, handle, _) = Self::start_adopting(conn, writer, Vec::new())?;
        Ok((demux, handle))
    }

    /// [`Demux::start`], with routes for processes that already run (in a guest
    /// restored from a snapshot): they exist before the first frame is read, so none
    /// of their output or exit is missed.
    pub fn start_adopting(
        conn: UnixStream,
        writer: Writer,
        adopted: Vec<(ProcessId, Sink, Sink)>,
    ) -> std::io::Result<(Arc<Self>, JoinHandle<()>, Vec<Accepted>)> {
        let mut state = State::default();
        let mut accepted = Vec::with_capacity(adopted.len());
        for (process, stdout, stderr) in adopted {
            let (exit, exit_rx) = mpsc::channel();
            let stdin = Arc::new(StdinWindow::default());
            let route = Route {
                stdout,
                stderr,
                exit,
                stdin: stdin.clone(),
            };
            state.routes.insert(process, route);
            accepted.push(Accepted {
                process,
                prepared: false,
                exit: exit_rx,
                stdin,
            });
        }
        let demux = Arc::new(Self {
            state: Mutex::new(state),
            order: Mutex::new(()),
            writer,
            end_reason: Mutex::new(None),
        });
        let reader = demux.clone();
        let handle = std::thread::Builder::new()
            .name("husk-agent-rx".into())
            .spawn(move || reader.read_loop(conn))?;
        Ok((demux, handle, accepted))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send a Run or Exec and wait for the agent's answer. Output of the new process
    /// goes to `stdout` and `stderr` from its first frame on.
    pub fn request(
        &self,
        message: &Message,
        stdout: Sink,
        stderr: Sink,
    ) -> Result<Accepted, SandboxError> {
        let (exit_tx, exit_rx) = mpsc::channel();
        let (reply_tx, reply_rx) = mpsc::channel();
        let stdin = Arc::new(StdinWindow::default());
        {
            let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
            {
                let mut state = self.state();
                if let Some(reason) = &state.closed {
                    return Err(SandboxError::Lost(reason.clone()));
                }
                state.pending.push_back(Request {
                    route: Route {
                        stdout,
                        stderr,
                        exit: exit_tx,
                        stdin: stdin.clone(),
                    },
                    reply: reply_tx,
                });
            }
            if let Err(e) = send(&self.writer, message) {
                // Nothing after ours was queued: the order lock is still held.
                self.state().pending.pop_back();
                return Err(e.into());
            }
        }
        match reply_rx.recv() {
            Ok(Ok((process, prepared))) => Ok(Accepted {
                process,
                prepared,
                exit: exit_rx,
                stdin,
            }),
            Ok(Err(message)) => Err(SandboxError::Refused(message)),
            Err(_) => Err(SandboxError::Lost(self.closed_reason())),
        }
    }

    /// Send a message that expects no answer (stdin, signals, resizes, shutdown).
    pub fn send(&self, message: &Message) -> Result<(), ProtocolError> {
        send(&self.writer, message)
    }

    /// Record why the host is about to end the connection; waiters get this reason
    /// rather than the read error. The first reason given wins.
    pub fn end_because(&self, reason: String) {
        let mut slot = self.end_reason.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(reason);
    }

    /// Why the connection ended ("" while it is open).
    pub fn closed_reason(&self) -> String {
        self.state().closed.clone().unwrap_or_default()
    }

    fn read_loop(&self, mut conn: UnixStream) {
        let reason = loop {
            match read_message(&mut conn) {
                Ok(message) => self.route(message),
                Err(ProtocolError::Closed) => break "the guest agent closed the connection".into(),
                Err(e) => break format!("reading from the guest agent: {e}"),
            }
        };
        let given = self
            .end_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let reason = given.unwrap_or(reason);
        log::debug!("agent connection ended: {reason}");
        let mut state = self.state();
        for request in state.pending.drain(..) {
            drop(request.reply.send(Err(reason.clone())));
        }
        for (_, route) in state.routes.drain() {
            route.stdin.close();
            drop(route.exit.send(Err(reason.clone())));
        }
        state.closed = Some(reason);
    }

    fn route(&self, message: Message) {
        let mut state = self.state();
        match message {
            Message::Started {
                process_id,
                prepared,
            } => match state.pending.pop_front() {
                Some(request) => {
                    state.routes.insert(process_id, request.route);
                    drop(request.reply.send(Ok((process_id, prepared))));
                }
                None => log::warn!("the guest agent started process {process_id} unasked"),
            },
            // The answer to a Prepare, which starts no process.
            Message::Prepared => match state.pending.pop_front() {
                Some(request) => drop(request.reply.send(Ok((0, true)))),
                None => log::warn!("the guest agent prepared a container unasked"),
            },
            Message::Error { message } => match state.pending.pop_front() {
                Some(request) => drop(request.reply.send(Err(message))),
                None => log::warn!("the guest agent reported: {message}"),
            },
            Message::Stdout { process, data } => {
                if let Some(route) = state.routes.get_mut(&process) {
                    write_out(&mut route.stdout, &data);
                }
            }
            Message::Stderr { process, data } => {
                if let Some(route) = state.routes.get_mut(&process) {
                    write_out(&mut route.stderr, &data);
                }
            }
            Message::StdinAck { process, bytes } => {
                if let Some(route) = state.routes.get(&process) {
                    route.stdin.release(bytes);
                }
            }
            Message::Exited { process, status } => {
                if let Some(mut route) = state.routes.remove(&process) {
                    route.stdin.close();
                    drop(route.stdout.flush());
                    drop(route.stderr.flush());
                    drop(route.exit.send(Ok(status)));
                }
            }
            other => log::debug!("ignoring agent message {other:?}"),
        }
    }
}

/// A closed reader (e.g. `| head`) must not stop the container, so errors are dropped.
fn write_out(out: &mut Sink, data: &[u8]) {
    drop(out.write_all(data).and_then(|()| out.flush()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::tests_support::{Capture, FakeAgent};
    use husk_protocol::write_message;

    /// A demux on a fake agent connection: the demux, its reader thread, and the
    /// agent's end.
    fn started() -> (Arc<Demux>, JoinHandle<()>, UnixStream) {
        let agent = FakeAgent::new();
        let (demux, reader) =
            Demux::start(agent.host.try_clone().unwrap(), agent.writer()).unwrap();
        (demux, reader, agent.guest)
    }

    fn status(code: i32) -> ExitStatus {
        ExitStatus {
            code: Some(code),
            signal: None,
            oom_killed: false,
        }
    }

    fn exec(n: u32) -> Message {
        Message::Exec {
            container_id: "c".into(),
            args: vec![format!("cmd{n}")],
            env: vec![],
            cwd: None,
            user: None,
            tty: None,
        }
    }

    #[test]
    fn output_and_exit_reach_the_process_that_was_started() {
        let (demux, reader, mut guest) = started();
        let guest_thread = std::thread::spawn(move || {
            // Two requests in order; answer them, interleave their output, end them.
            let first = read_message(&mut guest).unwrap();
            assert!(matches!(first, Message::Exec { .. }));
            write_message(&mut guest, &Message::started(7)).unwrap();
            let second = read_message(&mut guest).unwrap();
            assert!(matches!(second, Message::Exec { .. }));
            write_message(&mut guest, &Message::started(8)).unwrap();
            for (p, text) in [(8, "b1"), (7, "a1"), (8, "b2")] {
                let data = text.as_bytes().to_vec();
                write_message(&mut guest, &Message::Stdout { process: p, data }).unwrap();
            }
            let data = b"e".to_vec();
            write_message(&mut guest, &Message::Stderr { process: 7, data }).unwrap();
            write_message(
                &mut guest,
                &Message::Exited {
                    process: 8,
                    status: status(8),
                },
            )
            .unwrap();
            write_message(
                &mut guest,
                &Message::Exited {
                    process: 7,
                    status: status(7),
                },
            )
            .unwrap();
            guest
        });
        let (out_a, err_a, out_b) = (Capture::default(), Capture::default(), Capture::default());
        let a = demux
            .request(&exec(1), Box::new(out_a.clone()), Box::new(err_a.clone()))
            .unwrap();
        let b = demux
            .request(
                &exec(2),
                Box::new(out_b.clone()),
                Box::new(Capture::default()),
            )
            .unwrap();
        assert_eq!((a.process, b.process), (7, 8));
        assert_eq!(b.exit.recv().unwrap().unwrap(), status(8));
        assert_eq!(a.exit.recv().unwrap().unwrap(), status(7));
        assert_eq!(out_a.bytes(), b"a1");
        assert_eq!(err_a.bytes(), b"e");
        assert_eq!(out_b.bytes(), b"b1b2");
        drop(guest_thread.join().unwrap());
        reader.join().unwrap();
        assert!(demux.closed_reason().contains("closed"));
    }

    #[test]
    fn stdin_acks_open_the_window_and_the_exit_closes_it() {
        use husk_protocol::STDIN_WINDOW;
        let (demux, _reader, mut guest) = started();
        // Started answers the request: written before it, the reader could find no
        // request to give it to.
        let answer = std::thread::spawn(move || {
            read_message(&mut guest).unwrap();
            write_message(&mut guest, &Message::started(7)).unwrap();
            guest
        });
        let (out, err) = (Capture::default(), Capture::default());
        let accepted = demux
            .request(&exec(1), Box::new(out), Box::new(err))
            .unwrap();
        let mut guest = answer.join().unwrap();
        assert!(accepted.stdin.acquire(STDIN_WINDOW));
        let waiter = {
            let window = accepted.stdin.clone();
            std::thread::spawn(move || window.acquire(10))
        };
        let ack = Message::StdinAck {
            process: 7,
            bytes: 100,
        };
        write_message(&mut guest, &ack).unwrap();
        assert!(waiter.join().unwrap(), "the ack made room");
        let exited = Message::Exited {
            process: 7,
            status: status(0),
        };
        write_message(&mut guest, &exited).unwrap();
        accepted.exit.recv().unwrap().unwrap();
        assert!(!accepted.stdin.acquire(1), "no acks come after the exit");
    }

    #[test]
    fn a_refusal_goes_to_its_request_and_a_lost_connection_to_everyone() {
        let (demux, reader, mut guest) = started();
        let guest_thread = std::thread::spawn(move || {
            read_message(&mut guest).unwrap();
            let message = "no such container: c".to_string();
            write_message(&mut guest, &Message::Error { message }).unwrap();
            read_message(&mut guest).unwrap();
            write_message(&mut guest, &Message::started(1)).unwrap();
            // The guest goes away with process 1 still running.
        });
        let refused = demux.request(
            &exec(1),
            Box::new(std::io::sink()),
            Box::new(std::io::sink()),
        );
        assert!(
            matches!(refused, Err(SandboxError::Refused(m)) if m.contains("no such container"))
        );
        let running = demux
            .request(
                &exec(2),
                Box::new(std::io::sink()),
                Box::new(std::io::sink()),
            )
            .unwrap();
        guest_thread.join().unwrap();
        assert!(running.exit.recv().unwrap().is_err());
        reader.join().unwrap();
        let late = demux.request(
            &exec(3),
            Box::new(std::io::sink()),
            Box::new(std::io::sink()),
        );
        assert!(matches!(late, Err(SandboxError::Lost(_))));
    }

    fn agent_message() -> impl proptest::strategy::Strategy<Value = Message> {
        use proptest::prelude::*;
        let id = 0u32..4;
        let data = || prop::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            id.clone().prop_map(Message::started),
            "[a-z ]{0,12}".prop_map(|message| Message::Error { message }),
            (id.clone(), data()).prop_map(|(process, data)| Message::Stdout { process, data }),
            (id.clone(), data()).prop_map(|(process, data)| Message::Stderr { process, data }),
            (id, any::<Option<i32>>(), any::<bool>()).prop_map(|(process, code, oom_killed)| {
                let status = ExitStatus {
                    code,
                    signal: None,
                    oom_killed,
                };
                Message::Exited { process, status }
            }),
            Just(Message::Shutdown),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever a hostile guest sends, in whatever order (answers to nothing, the
        /// same process started twice, exits of strangers), every request and every
        /// process gets an answer once the connection ends: nothing hangs or panics.
        #[test]
        fn any_agent_stream_ends_every_wait(
            messages in proptest::collection::vec(agent_message(), 0..40),
            requests in 1u32..4,
        ) {
            let (demux, reader, mut guest) = started();
            let guest_thread = std::thread::spawn(move || {
                for message in &messages {
                    if write_message(&mut guest, message).is_err() {
                        break;
                    }
                }
                // Dropping the guest end closes the connection.
            });
            let mut running = Vec::new();
            for n in 0..requests {
                let sinks = (Box::new(std::io::sink()), Box::new(std::io::sink()));
                if let Ok(accepted) = demux.request(&exec(n), sinks.0, sinks.1) {
                    running.push(accepted.exit);
                }
            }
            guest_thread.join().unwrap();
            for exit in running {
                // An exit status, a lost connection, or a dropped route: never a hang.
                drop(exit.recv());
            }
            reader.join().unwrap();
            proptest::prop_assert!(!demux.closed_reason().is_empty());
        }
    }

    #[test]
    fn garbage_from_the_guest_ends_the_connection_without_a_panic() {
        let (demux, reader, mut guest) = started();
        // A frame length far over the limit.
        guest.write_all(&[0xff, 0xff, 0xff, 0x7f, 1]).unwrap();
        reader.join().unwrap();
        assert!(demux
            .closed_reason()
            .contains("reading from the guest agent"));
    }
}
