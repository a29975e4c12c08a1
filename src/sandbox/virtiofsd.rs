//! One `virtiofsd` per shared folder: finding the binary, starting it on a listening
//! socket husk made, and ending it.
//!
//! husk binds the vhost-user socket itself and hands the listening fd to the daemon
//! as its stdin (`--fd 0`), so the socket exists before the VMM connects and no start
//! race needs polling. The socket has mode 0600; a jailed VMM gets it by a chown to its
//! uid (`sandbox::launch`), so only that uid and root can reach the daemon, which
//! itself stays outside the jail. The daemon runs in a process group of its own: as
//! root its `--sandbox namespace` forks a child that is the init of a new PID
//! namespace, and only a SIGKILL to the group reaches both. It also exits by itself
//! when its vhost-user connection closes, which is how it ends when the VMM dies with
//! a killed caller.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::volumes::Volume;

/// The environment variable naming the virtiofsd binary.
pub const ENV: &str = "HUSK_VIRTIOFSD";
/// The environment variable choosing virtiofsd's `--sandbox` mode (namespace, chroot,
/// none) over husk's default.
pub const SANDBOX_ENV: &str = "HUSK_VIRTIOFSD_SANDBOX";
/// Debian's place for the packaged binary.
const LIBEXEC: &str = "/usr/libexec/virtiofsd";
/// How long a daemon whose VM is gone may take to exit by itself before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Errors finding or starting virtiofsd.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    /// No binary anywhere husk looks.
    #[error(
        "virtiofsd not found: looked at ${ENV} ({env}), {cached}, {LIBEXEC} and PATH; \
         install it with `cargo install --locked virtiofsd --root {root}`"
    )]
    NotFound {
        /// What the variable held.
        env: String,
        /// husk's cached tool.
        cached: String,
        /// The cache's tools folder.
        root: String,
    },
    /// The socket or log could not be made, or the process could not start.
    #[error("cannot start virtiofsd for {host}: {what}")]
    Start {
        /// The shared folder.
        host: PathBuf,
        /// What failed.
        what: String,
    },
    /// The daemon ended before the VM used it.
    #[error("virtiofsd for {host} ended: {log}")]
    Ended {
        /// The shared folder.
        host: PathBuf,
        /// The end of its log.
        log: String,
    },
}

/// Where husk installs tools it builds (`cargo install --root`).
pub fn tools_root() -> PathBuf {
    crate::kernel::cache_root().join("tools")
}

/// The virtiofsd to run: `$HUSK_VIRTIOFSD`, else husk's cached build, else Debian's,
/// else the first on PATH.
pub fn binary() -> Result<PathBuf, VirtiofsdError> {
    let env = std::env::var_os(ENV).map(PathBuf::from);
    let cached = tools_root().join("bin/virtiofsd");
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("virtiofsd"))
                .collect()
        })
        .unwrap_or_default();
    let candidates = env
        .iter()
        .cloned()
        .chain([cached.clone(), PathBuf::from(LIBEXEC)])
        .chain(on_path);
    let found = candidates.into_iter().find(|p| p.is_file());
    found.ok_or_else(|| VirtiofsdError::NotFound {
        env: env.map_or("unset".into(), |p| p.display().to_string()),
        cached: cached.display().to_string(),
        root: tools_root().display().to_string(),
    })
}

/// A running virtiofsd and its socket.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    host: PathBuf,
}

impl Daemon {
    /// Serve `volume` on `runtime/fs-<index>.sock`, logging to `virtiofsd-<index>.log`.
    pub fn start(volume: &Volume, runtime: &Path, index: usize) -> Result<Self, VirtiofsdError> {
        let host = std::path::absolute(&volume.host).unwrap_or_else(|_| volume.host.clone());
        let failed = |what: String| VirtiofsdError::Start {
            host: host.clone(),
            what,
        };
        let binary = binary()?;
        let socket = runtime.join(format!("fs-{index}.sock"));
        let log = runtime.join(format!("virtiofsd-{index}.log"));
        let listener = UnixListener::bind(&socket)
            .map_err(|e| failed(format!("bind {}: {e}", socket.display())))?;
        // Connecting takes write access: only the socket's owner (the caller, or the
        // jail's uid it is handed to) and root may.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| failed(format!("chmod 0600 {}: {e}", socket.display())))?;
        let log_file = std::fs::File::create(&log)
            .map_err(|e| failed(format!("create {}: {e}", log.display())))?;
        let mut command = Command::new(&binary);
        command
            .args(["--fd", "0", "--shared-dir"])
            .arg(&host)
            .arg("--sandbox")
            .arg(sandbox_mode())
            .args(["--cache", "auto"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0);
        if volume.read_only {
            command.arg("--readonly");
        }
        let child = command
            .spawn()
            .map_err(|e| failed(format!("run {}: {e}", binary.display())))?;
        Ok(Self {
            child: Some(child),
            socket,
            log,
            host,
        })
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// An error naming the daemon's log when it has already ended.
    pub fn ended(&mut self) -> Option<VirtiofsdError> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                let mut log: Vec<&str> = tail.into_iter().rev().collect();
                let status = status.to_string();
                log.push(&status);
                Some(VirtiofsdError::Ended {
                    host: self.host.clone(),
                    log: log.join("; "),
                })
            }
            _ => None,
        }
    }

    /// Let the daemon end by itself (its VM is gone), kill its group if it does not,
    /// reap it and remove its socket.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + EXIT_GRACE;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let group = i32::try_from(child.id()).unwrap_or(i32::MAX);
                if let Err(e) = super::signals::send(-group, libc::SIGKILL) {
                    log::debug!("virtiofsd {group}: {e}");
                }
            }
            drop(child.wait());
        }
        drop(std::fs::remove_file(&self.socket));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.finish();
    }
}

/// virtiofsd's own isolation: `$HUSK_VIRTIOFSD_SANDBOX` if set; else, as root, a mount
/// namespace whose root is the shared folder (pivot_root, which a host running from
/// its initramfs cannot do: use chroot there); otherwise none (an unprivileged
/// caller's user namespaces may be off, and its reach is its own files anyway). The
/// guest resolves the share's symbolic links itself, inside the guest, in every mode.
fn sandbox_mode() -> std::ffi::OsString {
    if let Some(mode) = std::env::var_os(SANDBOX_ENV) {
        return mode;
    }
    match crate::jail::running_as_root() {
        true => "namespace".into(),
        false => "none".into(),
    }
}
