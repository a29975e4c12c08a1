//! `husk cp` in the agent, driven on this host as root like `containers_root.rs`: a
//! container's files packed out through the copy "process", an archive unpacked in,
//! paths resolved inside the container (its own root, its own symlinks), and docker's
//! errors for a missing source or destination parent.

mod common;

use std::os::unix::fs::MetadataExt;

use common::Harness;
use husk_agent::copy::CopyRequest;
use husk_agent::prepare::ProcessRequest;

/// A container whose /srv/d holds `f` (mode 0600) and whose /link points at /srv/d.
fn running(h: &mut Harness, id: &str) -> u32 {
    let script = "mkdir -p /srv/d && echo inside > /srv/d/f && chmod 600 /srv/d/f \
                  && ln -s /srv/d /link && echo ready && sleep 100";
    let init = h.run(h.request(id, &["sh", "-c", script]));
    h.wait_for_output(init, "ready");
    init
}

fn stop(h: &mut Harness, init: u32) {
    h.agent.signal(init, libc::SIGKILL);
    h.wait(init);
}

#[test]
fn root_copy_out_streams_a_tar_of_the_containers_path() {
    let mut h = Harness::new();
    let init = running(&mut h, "cp-out");
    let out = h
        .agent
        .copy(
            "cp-out",
            CopyRequest::Out {
                path: "/link/".into(),
            },
        )
        .expect("copy starts");
    let outcome = h.wait(out);
    stop(&mut h, init);
    assert_eq!(
        outcome.status.map(|s| s.code),
        Some(Some(0)),
        "{}",
        String::from_utf8_lossy(&outcome.stderr)
    );
    let dest = tempfile::tempdir().expect("tmp");
    husk_copy::unpack(
        &outcome.stdout[..],
        &dest.path().display().to_string(),
        false,
        Default::default(),
    )
    .expect("unpack");
    let f = dest.path().join("link/f");
    assert_eq!(std::fs::read_to_string(&f).expect("f"), "inside\n");
    assert_eq!(std::fs::metadata(&f).expect("f").mode() & 0o777, 0o600);
}

#[test]
fn root_copy_in_unpacks_inside_the_container_through_its_own_symlinks() {
    let mut h = Harness::new();
    let init = running(&mut h, "cp-in");
    let src = tempfile::tempdir().expect("tmp");
    std::fs::write(src.path().join("new.txt"), "from the host\n").expect("write");
    let mut archive = Vec::new();
    husk_copy::pack(
        &src.path().join("new.txt").display().to_string(),
        &mut archive,
    )
    .expect("pack");
    let request = CopyRequest::In {
        path: "/link".into(),
        contents: false,
        preserve_owner: false,
        as_is: false,
    };
    let copy = h.agent.copy("cp-in", request).expect("copy starts");
    h.agent.stdin(copy, &archive);
    h.agent.close_stdin(copy);
    let outcome = h.wait(copy);
    assert_eq!(
        outcome.status.map(|s| s.code),
        Some(Some(0)),
        "{}",
        String::from_utf8_lossy(&outcome.stderr)
    );
    assert_eq!(outcome.stdin_acked, archive.len() as u64);
    let check = ProcessRequest {
        args: ["cat", "/srv/d/new.txt"].map(String::from).to_vec(),
        ..Default::default()
    };
    let cat = h.agent.exec("cp-in", check).expect("exec");
    let seen = h.wait(cat);
    stop(&mut h, init);
    assert_eq!(seen.stdout_text(), "from the host\n");
}

#[test]
fn root_copy_of_a_missing_source_or_parent_is_refused_before_it_starts() {
    let mut h = Harness::new();
    let init = running(&mut h, "cp-err");
    let missing = h.agent.copy(
        "cp-err",
        CopyRequest::Out {
            path: "/nope".into(),
        },
    );
    let no_parent = h.agent.copy(
        "cp-err",
        CopyRequest::In {
            path: "/no/such/dir".into(),
            contents: false,
            preserve_owner: false,
            as_is: false,
        },
    );
    let no_container = h.agent.copy("other", CopyRequest::Out { path: "/".into() });
    stop(&mut h, init);
    let text = |r: Result<u32, husk_agent::agent::AgentError>| r.expect_err("refused").to_string();
    assert_eq!(text(missing), "no such file or directory: /nope");
    assert_eq!(text(no_parent), "no such directory: /no/such");
    assert_eq!(text(no_container), "no such container: other");
}
