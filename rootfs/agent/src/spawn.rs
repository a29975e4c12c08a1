//! The agent's side of starting a container process: the pipes that carry the child's
//! pid and setup errors back, the fork, and the wait for `execve`.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::child::{self, ChildPlan, Namespaces, Step};

/// Errors of spawning a process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Creating a pipe or forking failed in the agent.
    #[error("{what}")]
    Agent {
        /// The failed call.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The child failed before `execve` succeeded.
    #[error("container process setup failed at {step:?}")]
    Setup {
        /// The step.
        step: Step,
        /// The errno, as an error.
        #[source]
        source: io::Error,
    },
    /// The intermediate process died without reporting anything.
    #[error("container process setup died without a report")]
    NoReport,
}

fn agent_err(what: &'static str) -> impl FnOnce(io::Error) -> SpawnError {
    move |source| SpawnError::Agent { what, source }
}

/// A close-on-exec pipe as (read, write) files.
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Reads up to `N` bytes, stopping early only at end of stream.
fn read_up_to<const N: usize>(file: &mut File) -> io::Result<(usize, [u8; N])> {
    let mut buf = [0u8; N];
    let mut got = 0;
    while got < N {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((got, buf))
}

fn setup_error(report: [u8; 8]) -> SpawnError {
    let code = u32::from_le_bytes([report[0], report[1], report[2], report[3]]);
    let errno = i32::from_le_bytes([report[4], report[5], report[6], report[7]]);
    match Step::from_code(code) {
        Some(step) => SpawnError::Setup {
            step,
            source: io::Error::from_raw_os_error(errno),
        },
        None => SpawnError::NoReport,
    }
}

/// A forked process whose pid is known but whose `execve` is still pending.
pub struct Pending {
    /// The container process's pid in the agent's pid namespace.
    pub pid: libc::pid_t,
    errors: File,
}

impl Pending {
    /// A process `pid` whose setup reports come on `errors` (end of stream: exec'd).
    pub fn new(pid: libc::pid_t, errors: File) -> Self {
        Self { pid, errors }
    }

    /// Waits until the process has exec'd (`Ok`) or reported a setup failure.
    pub fn wait_exec(mut self) -> Result<(), SpawnError> {
        match read_up_to::<8>(&mut self.errors).map_err(agent_err("read error pipe"))? {
            (0, _) => Ok(()),
            (8, report) => Err(setup_error(report)),
            _ => Err(SpawnError::NoReport),
        }
    }
}

/// Forks the intermediate process for `plan` and returns the container process's pid.
/// The caller registers the pid with the reaper before calling [`Pending::wait_exec`].
pub fn spawn(plan: &ChildPlan) -> Result<Pending, SpawnError> {
    let (errors, err_write) = pipe().map_err(agent_err("pipe"))?;
    let err_fd = err_write.as_raw_fd();
    let forked = fork_into(&plan.namespaces, plan.cgroup_procs.as_ref(), err_fd, || {
        child::container_process(plan, err_fd)
    });
    drop(OwnedFd::from(err_write));
    let pending = Pending { pid: 0, errors };
    match forked {
        Ok(pid) => Ok(Pending { pid, ..pending }),
        Err(_) => Err(pending.wait_exec().err().unwrap_or(SpawnError::NoReport)),
    }
}

/// Forks an intermediate process that enters (or creates) `namespaces` and the cgroup
/// and forks the process that runs `child` (which must exec or exit, and must not
/// allocate); returns that process's pid. Setup failures are reported on `err_fd`.
pub fn fork_into(
    namespaces: &Namespaces,
    cgroup_procs: Option<&OwnedFd>,
    err_fd: RawFd,
    child: impl FnOnce(),
) -> Result<libc::pid_t, SpawnError> {
    let (mut pid_read, pid_write) = pipe().map_err(agent_err("pipe"))?;
    // SAFETY: the child runs child::enter_and_fork, which only makes raw syscalls on
    // data prepared before the fork and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(agent_err("fork")(io::Error::last_os_error()));
    }
    if pid == 0 {
        child::enter_and_fork(
            namespaces,
            cgroup_procs,
            pid_write.as_raw_fd(),
            err_fd,
            child,
        );
    }
    drop(pid_write);
    match read_up_to::<4>(&mut pid_read).map_err(agent_err("read pid pipe"))? {
        (4, bytes) => Ok(u32::from_le_bytes(bytes) as libc::pid_t),
        _ => Err(SpawnError::NoReport),
    }
}
