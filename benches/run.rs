//! `husk run` benchmark, the numbers users feel: `husk run busybox -- true` warm (from a
//! template), cold (`--cold`, a kernel boot) and `crun run` on the same root filesystem
//! (the busybox image's erofs mounted read-only, or its extracted tree when the test
//! host cannot loop-mount), interleaved round by round; each by stage (`--timings`),
//! and the restore broken down. Then detached sandboxes: `run -d` warm and adopting a
//! parked sandbox of a pool of 1 against `crun run -d`, `exec`, `husk fork`, and N = 1, 8, 32 idle clones of one template: PSS per clone
//! and what their guests dirtied, host memory, clones per second. Also `husk run`
//! claiming a parked sandbox from a pool of 1 (`husk pool add`), each refill awaited
//! before the next measurement. Medians with min and
//! max; ratios printed. Then the library's `Template::start` with a pre-spawned VMM
//! from a `VmmPool` against one spawned per sandbox. Asserts nothing about time.
//!
//! On hardware KVM it runs here (as root, crun on `PATH`); otherwise it copies itself,
//! husk, husk-agent, the guest kernel, the busybox image store, crun and its shared
//! libraries into the KVM test host (`scripts/testhost run`, one vCPU) and runs there.
//! Absolute times inside the test host are ~10x native; compare the ratios.
//!
//! crun runs `crun run` (spawn to exit, the peer of `husk run`'s wall time) and step by
//! step (`create`, `start`, the exit polled in `/proc`, `delete`), the peers of husk's
//! stages; with `--no-pivot` (the test host's root is an initramfs, where pivot_root
//! fails). Husk's stages count from the start of its sandbox, crun's from the spawn of
//! `crun create`. Not quite like for like: husk's agent reports the exit after it has
//! also removed the container (crun's `delete`); each crun step is a process of its own.
//!
//! Environment: `HUSK_BENCH_ROUNDS` (default 10), `HUSK_BENCH_CLONES` (default
//! `1,8,32`), `HUSK_BENCH_KERNEL` (default: `husk kernel path`), `HUSK_BENCH_CRUN`
//! (default: `crun` on `PATH`), `HUSK_TEST_HOST` (auto|always|never).

#[path = "run/clones.rs"]
mod clones;
#[path = "common/mod.rs"]
mod common;
#[path = "run/library.rs"]
mod library;
#[path = "run/stages.rs"]
mod stages;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::crun::{
    check, crun_once, find_crun, rootfs, shared_libraries, write_bundle, CrunSample, ROOTFS_MNT,
    ROOTFS_TREE,
};
use common::{env_or, hardware_kvm, median, run_stdout, tempdir};
use stages::{husk_once, report_stages, report_wall, HuskSample, Start};

fn main() {
    common::dispatch(outer, inner);
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
    let rounds = env_or("HUSK_BENCH_ROUNDS", "10");
    // Passed as an argument: the test host does not see this environment.
    let clones = env_or("HUSK_BENCH_CLONES", "1,8,32");
    let fs_image = fs_image.to_string_lossy().into_owned();
    let status = if hardware_kvm() {
        for (src, name) in [(&husk, "husk"), (&kernel, "vmlinux")] {
            std::os::unix::fs::symlink(src, dir.join(name)).expect("symlink into the bench dir");
        }
        let status = Command::new(&me)
            .args(["--inner", &rounds, &clones, &fs_image])
            .arg(&crun)
            .current_dir(&dir)
            .status();
        let _ = Command::new("umount").arg(dir.join(ROOTFS_MNT)).status();
        status
    } else {
        println!("# /dev/kvm is missing or paravirtual: running inside the KVM test host");
        let mut cmd = Command::new(root.join("scripts/testhost"));
        // Room for 32 idle clones besides everything else.
        cmd.arg("run")
            .args(["--memory", "4096", "--timeout", "3600"])
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
            .args(["--inner", &rounds, &clones, &fs_image, "/usr/bin/crun"])
            .status()
    };
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.expect("the benchmark runner starts");
    assert!(status.success(), "the run benchmark failed: {status}");
}

fn inner(args: &[String]) {
    let [rounds, clones, fs_image, crun] = args else {
        panic!("usage: bench --inner ROUNDS CLONES FS_IMAGE_IN_STORE CRUN");
    };
    let rounds: usize = rounds.parse().expect("rounds is a number");
    let work = std::env::current_dir().expect("a current directory");
    let husk = work.join("husk").to_string_lossy().into_owned();
    let store = work.join("store");
    if !store.is_dir() {
        let file = std::fs::File::open(work.join("store.tar")).expect("open store.tar");
        tar::Archive::new(file)
            .unpack(&work)
            .expect("unpack store.tar");
    }
    let (tmp, runtime, cache) = (work.join("tmp"), work.join("run"), work.join("cache"));
    for dir in [&tmp, &runtime, &cache] {
        std::fs::create_dir_all(dir).expect("create a bench folder");
    }
    std::env::set_var("HUSK_DATA_DIR", &store);
    std::env::set_var("TMPDIR", &tmp);
    std::env::set_var("HUSK_RUNTIME_DIR", &runtime);
    std::env::set_var("HUSK_CACHE_DIR", &cache);
    let (rootfs, how) = rootfs(&work, &store.join(fs_image));
    let cache_how = disk_backed(&work, &cache);
    let bundle = work.join("bundle");
    write_bundle(&bundle, &rootfs, &["true"]);
    let bundle = bundle.to_string_lossy().into_owned();
    let timings = work.join("timings.json");

    println!("# run benchmark: {rounds} rounds, `husk run busybox -- true` (1 vCPU, 256+64 MiB) warm, --cold and crun, order rotating");
    println!("# crun rootfs: {how}");
    println!("# template cache: {cache_how}");
    let template = common::crun::timed(
        Command::new(&husk)
            .args(["template", "build", "--kernel", "vmlinux"])
            // Its errors (an agent older than husk: a protocol mismatch) are shown.
            .stdout(Stdio::null()),
    );
    println!("template build (boot to agent, snapshot, synced): {template:.0} ms");
    let c = crun_once(crun, &bundle, "warmup");
    // The first warm run also makes the image's template (and records its working
    // set); the second is the first to start from it.
    let first = husk_once(&husk, &timings, Start::Prepared);
    let w = husk_once(&husk, &timings, Start::Prepared);
    let p = husk_once(&husk, &timings, Start::Plain);
    let k = husk_once(&husk, &timings, Start::Cold);
    println!(
        "warm-up: husk warm {:.0} ms (the first, making the image template: {:.0} ms), plain {:.0} ms, cold {:.0} ms | crun run {:.1} ms",
        w.wall_ms, first.wall_ms, p.wall_ms, k.wall_ms, c.run_wall_ms
    );
    let pool_add = common::crun::timed(
        Command::new(&husk)
            .args([
                "pool", "add", "--kernel", "vmlinux", "--size", "1", "busybox",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    println!("pool of 1 made (one parked sandbox started): {pool_add:.0} ms");
    let (mut warm, mut plain, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pooled, mut refills) = (Vec::new(), Vec::new());
    let mut runs = Vec::<CrunSample>::new();
    for round in 0..rounds {
        let tag = round.to_string();
        for step in 0..5 {
            match (round + step) % 5 {
                0 => warm.push(husk_once(&husk, &timings, Start::Prepared)),
                1 => plain.push(husk_once(&husk, &timings, Start::Plain)),
                2 => cold.push(husk_once(&husk, &timings, Start::Cold)),
                3 => {
                    pooled.push(husk_once(&husk, &timings, Start::Pooled));
                    // The refill runs in the background: let it finish before the
                    // next measurement, and say how long it took.
                    refills.push(wait_parked(&husk));
                }
                _ => runs.push(crun_once(crun, &bundle, &tag)),
            }
        }
        let last = |v: &[HuskSample]| v.last().map_or(f64::NAN, |s| s.wall_ms);
        println!(
            "round {round}: husk pooled {:.0} ms (refilled in {:.0} ms), warm {:.0} ms, plain {:.0} ms, cold {:.0} ms | crun run {:.1} ms",
            last(&pooled),
            refills.last().copied().unwrap_or(f64::NAN),
            last(&warm),
            last(&plain),
            last(&cold),
            runs.last().map_or(f64::NAN, |s| s.run_wall_ms)
        );
    }
    // How many of `v` have the sandbox timing `flag` set.
    let flagged = |v: &[HuskSample], flag: &str| {
        let set = |s: &&HuskSample| s.timings["sandbox"][flag] == serde_json::json!(true);
        v.iter().filter(set).count()
    };
    println!(
        "warm runs whose container was made ahead: {} of {}",
        flagged(&warm, "container_prepared"),
        warm.len()
    );
    println!(
        "pooled runs that claimed a parked sandbox: {} of {}; refill (a parked sandbox again) {:.0} ms median",
        flagged(&pooled, "pooled"),
        pooled.len(),
        median(refills)
    );
    check(Command::new(&husk).args(["pool", "rm", "busybox"]));
    report_wall(&pooled, &warm, &plain, &cold, &runs);
    report_stages(&warm, &plain, &cold, &runs);
    let ready = |v: &[HuskSample]| {
        median(
            v.iter()
                .filter_map(|s| s.field(&["sandbox", "agent_ready_ms"]))
                .collect(),
        )
    };
    // The VMM's own part: from the moment the spawned, jailed VMM is asked to restore
    // (or boot) to the agent ready, per run.
    let own = |v: &[HuskSample]| {
        median(
            v.iter()
                .filter_map(|s| {
                    let asked = s.field(&["sandbox", "vm_requested_ms"])?;
                    Some(s.field(&["sandbox", "agent_ready_ms"])? - asked)
                })
                .collect(),
        )
    };
    println!(
        "restore to agent ready vs a cold boot to agent ready, from the VMM asked (spawned and jailed): {:.1} / {:.1} ms = {:.1}%",
        own(&warm),
        own(&cold),
        100.0 * own(&warm) / own(&cold)
    );
    println!(
        "the same from husk's start (VMM spawn and jail included): {:.1} / {:.1} ms = {:.1}%",
        ready(&warm),
        ready(&cold),
        100.0 * ready(&warm) / ready(&cold)
    );
    let service = work.join("service-bundle");
    write_bundle(&service, &rootfs, &["sleep", "100000"]);
    clones::detached_rounds(&husk, crun, &service.to_string_lossy(), rounds);
    clones::fork_rounds(&husk, rounds);
    println!();
    for n in clones
        .split(',')
        .filter_map(|n| n.trim().parse::<usize>().ok())
    {
        clones::clones(&husk, &runtime, n);
    }
    library::pool_rounds(&work, rounds);
    let _ = Command::new("umount").arg(work.join(ROOTFS_MNT)).status();
    check(Command::new(&husk).args(["template", "ls"]));
}

/// Wait until the pool of busybox has a parked sandbox again; how long it took, ms.
/// Parked sandboxes over every pool (`husk pool ls`).
fn parked(husk: &str) -> u32 {
    let ls = run_stdout(Command::new(husk).args(["pool", "ls"]));
    ls.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(4)?.parse::<u32>().ok())
        .sum::<u32>()
}

fn wait_parked(husk: &str) -> f64 {
    let began = std::time::Instant::now();
    while began.elapsed() < std::time::Duration::from_secs(60) {
        if parked(husk) > 0 {
            return common::crun::ms(began.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the pool was not refilled within 60 s");
}

/// Puts `dir` on a disk filesystem when `work` is RAM (the test host's root): an ext2
/// image on a loop device, as a real host keeps its templates on disk. On RAM every page
/// of a file stays cached, so a working set recorded there keeps the neighbours of each
/// page the guest touched (docs/design.md, "Working set"). What it did, for the header.
fn disk_backed(work: &std::path::Path, dir: &std::path::Path) -> String {
    let fs_type = fs_type(work);
    if !["rootfs", "ramfs", "tmpfs"].contains(&fs_type.as_str()) {
        return format!("on {} ({fs_type})", work.display());
    }
    let image = work.join("cache.ext2");
    let file = std::fs::File::create(&image).expect("create the cache image");
    file.set_len(2 << 30).expect("size the cache image");
    let step = |cmd: &mut Command| match cmd.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd:?} did not start: {e}")),
    };
    let mounted = step(Command::new("mke2fs").args(["-q", "-F"]).arg(&image)).and_then(|()| {
        step(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(dir),
        )
    });
    match mounted {
        Ok(()) => "ext2 on a loop device (the test host's root is RAM; a disk-backed cache as on a real host)".into(),
        Err(why) => format!("on the test host's RAM root ({why}); working sets keep fault-around neighbours"),
    }
}

/// The type of the filesystem `path` is on (the longest mount point above it, from
/// /proc/self/mountinfo).
fn fs_type(path: &std::path::Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best = (0, String::from("unknown"));
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(kind)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        if path.starts_with(point) && point.len() >= best.0 {
            best = (point.len(), (*kind).to_string());
        }
    }
    best.1
}
