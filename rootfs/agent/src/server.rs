//! The request loop: one host connection at a time. The agent greets with Hello, waits
//! for a matching HelloAck, then serves requests until the host disconnects (containers
//! keep running; a new connection takes over their output) or sends Shutdown.

use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::sync::Arc;

use husk_protocol::{
    check_version, read_message, write_message, Message, ProcessId, ProtocolError, TtySize,
    PROTOCOL_VERSION,
};

use crate::agent::{Agent, AgentError, RunRequest};
use crate::copy::CopyRequest;
use crate::outbox::Outbox;
use crate::prepare::ProcessRequest;
use crate::rootfs::LowerLayer;
use crate::transport::{Connection, Listener};

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host went away (or broke the protocol); wait for the next one.
    Disconnected,
    /// The host asked for Shutdown.
    Shutdown,
}

/// Accepts connections one after another until one asks for Shutdown.
pub fn serve<L: Listener>(
    listener: &mut L,
    agent: &Arc<Agent>,
    outbox: &Outbox,
) -> std::io::Result<()> {
    loop {
        let connection = match listener.accept() {
            Ok(connection) => connection,
            // A peer that gave up before accept, or a signal: not the listener's fault.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if handle_connection(connection, agent, outbox) == Outcome::Shutdown {
            return Ok(());
        }
    }
}

fn refuse(mut writer: Box<dyn Write + Send>, message: String) -> Outcome {
    crate::console::log(&message);
    let _ = write_message(&mut writer, &Message::Error { message });
    Outcome::Disconnected
}

/// Greets the host and checks its HelloAck, writing directly (not through the outbox)
/// so that no output frame of a running process comes before the handshake.
fn handshake<C: Connection>(connection: &mut C) -> Result<Box<dyn Write + Send>, Outcome> {
    let mut writer = match connection.writer() {
        Ok(writer) => writer,
        Err(e) => {
            crate::console::log(&format!("cannot write to the host connection: {e}"));
            return Err(Outcome::Disconnected);
        }
    };
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        generation: crate::restore::generation(),
    };
    if let Err(e) = write_message(&mut writer, &hello) {
        crate::console::log(&format!("handshake: {e}"));
        return Err(Outcome::Disconnected);
    }
    let refusal = match read_message(connection) {
        Ok(Message::HelloAck { version }) => match check_version(version) {
            Ok(()) => return Ok(writer),
            Err(e) => e.to_string(),
        },
        Ok(other) => format!("expected HelloAck, got {other:?}"),
        Err(e) => format!("handshake: {e}"),
    };
    Err(refuse(writer, refusal))
}

/// Serves one connection: handshake, then requests until it ends.
pub fn handle_connection<C: Connection>(
    mut connection: C,
    agent: &Arc<Agent>,
    outbox: &Outbox,
) -> Outcome {
    match handshake(&mut connection) {
        Ok(writer) => outbox.connect(writer),
        Err(outcome) => return outcome,
    }
    loop {
        let message = match read_message(&mut connection) {
            Ok(message) => message,
            Err(ProtocolError::Closed) => break,
            // The frame was consumed whole: the stream is still in step.
            Err(
                e @ (ProtocolError::UnknownKind(_)
                | ProtocolError::BadJson(_)
                | ProtocolError::ShortDataFrame(_)),
            ) => {
                outbox.send(&Message::Error {
                    message: e.to_string(),
                });
                continue;
            }
            // A reset is how every connection of a restored guest ends (the snapshot's
            // host is gone): expected, and a console line costs a VM exit per byte.
            Err(ProtocolError::Io(e)) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => {
                crate::console::log(&format!("host connection: {}", error_chain(&e)));
                break;
            }
        };
        // Frames held since an earlier connection was lost go out before the answer to
        // this host's first request, except Restored, whose answer comes first.
        if !matches!(message, Message::Restored { .. }) {
            outbox.release();
        }
        if dispatch(message, agent, outbox) == Some(Outcome::Shutdown) {
            return Outcome::Shutdown;
        }
    }
    outbox.disconnect();
    Outcome::Disconnected
}

/// Starts the process a Run, Exec, CopyOut or CopyIn asks for; any other message is
/// handed back.
fn start_process(
    message: Message,
    agent: &Arc<Agent>,
) -> Result<Result<ProcessId, AgentError>, Box<Message>> {
    match message {
        Message::Run {
            id,
            image,
            args,
            env,
            cwd,
            user,
            tty,
            limits,
            writable_layer,
            hostname,
            volumes,
        } => {
            let lower = LowerLayer::Device {
                device: PathBuf::from(image.device),
                fstype: image.fstype,
            };
            let process = ProcessRequest {
                args,
                env,
                cwd,
                user,
                tty,
            };
            let request = RunRequest {
                id,
                lower,
                writable: writable_layer,
                limits,
                hostname,
                process,
                volumes,
            };
            Ok(agent.run(request))
        }
        Message::Exec {
            container_id,
            args,
            env,
            cwd,
            user,
            tty,
        } => Ok(agent.exec(
            &container_id,
            ProcessRequest {
                args,
                env,
                cwd,
                user,
                tty,
            },
        )),
        Message::CopyOut { container_id, path } => {
            Ok(agent.copy(&container_id, CopyRequest::Out { path }))
        }
        Message::CopyIn {
            container_id,
            path,
            contents,
            preserve_owner,
            as_is,
        } => Ok(agent.copy(
            &container_id,
            CopyRequest::In {
                path,
                contents,
                preserve_owner,
                as_is,
            },
        )),
        other => Err(Box::new(other)),
    }
}

/// Handles one request; `Some(Shutdown)` ends the connection and the agent.
fn dispatch(message: Message, agent: &Arc<Agent>, outbox: &Outbox) -> Option<Outcome> {
    let message = match start_process(message, agent) {
        // The agent sent Started itself, ahead of the process's first output.
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => {
            let message = error_chain(&e);
            crate::console::log(&message);
            outbox.send(&Message::Error { message });
            return None;
        }
        Err(message) => *message,
    };
    match message {
        Message::Stdin { process, data } => agent.stdin(process, &data),
        Message::StdinClose { process } => agent.close_stdin(process),
        Message::Signal { process, signal } => agent.signal(process, signal),
        Message::Resize {
            process,
            rows,
            cols,
        } => agent.resize(process, TtySize { rows, cols }),
        Message::Network {
            interface,
            address,
            prefix_len,
            gateway,
            mac,
            dns,
        } => {
            let configured = crate::network::set_mac(&interface, mac.as_deref())
                .and_then(|()| crate::network::configure(&interface, address, prefix_len, gateway))
                .and_then(|()| crate::network::set_dns(&dns));
            outbox.send(&reply_or_error(configured, Message::NetworkReady));
        }
        Message::Restored {
            generation,
            entropy,
            unix_time_ns,
            hostname,
            disks,
        } => {
            let identity = crate::restore::Identity {
                generation,
                entropy: &entropy,
                unix_time_ns,
                hostname: &hostname,
                disks: &disks,
            };
            let old = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            let applied = crate::restore::apply(&identity)
                .map_err(|e| error_chain(&e))
                .and_then(|()| {
                    agent
                        .rename_containers(&old, &hostname)
                        .map_err(|e| error_chain(&e))
                });
            let reply = match applied {
                Ok(()) => Message::RestoredAck { generation },
                Err(message) => {
                    crate::console::log(&message);
                    Message::Error { message }
                }
            };
            outbox.send_now(&reply);
            outbox.release();
        }
        Message::Prepare {
            image,
            writable_layer,
            warm_bytes,
        } => {
            let lower = LowerLayer::Device {
                device: PathBuf::from(image.device),
                fstype: image.fstype,
            };
            let prepared = agent.prepare(lower, writable_layer, warm_bytes);
            outbox.send(&reply_or_error(prepared, Message::Prepared));
        }
        Message::Shutdown => return Some(Outcome::Shutdown),
        other => {
            let message = format!("unexpected message from the host: {other:?}");
            outbox.send(&Message::Error { message });
        }
    }
    None
}

/// `ok` for a request that succeeded, else an `Error` naming why (also logged).
fn reply_or_error<E: std::error::Error>(result: Result<(), E>, ok: Message) -> Message {
    match result {
        Ok(()) => ok,
        Err(e) => {
            let message = error_chain(&e);
            crate::console::log(&message);
            Message::Error { message }
        }
    }
}

/// An error and its causes, `: `-separated, printed once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
