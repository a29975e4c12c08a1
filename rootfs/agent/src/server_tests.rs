//! The request loop over a Unix socketpair standing in for vsock.

use std::os::unix::net::{UnixListener, UnixStream};
use std::thread::JoinHandle;

use husk_protocol::{write_frame, write_message, Frame, FrameKind};

use super::*;
use crate::agent::Runtime;

fn agent(state: &std::path::Path) -> (Arc<Agent>, Arc<Outbox>) {
    let outbox = Arc::new(Outbox::default());
    let runtime = Runtime {
        state_dir: state.to_path_buf(),
        cgroup_root: None,
    };
    (Agent::new(runtime, outbox.clone()), outbox)
}

/// Starts the loop on one end of a socketpair; returns the host end and the loop.
fn start() -> (UnixStream, JoinHandle<Outcome>, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("tempdir");
    let (host, guest) = UnixStream::pair().expect("socketpair");
    let (agent, outbox) = agent(state.path());
    let handle = std::thread::spawn(move || handle_connection(guest, &agent, &outbox));
    (host, handle, state)
}

fn handshake(host: &mut UnixStream) {
    let hello = read_message(host).expect("hello");
    assert!(
        matches!(
            hello,
            Message::Hello {
                version: PROTOCOL_VERSION,
                ..
            }
        ),
        "{hello:?}"
    );
    write_message(
        host,
        &Message::HelloAck {
            version: PROTOCOL_VERSION,
        },
    )
    .expect("ack");
}

fn expect_error(host: &mut UnixStream) -> String {
    match read_message(host).expect("reply") {
        Message::Error { message } => message,
        other => panic!("expected Error, got {other:?}"),
    }
}

#[test]
fn shutdown_after_handshake_ends_the_loop_with_shutdown() {
    let (mut host, handle, _state) = start();
    handshake(&mut host);
    write_message(&mut host, &Message::Shutdown).expect("send");
    assert_eq!(handle.join().expect("loop"), Outcome::Shutdown);
}

#[test]
fn version_mismatch_is_refused_naming_both_versions() {
    let (mut host, handle, _state) = start();
    read_message(&mut host).expect("hello");
    write_message(&mut host, &Message::HelloAck { version: 99 }).expect("ack");
    let message = expect_error(&mut host);
    assert!(
        message.contains(&format!("ours is {PROTOCOL_VERSION}")) && message.contains("is 99"),
        "{message}"
    );
    assert_eq!(handle.join().expect("loop"), Outcome::Disconnected);
}

#[test]
fn request_before_hello_ack_is_refused() {
    let (mut host, handle, _state) = start();
    read_message(&mut host).expect("hello");
    write_message(&mut host, &Message::Shutdown).expect("send");
    assert!(expect_error(&mut host).contains("expected HelloAck"));
    assert_eq!(handle.join().expect("loop"), Outcome::Disconnected);
}

#[test]
fn exec_into_unknown_container_answers_error() {
    let (mut host, handle, _state) = start();
    handshake(&mut host);
    let exec = Message::Exec {
        container_id: "nope".into(),
        args: vec!["sh".into()],
        env: vec![],
        cwd: None,
        user: None,
        tty: None,
    };
    write_message(&mut host, &exec).expect("send");
    assert_eq!(expect_error(&mut host), "no such container: nope");
    drop(host);
    assert_eq!(handle.join().expect("loop"), Outcome::Disconnected);
}

#[test]
fn run_with_invalid_id_answers_error_naming_it() {
    let (mut host, handle, _state) = start();
    handshake(&mut host);
    let run = Message::Run {
        id: "../x".into(),
        image: husk_protocol::ImageSpec {
            device: "/dev/vdb".into(),
            fstype: "erofs".into(),
        },
        args: vec!["true".into()],
        env: vec![],
        cwd: None,
        user: None,
        tty: None,
        limits: Default::default(),
        writable_layer: husk_protocol::WritableLayer::Tmpfs,
        hostname: None,
        volumes: vec![],
    };
    write_message(&mut host, &run).expect("send");
    assert_eq!(expect_error(&mut host), "invalid container id \"../x\"");
    write_message(&mut host, &Message::Shutdown).expect("send");
    assert_eq!(handle.join().expect("loop"), Outcome::Shutdown);
}

#[test]
fn frames_for_unknown_processes_are_ignored_and_the_loop_goes_on() {
    let (mut host, handle, _state) = start();
    handshake(&mut host);
    write_message(
        &mut host,
        &Message::Stdin {
            process: 42,
            data: b"x".to_vec(),
        },
    )
    .expect("send");
    write_message(
        &mut host,
        &Message::Signal {
            process: 42,
            signal: 9,
        },
    )
    .expect("send");
    write_message(&mut host, &Message::Shutdown).expect("send");
    assert_eq!(handle.join().expect("loop"), Outcome::Shutdown);
}

#[test]
fn bad_json_is_answered_with_error_and_the_loop_goes_on() {
    let (mut host, handle, _state) = start();
    handshake(&mut host);
    write_frame(
        &mut host,
        &Frame {
            kind: FrameKind::Control,
            payload: b"{nonsense".to_vec(),
        },
    )
    .expect("send");
    assert!(expect_error(&mut host).starts_with("bad control message"));
    write_message(&mut host, &Message::Shutdown).expect("send");
    assert_eq!(handle.join().expect("loop"), Outcome::Shutdown);
}

#[test]
fn agent_sent_message_from_host_is_answered_with_error() {
    let (mut host, handle, _state) = start();
    handshake(&mut host);
    write_message(&mut host, &Message::started(1)).expect("send");
    assert!(expect_error(&mut host).starts_with("unexpected message"));
    drop(host);
    assert_eq!(handle.join().expect("loop"), Outcome::Disconnected);
}

#[test]
fn second_connection_is_served_after_the_first_disconnects() {
    let state = tempfile::tempdir().expect("tempdir");
    let socket = state.path().join("agent.sock");
    let mut listener = UnixListener::bind(&socket).expect("bind");
    let (agent, outbox) = agent(state.path());
    let server = std::thread::spawn(move || serve(&mut listener, &agent, &outbox));
    let mut first = UnixStream::connect(&socket).expect("connect");
    handshake(&mut first);
    drop(first);
    let mut second = UnixStream::connect(&socket).expect("reconnect");
    handshake(&mut second);
    write_message(&mut second, &Message::Shutdown).expect("send");
    assert!(server.join().expect("server").is_ok());
}

#[test]
fn protocol_crate_host_handshake_is_accepted() {
    let (mut host, handle, _state) = start();
    let greeting = husk_protocol::host_handshake(&mut host).expect("handshake");
    assert_eq!(greeting.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(greeting.generation, 0);
    write_message(&mut host, &Message::Shutdown).expect("send");
    assert_eq!(handle.join().expect("loop"), Outcome::Shutdown);
}

#[test]
fn network_request_with_bad_gateway_answers_error_and_the_loop_goes_on() {
    let (mut host, handle, _state) = start();
    handshake(&mut host);
    let request = Message::Network {
        interface: "eth0".into(),
        address: std::net::Ipv4Addr::new(10, 213, 0, 2),
        prefix_len: 30,
        gateway: std::net::Ipv4Addr::new(192, 168, 0, 1),
        mac: None,
        dns: vec![],
    };
    write_message(&mut host, &request).expect("send");
    let message = expect_error(&mut host);
    assert!(message.contains("gateway 192.168.0.1"), "{message}");
    write_message(&mut host, &Message::Shutdown).expect("send");
    assert_eq!(handle.join().expect("loop"), Outcome::Shutdown);
}

#[test]
fn a_restore_with_too_little_entropy_answers_error_and_keeps_the_generation() {
    let (mut host, handle, _state) = start();
    handshake(&mut host);
    let request = Message::Restored {
        generation: 9,
        entropy: vec![1; 4],
        unix_time_ns: 0,
        hostname: "husk-x".into(),
        disks: vec![],
    };
    write_message(&mut host, &request).expect("send");
    let message = expect_error(&mut host);
    assert!(message.contains("4 bytes of entropy"), "{message}");
    assert_eq!(crate::restore::generation(), 0);
    write_message(&mut host, &Message::Shutdown).expect("send");
    assert_eq!(handle.join().expect("loop"), Outcome::Shutdown);
}
