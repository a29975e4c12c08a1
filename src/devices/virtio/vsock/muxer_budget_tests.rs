//! Tests of the muxer's budget of host sockets and of its reset: what a guest can make
//! husk hold, and that a reset gives all of it back at once.
use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::tests::{established, guest, newest_stream, uds};
use super::*;
use crate::devices::virtio::descriptor::test_util::*;

/// A muxer with a budget of `max` host sockets.
fn muxer(max: usize) -> Muxer {
    let mut config = VsockConfig::new(3, uds());
    config.max_sockets = max;
    Muxer::new(&config).unwrap()
}

/// A host listener at `<uds>_<port>` that nobody accepts on: each connection husk
/// opens waits in its backlog, where the test can count it.
fn host_listener(m: &Muxer, port: u32) -> (UnixListener, String) {
    let path = format!("{}_{port}", m.uds.display());
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    (listener, path)
}

/// Connections waiting in `listener`'s backlog.
fn backlog(listener: &UnixListener) -> usize {
    std::iter::from_fn(|| listener.accept().ok()).count()
}

/// REQUESTs from guest ports `2000..2000 + n` to host port `port`.
fn guest_requests(m: &mut Muxer, port: u32, n: u32) {
    (2000..2000 + n).for_each(|src| m.guest_packet(&guest(OP_REQUEST, src, port), &[]));
}

/// Every control packet waiting for the guest, by operation.
fn ctrl_ops(m: &Muxer) -> Vec<u16> {
    m.ctrl.iter().map(|h| h.op).collect()
}

/// A host client that connected to the muxer's socket and sent nothing yet.
fn silent_client(m: &Muxer) -> UnixStream {
    let client = UnixStream::connect(&m.uds).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client
}

fn listener_ready(m: &Muxer) -> bool {
    m.ready().iter().any(|&(t, _)| t == LISTENER_TOKEN)
}

#[test]
fn guest_connections_beyond_the_budget_get_rst_and_open_no_socket() {
    let mut m = muxer(4);
    let (host, path) = host_listener(&m, 52);
    guest_requests(&mut m, 52, 6);
    let opened = backlog(&host);
    std::fs::remove_file(path).unwrap();
    assert_eq!(opened, 4);
    assert_eq!(m.sockets_held(), 4);
    let ops = ctrl_ops(&m);
    assert_eq!(ops[..4], [OP_RESPONSE; 4]);
    assert_eq!(ops[4..], [OP_RST; 2]);
}

#[test]
fn host_clients_and_guest_connections_share_the_budget() {
    let mut m = muxer(2);
    let (_host, path) = host_listener(&m, 52);
    let _client = silent_client(&m);
    m.accept();
    guest_requests(&mut m, 52, 2);
    std::fs::remove_file(path).unwrap();
    assert_eq!(m.sockets_held(), 2);
    assert_eq!(ctrl_ops(&m), [OP_RESPONSE, OP_RST]);
}

#[test]
fn host_client_beyond_the_budget_waits_unwatched_until_a_socket_is_released() {
    let mut m = muxer(1);
    let mut first = silent_client(&m);
    let _second = silent_client(&m);
    m.accept();
    let paused = !listener_ready(&m);
    first.write_all(b"HELLO\n").unwrap();
    let token = newest_stream(&m).unwrap();
    m.on_stream_event(token, true, false);
    let resumed = listener_ready(&m);
    m.accept();
    assert_eq!((paused, resumed), (true, true));
    assert_eq!(first.read(&mut [0u8; 8]).unwrap(), 0);
    assert_eq!(m.sockets_held(), 1);
}

#[test]
fn reset_closes_every_host_socket_before_it_returns() {
    let (mut m, mem) = (muxer(8), memory());
    let (host, path) = host_listener(&m, 52);
    let (mut established, _) = established(&mut m, &mem);
    let mut pending = silent_client(&m);
    m.accept();
    guest_requests(&mut m, 52, 1);
    let (mut guest_side, _) = host.accept().unwrap();
    std::fs::remove_file(path).unwrap();
    guest_side
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    m.reset();
    assert_eq!(m.sockets_held(), 0);
    assert_eq!(established.read(&mut [0u8; 8]).unwrap(), 0);
    assert_eq!(pending.read(&mut [0u8; 8]).unwrap(), 0);
    assert_eq!(guest_side.read(&mut [0u8; 8]).unwrap(), 0);
    assert_eq!(newest_stream(&m), None);
}

#[test]
fn reset_of_a_spent_budget_watches_the_listener_again() {
    let mut m = muxer(1);
    let _first = silent_client(&m);
    let _second = silent_client(&m);
    m.accept();
    let paused = !listener_ready(&m);
    m.reset();
    assert_eq!((paused, listener_ready(&m)), (true, true));
}

#[test]
fn reset_drops_control_packets_for_the_guest() {
    let mut m = muxer(4);
    guest_requests(&mut m, 53, 3);
    m.reset();
    assert_eq!(ctrl_ops(&m), Vec::<u16>::new());
}
