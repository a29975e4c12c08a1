//! Containers made ahead of their Run (`Agent::prepare`, what an image template holds),
//! driven on this host as root against a busybox directory, like containers_root.rs.

mod common;

use common::{host_cgroup_root, Harness};
use husk_agent::prepare::ProcessRequest;
use husk_agent::rootfs::LowerLayer;
use husk_protocol::{Limits, TtySize, WritableLayer};

/// The prepared containers' folders in the harness's state folder.
fn prepared_dirs(h: &Harness) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(&h.state)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(".prepared-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn prepared(h: &Harness) -> std::path::PathBuf {
    // With the image's files read ahead, as an image template's Prepare does.
    h.agent
        .prepare(
            LowerLayer::Directory(h.lower.clone()),
            WritableLayer::Tmpfs,
            16 << 20,
        )
        .expect("prepare");
    let dirs = prepared_dirs(h);
    assert_eq!(dirs.len(), 1, "its root is mounted: {dirs:?}");
    dirs[0].clone()
}

/// Waits up to 2 s for the prepared container's folder to go.
fn wait_removed(h: &Harness) {
    for _ in 0..100 {
        if prepared_dirs(h).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("prepared root left: {:?}", prepared_dirs(h));
}

#[test]
fn root_a_prepared_container_runs_the_command_as_pid_1_with_its_identity() {
    let mut h = Harness::new();
    prepared(&h);
    let mut request = h.request(
        "first",
        &[
            "sh",
            "-c",
            "echo $$ $(hostname) $FOO $HOME; pwd; id -u; id -G",
        ],
    );
    request.hostname = Some("box".into());
    request.process = ProcessRequest {
        env: vec!["FOO=bar".into()],
        cwd: Some("/tmp".into()),
        user: Some("alice".into()),
        ..request.process
    };
    let process = h.run(request);
    let outcome = h.wait(process);
    assert!(
        outcome.prepared,
        "Started says the prepared container ran it"
    );
    assert_eq!(
        outcome.stdout_text(),
        "1 box bar /home/alice\n/tmp\n1000\n1000 10\n"
    );
    assert_eq!(outcome.status.expect("exited").docker_code(), 0);
    // It ends like any container: root and state gone; the next Run makes its own.
    wait_removed(&h);
    let again = h.run_to_end("second", &["echo", "plain"]);
    assert!(!again.prepared);
    assert_eq!(again.stdout_text(), "plain\n");
}

#[test]
fn root_a_prepared_container_exit_code_stdin_and_terminal_work() {
    let mut h = Harness::new();
    prepared(&h);
    let mut request = h.request("tty", &["sh", "-c", "read x; echo got $x; tty; exit 4"]);
    request.process.tty = Some(TtySize { rows: 24, cols: 80 });
    let process = h.run(request);
    h.agent.stdin(process, b"hello\n");
    let outcome = h.wait(process);
    assert!(outcome.prepared);
    let text = outcome.stdout_text();
    assert!(text.contains("got hello"), "{text:?}");
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert_eq!(outcome.status.expect("exited").docker_code(), 4);
}

#[test]
fn root_a_missing_command_is_an_error_and_the_prepared_container_stays() {
    let mut h = Harness::new();
    prepared(&h);
    let err = h
        .agent
        .run(h.request("missing", &["no-such-tool"]))
        .expect_err("refused");
    assert!(err.to_string().contains("no-such-tool"), "{err}");
    let outcome = h.run_to_end("after", &["echo", "ok"]);
    assert!(outcome.prepared, "the next Run still took it");
    assert_eq!(outcome.stdout_text(), "ok\n");
}

#[test]
fn root_a_run_that_does_not_fit_takes_the_prepared_container_down() {
    let mut h = Harness::new();
    prepared(&h);
    let mut request = h.request("other", &["echo", "plain"]);
    request.lower = LowerLayer::Directory(h.state.join("..").join("lower"));
    request.volumes = vec![husk_protocol::VolumeMount {
        tag: "none".into(),
        target: "/v".into(),
        read_only: true,
    }];
    // Volumes never fit (this one cannot mount here): the Run fails its own way, and
    // the prepared container is gone either way.
    let _ = h.agent.run(request);
    wait_removed(&h);
    let outcome = h.run_to_end("plain", &["echo", "plain"]);
    assert!(!outcome.prepared);
    assert_eq!(outcome.stdout_text(), "plain\n");
}

#[test]
#[ignore = "needs cgroup v2 with the pids controller (run in the guest)"]
fn root_a_prepared_container_takes_the_runs_limits() {
    let root = host_cgroup_root().expect("cgroup v2");
    let mut h = Harness::with_cgroups(Some(root.clone()));
    let dir = prepared(&h);
    let mut request = h.request("limited", &["sh", "-c", "echo up; sleep 30"]);
    request.limits = Limits {
        pids: Some(17),
        ..Limits::default()
    };
    let process = h.run(request);
    h.wait_for_output(process, "up");
    let name = dir.file_name().expect("named");
    let pids_max = root.join("husk").join(name).join("pids.max");
    let value = std::fs::read_to_string(&pids_max).expect("read pids.max");
    h.agent.signal(process, libc::SIGKILL);
    let _ = h.wait(process);
    assert_eq!(value.trim(), "17");
}

#[test]
fn root_preparing_twice_is_refused() {
    let h = Harness::new();
    prepared(&h);
    let err = h
        .agent
        .prepare(
            LowerLayer::Directory(h.lower.clone()),
            WritableLayer::Tmpfs,
            0,
        )
        .expect_err("refused");
    assert!(err.to_string().contains("already prepared"), "{err}");
    let err = h
        .agent
        .prepare(
            LowerLayer::Directory(h.lower.clone()),
            WritableLayer::Disk {
                device: "/dev/vdz".into(),
            },
            0,
        )
        .expect_err("refused");
    assert!(err.to_string().contains("tmpfs"), "{err}");
    h.agent.kill_all();
    wait_removed(&h);
}
