//! Unit tests of detached sandboxes: names, states, the control socket's stdin window.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use husk_protocol::{read_message, Message, MAX_DATA_CHUNK, STDIN_WINDOW};

use super::control::{ChannelReader, ClientOut, ClientStdin};
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
