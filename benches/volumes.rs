//! Shared-folder benchmark: a container's file work on a virtio-fs volume (`-v`, served
//! by virtiofsd) against the same work on its scratch disk (`--disk`, ext4 on
//! virtio-blk), in one sandbox: sequential write (with fsync) and O_DIRECT read of
//! `HUSK_BENCH_MIB` MiB, and untarring 2000 small files (then `sync`). Rounds
//! interleave the two places. Each workload is one `husk exec`, timed on the host, less
//! the median of an empty `husk exec`, after an uncounted warm-up round. Prints medians
//! and ratios; asserts nothing.
//!
//! On hardware KVM it runs here; otherwise inside the KVM test host, virtiofsd and its
//! libraries copied in (virtiofsd's `--sandbox chroot` there: the test host runs from
//! its initramfs). Absolute times there are emulated; compare the ratios.
//!
//! Environment: `HUSK_BENCH_ROUNDS` (default 3), `HUSK_BENCH_MIB` (64),
//! `HUSK_BENCH_BASELINE` (path of another `husk` binary, e.g. one built from `main`: a
//! second sandbox of its own runs the same workloads interleaved with the others, so a
//! change is measured against its base in one boot; the disk's ratio to the baseline
//! is the control when the change is virtio-fs's), `HUSK_TEST_HOST`
//! (auto|always|never).
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{env_or, hardware_kvm, median, meminfo_kib, run_stdout};

const SMALL_FILES: usize = 2000;

fn main() {
    common::dispatch(outer, inner);
}

/// The binary at `path` and its libraries under `dir/` (the loader as `dir/ld.so`).
fn with_libraries(path: &Path, dir: &str) -> Vec<(PathBuf, String)> {
    let name = path.file_name().expect("a binary").to_string_lossy();
    let real = path.canonicalize().expect("resolve the binary");
    let ldd = run_stdout(Command::new("ldd").arg(&real));
    let mut files = vec![(real, format!("{dir}/{name}"))];
    for line in ldd.lines() {
        let (lib, name) = match line.split_once("=> ") {
            Some((_, rest)) => {
                let lib = rest.split_whitespace().next().unwrap_or_default();
                let base = Path::new(lib).file_name().unwrap_or_default();
                (lib, format!("{dir}/{}", base.to_string_lossy()))
            }
            None => (
                line.split_whitespace().next().unwrap_or_default(),
                format!("{dir}/ld.so"),
            ),
        };
        if lib.starts_with('/') {
            files.push((Path::new(lib).canonicalize().expect("a library"), name));
        }
    }
    files
}

fn outer() {
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    let agent = husk.with_file_name("husk-agent");
    let kernel = husk::kernel::cached(None)
        .unwrap_or_else(|e| panic!("the volumes benchmark needs the guest kernel: {e}"))
        .vmlinux;
    let virtiofsd = husk::sandbox::virtiofsd::binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = common::tempdir("husk-volumes-bench");
    let store_root = dir.join("store");
    let store = husk::image::ImageStore::open(Some(&store_root)).expect("open a fresh store");
    store
        .ensure_busybox(false)
        .expect("build the busybox image");
    let store_tar = dir.join("store.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&store_tar).expect("store.tar"));
    tar.append_dir_all("store", &store_root)
        .expect("pack the store");
    tar.finish().expect("finish store.tar");
    drop(tar);
    // The test host has no e2fsprogs; the scratch disk needs mkfs.ext4.
    let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("mkfs.ext4 (e2fsprogs) for the scratch disk");
    let mut owned = with_libraries(&virtiofsd, "vfs");
    owned.extend(with_libraries(&mkfs, "e2fs"));
    let mut files: Vec<(&Path, &str)> = vec![
        (husk.as_path(), "husk"),
        (agent.as_path(), "husk-agent"),
        (kernel.as_path(), "vmlinux"),
        (store_tar.as_path(), "store.tar"),
    ];
    files.extend(owned.iter().map(|(p, n)| (p.as_path(), n.as_str())));
    let baseline = std::env::var_os("HUSK_BENCH_BASELINE").map(PathBuf::from);
    if let Some(base) = &baseline {
        files.push((base.as_path(), "husk-base"));
    }
    let with_base = if baseline.is_some() { "base" } else { "" };
    let rounds = env_or("HUSK_BENCH_ROUNDS", "3");
    let mib = env_or("HUSK_BENCH_MIB", "64");
    let mode = if hardware_kvm() {
        "namespace"
    } else {
        "chroot"
    };
    common::run_inner("volumes", &files, &[&rounds, &mib, mode, with_base]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One `husk` binary of the bench folder with a sandbox of its own.
#[derive(Clone, Copy)]
struct Husk {
    /// The binary's name in the bench folder.
    binary: &'static str,
    /// Its sandbox's name.
    sandbox: &'static str,
    /// Its runtime folder.
    runtime: &'static str,
}

const HUSK: Husk = Husk {
    binary: "husk",
    sandbox: "bench",
    runtime: "run",
};

const BASELINE: Husk = Husk {
    binary: "husk-base",
    sandbox: "bench-base",
    runtime: "run-base",
};

/// `husk ARGS` in the bench folder, with the store and `vmm`'s runtime folder there.
fn husk(vmm: Husk, args: &[&str]) -> String {
    let cwd = std::env::current_dir().expect("a current folder");
    run_stdout(
        Command::new(cwd.join(vmm.binary))
            .args(args)
            .env("HUSK_DATA_DIR", cwd.join("store"))
            .env("HUSK_RUNTIME_DIR", cwd.join(vmm.runtime))
            .env("TMPDIR", cwd.join("tmp"))
            .env("HUSK_VIRTIOFSD", cwd.join("bin/virtiofsd"))
            .env("PATH", path_with(&cwd.join("bin"))),
    )
}

/// `$PATH` with `bin` first (the wrappers of the carried tools).
fn path_with(bin: &Path) -> std::ffi::OsString {
    let rest = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&rest));
    std::env::join_paths(dirs).expect("a PATH")
}

/// `sh -c script` in `vmm`'s sandbox (one `husk exec`).
fn exec(vmm: Husk, script: &str) {
    husk(vmm, &["exec", vmm.sandbox, "sh", "-c", script]);
}

/// Seconds [`exec`] of `script` takes.
fn timed(vmm: Husk, script: &str) -> f64 {
    let start = Instant::now();
    exec(vmm, script);
    start.elapsed().as_secs_f64()
}

fn setup(mode: &str) {
    run_stdout(Command::new("tar").args(["xf", "store.tar"]));
    for folder in ["tmp", "run", "run-base", "share", "bin"] {
        std::fs::create_dir_all(folder).expect("a bench folder");
    }
    let cwd = std::env::current_dir().expect("a current folder");
    for (dir, tool) in [("vfs", "virtiofsd"), ("e2fs", "mkfs.ext4")] {
        let wrapper = format!(
            "#!/bin/sh\nexec {0}/{dir}/ld.so --library-path {0}/{dir} {0}/{dir}/{tool} \"$@\"\n",
            cwd.display()
        );
        let path = format!("bin/{tool}");
        std::fs::write(&path, wrapper).expect("a tool wrapper");
        run_stdout(Command::new("chmod").args(["755", &path]));
    }
    std::env::set_var(husk::sandbox::virtiofsd::SANDBOX_ENV, mode);
    let mut tar = tar::Builder::new(std::fs::File::create("small.tar").expect("small.tar"));
    let data = [b'x'; 1024];
    for i in 0..SMALL_FILES {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        let path = format!("d{}/f{i}", i / 100);
        tar.append_data(&mut header, path, &data[..])
            .expect("a small file");
    }
    tar.finish().expect("finish small.tar");
}

fn inner(args: &[String]) {
    let [rounds, mib, mode, with_base] = args else {
        panic!("usage: bench --inner ROUNDS MIB SANDBOX_MODE [base]");
    };
    let rounds: usize = rounds.parse().expect("rounds is a number");
    setup(mode);
    let vmms: &[Husk] = match with_base.as_str() {
        "base" => &[HUSK, BASELINE],
        _ => &[HUSK],
    };
    for &vmm in vmms {
        let volume = format!("share/{}:/vol", vmm.sandbox);
        std::fs::create_dir_all(format!("share/{}", vmm.sandbox)).expect("a shared folder");
        husk(
            vmm,
            &[
                "run",
                "--kernel",
                "vmlinux",
                "-d",
                "--name",
                vmm.sandbox,
                "--disk",
                "1024",
                "-v",
                &volume,
                "busybox",
                "--",
                "sleep",
                "100000",
            ],
        );
        husk(
            vmm,
            &["cp", "small.tar", &format!("{}:/small.tar", vmm.sandbox)],
        );
    }
    // Each sandbox's own empty exec is subtracted from its workloads.
    let idle: Vec<f64> = vmms
        .iter()
        .map(|&vmm| median((0..5).map(|_| timed(vmm, "true")).collect()))
        .collect();
    println!("# volumes benchmark: {rounds} round(s), {mib} MiB, {SMALL_FILES} files of 1 KiB");
    for (vmm, idle) in vmms.iter().zip(&idle) {
        println!(
            "# an empty husk exec in {}: {idle:.3} s (subtracted)",
            vmm.sandbox
        );
    }
    // With a baseline, its sandbox does the same work as the other (the disk's
    // workloads too): a sandbox whose guest also filled its page cache from the disk
    // is not a fair peer of one that did not.
    let mut places = vec![("virtio-fs", 0, "/vol"), ("disk", 0, "/disk")];
    if vmms.len() > 1 {
        places.extend([("fs (base)", 1, "/vol"), ("disk (base)", 1, "/disk")]);
    }
    let mut results: Vec<[Vec<f64>; 3]> = vec![Default::default(); places.len()];
    let mib_f: f64 = mib.parse().expect("MiB is a number");
    // Pass 0 warms up and is not counted: the guests' first touch of their page cache
    // (each page a fault of the test host and KVM) made a first round up to 5x slower.
    for round in 0..=rounds {
        // The order turns each round, so no place always runs right after another.
        for k in 0..places.len() {
            let i = (k + round) % places.len();
            let (_, v, dir) = places[i];
            let vmm = vmms[v];
            let d = format!("{dir}/r{round}");
            let write = format!(
                "mkdir -p {d} && dd if=/dev/zero of={d}/big bs=1M count={mib} conv=fsync 2>/dev/null"
            );
            let read = format!("dd if={d}/big of=/dev/null bs=1M iflag=direct 2>/dev/null");
            let untar = format!("mkdir {d}/u && tar xf /small.tar -C {d}/u && sync");
            let [w, r, u] = [&write, &read, &untar].map(|script| timed(vmm, script) - idle[v]);
            // Each round starts where the first did: the files go (and the disk's
            // blocks back to the host, where fstrim exists), so neither the guests' nor
            // the test host's memory fills round after round.
            exec(
                vmm,
                &format!("rm -rf {d} && {{ fstrim {dir} 2>/dev/null; true; }}"),
            );
            let pass = match round {
                0 => "warm-up".to_string(),
                n => format!("round {n}"),
            };
            println!(
                "# {pass} {}: write {:.1} MiB/s, read {:.1} MiB/s, untar {u:.2} s",
                places[i].0,
                mib_f / w,
                mib_f / r
            );
            println!(
                "#   then available memory: {} MiB",
                meminfo_kib("MemAvailable:") / 1024
            );
            if round == 0 {
                continue;
            }
            results[i][0].push(w);
            results[i][1].push(r);
            results[i][2].push(u);
        }
    }
    for &vmm in vmms {
        husk(vmm, &["rm", "-f", vmm.sandbox]);
    }
    let mib: f64 = mib.parse().expect("MiB is a number");
    let med: Vec<[f64; 3]> = results.into_iter().map(|r| r.map(median)).collect();
    for (i, (name, _, _)) in places.iter().enumerate() {
        let [w, r, u] = med[i];
        println!(
            "{name:>9}: write {:7.1} MiB/s  read {:7.1} MiB/s  untar {u:6.2} s",
            mib / w,
            mib / r
        );
    }
    let ratio = |a: usize, b: usize, k: usize| med[b][k] / med[a][k];
    println!(
        "virtio-fs/disk speed: write {:.2}  read {:.2}  untar {:.2}",
        ratio(0, 1, 0),
        ratio(0, 1, 1),
        ratio(0, 1, 2)
    );
    if places.len() > 2 {
        for (what, a, b) in [("virtio-fs", 0, 2), ("disk", 1, 3)] {
            println!(
                "{what}/baseline speed: write {:.2}  read {:.2}  untar {:.2}",
                ratio(a, b, 0),
                ratio(a, b, 1),
                ratio(a, b, 2)
            );
        }
    }
}
