//! A container made ahead of its Run ([`husk_protocol::Message::Prepare`]), for an
//! image template: its root mounted, its cgroup made, and its first process waiting in
//! the container's namespaces (see [`crate::zygote`]). The next Run that fits takes it
//! and only sends the command; one that does not fit makes its container as usual and
//! the prepared one is taken down.

use std::ffi::CString;
use std::fs::File;
use std::io::{IoSlice, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::{Limits, WritableLayer};
use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag};

use super::{io_err, Agent, AgentError, RunRequest, Started};
use crate::cgroup::Cgroup;
use crate::child::{Namespaces, Step};
use crate::prepare::{self, Resolved};
use crate::process::{self, HostEnds};
use crate::reaper::{reaper, RawExit};
use crate::rootfs::{LowerLayer, Rootfs};
use crate::spawn::{self, Pending, SpawnError};
use crate::zygote::{self, ZygoteMemory, READY};

/// How the prepared container's folder and cgroup are named (`.prepared-<n>`): ids a
/// Run gives never start with a dot, so it cannot collide with one.
const PREPARED_PREFIX: &str = ".prepared-";

/// Numbers the prepared containers of this process (tests run several agents).
static PREPARED_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A container waiting for its Run.
pub(super) struct Prepared {
    lower: LowerLayer,
    rootfs: Rootfs,
    cgroup: Option<Arc<Cgroup>>,
    /// The waiting process (the container's init-to-be).
    pid: i32,
    control: UnixStream,
    exit: Receiver<RawExit>,
}

impl Prepared {
    fn fits(&self, request: &RunRequest) -> bool {
        self.lower == request.lower
            && request.writable == WritableLayer::Tmpfs
            && request.volumes.is_empty()
    }

    /// Kills the waiting process and removes the container's root and cgroup.
    pub(super) fn discard(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.exit.recv_timeout(Duration::from_secs(1));
        self.rootfs.unmount();
        self.cgroup.iter().for_each(|c| c.remove());
    }

    /// Gives the container the Run's limits and resolv.conf, sends the waiting process
    /// `command` with its stdio and an error pipe, and waits until it has exec'd: the
    /// agent's ends of its stdio.
    fn send(&self, request: &RunRequest, command: &[u8]) -> Result<HostEnds, AgentError> {
        if let Some(cgroup) = &self.cgroup {
            cgroup.apply(&request.limits)?;
        }
        crate::network::install_resolv_conf(&self.rootfs.merged());
        let (host, child) =
            process::make_stdio(request.process.tty).map_err(io_err("create stdio"))?;
        let (errors, err_write) = spawn::pipe().map_err(io_err("pipe"))?;
        let [stdin, stdout, stderr] = child.raw();
        let fds = [stdin, stdout, stderr, err_write.as_raw_fd()];
        let rights = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            self.control.as_raw_fd(),
            &[IoSlice::new(command)],
            &rights,
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| io_err("send the command to the prepared container")(e.into()))?;
        drop((child, err_write));
        Pending::new(self.pid, errors).wait_exec()?;
        Ok(host)
    }
}

/// Reads the zygote's 8-byte report from `control`: ready, or the step that failed.
fn read_report(control: &mut UnixStream) -> Result<(), SpawnError> {
    let mut bytes = [0u8; 8];
    let got = control
        .read(&mut bytes)
        .map_err(|source| SpawnError::Agent {
            what: "read the prepared process's report",
            source,
        })?;
    let code = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let errno = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    match (got, Step::from_code(code)) {
        (8, _) if code == READY => Ok(()),
        (8, Some(step)) => Err(SpawnError::Setup {
            step,
            source: std::io::Error::from_raw_os_error(errno),
        }),
        _ => Err(SpawnError::NoReport),
    }
}

impl Agent {
    /// Makes a container ahead of its Run (see the module documentation).
    pub fn prepare(
        self: &Arc<Self>,
        lower: LowerLayer,
        writable: WritableLayer,
        warm_bytes: u64,
    ) -> Result<(), AgentError> {
        if writable != WritableLayer::Tmpfs {
            return Err(AgentError::NotPreparable(
                "only a container with a tmpfs writable layer can be made ahead".into(),
            ));
        }
        let mut slot = self.prepared_slot();
        if slot.is_some() {
            return Err(AgentError::NotPreparable(
                "a container is already prepared".into(),
            ));
        }
        let seq = PREPARED_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{PREPARED_PREFIX}{seq}");
        let cgroup = match &self.runtime.cgroup_root {
            Some(root) => Some(Arc::new(Cgroup::create(root, &id, &Limits::default())?)),
            None => None,
        };
        let rootfs = Rootfs::mount(&self.runtime.state_dir, &id, &lower, &writable);
        let mut rootfs = match rootfs {
            Ok(rootfs) => rootfs,
            Err(e) => {
                cgroup.iter().for_each(|c| c.remove());
                return Err(e.into());
            }
        };
        match spawn_zygote(&rootfs, cgroup.as_deref()) {
            Ok((pid, control, exit)) => {
                if warm_bytes > 0 {
                    let warmed = crate::warm::warm(&rootfs.merged(), warm_bytes);
                    crate::console::log(&format!(
                        "prepared container: {} image files ({} KiB) read ahead",
                        warmed.files,
                        warmed.bytes >> 10
                    ));
                }
                *slot = Some(Prepared {
                    lower,
                    rootfs,
                    cgroup,
                    pid,
                    control,
                    exit,
                });
                Ok(())
            }
            Err(e) => {
                rootfs.unmount();
                cgroup.iter().for_each(|c| c.remove());
                Err(e)
            }
        }
    }

    /// Runs `request` in the prepared container if it fits one: `None` when there is
    /// none or it does not fit (the prepared one is then taken down).
    pub(super) fn run_prepared(
        self: &Arc<Self>,
        request: &RunRequest,
    ) -> Option<Result<u32, AgentError>> {
        let mut slot = self.prepared_slot();
        let prepared = slot.take()?;
        if !prepared.fits(request) {
            drop(slot);
            prepared.discard();
            return None;
        }
        let hostname = (request.hostname.clone()).unwrap_or_else(|| request.id.clone());
        let merged = prepared.rootfs.merged();
        let resolved = match prepare::resolve(&request.process, &merged, &hostname) {
            Ok(resolved) => resolved,
            Err(e) => {
                // Nothing changed: the next Run may still take it.
                *slot = Some(prepared);
                return Some(Err(e.into()));
            }
        };
        let Some(command) = encode(request, &resolved, &hostname) else {
            drop(slot);
            prepared.discard();
            return None;
        };
        drop(slot);
        Some(self.start_prepared(request, prepared, &command, hostname))
    }

    fn start_prepared(
        self: &Arc<Self>,
        request: &RunRequest,
        prepared: Prepared,
        command: &[u8],
        hostname: String,
    ) -> Result<u32, AgentError> {
        let ends = match prepared.send(request, command) {
            Ok(ends) => ends,
            Err(e) => {
                prepared.discard();
                return Err(e);
            }
        };
        let Prepared {
            rootfs,
            cgroup,
            pid,
            exit,
            ..
        } = prepared;
        let started = Started {
            id: self.next_process_id(),
            pid,
            ends,
            exit,
            prepared: true,
        };
        Ok(self.adopt_container(&request.id, hostname, rootfs, cgroup, started))
    }
}

/// The command a prepared container's process is sent, or `None` if it is past the
/// limits of one (see [`zygote::encode`]).
fn encode(request: &RunRequest, resolved: &Resolved, hostname: &str) -> Option<Vec<u8>> {
    let c = |s: &str| CString::new(s).ok();
    let all = |v: &[String]| v.iter().map(|s| c(s)).collect::<Option<Vec<_>>>();
    let (argv, envp) = (all(&request.process.args)?, all(&resolved.env)?);
    let cwd = c(request.process.cwd.as_deref().unwrap_or("/"))?;
    let (hostname, exe) = (c(hostname)?, c(&resolved.exe)?);
    zygote::encode(&zygote::Command {
        uid: resolved.user.uid,
        gid: resolved.user.gid,
        tty: request.process.tty.is_some(),
        groups: &resolved.user.groups,
        hostname: &hostname,
        cwd: &cwd,
        exe: &exe,
        argv: &argv,
        envp: &envp,
    })
}

/// Forks the waiting process into new namespaces and the cgroup, inside `rootfs`, and
/// waits until it is ready: its pid, its end of the control socket, its exit.
fn spawn_zygote(
    rootfs: &Rootfs,
    cgroup: Option<&Cgroup>,
) -> Result<(i32, UnixStream, Receiver<RawExit>), AgentError> {
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let namespaces = Namespaces::Create {
        hostname: prepare::c_string(&hostname)?,
        rootfs: prepare::c_string(&rootfs.merged().display().to_string())?,
    };
    let procs: Option<OwnedFd> = match cgroup {
        Some(c) => {
            let path = c.path().join("cgroup.procs");
            let file = File::options().write(true).open(&path);
            Some(
                file.map_err(io_err(format!("open {}", path.display())))?
                    .into(),
            )
        }
        None => None,
    };
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| io_err("socketpair")(e.into()))?;
    let mut control = UnixStream::from(ours);
    let mut memory = ZygoteMemory::default();
    let mut registrar = reaper().registrar();
    let control_fd = theirs.as_raw_fd();
    let pid = spawn::fork_into(&namespaces, procs.as_ref(), control_fd, || {
        zygote::zygote(&namespaces, &mut memory, control_fd)
    });
    let pid = match pid {
        Ok(pid) => pid,
        Err(e) => {
            drop(registrar);
            drop(theirs);
            // A failure before the fork left its report on the control socket.
            return Err(read_report(&mut control).err().unwrap_or(e).into());
        }
    };
    let exit = registrar.register(pid);
    drop((registrar, theirs, memory));
    read_report(&mut control)?;
    Ok((pid, control, exit))
}
