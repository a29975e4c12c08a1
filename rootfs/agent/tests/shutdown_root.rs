//! The agent's side of Ctrl+Alt+Del driven on this host, as root, over real containers
//! (see `containers_root.rs`): a stop with a grace lets a container that handles
//! SIGTERM end by itself and kills one that ignores it, and processes started while
//! the agent blocks SIGINT (as PID 1 does) run with no signal blocked.

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use husk_agent::shutdown::{stop_containers, Stopped, Timeouts};

#[test]
fn root_a_process_started_while_the_agent_blocks_sigint_has_no_signal_blocked() {
    // This test's thread spawns the container: it stands for PID 1's threads.
    husk_agent::cad::block().expect("block SIGINT");
    let mut h = Harness::new();
    let outcome = h.run_to_end("mask", &["grep", "^SigBlk:", "/proc/self/status"]);
    assert_eq!(outcome.stdout_text().trim(), "SigBlk:\t0000000000000000");
}

#[test]
fn root_a_stop_with_grace_lets_a_handling_container_end_and_kills_an_ignoring_one() {
    let mut h = Harness::new();
    let handles = h.run(h.request(
        "handles",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo ready; while :; do sleep 0.1; done",
        ],
    ));
    h.wait_for_output(handles, "ready");
    let ignores = h.run(h.request(
        "ignores",
        &["sh", "-c", "trap '' TERM; echo ready; sleep 1000"],
    ));
    h.wait_for_output(ignores, "ready");
    let timeouts = Timeouts {
        grace: Some(Duration::from_secs(1)),
        kill_wait: Duration::from_secs(5),
    };
    let started = Instant::now();
    let stopped = stop_containers(&*h.agent, timeouts);
    let took = started.elapsed();
    assert_eq!(stopped, Stopped { killed: 1, left: 0 });
    assert!(took < Duration::from_secs(6), "{took:?}");
    let handled = h.wait(handles).status.expect("exited");
    assert_eq!((handled.code, handled.signal), (Some(0), None));
    let ignored = h.wait(ignores).status.expect("exited");
    assert_eq!((ignored.code, ignored.signal), (None, Some(9)));
}
