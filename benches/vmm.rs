//! `husk vmm` benchmark: process spawn → API ready (the socket answers `GET /`), plain,
//! with `--no-seccomp`, and jailed (`--jail`, namespaces, binds, uid drop, cgroup leaf);
//! the resident memory of an API-ready `husk vmm` (no guest RAM yet) by kind (the
//! binary's code and constants, shared through the page cache; anonymous pages, its
//! own) and its PSS, alone and with several running at once; against QEMU
//! `microvm` started paused (`-S`) with its QMP socket, spawn → QMP greeting, in the same
//! invocation, interleaved round by round. Medians with min and max; ratios printed.
//! Asserts nothing about time.
//!
//! On hardware KVM it runs here (as root); otherwise inside the KVM test host
//! (`scripts/testhost run --with-qemu`). Environment: `HUSK_BENCH_ROUNDS` (default 20),
//! `HUSK_BENCH_KERNEL` (default: `husk kernel path`), `HUSK_TEST_HOST`.

#[path = "common/mod.rs"]
mod common;
#[path = "vmm/memory.rs"]
mod memory;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{env_or, median};
use memory::Memory;

fn main() {
    common::dispatch(outer, inner);
}

fn outer() {
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    let kernel = match std::env::var_os("HUSK_BENCH_KERNEL") {
        Some(path) => PathBuf::from(path),
        None => {
            husk::kernel::cached(None)
                .unwrap_or_else(|e| panic!("the vmm benchmark needs the guest kernel: {e}"))
                .vmlinux
        }
    };
    let rounds = env_or("HUSK_BENCH_ROUNDS", "20");
    let files = [(husk.as_path(), "husk"), (kernel.as_path(), "vmlinux")];
    common::run_inner("vmm", &files, &[&rounds]);
}

/// One start: time to ready, and resident memory once ready.
struct Sample {
    ready_ms: f64,
    memory: Memory,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many `husk vmm` run at once for the PSS of one among several.
const AT_ONCE: usize = 4;

/// The jailed VMM: the supervisor's only child.
fn jailed_child(supervisor: u32) -> u32 {
    let path = format!("/proc/{supervisor}/task/{supervisor}/children");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(supervisor)
}

fn stop(mut child: Child) {
    // SIGTERM through kill(1): the bench needs no libc of its own.
    drop(Command::new("kill").arg(child.id().to_string()).status());
    if child.wait().is_err() {
        drop(child.kill());
    }
}

/// Spawn `husk vmm` on `socket` with `extra` arguments.
fn spawn_husk(socket: &Path, extra: &[String]) -> Child {
    drop(std::fs::remove_file(socket));
    Command::new("./husk")
        .args(["vmm", "--api-sock"])
        .arg(socket)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn husk vmm")
}

/// Wait until the API on `socket` answers, at most until `start` + READY_TIMEOUT.
fn wait_ready(socket: &Path, start: Instant, what: &str) {
    let client = husk::api::client::ApiClient::new(socket, Some(READY_TIMEOUT));
    loop {
        if socket.exists() && client.call("GET", "/", None).is_ok() {
            return;
        }
        assert!(start.elapsed() < READY_TIMEOUT, "{what} never answered");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Spawn `husk vmm` with `extra` arguments and time until its API answers.
fn husk_once(run: &Path, extra: &[String], jailed: bool) -> Sample {
    let socket = run.join("api.sock");
    let start = Instant::now();
    let child = spawn_husk(&socket, extra);
    wait_ready(&socket, start, &format!("husk vmm {extra:?}"));
    let ready_ms = start.elapsed().as_secs_f64() * 1000.0;
    let pid = match jailed {
        true => jailed_child(child.id()),
        false => child.id(),
    };
    ready_sample(ready_ms, pid, child)
}

/// The memory of each of AT_ONCE `husk vmm` API-ready at the same time: their binary's
/// pages are shared, so PSS is what one more VMM costs.
fn husk_at_once(run: &Path) -> Vec<Memory> {
    let sockets: Vec<PathBuf> = (0..AT_ONCE)
        .map(|i| run.join(format!("api-{i}.sock")))
        .collect();
    let start = Instant::now();
    let children: Vec<Child> = sockets.iter().map(|s| spawn_husk(s, &[])).collect();
    for socket in &sockets {
        wait_ready(socket, start, "husk vmm (several at once)");
    }
    let memory = children.iter().map(|c| Memory::of(c.id())).collect();
    children.into_iter().for_each(stop);
    memory
}

/// The sample of a process `child` that was ready after `ready_ms`, its memory read
/// from `pid` (the child or, jailed, its VMM); then `child` is stopped.
fn ready_sample(ready_ms: f64, pid: u32, child: Child) -> Sample {
    let memory = Memory::of(pid);
    stop(child);
    Sample { ready_ms, memory }
}

/// Spawn QEMU microvm paused with a QMP socket; time until its greeting.
fn qemu_once(dir: &Path) -> Sample {
    let qmp = dir.join("qmp.sock");
    drop(std::fs::remove_file(&qmp));
    let start = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on"])
        .args([
            "-enable-kvm",
            "-cpu",
            "host",
            "-smp",
            "1",
            "-m",
            "128",
            "-S",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-kernel", "vmlinux"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn qemu-system-x86_64");
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&qmp) {
            break s;
        }
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "QEMU never opened its QMP socket"
        );
        std::thread::sleep(Duration::from_micros(200));
    };
    let mut greeting = String::new();
    BufReader::new(stream)
        .read_line(&mut greeting)
        .expect("read the QMP greeting");
    assert!(greeting.contains("QMP"), "not a QMP greeting: {greeting}");
    let ready_ms = start.elapsed().as_secs_f64() * 1000.0;
    let pid = child.id();
    ready_sample(ready_ms, pid, child)
}

fn report(name: &str, samples: &[Sample], base: f64) -> f64 {
    let ready: Vec<f64> = samples.iter().map(|s| s.ready_ms).collect();
    let memory: Vec<Memory> = samples.iter().map(|s| s.memory).collect();
    let min = ready.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ready.iter().copied().fold(0.0, f64::max);
    let med = median(ready);
    let ratio = match base.is_nan() {
        true => String::new(),
        false => format!("  {:.2}x QEMU", med / base),
    };
    println!("{name:<26} ready {med:8.2} ms (min {min:.2}, max {max:.2}){ratio}");
    println!("{:<26} {}", "", memory::describe(&memory::median(&memory)));
    med
}

fn inner(args: &[String]) {
    let rounds: usize = args
        .first()
        .and_then(|r| r.parse().ok())
        .expect("rounds as the first argument");
    let dir = std::env::current_dir().expect("a working folder");
    let run = dir.join("run");
    std::fs::create_dir_all(&run).expect("make the run folder");
    // The jail's uid must be able to make the API socket there.
    let chown = Command::new("chown").args(["4242:4242"]).arg(&run).status();
    assert!(chown.is_ok_and(|s| s.success()), "chown the run folder");
    let jail = |round: usize| -> Vec<String> {
        vec![
            "--jail".into(),
            format!("/tmp/husk-bench-jail-{round}"),
            "--uid".into(),
            "4242".into(),
            "--gid".into(),
            "4242".into(),
            "--bind".into(),
            format!("{}:rw", run.display()),
        ]
    };
    let (mut plain, mut unfiltered, mut jailed, mut qemu) = (vec![], vec![], vec![], vec![]);
    println!("# {rounds} rounds, interleaved");
    for round in 0..rounds {
        plain.push(husk_once(&run, &[], false));
        unfiltered.push(husk_once(&run, &["--no-seccomp".into()], false));
        jailed.push(husk_once(&run, &jail(round), true));
        qemu.push(qemu_once(&dir));
    }
    let together = husk_at_once(&run);
    println!("# spawn -> API ready (GET / answered; QEMU: QMP greeting); memory once ready");
    println!("# (jailed: the VMM inside; its supervisor outside is another process)");
    let base = report("qemu microvm -S (QMP)", &qemu, f64::NAN);
    report("husk vmm", &plain, base);
    report("husk vmm --no-seccomp", &unfiltered, base);
    report("husk vmm --jail", &jailed, base);
    println!("# {AT_ONCE} husk vmm API-ready at once (each one's; PSS: its share of the binary)");
    println!(
        "{:<26} {}",
        "husk vmm",
        memory::describe(&memory::median(&together))
    );
}
