//! A sandbox's VM in a process of its own: `husk vmm`, spawned for the sandbox and
//! driven over its API socket. The caller never maps guest memory or runs a vCPU; a
//! guest that escaped its VMM would find itself in that process, not in the caller.
//!
//! The process dies with its parent (`--die-with-parent`), removes its socket when it
//! ends, and writes how its VM ended ([`ExitReport`]) for the parent, which learns of
//! the end when the process exits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::snapshot::working_set;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::SandboxError;
use crate::api::client::ApiClient;
use crate::api::server::ExitReport;
use crate::config::VmConfig;
use crate::snapshot::fingerprint::Expect;
use crate::vmm::RestoreOptions;

/// How long a new `husk vmm` may take to listen on its socket.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped VMM process may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the `husk` binary is: `$HUSK_BIN`, this executable if it is `husk`, else
/// `husk` next to it (or one folder up, for test and bench binaries in `deps/`).
pub fn husk_binary() -> Result<PathBuf, SandboxError> {
    if let Some(path) = std::env::var_os("HUSK_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|e| SandboxError::Vmm(format!("cannot find this executable: {e}")))?;
    if exe.file_name().is_some_and(|n| n == "husk") {
        return Ok(exe);
    }
    let beside = exe.with_file_name("husk");
    let above = exe.parent().and_then(Path::parent).map(|d| d.join("husk"));
    [Some(beside), above]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            SandboxError::Vmm(format!(
                "no husk binary next to {}: build it (`cargo build --release`) or set HUSK_BIN",
                exe.display()
            ))
        })
}

/// The process's end, once the waiter has seen it.
#[derive(Default)]
struct Ending {
    report: Mutex<Option<ExitReport>>,
    ended: Condvar,
}

/// A running `husk vmm` and its API.
pub struct VmmProcess {
    api: ApiClient,
    pid: u32,
    ending: Arc<Ending>,
    /// The VMM's stdin: it stops its VM when this closes.
    _lifeline: Option<std::process::ChildStdin>,
    /// Its jail (its uid stays reserved while this lives), if jailed.
    jail: Option<super::jailing::VmmJail>,
    /// The runtime folder it listens in.
    runtime: PathBuf,
    /// The snapshot folder its VM was restored from, when that snapshot's working set
    /// is still to be recorded.
    working_set_to: std::sync::OnceLock<PathBuf>,
}

/// How long a broken API exchange waits for the process's end, whose report says more
/// than the broken socket does.
const BROKEN_CALL_GRACE: Duration = Duration::from_secs(2);

impl VmmProcess {
    /// The error of a failed call for `what`: when the exchange broke because the
    /// process ended, what ended it.
    fn call_err<'a>(
        &'a self,
        what: &'a str,
    ) -> impl Fn(crate::api::client::ClientError) -> SandboxError + 'a {
        move |e| {
            let broken = !matches!(e, crate::api::client::ClientError::Refused { .. });
            let ended = broken
                .then(|| self.wait(Some(BROKEN_CALL_GRACE)))
                .flatten()
                .and_then(|report| report.error);
            match ended {
                Some(why) => SandboxError::Vmm(format!("{what}: {why}")),
                None => SandboxError::Vmm(format!("{what}: {e}")),
            }
        }
    }

    /// Spawn `husk vmm` with its socket and exit report in `runtime`, in `jail` if
    /// given, allowed a card on vhost-net if `vhost_net`, and wait until it listens.
    pub fn spawn(
        runtime: &Path,
        id: &str,
        jail: Option<super::jailing::VmmJail>,
        vhost_net: bool,
    ) -> Result<Self, SandboxError> {
        let socket = runtime.join("api.sock");
        let report = runtime.join("exit.json");
        let log = std::fs::File::create(runtime.join("vmm.log")).map_err(|source| {
            SandboxError::Runtime {
                dir: runtime.to_path_buf(),
                source,
            }
        })?;
        let husk = husk_binary()?;
        let mut child = Command::new(&husk)
            .arg("vmm")
            .arg("--api-sock")
            .arg(&socket)
            .arg("--exit-report")
            .arg(&report)
            .args(["--id", id, "--die-with-parent"])
            .args(vhost_net.then_some("--vhost-net"))
            .args(jail.as_ref().map(|j| j.args()).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| SandboxError::Vmm(format!("cannot start {} vmm: {e}", husk.display())))?;
        let started = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(runtime.join("vmm.log")).unwrap_or_default();
                return Err(SandboxError::Vmm(format!(
                    "husk vmm ended ({status}) before it listened: {log}"
                )));
            }
            if started.elapsed() > LISTEN_TIMEOUT {
                drop(child.kill());
                return Err(SandboxError::Vmm(format!(
                    "husk vmm did not listen on {} within {LISTEN_TIMEOUT:?}",
                    socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let pid = child.id();
        // The VMM watches the other end: when this process (or this handle) goes,
        // the pipe closes and the VMM stops its VM.
        let lifeline = child.stdin.take();
        let ending = Arc::new(Ending::default());
        // A supervisor killed before it cleaned up leaves its jail's folder and cgroup.
        let leftovers = jail.as_ref().map(|j| {
            let (dir, id) = (j.dir().to_path_buf(), id.to_string());
            Box::new(move || crate::jail::remove_leftovers(&dir, &id, pid)) as Cleanup
        });
        wait_in_background(child, report, ending.clone(), leftovers)?;
        Ok(Self {
            api: ApiClient::new(&socket, None),
            pid,
            ending,
            _lifeline: lifeline,
            jail,
            runtime: runtime.to_path_buf(),
            working_set_to: std::sync::OnceLock::new(),
        })
    }

    /// Record the working set of the snapshot in `dir` from this VM (see
    /// [`Self::record_working_set`]) unless it has one.
    pub fn record_working_set_into(&self, dir: &Path) {
        if !dir.join(working_set::FILE).exists() {
            drop(self.working_set_to.set(dir.to_path_buf()));
        }
    }

    /// Whether this VM's touched pages will be recorded (its snapshot has no working
    /// set yet): its restore then loads pages singly (`RestoreOptions::record_touched`).
    pub fn records_working_set(&self) -> bool {
        self.working_set_to.get().is_some()
    }

    /// Write the pages the restored VM touched as its snapshot's working set, if asked
    /// to by [`Self::record_working_set_into`]. Best effort: an optimisation of later
    /// restores, never a reason to fail this sandbox.
    pub fn record_working_set(&self) {
        let Some(dir) = self.working_set_to.get() else {
            return;
        };
        let memory = dir.join(crate::snapshot::MEMORY_FILE);
        match working_set::record(self.pid, &memory).and_then(|set| {
            if set.pages() > 0 {
                set.write(dir)?;
            }
            Ok(set.pages())
        }) {
            Ok(pages) => log::debug!("{}: working set of {pages} pages", dir.display()),
            Err(e) => log::debug!("{}: no working set recorded: {e}", dir.display()),
        }
    }

    /// Its jail, if jailed.
    pub fn jail(&self) -> Option<&super::jailing::VmmJail> {
        self.jail.as_ref()
    }

    /// Boot `config`'s VM.
    pub fn start(&self, config: &VmConfig) -> Result<(), SandboxError> {
        let body = serde_json::to_value(config).map_err(|e| SandboxError::Vmm(e.to_string()))?;
        self.api
            .call("PUT", "/husk/start", Some(&body))
            .map(drop)
            .map_err(self.call_err("starting the VM"))
    }

    /// Restore the snapshot in `dir` (checked against `expect`) with `options`.
    pub fn restore(
        &self,
        dir: &Path,
        expect: &Expect,
        options: &RestoreOptions,
    ) -> Result<(), SandboxError> {
        let body = json!({ "dir": dir, "expect": expect, "options": options });
        self.api
            .call("PUT", "/husk/restore", Some(&body))
            .map(drop)
            .map_err(self.call_err("restoring the VM"))
    }

    /// The VM's TAPs, in its cards' order.
    pub fn tap_names(&self) -> Result<Vec<String>, SandboxError> {
        let info = self
            .api
            .call("GET", "/husk/info", None)
            .map_err(self.call_err("asking for the VM's TAPs"))?;
        Ok(serde_json::from_value(info["taps"].clone()).unwrap_or_default())
    }

    /// The configuration the VM runs with.
    pub fn config(&self) -> Result<VmConfig, SandboxError> {
        let info = self
            .api
            .call("GET", "/husk/info", None)
            .map_err(self.call_err("asking for the VM's configuration"))?;
        serde_json::from_value(info["config"].clone()).map_err(|e| SandboxError::Vmm(e.to_string()))
    }

    /// Pause or resume the guest.
    pub fn set_paused(&self, paused: bool) -> Result<(), SandboxError> {
        let state = if paused { "Paused" } else { "Resumed" };
        self.api
            .call("PATCH", "/vm", Some(&json!({ "state": state })))
            .map(drop)
            .map_err(self.call_err("changing the VM's state"))
    }

    /// Whether the guest is paused.
    pub fn is_paused(&self) -> bool {
        self.api
            .call("GET", "/", None)
            .is_ok_and(|info| info["state"] == "Paused")
    }

    /// Snapshot the VM into the new folder `dir`; the VMM's account of it.
    pub fn snapshot(
        &self,
        dir: &Path,
        durable: bool,
        agent_digest: Option<&str>,
    ) -> Result<serde_json::Value, SandboxError> {
        if self.jail.is_none() {
            return self.snapshot_at(dir, durable, agent_digest);
        }
        // A jailed VMM writes where its jail can: a folder of its runtime folder; the
        // files then move to `dir`, readable by every jailed VMM (a restore's).
        // The VMM makes the folder itself (the runtime folder is its uid's), as it
        // does any snapshot folder; one left by an earlier failure goes first.
        let staging = self.runtime.join("snapshot-out");
        drop(std::fs::remove_dir_all(&staging));
        let created = self.snapshot_at(&staging, durable, agent_digest);
        let moved = created.and_then(|v| {
            super::jailing::move_snapshot(&staging, dir, durable)?;
            super::jailing::share_with_jails(dir)?;
            Ok(v)
        });
        drop(std::fs::remove_dir_all(&staging));
        moved
    }

    fn snapshot_at(
        &self,
        dir: &Path,
        durable: bool,
        agent_digest: Option<&str>,
    ) -> Result<serde_json::Value, SandboxError> {
        let body = json!({ "dir": dir, "durable": durable, "agent_digest": agent_digest });
        self.api
            .call("PUT", "/husk/snapshot", Some(&body))
            .map_err(self.call_err("snapshotting the VM"))
    }

    /// What to show of a guest that failed or hangs: the running guest's report, or the
    /// one its process left when it ended.
    pub fn failure_output(&self) -> String {
        if let Some(report) = self.exit_report() {
            return report.report.unwrap_or(report.console);
        }
        self.api
            .call("GET", "/husk/report", None)
            .ok()
            .and_then(|r| r["report"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The end of the guest console.
    pub fn console_tail(&self) -> String {
        if let Some(report) = self.exit_report() {
            return report.console;
        }
        self.api
            .call("GET", "/husk/console", None)
            .ok()
            .and_then(|r| r["console"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// How the VM ended, once it has.
    pub fn exit_report(&self) -> Option<ExitReport> {
        self.ending
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the VM (its process) still runs.
    pub fn is_running(&self) -> bool {
        self.exit_report().is_none()
    }

    /// Block until the VM ends, at most `timeout` (`None`: for as long as it takes).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitReport> {
        let report = self.ending.report.lock().unwrap_or_else(|e| e.into_inner());
        let report = match timeout {
            Some(t) => {
                self.ending
                    .ended
                    .wait_timeout_while(report, t, |r| r.is_none())
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self
                .ending
                .ended
                .wait_while(report, |r| r.is_none())
                .unwrap_or_else(|e| e.into_inner()),
        };
        report.clone()
    }

    /// A handle that stops the VM from any thread.
    pub fn stopper(&self) -> VmmStopper {
        VmmStopper {
            pid: self.pid,
            ending: self.ending.clone(),
        }
    }

    /// Stop the VM (SIGTERM: the VMM stops it as a guest end would) and wait for the
    /// process, killing it if it does not go.
    pub fn stop(&self) -> ExitReport {
        self.stopper().stop();
        if let Some(report) = self.wait(Some(EXIT_TIMEOUT)) {
            return report;
        }
        signal(self.pid, libc::SIGKILL);
        self.wait(None).unwrap_or_default()
    }
}

#[cfg(test)]
impl VmmProcess {
    /// A handle with no process behind it, and the function that ends it with a report.
    pub(crate) fn without_process() -> (Self, impl Fn(ExitReport)) {
        let ending = Arc::new(Ending::default());
        let vm = Self {
            api: ApiClient::new(Path::new("/nonexistent/api.sock"), None),
            pid: 0,
            ending: ending.clone(),
            _lifeline: None,
            jail: None,
            runtime: PathBuf::new(),
            working_set_to: std::sync::OnceLock::new(),
        };
        let end = move |report| {
            *ending.report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
            ending.ended.notify_all();
        };
        (vm, end)
    }
}

/// Stops a VMM process from any thread; nothing once it has ended.
#[derive(Clone)]
pub struct VmmStopper {
    pid: u32,
    ending: Arc<Ending>,
}

impl VmmStopper {
    /// Ask the VMM to stop its VM.
    pub fn stop(&self) {
        let ended = self
            .ending
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if !ended {
            signal(self.pid, libc::SIGTERM);
        }
    }
}

/// kill(2) on the VMM child. Its pid cannot have been reused: the waiter thread reaps
/// the child, and a stop after that finds the report and sends nothing.
fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        drop(crate::sandbox::signals::send(pid, signal));
    }
}

/// What to clean up after a VMM process ended.
type Cleanup = Box<dyn FnOnce() + Send>;

/// Reap `child` on a thread of its own, run `cleanup`, then publish its exit report.
fn wait_in_background(
    mut child: Child,
    report: PathBuf,
    ending: Arc<Ending>,
    cleanup: Option<Cleanup>,
) -> Result<(), SandboxError> {
    std::thread::Builder::new()
        .name("husk-vmm-wait".into())
        .spawn(move || {
            let status = child.wait();
            if let Some(cleanup) = cleanup {
                cleanup();
            }
            let read = std::fs::read(&report)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<ExitReport>(&bytes).ok());
            let report = read.unwrap_or_else(|| ExitReport {
                error: Some(match status {
                    Ok(s) => unreported_end(s),
                    Err(e) => format!("the VMM process could not be waited for: {e}"),
                }),
                ..ExitReport::default()
            });
            *ending.report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
            ending.ended.notify_all();
        })
        .map(drop)
        .map_err(|e| SandboxError::Vmm(format!("cannot start the VMM's waiter: {e}")))
}

/// What ended a VMM process that wrote no exit report.
fn unreported_end(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(libc::SIGSYS) => "the VMM process was killed by its seccomp filter (SIGSYS): it \
             made a system call outside its allow-list (the host's `dmesg | grep type=1326` \
             names it)"
            .into(),
        Some(libc::SIGKILL) => "the VMM process was killed (SIGKILL)".into(),
        Some(signal) => format!("the VMM process was killed by signal {signal}"),
        None => format!("the VMM process ended ({status}) without a report"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::unreported_end;

    #[test]
    fn an_end_without_report_says_what_ended_the_process() {
        let sigsys = unreported_end(ExitStatus::from_raw(libc::SIGSYS));
        assert!(sigsys.contains("seccomp filter (SIGSYS)"), "{sigsys}");
        let killed = unreported_end(ExitStatus::from_raw(libc::SIGKILL));
        assert_eq!(killed, "the VMM process was killed (SIGKILL)");
        let exited = unreported_end(ExitStatus::from_raw(3 << 8));
        assert!(exited.contains("exit status: 3"), "{exited}");
    }
}
