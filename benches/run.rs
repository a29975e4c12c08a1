//! `husk run` benchmark: `husk run busybox -- true` end to end, broken into the sandbox's
//! milestones (`husk run --timings`: VM running, agent ready, Run sent, process started,
//! process exited, torn down) plus the wall time from spawning `husk run` to its exit,
//! against the same container run natively by **crun** on the same root filesystem (the
//! busybox image's erofs, mounted read-only, or its extracted tree when the test host
//! cannot loop-mount). Husk and crun are interleaved run by run in one invocation (the
//! order alternates); medians and the ratio husk/crun are printed. crun is the container
//! lower bound. Prints numbers; asserts nothing about time.
//!
//! On hardware KVM it runs here (as root, crun on `PATH`); otherwise it copies itself,
//! husk, husk-agent, the guest kernel, the busybox image store, crun and its shared
//! libraries into the KVM test host (`scripts/testhost run`) and runs there. Absolute
//! times inside the test host are ~10x native; compare the ratios.
//!
//! crun runs twice per round: `crun run` (spawn to exit, the peer of `husk run`'s wall
//! time) and step by step, `crun create`, `crun start`, the process's exit (polled in
//! `/proc`), `crun delete`, the peers of husk's milestones. Husk's milestones count from
//! the start of its sandbox (after `husk run` has started and opened the store); crun's
//! from the spawn of `crun create`. crun runs with `--no-pivot` (MS_MOVE and chroot):
//! the test host's root is its initramfs, where pivot_root fails with EINVAL. The test
//! host does not load the loop driver; `scripts/loop-module` supplies it.
//!
//! Not quite like for like: husk's agent sends "exited" only after it has also killed the
//! container's cgroup, unmounted its root and removed the cgroup (`watch` in
//! `rootfs/agent/src/agent.rs`), work that crun does in `crun delete`; and each crun step
//! is a separate crun process, whose start alone costs what the `crun --version` line
//! shows.
//!
//! Then the warm path: a sandbox left running (`husk run -d ... sleep`) and a crun
//! container (`crun run -d`), and `exec true` into each, alternating, round by round:
//! what a CI runner pays per command once its sandbox is up.
//!
//! Environment: `HUSK_BENCH_ROUNDS` (default 5), `HUSK_BENCH_KERNEL` (default: `husk
//! kernel path`), `HUSK_BENCH_CRUN` (default: `crun` on `PATH`), `HUSK_TEST_HOST`
//! (auto|always|never).

#[path = "common/mod.rs"]
mod common;
use common::{env_or, hardware_kvm, median, run_stdout, tempdir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the busybox image's tree is mounted (or found) inside the work directory.
const ROOTFS_MNT: &str = "rootfs-mnt";
/// The extracted tree, the fallback when the erofs image cannot be loop-mounted.
const ROOTFS_TREE: &str = "rootfs-tree";

fn main() {
    common::dispatch(outer, inner);
}

/// crun on this machine: `$HUSK_BENCH_CRUN` or `crun` on `PATH`.
fn find_crun() -> PathBuf {
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
fn shared_libraries(binary: &Path) -> Vec<(PathBuf, String)> {
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

fn outer() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    let agent = husk.with_file_name("husk-agent");
    assert!(
        agent.is_file(),
        "{} not found: the run benchmark needs the guest agent; build it with `cargo build --release -p husk-agent`",
        agent.display()
    );
    let kernel = match std::env::var_os("HUSK_BENCH_KERNEL") {
        Some(path) => PathBuf::from(path),
        None => {
            husk::kernel::cached(None)
                .unwrap_or_else(|e| {
                    panic!("the run benchmark needs the guest kernel (`husk kernel build`): {e}")
                })
                .vmlinux
        }
    };
    let crun = find_crun();
    let crun_version = run_stdout(Command::new(&crun).arg("--version"));
    println!("# kernel: {}", kernel.display());
    println!(
        "# crun: {} ({})",
        crun.display(),
        crun_version.lines().next().unwrap_or("?")
    );

    let dir = tempdir("husk-run-bench");
    let store_root = dir.join("store");
    let store = husk::image::ImageStore::open(Some(&store_root)).expect("open a fresh store");
    let image = store
        .ensure_busybox(false)
        .expect("build the busybox image");
    let fs_image = image
        .fs_image
        .strip_prefix(&store_root)
        .expect("the image is inside its store")
        .to_path_buf();
    let store_tar = dir.join("store.tar");
    {
        let file = std::fs::File::create(&store_tar).expect("create store.tar");
        let mut tar = tar::Builder::new(file);
        tar.append_dir_all("store", &store_root)
            .expect("pack the store");
        tar.finish().expect("finish store.tar");
    }
    // The same tree, extracted, in case the test host's kernel cannot loop-mount the
    // erofs image (loop may be a module it does not load).
    let tree = dir.join(ROOTFS_TREE);
    let extracted = Command::new("fsck.erofs")
        .arg(format!("--extract={}", tree.display()))
        .arg(&image.fs_image)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !extracted {
        println!("# fsck.erofs --extract failed or is missing (erofs-utils): crun needs a loop mount of the image");
        let _ = std::fs::remove_dir_all(&tree);
    }

    // The test host's kernel has loop as a module it does not load.
    let loop_module = if hardware_kvm() {
        None
    } else {
        let out = Command::new(root.join("scripts/loop-module")).output();
        match out {
            Ok(out) if out.status.success() => {
                Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
            }
            Ok(out) => {
                println!(
                    "# scripts/loop-module failed ({}): crun gets the extracted tree",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("# cannot run scripts/loop-module ({e}): crun gets the extracted tree");
                None
            }
        }
    };
    let me = std::env::current_exe().expect("the bench binary knows its path");
    let rounds = env_or("HUSK_BENCH_ROUNDS", "5");
    let fs_image = fs_image.to_string_lossy().into_owned();
    let status = if hardware_kvm() {
        for (src, name) in [(&husk, "husk"), (&kernel, "vmlinux")] {
            std::os::unix::fs::symlink(src, dir.join(name)).expect("symlink into the bench dir");
        }
        let status = Command::new(&me)
            .args(["--inner", &rounds, &fs_image])
            .arg(&crun)
            .current_dir(&dir)
            .status();
        let _ = Command::new("umount").arg(dir.join(ROOTFS_MNT)).status();
        status
    } else {
        println!("# /dev/kvm is missing or paravirtual: running inside the KVM test host");
        let mut cmd = Command::new(root.join("scripts/testhost"));
        cmd.arg("run")
            .args(["--file", &format!("{}:bench", me.display())])
            .args(["--file", &format!("{}:husk", husk.display())])
            .args(["--file", &format!("{}:husk-agent", agent.display())])
            .args(["--file", &format!("{}:vmlinux", kernel.display())])
            .args(["--file", &format!("{}:store.tar", store_tar.display())])
            .args(["--file", &format!("{}:/usr/bin/crun", crun.display())]);
        for (src, dst) in shared_libraries(&crun) {
            cmd.args(["--file", &format!("{}:{dst}", src.display())]);
        }
        if let Some(ko) = &loop_module {
            cmd.args(["--file", &format!("{ko}:loop.ko")]);
        }
        if extracted {
            cmd.args(["--dir", &format!("{}:{ROOTFS_TREE}", tree.display())]);
        }
        cmd.arg("--")
            .arg("./bench")
            .args(["--inner", &rounds, &fs_image, "/usr/bin/crun"])
            .status()
    };
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.expect("the benchmark runner starts");
    assert!(status.success(), "the run benchmark failed: {status}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One `husk run busybox -- true`: wall time and the `--timings` JSON.
struct HuskSample {
    wall_ms: f64,
    timings: serde_json::Value,
}

impl HuskSample {
    fn field(&self, path: &[&str]) -> Option<f64> {
        let mut v = &self.timings;
        for key in path {
            v = v.get(key)?;
        }
        v.as_f64()
    }
}

/// One crun round: `crun run` wall time, and the step-by-step run, each step's end in ms
/// from the spawn of `crun create`.
struct CrunSample {
    /// `crun --version`: what one crun invocation costs before it does any work.
    exec_ms: f64,
    run_wall_ms: f64,
    created_ms: f64,
    started_ms: f64,
    exited_ms: f64,
    deleted_ms: f64,
}

fn husk_once(husk: &str, timings: &Path) -> HuskSample {
    let _ = std::fs::remove_file(timings);
    let mut cmd = Command::new(husk);
    cmd.args(["run", "--kernel", "vmlinux", "--timings"])
        .arg(timings)
        .args(["busybox", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let start = Instant::now();
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let wall_ms = ms(start.elapsed());
    assert!(status.success(), "{cmd:?} failed: {status}");
    let text = std::fs::read_to_string(timings).expect("husk wrote its timings");
    HuskSample {
        wall_ms,
        timings: serde_json::from_str(&text).expect("timings are JSON"),
    }
}

fn crun_cmd(crun: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(crun);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

fn check(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Whether process `pid` has exited: gone from /proc, or a zombie nobody reaped yet.
fn exited(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn crun_once(crun: &str, bundle: &str, round: &str) -> CrunSample {
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
fn rootfs(work: &Path, fs_image: &Path) -> (PathBuf, String) {
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
fn write_bundle(bundle: &Path, rootfs: &Path, args: &[&str]) {
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

fn inner(args: &[String]) {
    let [rounds, fs_image, crun] = args else {
        panic!("usage: bench --inner ROUNDS FS_IMAGE_IN_STORE CRUN");
    };
    let rounds: usize = rounds.parse().expect("rounds is a number");
    let work = std::env::current_dir().expect("a current directory");
    let husk = work.join("husk").to_string_lossy().into_owned();

    // The store husk uses, and a temp folder it leaves empty.
    let store = work.join("store");
    if !store.is_dir() {
        let file = std::fs::File::open(work.join("store.tar")).expect("open store.tar");
        tar::Archive::new(file)
            .unpack(&work)
            .expect("unpack store.tar");
    }
    let tmp = work.join("tmp");
    std::fs::create_dir_all(&tmp).expect("create tmp");
    std::env::set_var("HUSK_DATA_DIR", &store);
    std::env::set_var("TMPDIR", &tmp);

    let (rootfs, how) = rootfs(&work, &store.join(fs_image));
    let bundle = work.join("bundle");
    write_bundle(&bundle, &rootfs, &["true"]);
    let bundle = bundle.to_string_lossy().into_owned();
    let timings = work.join("timings.json");

    println!("# run benchmark: {rounds} rounds (+1 warm-up), `husk run busybox -- true` (1 vCPU, 256+64 MiB) vs crun, alternating order");
    println!("# crun rootfs: {how}");
    // Warm-up: husk builds its agent initramfs on first use; page caches fill.
    let c = crun_once(crun, &bundle, "warmup");
    let w = husk_once(&husk, &timings);
    println!(
        "warm-up: husk wall {:.0} ms | crun run {:.1} ms",
        w.wall_ms, c.run_wall_ms
    );

    let mut husk_runs = Vec::new();
    let mut crun_runs = Vec::new();
    for round in 0..rounds {
        let tag = round.to_string();
        if round % 2 == 0 {
            husk_runs.push(husk_once(&husk, &timings));
            crun_runs.push(crun_once(crun, &bundle, &tag));
        } else {
            crun_runs.push(crun_once(crun, &bundle, &tag));
            husk_runs.push(husk_once(&husk, &timings));
        }
        let (h, c) = (
            husk_runs.last().expect("pushed"),
            crun_runs.last().expect("pushed"),
        );
        println!(
            "round {round}: husk started {:.0} ms exited {:.0} ms wall {:.0} ms | crun started {:.1} ms exited {:.1} ms run {:.1} ms",
            h.field(&["sandbox", "process_started_ms"]).unwrap_or(f64::NAN),
            h.field(&["sandbox", "process_exited_ms"]).unwrap_or(f64::NAN),
            h.wall_ms,
            c.started_ms,
            c.exited_ms,
            c.run_wall_ms
        );
    }
    let service = work.join("service-bundle");
    write_bundle(&service, &rootfs, &["sleep", "100000"]);
    let execs = exec_rounds(&husk, crun, &service.to_string_lossy(), rounds);
    let _ = Command::new("umount").arg(work.join(ROOTFS_MNT)).status();
    report(&husk_runs, &crun_runs);
    report_execs(&execs);
}

/// The warm path: a running sandbox (`husk run -d`) or container (`crun run -d`) and
/// `exec true` into it, round after round.
struct Execs {
    husk_detach_ms: f64,
    crun_detach_ms: f64,
    husk: Vec<f64>,
    crun: Vec<f64>,
}

fn timed(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    check(cmd);
    ms(start.elapsed())
}

fn exec_rounds(husk: &str, crun: &str, service: &str, rounds: usize) -> Execs {
    let husk_cmd = |args: &[&str]| {
        let mut cmd = Command::new(husk);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    };
    let husk_detach_ms = timed(&mut husk_cmd(&[
        "run", "-d", "--name", "bench", "--kernel", "vmlinux", "busybox", "--", "sleep", "100000",
    ]));
    let crun_detach_ms = timed(&mut crun_cmd(
        crun,
        &[
            "run",
            "-d",
            "--no-pivot",
            "--bundle",
            service,
            "bench-service",
        ],
    ));
    let (mut husk_execs, mut crun_execs) = (Vec::new(), Vec::new());
    // One warm-up each, then alternate.
    for round in 0..=rounds {
        let h = timed(&mut husk_cmd(&["exec", "bench", "true"]));
        let c = timed(&mut crun_cmd(crun, &["exec", "bench-service", "true"]));
        println!("exec round {round}: husk exec {h:.1} ms | crun exec {c:.1} ms");
        if round > 0 {
            husk_execs.push(h);
            crun_execs.push(c);
        }
    }
    check(&mut husk_cmd(&["stop", "-t", "0", "bench"]));
    check(&mut husk_cmd(&["rm", "bench"]));
    check(&mut crun_cmd(crun, &["delete", "-f", "bench-service"]));
    Execs {
        husk_detach_ms,
        crun_detach_ms,
        husk: husk_execs,
        crun: crun_execs,
    }
}

fn report_execs(execs: &Execs) {
    let (h, c) = (median(execs.husk.clone()), median(execs.crun.clone()));
    println!();
    println!(
        "warm sandbox: `run -d` until the service runs: husk {:.0} ms, crun {:.1} ms",
        execs.husk_detach_ms, execs.crun_detach_ms
    );
    println!(
        "warm sandbox: `exec true` spawn -> exit (median of {}): husk {h:.1} ms, crun {c:.1} ms, husk/crun {:.1}",
        execs.husk.len(),
        h / c
    );
}

fn report(husk: &[HuskSample], crun: &[CrunSample]) {
    let h = |path: &[&str]| median(husk.iter().filter_map(|s| s.field(path)).collect());
    let c = |f: fn(&CrunSample) -> f64| median(crun.iter().map(f).collect());
    let rows: [(&str, f64, Option<f64>); 8] = [
        (
            "agent initramfs ready (cached)",
            h(&["sandbox", "initramfs_ready_ms"]),
            None,
        ),
        (
            "VM running (VM built, vCPUs run)",
            h(&["sandbox", "vm_running_ms"]),
            None,
        ),
        (
            "agent ready (guest booted)",
            h(&["sandbox", "agent_ready_ms"]),
            None,
        ),
        ("Run sent", h(&["sandbox", "run_sent_ms"]), None),
        (
            "process started (crun: create+start)",
            h(&["sandbox", "process_started_ms"]),
            Some(c(|s| s.started_ms)),
        ),
        (
            "process exited (husk: + in-guest cleanup)",
            h(&["sandbox", "process_exited_ms"]),
            Some(c(|s| s.exited_ms)),
        ),
        (
            "torn down (crun: + delete)",
            h(&["torn_down_ms"]),
            Some(c(|s| s.deleted_ms)),
        ),
        (
            "wall: spawn -> exit (crun: `crun run`)",
            median(husk.iter().map(|s| s.wall_ms).collect()),
            Some(c(|s| s.run_wall_ms)),
        ),
    ];
    println!();
    println!(
        "{:<42} {:>10} {:>10} {:>10}",
        "stage (median ms, cumulative)", "husk", "crun", "husk/crun"
    );
    for (name, hv, cv) in rows {
        match cv {
            Some(cv) => println!("{name:<42} {hv:>10.1} {cv:>10.1} {:>10.1}", hv / cv),
            None => println!("{name:<42} {hv:>10.1} {:>10} {:>10}", "-", "-"),
        }
    }
    println!();
    println!("crun steps (median ms): create {:.1}, start {:.1}, process run to exit seen {:.1}, delete {:.1}",
        c(|s| s.created_ms),
        c(|s| s.started_ms - s.created_ms),
        c(|s| s.exited_ms - s.started_ms),
        c(|s| s.deleted_ms - s.exited_ms));
    println!(
        "one crun invocation that does nothing (`crun --version`, median): {:.1} ms; the step rows pay it 3 times, `crun run` once",
        c(|s| s.exec_ms)
    );
    println!(
        "husk outside the sandbox (process start, store, exit: wall - torn down): {:.1} ms",
        median(
            husk.iter()
                .filter_map(|s| Some(s.wall_ms - s.field(&["torn_down_ms"])?))
                .collect()
        )
    );
    println!();
    println!("husk VM (median of {} runs, from --timings):", husk.len());
    for (name, path) in [
        (
            "VM setup: guest loaded (ms from VM start)",
            &["vm", "timeline", "guest_loaded_ms"][..],
        ),
        (
            "VM setup: KVM VM ready (ms)",
            &["vm", "timeline", "kvm_ready_ms"],
        ),
        (
            "VM setup: vCPUs created (ms)",
            &["vm", "timeline", "vcpus_created_ms"],
        ),
        (
            "first KVM_RUN (ms)",
            &["vm", "timeline", "first_kvm_run_ms"],
        ),
        (
            "VMM CPU time outside guest mode (ms)",
            &["vm", "process", "vmm_cpu_ms"],
        ),
        (
            "  of which husk user code (ms)",
            &["vm", "process", "vmm_user_ms"],
        ),
        (
            "  of which kernel: syscalls, KVM exits (ms)",
            &["vm", "process", "vmm_system_ms"],
        ),
        ("guest CPU time (ms)", &["vm", "process", "guest_cpu_ms"]),
        (
            "VMM RSS excl. guest RAM (KiB)",
            &["vm", "process", "vmm_rss_kib"],
        ),
        (
            "guest RAM touched, RssShmem (KiB)",
            &["vm", "process", "shmem_rss_kib"],
        ),
        ("exits: port in", &["vm", "exits", "io_in"]),
        ("exits: port out", &["vm", "exits", "io_out"]),
        ("exits: MMIO read", &["vm", "exits", "mmio_read"]),
        ("exits: MMIO write", &["vm", "exits", "mmio_write"]),
        (
            "exits: interrupted (kicks)",
            &["vm", "exits", "interrupted"],
        ),
        ("exits: other", &["vm", "exits", "other"]),
    ] {
        println!("  {name:<44} {:>10.1}", h(path));
    }
}
