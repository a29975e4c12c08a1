//! `husk cp` in the guest (`CopyOut`, `CopyIn`): a copy is a process without a
//! program. A thread of its own joins the container's mount namespace (after
//! `unshare(CLONE_FS)`, since `setns` of a mount namespace needs a thread that shares
//! no filesystem context), so every path, symlinks included, resolves inside the
//! container as docker's would; then it packs the source into the process's stdout
//! pipe, or unpacks the process's stdin pipe at the destination (`husk-copy`). The
//! usual process plumbing does the rest: `Started`, output frames, stdin flow control,
//! `Exited` with code 0, or 1 after the error on stderr.

use std::fs::File;
use std::io::Write;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;

use husk_protocol::ProcessId;
use nix::sched::{setns, unshare, CloneFlags};

use crate::agent::{Agent, AgentError, Ending, Started};
use crate::process::HostEnds;
use crate::reaper::RawExit;
use crate::spawn::pipe;

pub use husk_copy::CopyRequest;

/// The copy thread's ends of the process's pipes.
struct ThreadEnds {
    stdin: File,
    stdout: File,
    stderr: File,
}

impl Agent {
    /// Starts a copy with the running container `container_id`; sends Started (once
    /// the source, or the destination's parent, is found in the container) and returns
    /// the copy's process id.
    pub fn copy(
        self: &Arc<Self>,
        container_id: &str,
        request: CopyRequest,
    ) -> Result<ProcessId, AgentError> {
        let init_pid = self.init_pid(container_id)?;
        let path = format!("/proc/{init_pid}/ns/mnt");
        let ns = File::open(&path).map_err(crate::agent::io_err(format!("open {path}")))?;
        let pipes = || -> std::io::Result<_> { Ok((pipe()?, pipe()?, pipe()?)) };
        let ((stdin_r, stdin_w), (stdout_r, stdout_w), (stderr_r, stderr_w)) =
            pipes().map_err(crate::agent::io_err("create the copy's pipes"))?;
        let (ready, checked) = mpsc::channel();
        let (exited, exit) = mpsc::channel();
        let ends = ThreadEnds {
            stdin: stdin_r,
            stdout: stdout_w,
            stderr: stderr_w,
        };
        std::thread::Builder::new()
            .name("copy".into())
            .spawn(move || copy_thread(&ns, &request, ends, &ready, &exited))
            .map_err(crate::agent::io_err("start the copy thread"))?;
        match checked.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(AgentError::Copy(message)),
            Err(_) => return Err(AgentError::Copy("the copy thread ended".into())),
        }
        let started = Started {
            id: self.next_process_id(),
            pid: 0,
            ends: HostEnds {
                stdin: stdin_w,
                stdout: stdout_r,
                stderr: Some(stderr_r),
                pty: None,
            },
            exit,
            prepared: false,
        };
        let id = started.id;
        self.watch(started, container_id, Ending::Exec);
        Ok(id)
    }
}

/// Enters the container's mount namespace, checks the request, says so on `ready`,
/// then copies and reports the end on `exited`.
fn copy_thread(
    ns: &File,
    request: &CopyRequest,
    ends: ThreadEnds,
    ready: &Sender<Result<(), String>>,
    exited: &Sender<RawExit>,
) {
    let entered = unshare(CloneFlags::CLONE_FS)
        .and_then(|()| setns(ns, CloneFlags::CLONE_NEWNS))
        .map_err(|e| format!("cannot enter the container's mount namespace: {e}"));
    let checked = entered.and_then(|()| check(request).map_err(|e| e.to_string()));
    let failed = checked.is_err();
    let _ = ready.send(checked);
    if failed {
        return;
    }
    let ThreadEnds {
        stdin,
        stdout,
        mut stderr,
    } = ends;
    let result = match request {
        CopyRequest::Out { path } => husk_copy::pack(path, &stdout),
        CopyRequest::In {
            path,
            contents,
            preserve_owner,
            as_is,
        } => {
            let options = husk_copy::UnpackOptions {
                preserve_owner: *preserve_owner,
                preserve_special_bits: true,
            };
            match as_is {
                true => husk_copy::unpack_into(&stdin, path, options),
                false => husk_copy::unpack(&stdin, path, *contents, options),
            }
        }
    };
    drop((stdin, stdout));
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(stderr, "{e}");
            1
        }
    };
    drop(stderr);
    let _ = exited.send((Some(code), None));
}

fn check(request: &CopyRequest) -> Result<(), husk_copy::CopyError> {
    match request {
        CopyRequest::Out { path } => husk_copy::source_kind(path).map(drop),
        CopyRequest::In { path, .. } => husk_copy::check_destination(path).map(drop),
    }
}
