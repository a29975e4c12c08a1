//! Harness shared by husk's integration tests: finds the assets (the husk binary, the
//! guest kernel, the test guest's initramfs) and runs a shell script that uses them,
//! either directly on this machine (hardware KVM) or inside the KVM test host
//! (`scripts/testhost`, a QEMU machine with emulated AMD SVM) where this machine's KVM is
//! missing or paravirtual.
//!
//! A script runs in a fresh work directory (its current directory, also in `$WORK`)
//! holding the files it was given under their names; refer to them by relative name
//! (`./husk`, `vmlinux`, `initrd.cpio`): that works the same in both modes. Inside the
//! test host the work directory is `/work`.
#![allow(
    dead_code,
    reason = "each integration test crate uses its own subset of the harness"
)]

use std::fmt;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

mod carry;
pub use carry::*;
pub mod device_script;

/// Where a test's script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// On this machine, which has a usable hardware `/dev/kvm`.
    Direct,
    /// Inside the KVM test host started by `scripts/testhost run`.
    TestHost,
}

/// Picks the runner: `Direct` when `/dev/kvm` opens read-write and is not the
/// paravirtual `kvm_pvm` (on which guests barely boot), else `TestHost`. The environment
/// variable `HUSK_TEST_HOST=always|never|auto` overrides the choice.
pub fn runner() -> Runner {
    match std::env::var("HUSK_TEST_HOST").as_deref() {
        Ok("always") => Runner::TestHost,
        Ok("never") => Runner::Direct,
        Ok("auto") | Ok("") | Err(_) => detect_runner(),
        Ok(other) => panic!("HUSK_TEST_HOST must be always, never or auto, got {other:?}"),
    }
}

fn detect_runner() -> Runner {
    let kvm_rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let paravirtual = Path::new("/sys/module/kvm_pvm").exists();
    if kvm_rw && !paravirtual {
        Runner::Direct
    } else {
        Runner::TestHost
    }
}

/// The files every boot test needs.
#[derive(Debug, Clone)]
pub struct Assets {
    /// The husk binary under test (static, so it runs inside the test host as is).
    pub husk: PathBuf,
    /// The guest kernel (`vmlinux`) built from `kernels/`.
    pub kernel: PathBuf,
    /// The test guest's initramfs built from `rootfs/test/`.
    pub test_initrd: PathBuf,
}

impl Assets {
    /// The assets as `run_script` files, at the names scripts use: `husk`, `vmlinux`,
    /// `initrd.cpio`.
    pub fn files(&self) -> Vec<(&Path, &str)> {
        vec![
            (self.husk.as_path(), "husk"),
            (self.kernel.as_path(), "vmlinux"),
            (self.test_initrd.as_path(), "initrd.cpio"),
        ]
    }
}

/// Finds the assets once per test binary. Panics with what to run when the guest kernel
/// or the initramfs is missing: a missing asset fails the suite, it never skips a test.
/// `HUSK_TEST_KERNEL=PATH` overrides the kernel that `husk kernel path` names.
pub fn assets() -> Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(find_assets).clone()
}

fn find_assets() -> Assets {
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    let kernel = match std::env::var_os("HUSK_TEST_KERNEL") {
        Some(path) => PathBuf::from(path),
        None => kernel_from_husk(&husk),
    };
    assert!(
        kernel.is_file(),
        "guest kernel {} not found: run `husk kernel build` (or `cargo run --release -- kernel build`)",
        kernel.display()
    );
    Assets {
        husk,
        kernel,
        test_initrd: build_test_initrd(),
    }
}

/// Asks `husk kernel path` where the guest kernel is.
fn kernel_from_husk(husk: &Path) -> PathBuf {
    let out = Command::new(husk)
        .args(["kernel", "path"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} kernel path: {e}", husk.display()));
    assert!(
        out.status.success(),
        "`husk kernel path` failed ({}): {}; run `husk kernel build`",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // Accept the kernel's folder as well as the vmlinux itself.
    if path.is_dir() {
        path.join("vmlinux")
    } else {
        path
    }
}

fn build_test_initrd() -> PathBuf {
    let script = repo_dir().join("scripts/build-test-initramfs");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The repository root (the package's manifest directory).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What a script printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// The script's standard output.
    pub stdout: String,
    /// The script's standard error.
    pub stderr: String,
    /// Its exit status; 128 + N when killed by signal N.
    pub status: i32,
}

impl Output {
    /// The value of the last `KEY=VALUE` line on stdout, if any. Scripts report their
    /// findings this way so a test can assert on each with a clear message.
    pub fn value(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Serialises the runs of one test binary: boots compete for two cores, and a check
/// like "no husk process is left" must not see another test's VMM.
fn run_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that panicked while holding the lock leaves nothing behind to protect.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Shell functions every test script may use:
/// - `husk_processes`: how many processes run the work directory's `husk` binary
///   (`husk run`/`exec`/`boot` and detached sandboxes' monitors alike; the work
///   directory may hold a link to it); `husk_processes -v` prints their command lines.
const SHELL_HELPERS: &str = r#"
husk_processes() {
    n=0 husk=$(readlink -f "$PWD/husk")
    for exe in /proc/[0-9]*/exe; do
        [ "$(readlink "$exe" 2>/dev/null)" = "$husk" ] || continue
        n=$((n + 1))
        [ "$1" = -v ] && echo "husk process left: $(tr '\0' ' ' < "${exe%exe}cmdline")"
    done
    [ "$1" = -v ] || echo $n
}
"#;

/// Runs `script` with `sh -c` in a fresh work directory holding `files` (each a source
/// path and its name in the work directory), directly or in the test host as `runner()`
/// says; [`SHELL_HELPERS`] are defined first. Panics if the test host itself fails (exit
/// 125 with its diagnosis).
pub fn run_script(script: &str, files: &[(&Path, &str)]) -> Output {
    let script = &format!("{SHELL_HELPERS}{script}");
    let _guard = run_lock();
    match runner() {
        Runner::Direct => run_direct(script, files, false),
        Runner::TestHost => run_in_test_host(script, files, false),
    }
}

/// Runs `script` (as [`run_script`]) with what a sandbox needs in its work directory:
/// `husk`, `husk-agent`, the guest kernel as `vmlinux` and an image store holding
/// busybox as `store.tar`; then `extra` files.
pub fn run_sandbox_script(script: &str, extra: &[(&Path, &str)]) -> Output {
    let dir = WorkDir::new();
    let (store, agent, assets) = (store_tar(&dir), agent(), assets());
    let mut files: Vec<(&Path, &str)> = vec![
        (assets.husk.as_path(), "husk"),
        (agent.as_path(), "husk-agent"),
        (assets.kernel.as_path(), "vmlinux"),
        (store.as_path(), "store.tar"),
    ];
    files.extend_from_slice(extra);
    run_script(script, &files)
}

/// Like `run_script`, with the QEMU peer available to the script: `husk-peer-qemu`
/// (QEMU `microvm` on KVM, taking `husk boot`'s options) on its `PATH`, and in the test
/// host QEMU itself with its libraries and firmware. For peer comparisons and for
/// checking the kernel and initramfs independently of husk.
pub fn run_peer_script(script: &str, files: &[(&Path, &str)]) -> Output {
    let script = &format!("{SHELL_HELPERS}{script}");
    let _guard = run_lock();
    match runner() {
        Runner::Direct => run_direct(script, files, true),
        Runner::TestHost => run_in_test_host(script, files, true),
    }
}

fn run_direct(script: &str, files: &[(&Path, &str)], with_peer: bool) -> Output {
    let work = WorkDir::new();
    for (src, name) in files {
        let dst = work.path.join(name);
        std::os::unix::fs::symlink(src, &dst)
            .unwrap_or_else(|e| panic!("cannot link {} to {}: {e}", src.display(), dst.display()));
    }
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .current_dir(&work.path)
        .env("WORK", &work.path);
    if with_peer {
        let peer_dir = repo_dir().join("scripts/testhost.d");
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", peer_dir.display()));
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
    Output::from(out)
}

fn run_in_test_host(script: &str, files: &[(&Path, &str)], with_qemu: bool) -> Output {
    let testhost = repo_dir().join("scripts/testhost");
    let mut cmd = Command::new(&testhost);
    cmd.arg("run");
    if with_qemu {
        cmd.arg("--with-qemu");
    }
    for (src, name) in files {
        cmd.arg("--file").arg(format!("{}:{name}", src.display()));
    }
    // `HUSK_SECCOMP=log` goes through to the VMM processes; whatever the mode, the
    // kernel's record of calls outside a filter (logged, or fatal: SIGSYS) ends stderr.
    if let Ok(mode) = std::env::var("HUSK_SECCOMP") {
        cmd.arg("--env").arg(format!("HUSK_SECCOMP={mode}"));
    }
    let script = format!("( {script}\n)\n{SECCOMP_EPILOGUE}");
    cmd.args(["--env", "WORK=/work", "--", "sh", "-c", &script]);
    let run = |cmd: &mut Command| {
        Output::from(
            cmd.output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", testhost.display())),
        )
    };
    let mut out = run(&mut cmd);
    // The nested test host's kernel can die or freeze under load, and its emulated SVM
    // can corrupt a guest vCPU, whatever husk does (see scripts/README.md); that says
    // nothing about husk. The script runs again in a fresh test host, at most
    // TEST_HOST_RERUNS times, and each fault is logged where `scripts/test` reports it.
    // A timeout is not retried: a hung husk looks like one (a frozen test host does
    // not: it stops its heartbeat, which a hung command never does).
    for _ in 0..TEST_HOST_RERUNS {
        let Some(what) = test_host_fault(&out) else {
            break;
        };
        note_test_host_fault(what, &out.stderr);
        out = run(&mut cmd);
    }
    if std::env::var_os("HUSK_SECCOMP").is_some() {
        for line in out
            .stderr
            .lines()
            .filter(|l| l.starts_with("seccomp-record:"))
        {
            eprintln!("{line}");
        }
    }
    assert!(
        !(out.status == 125 && out.stderr.contains("test host failed")),
        "the KVM test host failed (not the test):\n{}",
        out.stderr
    );
    out
}

/// Ends a test host script: its status kept, the kernel's seccomp records (audit type
/// 1326: a call outside a VMM's filter, with its number) on stderr, each line starting
/// `seccomp-record:` (`HUSK_SECCOMP=log cargo test -- --nocapture` lists them).
const SECCOMP_EPILOGUE: &str = r#"rc=$?
dmesg 2>/dev/null | grep 'type=1326' | tail -n 50 | sed 's/^/seccomp-record: /' >&2
exit $rc"#;

/// How many times a script runs again after a fault of the test host itself. Loops of
/// parallel sandboxes met such a fault every 10 to 50 boots (scripts/README.md), so one
/// rerun could meet another.
const TEST_HOST_RERUNS: usize = 2;

/// What went wrong in the test host itself, if anything did: it died (its kernel crashed
/// or QEMU ended) or froze (its heartbeat stopped) before the script finished, its
/// emulator corrupted a guest vCPU
/// (`scripts/testhost` says so, having killed that VMM), or a guest triple-faulted there
/// (`scripts/testhost` says so too; see scripts/README.md for why that is taken as the
/// emulator's). A script that merely failed, or a test host that timed out, is none.
fn test_host_fault(out: &Output) -> Option<&'static str> {
    // What `scripts/testhost` prints for each (the first two only with its status 125).
    // A triple fault is not proven the emulator's one by one (it saves no usable state
    // then), but one came right after a proven corruption, and none was ever traced to
    // husk.
    const FAULTS: [(&str, &str); 5] = [
        (
            "test host failed: the test host stopped before COMMAND finished",
            "the KVM test host died",
        ),
        (
            "test host failed: the test host froze",
            "the KVM test host froze",
        ),
        (
            "test host failed: qemu-system-x86_64 exited with status",
            "the KVM test host died",
        ),
        (
            "testhost: emulator corrupted a guest vCPU",
            "the KVM test host's emulator corrupted a guest vCPU",
        ),
        (
            "testhost: a guest vCPU triple-faulted in the test host",
            "a guest triple-faulted in the KVM test host",
        ),
    ];
    FAULTS
        .iter()
        .find(|(said, _)| out.stderr.contains(said))
        .map(|(_, what)| *what)
}

/// Where test-host deaths are logged for `scripts/test` to report at its end.
pub fn test_host_deaths_log() -> PathBuf {
    repo_dir().join("target/testhost-deaths.log")
}

fn note_test_host_fault(what: &str, stderr: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let console: Vec<&str> = stderr.lines().rev().take(12).collect();
    let mut entry = format!("--- {test}: {what}; running its script again\n");
    for line in console.into_iter().rev() {
        entry.push_str(line);
        entry.push('\n');
    }
    eprint!("{entry}");
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(test_host_deaths_log())
    {
        let _ = log.write_all(entry.as_bytes());
    }
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Self {
        use std::os::unix::process::ExitStatusExt;
        let status = out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        Output {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            status,
        }
    }
}

/// Runs the husk binary on this machine with `args` (for checks that need no KVM, such
/// as rejected arguments), serialised with the scripts.
pub fn run_husk(args: &[&str]) -> Output {
    let _guard = run_lock();
    let husk = env!("CARGO_BIN_EXE_husk");
    let out = Command::new(husk)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {husk}: {e}"));
    Output::from(out)
}

/// A temporary directory removed when dropped.
#[derive(Debug)]
pub struct WorkDir {
    /// Its path.
    pub path: PathBuf,
}

impl WorkDir {
    /// Creates a new empty directory under the system's temp directory.
    pub fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("husk-test-{}-{n}", std::process::id()));
        // A leftover of an earlier process with the same pid is stale.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        WorkDir { path }
    }
}

impl Default for WorkDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
