//! The native peer of the run benchmarks: crun on the busybox image's tree, as a whole
//! (`crun run`) and step by step (`create`, `start`, exit, `delete`).
#![allow(dead_code, reason = "each benchmark uses its own subset")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::run_stdout;

/// Where the busybox image's tree is mounted (or found) inside the work directory.
pub const ROOTFS_MNT: &str = "rootfs-mnt";
/// The extracted tree, the fallback when the erofs image cannot be loop-mounted.
pub const ROOTFS_TREE: &str = "rootfs-tree";

/// Milliseconds of `d`.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// crun on this machine: `$HUSK_BENCH_CRUN` or `crun` on `PATH`.
pub fn find_crun() -> PathBuf {
    if let Some(path) = std::env::var_os("HUSK_BENCH_CRUN") {
        return PathBuf::from(path);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v crun"])
        .output()
        .expect("run sh to find crun");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "the run benchmark needs crun as its native peer: install it (`apt-get install crun`) or set HUSK_BENCH_CRUN"
    );
    PathBuf::from(path)
}

/// The shared libraries `binary` needs, as (file to copy, path the loader looks for it
/// at): ldd's `=> /path` entries and the loader itself, which ldd lists by absolute path.
pub fn shared_libraries(binary: &Path) -> Vec<(PathBuf, String)> {
    let out = run_stdout(Command::new("ldd").arg(binary));
    let mut libs = Vec::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let path = match words.as_slice() {
            [_, "=>", path, ..] if path.starts_with('/') => *path,
            [path, ..] if path.starts_with('/') => *path,
            _ => continue,
        };
        // Copy the file a symlink names, but install it at the name the loader uses.
        let real = std::fs::canonicalize(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        libs.push((real, path.to_string()));
    }
    libs
}

/// One crun round: `crun run` wall time, and the step-by-step run, each step's end in ms
/// from the spawn of `crun create`.
pub struct CrunSample {
    /// `crun --version`: what one crun invocation costs before it does any work.
    pub exec_ms: f64,
    pub run_wall_ms: f64,
    pub created_ms: f64,
    pub started_ms: f64,
    pub exited_ms: f64,
    pub deleted_ms: f64,
}

pub fn crun_cmd(crun: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(crun);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

pub fn check(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Whether process `pid` has exited: gone from /proc, or a zombie nobody reaped yet.
pub fn exited(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

pub fn crun_once(crun: &str, bundle: &str, round: &str) -> CrunSample {
    let start = Instant::now();
    check(&mut crun_cmd(crun, &["--version"]));
    let exec_ms = ms(start.elapsed());

    // Whole: `crun run`, which creates, starts, waits and deletes.
    let id = format!("bench-run-{round}");
    let start = Instant::now();
    check(&mut crun_cmd(
        crun,
        &["run", "--no-pivot", "--bundle", bundle, &id],
    ));
    let run_wall_ms = ms(start.elapsed());

    // Step by step.
    let id = format!("bench-steps-{round}");
    let pid_file = format!("/tmp/crun-bench-{round}.pid");
    let start = Instant::now();
    check(&mut crun_cmd(
        crun,
        &[
            "create",
            "--no-pivot",
            "--bundle",
            bundle,
            "--pid-file",
            &pid_file,
            &id,
        ],
    ));
    let created_ms = ms(start.elapsed());
    let pid = std::fs::read_to_string(&pid_file).expect("crun create wrote the pid file");
    let pid = pid.trim().to_string();
    check(&mut crun_cmd(crun, &["start", &id]));
    let started_ms = ms(start.elapsed());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !exited(&pid) {
        assert!(
            Instant::now() < deadline,
            "the crun container (pid {pid}) did not exit within 60 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let exited_ms = ms(start.elapsed());
    check(&mut crun_cmd(crun, &["delete", "-f", &id]));
    let deleted_ms = ms(start.elapsed());
    let _ = std::fs::remove_file(&pid_file);
    CrunSample {
        exec_ms,
        run_wall_ms,
        created_ms,
        started_ms,
        exited_ms,
        deleted_ms,
    }
}

/// The busybox tree for crun: the erofs image mounted read-only through a loop device,
/// or, if that fails, the tree extracted on the outer machine. Returns its absolute path
/// and how it was obtained.
pub fn rootfs(work: &Path, fs_image: &Path) -> (PathBuf, String) {
    let mnt = work.join(ROOTFS_MNT);
    std::fs::create_dir_all(&mnt).expect("create the mount point");
    let loop_ko = work.join("loop.ko");
    if loop_ko.is_file() {
        let status = Command::new("insmod").arg(&loop_ko).status();
        if !status.is_ok_and(|s| s.success()) {
            println!("# insmod loop.ko failed");
        }
    }
    let out = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(fs_image)
        .arg(&mnt)
        .output()
        .expect("run mount");
    if out.status.success() {
        return (
            mnt,
            format!("erofs image {} mounted ro (loop)", fs_image.display()),
        );
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let tree = work.join(ROOTFS_TREE);
    assert!(
        tree.is_dir(),
        "cannot loop-mount the erofs image ({why}) and no extracted tree was given"
    );
    (
        tree,
        format!("the image's tree extracted with fsck.erofs (loop mount failed: {why})"),
    )
}

/// A minimal OCI bundle: the image's tree read-only as root, tmpfs on /dev and /tmp,
/// /proc, namespaces mount/pid/uts/ipc, `args` as the process.
pub fn write_bundle(bundle: &Path, rootfs: &Path, args: &[&str]) {
    std::fs::create_dir_all(bundle).expect("create the bundle");
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": { "path": rootfs, "readonly": true },
        "hostname": "husk-bench",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "nodev", "mode=1777"] }
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }
            ]
        }
    });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_string_pretty(&config).expect("serialise config.json"),
    )
    .expect("write config.json");
}

pub fn timed(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    check(cmd);
    ms(start.elapsed())
}
