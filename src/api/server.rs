//! The `husk vmm` process: one VM, configured and driven over the API socket (or from
//! a config file), until the VM ends; then the process reports how it ended and exits.
//!
//! Threads: the caller's (waits for the VM's end), `husk-api` (accepts on the socket and
//! serves one connection at a time, each request to its end), and the VM's own.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::controller::Controller;
use super::http::{read_request, write_response};
use super::model::FullVmConfiguration;
use super::resources::Resources;
use crate::config::ConsoleConfig;
use crate::vmm::RunReport;

/// Errors of the VMM process itself (a request's errors go back to its client).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The API socket could not be made.
    #[error("cannot listen on the API socket {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file is unreadable or wrong.
    #[error("config file {path}: {message}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Without an API the VM never starts.
    #[error("--no-api needs --config-file: nothing could start the VM")]
    NothingToStart,
    /// The process's syscall filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] crate::vmm::seccomp::SeccompError),
}

/// How `husk vmm` runs.
#[derive(Debug, Clone)]
pub struct VmmOptions {
    /// The API socket (none with `--no-api`).
    pub api_sock: Option<PathBuf>,
    /// Firecracker's config JSON: the VM is configured from it and started at once.
    pub config_file: Option<PathBuf>,
    /// The instance id `GET /` reports.
    pub id: String,
    /// Where the guest console goes.
    pub console: ConsoleConfig,
    /// Write how the VM ended ([`ExitReport`], JSON) to this file before exiting.
    pub exit_report: Option<PathBuf>,
    /// Stop the VM (or exit, before it started) when standard input reaches its end:
    /// the parent holds the other end of a pipe, which closes when it goes.
    pub die_with_parent: bool,
}

/// How a VMM process's VM ended, written for its parent (`--exit-report`): the parent
/// cannot ask once the process, and with it the guest's memory, is gone.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ExitReport {
    /// A clean end.
    pub end: Option<crate::vmm::exit::VmExit>,
    /// The guest's failure, if it failed.
    pub error: Option<String>,
    /// The failure was a kernel panic (its message is on the console).
    pub panic: bool,
    /// For a failed guest: console tail, kernel log, vCPUs, devices.
    pub report: Option<String>,
    /// The console's last KiB.
    pub console: String,
    /// What the run cost.
    pub metrics: crate::metrics::RunMetrics,
}

/// Run the VMM: serve the API, start the VM when asked (or at once from a config
/// file), and return its report once it ends.
pub fn run(options: &VmmOptions) -> Result<RunReport, ServeError> {
    let mut resources = match &options.config_file {
        Some(path) => load_config(path)?,
        None => Resources::default(),
    };
    resources.console = options.console.clone();
    // Before the first request is read: from here on the process runs no program and
    // makes no process (see `vmm::seccomp`); nothing when the mode is off.
    crate::vmm::seccomp::apply_process()?;
    log::debug!("vmm: process filter applied");
    let (started, watch) = mpsc::channel();
    let controller = Arc::new(Mutex::new(Controller::new(
        options.id.clone(),
        resources,
        started,
    )));
    // Start-up is over: what only it ran and freed is given back before the socket
    // appears (once more when the VM has started, below).
    crate::vmm::resident::release_startup_pages();
    let _socket = match &options.api_sock {
        Some(path) => Some(serve(path, controller.clone())?),
        None if options.config_file.is_none() => return Err(ServeError::NothingToStart),
        None => None,
    };
    stop_on_signals(controller.clone(), options.api_sock.clone());
    if options.die_with_parent {
        stop_on_stdin_eof(controller.clone(), options.api_sock.clone());
    }
    log::debug!("vmm: listening");
    if options.config_file.is_some() {
        let start = super::http::Request {
            method: "PUT".into(),
            path: "/actions".into(),
            body: serde_json::to_vec(&serde_json::json!({"action_type": "InstanceStart"}))
                .unwrap_or_default(),
            close: false,
        };
        let response = lock(&controller).handle(&start);
        if response.status >= 300 {
            return Err(ServeError::ConfigFile {
                path: options.config_file.clone().unwrap_or_default(),
                message: response.body.unwrap_or_default(),
            });
        }
    }
    // The API thread serves for as long as the process lives; the VM's end ends it.
    let exit = watch
        .recv()
        .expect("the controller lives as long as this function");
    // The guest's boot (or restore) is done: its loaders and builders ran once.
    crate::vmm::resident::release_startup_pages();
    let ended = exit.wait();
    log::debug!("vmm: the VM ended");
    let vm = lock(&controller)
        .take_vm()
        .expect("a VM that started is there until taken");
    // What only the live VM can tell (its memory, vCPUs, devices) is read before the
    // VM is taken down.
    let failure = ended.is_err().then(|| vm.failure_output());
    let console = vm.console_tail();
    let run = vm.wait();
    if let Some(path) = &options.exit_report {
        let report = ExitReport::new(&run, failure, console);
        if let Err(e) = report.write(path) {
            log::error!("cannot write the exit report {}: {e}", path.display());
        }
        log::debug!("vmm: exit report written");
    }
    Ok(run)
}

impl ExitReport {
    /// The report of `run`, with the failure output taken from the live VM.
    pub fn new(run: &RunReport, failure: Option<String>, console: String) -> Self {
        Self {
            end: run.outcome.as_ref().ok().copied(),
            error: run.outcome.as_ref().err().map(ToString::to_string),
            panic: matches!(run.outcome, Err(crate::vmm::exit::GuestError::Panic(_))),
            report: failure,
            console,
            metrics: run.metrics.clone(),
        }
    }

    /// Write the report as JSON to `path` whole: to a temporary file beside it, then
    /// renamed over it, so a reader never sees half of one.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut temp = path.as_os_str().to_owned();
        temp.push(".tmp");
        std::fs::write(&temp, bytes)?;
        std::fs::rename(&temp, path)
    }
}

/// SIGTERM, SIGINT, SIGHUP or SIGQUIT (blocked by the caller) stop the VM, which ends
/// the process through its usual path; before the VM started, the process exits at once
/// (128 + the signal), its API socket removed.
fn stop_on_signals(controller: Arc<Mutex<Controller>>, socket: Option<PathBuf>) {
    std::thread::spawn(move || loop {
        let signal = crate::sandbox::signals::wait_forwarded();
        end(&controller, socket.as_deref(), signal);
    });
}

/// Like [`stop_on_signals`], when standard input ends (the parent went).
fn stop_on_stdin_eof(controller: Arc<Mutex<Controller>>, socket: Option<PathBuf>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while std::io::Read::read(&mut std::io::stdin(), &mut buf).is_ok_and(|n| n > 0) {}
        end(&controller, socket.as_deref(), 0);
    });
}

/// Stop the VM, or, before it started, exit at once with `128 + signal`.
fn end(controller: &Mutex<Controller>, socket: Option<&Path>, signal: i32) {
    match lock(controller).stopper() {
        Some(stopper) => stopper.stop(),
        None => {
            if let Some(path) = socket {
                drop(std::fs::remove_file(path));
            }
            std::process::exit(128 + signal);
        }
    }
}

fn lock(c: &Mutex<Controller>) -> std::sync::MutexGuard<'_, Controller> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

fn load_config(path: &Path) -> Result<Resources, ServeError> {
    let err = |message: String| ServeError::ConfigFile {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let full: FullVmConfiguration = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    Resources::from_file(full).map_err(|e| err(e.to_string()))
}

/// The API socket, removed when dropped.
pub struct ApiSocket(PathBuf);

impl Drop for ApiSocket {
    fn drop(&mut self) {
        drop(std::fs::remove_file(&self.0));
    }
}

/// Listen on `path` (mode 0600: only this user may drive the VM) and serve requests
/// on a thread of their own.
pub fn serve(path: &Path, controller: Arc<Mutex<Controller>>) -> Result<ApiSocket, ServeError> {
    let listen = |source| ServeError::Listen {
        path: path.to_path_buf(),
        source,
    };
    // Bound and made 0600 under a temporary name, then renamed: the path appears only
    // once it accepts connections and only its owner may connect, so a client that
    // waits for the file never finds it refusing.
    if path.exists() {
        return Err(listen(std::io::Error::from(std::io::ErrorKind::AddrInUse)));
    }
    let mut staging = path.as_os_str().to_os_string();
    staging.push(format!(".{}.tmp", std::process::id()));
    let staging = PathBuf::from(staging);
    drop(std::fs::remove_file(&staging));
    let listener = UnixListener::bind(&staging).map_err(listen)?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(e) = placed {
        drop(std::fs::remove_file(&staging));
        return Err(listen(e));
    }
    let socket = ApiSocket(path.to_path_buf());
    std::thread::Builder::new()
        .name("husk-api".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                serve_connection(conn, &controller);
            }
        })
        .map_err(listen)?;
    Ok(socket)
}

/// Requests of one connection, in turn, until the client closes.
fn serve_connection(mut conn: UnixStream, controller: &Mutex<Controller>) {
    let mut pending = Vec::new();
    loop {
        let request = match read_request(&mut conn, &mut pending) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                if let Some(response) = e.response() {
                    drop(write_response(&mut conn, &response, true));
                }
                return;
            }
        };
        log::debug!("api: {} {}", request.method, request.path);
        let response = lock(controller).handle(&request);
        if write_response(&mut conn, &response, request.close).is_err() || request.close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::exit::{GuestError, VmExit};

    fn run(outcome: Result<VmExit, GuestError>) -> RunReport {
        RunReport {
            outcome,
            metrics: crate::metrics::RunMetrics::default(),
            samples: crate::profile::RipHistogram::default(),
        }
    }

    #[test]
    fn an_exit_report_says_how_the_vm_ended_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        let panicked = run(Err(GuestError::Panic("Oops".into())));
        let report = ExitReport::new(&panicked, Some("the log".into()), "tail".into());
        report.write(&path).unwrap();
        let read: ExitReport = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(read.panic);
        assert_eq!(read.error.as_deref(), Some("guest kernel panic: Oops"));
        assert_eq!(read.report.as_deref(), Some("the log"));
        assert_eq!(read.console, "tail");
        assert_eq!(read.end, None);
        // Only the report is left: the temporary file was renamed over it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let clean = ExitReport::new(&run(Ok(VmExit::Reset)), None, String::new());
        assert_eq!(clean.end, Some(VmExit::Reset));
        assert!(clean.error.is_none() && !clean.panic);
    }
}
