//! Detached sandboxes (`husk run -d`), without a daemon.
//!
//! `husk run -d` starts a *monitor*: a `husk` process of its own (its own process group,
//! so the shell's Ctrl-C does not reach it) that owns the VM of one sandbox, writes the
//! main process's output to log files, and serves a control socket. Every other command
//! works on the sandbox's folder `<root>/<name>/`:
//!
//! | file | what |
//! |---|---|
//! | `state.json` | [`State`]: image, command, monitor pid, status, exit code |
//! | `control.sock` | the monitor's control socket (exists while the sandbox runs) |
//! | `stdout.log`, `stderr.log` | the main process's output |
//! | `monitor.log` | the monitor's own warnings and errors |
//! | `husk-<id>-*/` | the VM's runtime folder (vsock socket, scratch disk); a parked sandbox's is in `<root>/.run/` |
//!
//! The control socket speaks the husk protocol (framing, versions, messages of
//! `docs/protocol.md`): the monitor greets with `Hello`, the client answers `HelloAck`.
//! Then a client may send one `Exec` (the process gets number 1 on this connection;
//! `container_id` is ignored: it runs in the sandbox's container), its `Stdin`,
//! `StdinClose`, `Signal` and `Resize`; `Signal` to process 0 signals the sandbox's
//! main process; `Shutdown` stops the sandbox. The monitor answers `Started`, streams
//! `Stdout`/`Stderr` and ends with `Exited`. When the sandbox ends, the monitor removes
//! the control socket and the VM's folder, records the exit in `state.json` and exits;
//! the logs stay until `husk rm`.

mod adopt;
mod client;
mod control;
mod dir;
mod monitor;
pub mod pool;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::ProtocolError;
use serde::{Deserialize, Serialize};

use crate::sandbox::{RunSpec, SandboxImage};

pub use client::{
    fork, launch, pause_or_resume, restore_snapshot, snapshot_create, stop, Control,
    ControlSignaller,
};
pub use dir::SandboxDir;
pub use monitor::{monitor, DetachedSnapshot, DETACHED_FILE};

/// Overrides where detached sandboxes live.
pub const ROOT_ENV: &str = "HUSK_RUNTIME_DIR";

/// How long a stopping monitor waits for the killed main process's exit status.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// On the control socket: the sandbox's main process.
pub const MAIN_PROCESS: u32 = 0;
/// On the control socket: the process this connection's `Exec` started.
pub const EXEC_PROCESS: u32 = 1;

/// Errors of detached sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum DetachedError {
    /// A name that cannot name a sandbox.
    #[error(
        "invalid sandbox name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ . -, not starting with . or -"
    )]
    BadName(String),
    /// `husk run -d --name N` with N taken.
    #[error("a sandbox named {0} already exists (remove it with `husk rm {0}`)")]
    Exists(String),
    /// No such sandbox.
    #[error("no sandbox named {0} (see `husk ps -a`)")]
    NotFound(String),
    /// The sandbox has ended.
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// `husk rm` of a running sandbox.
    #[error("sandbox {0} is running: stop it first or use `husk rm -f`")]
    Running(String),
    /// The monitor could not start the sandbox.
    #[error("sandbox {name} failed to start: {message}")]
    StartFailed {
        /// The sandbox.
        name: String,
        /// The monitor's error.
        message: String,
    },
    /// A file of the sandbox folder.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// To which file.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// The control socket.
    #[error("control socket of sandbox {name}: {source}")]
    Control {
        /// The sandbox.
        name: String,
        /// The protocol error.
        source: ProtocolError,
    },
    /// The exec'd process was refused or lost.
    #[error("{0}")]
    Exec(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DetachedError + 'a {
    move |source| DetachedError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The entries of folder `root` whose names are UTF-8, with their paths; none when it
/// does not exist (nothing was ever made there).
fn named_entries(root: &Path) -> Result<Vec<(String, PathBuf)>, DetachedError> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("cannot list", root)(e)),
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect())
}

/// Where detached sandboxes live: `$HUSK_RUNTIME_DIR`, else `/run/husk` for root, else
/// `$XDG_RUNTIME_DIR/husk`, else `husk-<uid>` in the temp folder.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os(ROOT_ENV) {
        return PathBuf::from(dir);
    }
    let uid = fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if uid == 0 {
        return PathBuf::from("/run/husk");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_dir() => dir.join("husk"),
        _ => std::env::temp_dir().join(format!("husk-{uid}")),
    }
}

/// Checks a sandbox name: 1–64 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), DetachedError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with(['.', '-']) {
        return Err(DetachedError::BadName(name.to_string()));
    }
    Ok(())
}

/// A fresh name: `husk-` and 8 hex digits from the clock and the process id.
pub fn generate_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 20);
    format!("husk-{:08x}", (mixed ^ (mixed >> 32)) as u32)
}

/// Everything the monitor needs to start a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The sandbox's name.
    pub name: String,
    /// The image as the user named it (for `husk ps`).
    pub image_ref: String,
    /// The image.
    pub image: SandboxImage,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// A network (`--net link` or `nat`).
    pub network: bool,
    /// `--net nat` (with `--dns`, `--allow`).
    #[serde(default)]
    pub nat: Option<crate::sandbox::Nat>,
    /// `-p`.
    #[serde(default)]
    pub publish: Vec<crate::sandbox::Publish>,
    /// `--disk`.
    pub scratch_disk_mib: Option<u64>,
    /// `-v`: host folders shared with the containers.
    #[serde(default)]
    pub volumes: Vec<crate::sandbox::Volume>,
    /// `--disk-rate`.
    #[serde(default)]
    pub disk_rate: Option<crate::sandbox::ByteRate>,
    /// `--net-rate`.
    #[serde(default)]
    pub net_rate: Option<crate::sandbox::ByteRate>,
    /// `--net-vhost`.
    #[serde(default)]
    pub net_vhost: bool,
    /// Guest console file, if any.
    pub console: Option<PathBuf>,
    /// The main process.
    pub spec: RunSpec,
    /// Remove the sandbox's folder when it ends (`--rm`).
    pub remove_on_exit: bool,
    /// Stop the sandbox this long after it was started (`--timeout`).
    pub timeout: Option<Duration>,
    /// Start from a template (false: `--cold`).
    #[serde(default = "yes")]
    pub warm: bool,
    /// With `warm`, start from the image's own template (its first container made
    /// ahead) when the sandbox fits one.
    #[serde(default = "yes")]
    pub prepared: bool,
    /// Restore a sandbox snapshot instead of starting one (`husk snapshot restore`,
    /// `husk fork`).
    #[serde(default)]
    pub restore: Option<RestoreFrom>,
    /// Start no main process: wait, parked in a pool, until a `husk run` claims the
    /// sandbox with an `Exec` that becomes its main process (`pool`).
    #[serde(default)]
    pub parked: bool,
}

/// A sandbox snapshot a monitor starts from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreFrom {
    /// The snapshot folder.
    pub dir: PathBuf,
    /// The main process in it.
    pub main_process: u32,
    /// The main process's container.
    pub main_container: String,
    /// Remove the folder once the sandbox runs (a fork's snapshot).
    pub remove_after: bool,
}

fn yes() -> bool {
    true
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The monitor is booting the VM.
    Starting,
    /// The main process runs.
    Running,
    /// The guest is paused (`husk pause`).
    Paused,
    /// Started and waiting in a pool for a `husk run` to claim it.
    Parked,
    /// The main process ended (or was killed when the sandbox was stopped).
    Exited {
        /// docker-style exit code: the code, or 128 + signal.
        code: i32,
        /// The memory limit killed it.
        oom_killed: bool,
    },
    /// Stopped (`husk stop`, a signal to the monitor) before the main process's exit
    /// status came back.
    Stopped {
        /// What stopped it.
        by: String,
    },
    /// The sandbox could not start, or ended without an exit status.
    Failed {
        /// Why.
        message: String,
    },
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The sandbox's name.
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// The main command.
    pub command: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// The monitor's process id.
    pub monitor_pid: u32,
    /// Where it is in its life.
    pub status: Status,
}

/// `husk ps`: what a sandbox is doing, as shown to the user.
pub fn describe(state: &State, running: bool) -> String {
    match (&state.status, running) {
        (Status::Running | Status::Starting, true) => "running".into(),
        (Status::Paused, true) => "paused".into(),
        (Status::Parked, true) => "parked".into(),
        (Status::Running | Status::Starting | Status::Paused | Status::Parked, false) => {
            "dead (its monitor is gone)".into()
        }
        (Status::Exited { code, oom_killed }, _) => {
            format!("exited ({code}){}", if *oom_killed { ", OOM" } else { "" })
        }
        (Status::Stopped { by }, _) => format!("stopped ({by})"),
        (Status::Failed { message }, _) => format!("failed: {message}"),
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
