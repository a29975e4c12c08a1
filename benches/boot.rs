//! Boot benchmark: `husk boot` against QEMU's `microvm` machine, same kernel, initramfs,
//! vCPUs and RAM, run alternately in one invocation. Prints numbers; asserts nothing.
//!
//! On hardware KVM it runs here; otherwise it copies itself, husk, the kernel and the
//! test initramfs into the KVM test host (`scripts/testhost run --with-qemu`) and runs
//! there. Absolute times inside the test host are ~10x native; compare the ratios.
//!
//! Environment: `HUSK_BENCH_ROUNDS` (default 5), `HUSK_BENCH_CPUS` (1),
//! `HUSK_BENCH_MEMORY` (128), `HUSK_BENCH_KERNEL` (default: `husk kernel path`),
//! `HUSK_TEST_HOST` (auto|always|never).
#![allow(
    unsafe_code,
    reason = "wait4 gives the child's rusage, which std does not"
)]
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;
use common::{env_or, median, run_stdout};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The line the test init prints first.
const INIT_MARKER: &str = "HUSK-TEST: init started";

fn main() {
    common::dispatch(outer, inner);
}

fn outer() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    let kernel = match std::env::var_os("HUSK_BENCH_KERNEL") {
        Some(path) => PathBuf::from(path),
        None => {
            husk::kernel::cached(None)
                .unwrap_or_else(|e| panic!("the boot benchmark needs the guest kernel: {e}"))
                .vmlinux
        }
    };
    println!("# kernel: {}", kernel.display());
    let initrd = run_stdout(&mut Command::new(root.join("scripts/build-test-initramfs")));
    let initrd = initrd.lines().last().unwrap_or_default().to_string();
    let rounds = env_or("HUSK_BENCH_ROUNDS", "5");
    let cpus = env_or("HUSK_BENCH_CPUS", "1");
    let memory = env_or("HUSK_BENCH_MEMORY", "128");
    let initrd = PathBuf::from(initrd);
    let files = [
        (husk.as_path(), "husk"),
        (kernel.as_path(), "vmlinux"),
        (initrd.as_path(), "initrd.cpio"),
    ];
    let args = ["husk", "vmlinux", "initrd.cpio", &rounds, &cpus, &memory];
    common::run_inner("boot", &files, &args);
}

/// One VMM run: when the init marker appeared, when the VMM exited, its max RSS.
struct Sample {
    to_init_ms: f64,
    to_exit_ms: f64,
    max_rss_kib: u64,
    timings: Option<serde_json::Value>,
}

/// Reads one number out of a sample.
type Metric = fn(&Sample) -> f64;

#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4 to get its rusage"
)]
fn run_once(cmd: &mut Command, timings: Option<&Path>) -> Sample {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut to_init_ms = f64::NAN;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if to_init_ms.is_nan() && line.contains(INIT_MARKER) {
            to_init_ms = start.elapsed().as_secs_f64() * 1000.0;
        }
    }
    let (status, max_rss_kib) = wait_with_rusage(child.id());
    let to_exit_ms = start.elapsed().as_secs_f64() * 1000.0;
    assert!(status == 0, "{cmd:?} exited with status {status}");
    assert!(
        !to_init_ms.is_nan(),
        "{cmd:?} never printed {INIT_MARKER:?}"
    );
    let timings = timings.map(|p| {
        let text = std::fs::read_to_string(p).expect("husk wrote its timings");
        serde_json::from_str(&text).expect("timings are JSON")
    });
    Sample {
        to_init_ms,
        to_exit_ms,
        max_rss_kib,
        timings,
    }
}

/// Wait for `pid`; returns its exit status and max RSS in KiB.
fn wait_with_rusage(pid: u32) -> (i32, u64) {
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: pid is our child, not yet waited for; status and usage are valid pointers.
    let ret = unsafe { libc::wait4(pid as i32, &mut status, 0, usage.as_mut_ptr()) };
    assert_eq!(
        ret,
        pid as i32,
        "wait4 failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: wait4 succeeded, so it filled `usage`.
    let usage = unsafe { usage.assume_init() };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (code, usage.ru_maxrss as u64)
}

fn inner(args: &[String]) {
    let [husk, kernel, initrd, rounds, cpus, memory] = args else {
        panic!("usage: bench --inner HUSK KERNEL INITRD ROUNDS CPUS MEMORY");
    };
    let abs = |p: &String| {
        let path = std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        path.to_string_lossy().into_owned()
    };
    let (husk, kernel, initrd) = (&abs(husk), &abs(kernel), &abs(initrd));
    let rounds: usize = rounds.parse().expect("rounds is a number");
    let cmdline = "quiet";
    let common = [
        "--kernel", kernel, "--initrd", initrd, "--cpus", cpus, "--memory", memory,
    ];
    println!("# boot benchmark: {rounds} rounds, {cpus} vCPU, {memory} MiB, cmdline '{cmdline}', test init (loop + 200 spawns, then reset)");
    let mut husk_runs = Vec::new();
    let mut qemu_runs = Vec::new();
    for round in 0..rounds {
        // Alternate which VMM goes first so neither always runs on a warm cache.
        let timings = std::env::temp_dir().join("husk-bench-timings.json");
        let mut husk_cmd = Command::new(husk);
        husk_cmd
            .arg("boot")
            .args(common)
            .args(["--cmdline", cmdline, "--timings"])
            .arg(&timings);
        let mut qemu_cmd = Command::new("husk-peer-qemu");
        qemu_cmd.args(common).args(["--cmdline", cmdline]);
        if round % 2 == 0 {
            husk_runs.push(run_once(&mut husk_cmd, Some(&timings)));
            qemu_runs.push(run_once(&mut qemu_cmd, None));
        } else {
            qemu_runs.push(run_once(&mut qemu_cmd, None));
            husk_runs.push(run_once(&mut husk_cmd, Some(&timings)));
        }
        let (h, q) = (
            husk_runs.last().expect("pushed"),
            qemu_runs.last().expect("pushed"),
        );
        println!(
            "round {round}: husk init {:.0} ms exit {:.0} ms | qemu init {:.0} ms exit {:.0} ms",
            h.to_init_ms, h.to_exit_ms, q.to_init_ms, q.to_exit_ms
        );
    }
    report(&husk_runs, &qemu_runs);
}

fn husk_field(runs: &[Sample], path: &[&str]) -> f64 {
    median(
        runs.iter()
            .filter_map(|r| {
                let mut v = r.timings.as_ref()?;
                for key in path {
                    v = v.get(key)?;
                }
                v.as_f64()
            })
            .collect(),
    )
}

fn report(husk: &[Sample], qemu: &[Sample]) {
    let m = |runs: &[Sample], f: Metric| median(runs.iter().map(f).collect());
    let rows: [(&str, Metric); 3] = [
        ("VMM start -> guest init marker (ms)", |s| s.to_init_ms),
        ("VMM start -> VMM exit (ms)", |s| s.to_exit_ms),
        ("max RSS incl. touched guest RAM (KiB)", |s| {
            s.max_rss_kib as f64
        }),
    ];
    println!();
    println!(
        "{:<40} {:>12} {:>14} {:>12}",
        "median", "husk", "qemu microvm", "qemu/husk"
    );
    for (name, f) in rows {
        let (h, q) = (m(husk, f), m(qemu, f));
        println!("{name:<40} {h:>12.1} {q:>14.1} {:>12.2}", q / h);
    }
    println!();
    println!("husk only (median of {} runs, from --timings):", husk.len());
    for (name, path) in [
        ("first KVM_RUN (ms)", &["timeline", "first_kvm_run_ms"][..]),
        (
            "first console byte (ms)",
            &["timeline", "first_console_byte_ms"],
        ),
        ("VM exit (ms)", &["timeline", "exit_ms"]),
        (
            "VMM CPU time outside guest mode (ms)",
            &["process", "vmm_cpu_ms"],
        ),
        (
            "  of which husk user code (ms)",
            &["process", "vmm_user_ms"],
        ),
        (
            "  of which kernel: syscalls, KVM exits (ms)",
            &["process", "vmm_system_ms"],
        ),
        ("VMM RSS excl. guest RAM (KiB)", &["process", "vmm_rss_kib"]),
        (
            "  of which anonymous, not shared (KiB)",
            &["process", "vmm_anon_kib"],
        ),
        ("exits: port in", &["exits", "io_in"]),
        ("exits: port out", &["exits", "io_out"]),
        ("exits: MMIO read", &["exits", "mmio_read"]),
        ("exits: MMIO write", &["exits", "mmio_write"]),
        ("exits: interrupted (kicks)", &["exits", "interrupted"]),
        ("exits: other", &["exits", "other"]),
    ] {
        println!("  {name:<40} {:>12.1}", husk_field(husk, path));
    }
}
