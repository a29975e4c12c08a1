//! The real AF_VSOCK transport, over vsock loopback (CID 1): the request loop accepts,
//! greets, answers and shuts down, and a second connection is served after the first.
//! Needs `CONFIG_VSOCKETS_LOOPBACK` (the husk guest kernel has it; run it there with
//! `--include-ignored`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use husk_agent::agent::{Agent, Runtime};
use husk_agent::outbox::Outbox;
use husk_agent::server::serve;
use husk_agent::transport::VsockListener;
use husk_protocol::{read_message, write_message, Message, PROTOCOL_VERSION};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

const PORT: u32 = 10_240;

fn connect_local() -> File {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("AF_VSOCK socket");
    connect(
        fd.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_LOCAL, PORT),
    )
    .expect("connect over vsock loopback");
    File::from(fd)
}

fn handshake(stream: &mut File) {
    let hello = read_message(stream).expect("hello");
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
        stream,
        &Message::HelloAck {
            version: PROTOCOL_VERSION,
        },
    )
    .expect("ack");
}

#[test]
#[ignore = "needs AF_VSOCK loopback (CONFIG_VSOCKETS_LOOPBACK), as in the husk guest"]
fn vsock_loopback_connections_are_served_until_shutdown() {
    let state = tempfile::tempdir().expect("tempdir");
    let outbox = Arc::new(Outbox::default());
    let runtime = Runtime {
        state_dir: state.path().to_path_buf(),
        cgroup_root: None,
    };
    let agent = Agent::new(runtime, outbox.clone());
    let mut listener = VsockListener::bind(PORT).expect("bind vsock port");
    let server = std::thread::spawn(move || serve(&mut listener, &agent, &outbox));
    let mut first = connect_local();
    handshake(&mut first);
    let exec = Message::Exec {
        container_id: "none".into(),
        args: vec!["true".into()],
        env: vec![],
        cwd: None,
        user: None,
        tty: None,
    };
    write_message(&mut first, &exec).expect("send exec");
    assert_eq!(
        read_message(&mut first).expect("reply"),
        Message::Error {
            message: "no such container: none".into()
        }
    );
    drop(first);
    let mut second = connect_local();
    handshake(&mut second);
    write_message(&mut second, &Message::Shutdown).expect("send shutdown");
    assert!(server.join().expect("server thread").is_ok());
}
