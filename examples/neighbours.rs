//! VMs side by side in one process, as an embedder runs them: each is started and waited
//! for on command while a thread watches the process's file descriptors. The device
//! tests boot a guest that floods its vsock device next to one that must start and run
//! normally (`tests/vsock_flood.rs`).
//!
//! ```sh
//! cargo run --release --example neighbours -- --kernel VMLINUX [--cmdline TEXT]
//!     [--memory MIB] [--timeout SECS] < commands
//! ```
//! Commands, one per line on standard input:
//! - `start NAME INITRD CONSOLE UDS [DISK]`: boot a VM (one vCPU) whose console goes to
//!   the file CONSOLE, with a vsock device (CID 3, Unix socket UDS) and DISK as its
//!   `vda` if given; prints `vm-NAME-started=yes` and `vm-NAME-reserved-fds=N` (its
//!   share of the descriptor limit), or `vm-NAME-start-error=...`;
//! - `wait NAME`: wait for that VM to end (stopping it after the timeout); prints
//!   `vm-NAME-exit=...` (`ok` for a guest reboot);
//! - `fds LABEL`: print `fds-LABEL=N`, the descriptors open now.
//!
//! At start it prints `nofile-soft=N` (after husk raised it) and `fds-at-start=N`; at
//! the end of input `fds-max=N`, the most descriptors seen open at once (sampled every
//! 2 ms for the whole run).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use husk::config::{ConsoleConfig, VmConfig};
use husk::vmm::{self, exit::VmExit, RunningVm};

/// Settings shared by every VM.
struct Settings {
    kernel: PathBuf,
    cmdline: String,
    memory_mib: u64,
    timeout: Duration,
}

fn parse_args() -> Result<Settings, String> {
    let mut settings = Settings {
        kernel: PathBuf::new(),
        cmdline: String::new(),
        memory_mib: 256,
        timeout: Duration::from_secs(600),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("bad {arg} {v:?}"));
        match arg.as_str() {
            "--kernel" => settings.kernel = value.into(),
            "--cmdline" => settings.cmdline = value,
            "--memory" => settings.memory_mib = number(&value)?,
            "--timeout" => settings.timeout = Duration::from_secs(number(&value)?),
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    if settings.kernel.as_os_str().is_empty() {
        return Err("--kernel is required".into());
    }
    Ok(settings)
}

/// Descriptors open in this process now. One count at a time: each holds a descriptor
/// of its own on /proc/self/fd while it reads, which another count would see.
fn open_fds() -> usize {
    static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Keeps the highest descriptor count in `max` until `stop` is set.
fn watch_fds(max: Arc<AtomicUsize>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            max.fetch_max(open_fds(), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

fn vm_config(settings: &Settings, args: &[&str]) -> Result<VmConfig, String> {
    let [initrd, console, uds, disk @ ..] = args else {
        return Err("start needs NAME INITRD CONSOLE UDS [DISK]".into());
    };
    let vsock = format!("cid=3,uds={uds}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let disks = disk
        .iter()
        .map(|d| format!("path={d}").parse().map_err(|e| format!("{e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VmConfig {
        initrd: Some(PathBuf::from(initrd)),
        cmdline: settings.cmdline.clone(),
        memory_mib: settings.memory_mib,
        console: ConsoleConfig::File(PathBuf::from(console)),
        vsock: Some(vsock),
        disks,
        ..VmConfig::new(settings.kernel.clone())
    })
}

fn exit_text(report: vmm::RunReport) -> String {
    match report.outcome {
        Ok(VmExit::Reset) => "ok".into(),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("failed: {e}"),
    }
}

fn run_command(settings: &Settings, vms: &mut HashMap<String, RunningVm>, line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["start", name, rest @ ..] => match vm_config(settings, rest)
            .and_then(|c| vmm::start(&c).map_err(|e| husk::error_chain(&e)))
        {
            Ok(vm) => {
                println!("vm-{name}-started=yes");
                println!("vm-{name}-reserved-fds={}", vm.reserved_fds());
                vms.insert(name.to_string(), vm);
            }
            Err(e) => println!("vm-{name}-start-error={e}"),
        },
        ["wait", name] => match vms.remove(*name) {
            Some(vm) => println!(
                "vm-{name}-exit={}",
                exit_text(vm.wait_or_stop(settings.timeout))
            ),
            None => println!("vm-{name}-exit=no such VM"),
        },
        ["fds", label] => println!("fds-{label}={}", open_fds()),
        [] => {}
        _ => eprintln!("neighbours: unknown command {line:?}"),
    }
}

fn main() -> std::process::ExitCode {
    let settings = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("neighbours: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    husk::vmm::fd_limit::raise_soft_limit();
    println!("nofile-soft={}", husk::vmm::fd_limit::soft_limit());
    println!("fds-at-start={}", open_fds());
    let (max, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let watcher = watch_fds(max.clone(), stop.clone());
    let mut vms = HashMap::new();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        run_command(&settings, &mut vms, &line);
    }
    for (name, vm) in vms.drain() {
        println!(
            "vm-{name}-exit={}",
            exit_text(vm.wait_or_stop(Duration::ZERO))
        );
    }
    stop.store(true, Ordering::Release);
    let _ = watcher.join();
    println!("fds-max={}", max.load(Ordering::Relaxed));
    std::process::ExitCode::SUCCESS
}
