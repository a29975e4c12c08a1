//! The sandbox's own tests (its parts have theirs beside them).

use std::time::Duration;

use husk_protocol::{read_message, write_message, Message};

use super::connect::watch_vm;
use super::tests_support::{Capture, FakeAgent};
use super::*;

#[test]
fn a_guest_that_dies_ends_every_wait_with_its_failure() {
    let agent = FakeAgent::new();
    let (demux, reader) =
        demux::Demux::start(agent.host.try_clone().unwrap(), agent.writer()).unwrap();
    let conn = Arc::new(agent.host.try_clone().unwrap());
    let (vm, ending) = VmmProcess::without_process();
    watch_vm(Arc::new(vm), &demux, &conn).unwrap();
    let mut guest = agent.guest;
    let guest_thread = std::thread::spawn(move || {
        assert!(matches!(read_message(&mut guest), Ok(Message::Exec { .. })));
        write_message(&mut guest, &Message::started(7)).unwrap();
        // The guest keeps its end open, as the vsock device does after a crash.
        guest
    });
    let exec = Message::Exec {
        container_id: "c".into(),
        args: vec!["cat".into()],
        env: vec![],
        cwd: None,
        user: None,
        tty: None,
    };
    let (out, err) = (Capture::default(), Capture::default());
    let accepted = demux.request(&exec, Box::new(out), Box::new(err)).unwrap();
    let _guest = guest_thread.join().unwrap();
    ending(ExitReport {
        error: Some("guest triple fault on vCPU 0 (RIP unknown: KVM reset the vCPU)".into()),
        ..ExitReport::default()
    });
    let ended = accepted.exit.recv_timeout(Duration::from_secs(10));
    let reason = ended.expect("the wait ended").unwrap_err();
    assert!(
        reason.contains("the guest failed: guest triple fault on vCPU 0"),
        "{reason}"
    );
    reader.join().unwrap();
    assert!(demux.closed_reason().contains("triple fault"));
}
