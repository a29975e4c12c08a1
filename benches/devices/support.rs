//! Plumbing of the device benchmark: running commands and `husk-guest-tool`, reading
//! `key=value` lines, and booting husk or QEMU (through `husk-peer-qemu` and a wrapper
//! that appends the device options) with the devices a workload needs.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::env_or;

/// `key=value` lines of a tool's output or a guest console.
pub(crate) type Values = BTreeMap<String, String>;

pub(crate) fn parse_values(text: &str) -> Values {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs a shell snippet with inherited output; whether it succeeded.
pub(crate) fn sh(script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `./husk-guest-tool ARGS` with its stdout captured.
pub(crate) fn spawn_host_tool(args: &[&str]) -> Child {
    Command::new("./husk-guest-tool")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start husk-guest-tool {args:?}: {e}"))
}

/// Waits for a tool started by `spawn_host_tool` and parses what it printed.
pub(crate) fn finish_host_tool(child: Child) -> Values {
    let out = child
        .wait_with_output()
        .expect("waiting for husk-guest-tool works");
    if !out.status.success() {
        eprintln!("# husk-guest-tool failed: {}", out.status);
    }
    parse_values(&String::from_utf8_lossy(&out.stdout))
}

/// Runs `./husk-guest-tool ARGS` to its end.
pub(crate) fn host_tool(args: &[&str]) -> Values {
    finish_host_tool(spawn_host_tool(args))
}

/// How long a host tool may go on after its VM ended: it had finished its part by
/// then in any run whose guest did its own.
const AFTER_VM: Duration = Duration::from_secs(10);

/// Waits for a tool that talks to `vm`'s guest; once the VMM has been gone for
/// [`AFTER_VM`] the tool is killed. A guest lost to an emulator fault (whose VMM the
/// test host kills, scripts/README.md) never connects or answers, and the tool would
/// otherwise wait out its whole patience (minutes) before the bench went on.
pub(crate) fn finish_host_tool_beside(mut tool: Child, vm: &mut RunningVm) -> Values {
    let mut vm_ended: Option<Instant> = None;
    while tool
        .try_wait()
        .expect("polling husk-guest-tool works")
        .is_none()
    {
        if vm_ended.is_none() && vm.child.try_wait().is_ok_and(|s| s.is_some()) {
            vm_ended = Some(Instant::now());
        }
        if vm_ended.is_some_and(|t| t.elapsed() >= AFTER_VM) {
            eprintln!(
                "# the {:?} VMM ended and the host tool still waited: killed",
                vm.vmm
            );
            let _ = tool.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    finish_host_tool(tool)
}

/// Runs `./husk-guest-tool ARGS` against `vm`'s guest (see `finish_host_tool_beside`).
pub(crate) fn host_tool_beside(args: &[&str], vm: &mut RunningVm) -> Values {
    finish_host_tool_beside(spawn_host_tool(args), vm)
}

/// The VMM under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vmm {
    /// husk as sandboxes run it: `husk vmm --no-api --config-file`, a process of its own
    /// for the VM, with its syscall filters.
    Husk,
    /// The same without the filters (`--no-seccomp`): what they cost.
    HuskUnfiltered,
    /// The same as `Husk` with the baseline binary `husk-base` (`HUSK_BENCH_BASELINE`).
    HuskBase,
    /// `husk boot`: the VM in the command's own process, no filters (what a library
    /// caller of `husk::vmm::start` gets).
    HuskBoot,
    /// QEMU `microvm`.
    Qemu,
    /// `Husk` with its card on the host kernel's vhost-net (`"vhost": true`; net only).
    HuskVhost,
    /// QEMU with its card on vhost-net (`-netdev tap,vhost=on`; net only).
    QemuVhost,
    /// `HuskVhost` with the baseline binary (`HUSK_BENCH_BASELINE`; net only).
    HuskBaseVhost,
}

impl Vmm {
    /// Its column's name in the report.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Vmm::Husk => "husk",
            Vmm::HuskUnfiltered => "no-seccomp",
            Vmm::HuskBase => "baseline",
            Vmm::HuskBoot => "husk boot",
            Vmm::Qemu => "qemu",
            Vmm::HuskVhost => "husk vhost",
            Vmm::QemuVhost => "qemu vhost",
            Vmm::HuskBaseVhost => "baseline vhost",
        }
    }

    /// Whether its vsock is husk's (a Unix socket) rather than QEMU's vhost-vsock.
    pub(crate) fn is_husk(self) -> bool {
        !matches!(self, Vmm::Qemu | Vmm::QemuVhost)
    }
}

/// `vm.json` for `husk vmm --config-file`: the VM `husk boot` gets from the options
/// above, in Firecracker's configuration shape.
fn write_vmm_config(workload: &str, cmdline: &str, vhost: bool) {
    let here = std::env::current_dir().expect("the bench dir exists");
    let at = |name: &str| here.join(name).display().to_string();
    let mut config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": at("vmlinux"),
            "initrd_path": at("guest.cpio"),
            "boot_args": cmdline,
        },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 256 },
    });
    let device = match workload {
        "blk" => Some((
            "drives",
            serde_json::json!([{
                "drive_id": "d0", "path_on_host": at("disk.img"),
                "is_root_device": false, "is_read_only": false,
            }]),
        )),
        "net" => Some((
            "network-interfaces",
            serde_json::json!([{
                "iface_id": "eth0", "host_dev_name": "hb0", "guest_mac": "52:54:00:12:34:56",
            }]),
        )),
        "vsock" => Some((
            "vsock",
            serde_json::json!({ "guest_cid": 3, "uds_path": at("v.sock") }),
        )),
        _ => None,
    };
    if let Some((key, value)) = device {
        config[key] = value;
    }
    // Only when asked: a baseline binary from before the field would refuse it.
    if vhost {
        config["network-interfaces"][0]["vhost"] = true.into();
    }
    std::fs::write("vm.json", config.to_string()).expect("write vm.json");
}

/// A booted VMM running the guest script's workload.
pub(crate) struct RunningVm {
    child: Child,
    vmm: Vmm,
}

/// Starts `vmm` with the devices `workload` needs; the guest runs that workload.
pub(crate) fn boot_vmm(vmm: Vmm, workload: &str, mib: u64) -> RunningVm {
    // A VMM killed in an earlier run (a failed round) could not remove its socket.
    for leftover in ["console.log", "timings.json", "exit.json", "v.sock"] {
        let _ = std::fs::remove_file(leftover);
    }
    // No `--` in the command line: QEMU appends its virtio_mmio.device= entries after it.
    let cmdline = format!("quiet bench={workload} mib={mib} rdinit=/bench.sh");
    let common = [
        "--kernel",
        "vmlinux",
        "--initrd",
        "guest.cpio",
        "--memory",
        "256",
        "--console",
        "console.log",
        "--cmdline",
        &cmdline,
    ];
    let mut cmd = Command::new("timeout");
    match vmm {
        Vmm::HuskBoot => {
            let device: &[&str] = match workload {
                "blk" => &["--disk", "path=disk.img"],
                "net" => &["--net", "tap=hb0,mac=52:54:00:12:34:56"],
                "vsock" => &["--vsock", "cid=3,uds=v.sock"],
                _ => &[],
            };
            cmd.args([
                "600",
                "./husk",
                "boot",
                "--no-rng",
                "--timings",
                "timings.json",
            ])
            .args(common)
            .args(device);
        }
        Vmm::Husk | Vmm::HuskUnfiltered | Vmm::HuskBase | Vmm::HuskVhost | Vmm::HuskBaseVhost => {
            let vhost = matches!(vmm, Vmm::HuskVhost | Vmm::HuskBaseVhost);
            write_vmm_config(workload, &cmdline, vhost);
            let binary = match vmm {
                Vmm::HuskBase | Vmm::HuskBaseVhost => "./husk-base",
                _ => "./husk",
            };
            cmd.args(["600", binary, "vmm", "--no-api", "--config-file", "vm.json"])
                .args(["--console", "console.log", "--exit-report", "exit.json"]);
            if vmm == Vmm::HuskUnfiltered {
                cmd.arg("--no-seccomp");
            }
            if vhost {
                cmd.arg("--vhost-net");
            }
        }
        Vmm::Qemu | Vmm::QemuVhost => {
            // microvm lists virtio-mmio devices on the kernel command line only without
            // ACPI, which the guest kernel does not have anyway.
            let device = match workload {
                "blk" => "-drive id=d0,file=disk.img,format=raw,if=none -device virtio-blk-device,drive=d0",
                "net" => "-netdev tap,id=n0,ifname=hb0,script=no,downscript=no -device virtio-net-device,netdev=n0,mac=52:54:00:12:34:56",
                "vsock" => "-device vhost-vsock-device,guest-cid=3",
                _ => "",
            };
            let vhost = if vmm == Vmm::QemuVhost {
                device.replace("downscript=no", "downscript=no,vhost=on")
            } else {
                device.to_string()
            };
            let device = format!("-machine acpi=off {vhost}");
            // husk-peer-qemu runs `qemu-system-x86_64` from PATH: the wrapper in qwrap/
            // appends the device options.
            let here = std::env::current_dir().expect("the bench dir exists");
            let path = format!("{}/qwrap:{}", here.display(), env_or("PATH", ""));
            cmd.args(["600", "husk-peer-qemu"])
                .args(common)
                .env("PATH", path)
                .env("HUSK_BENCH_QEMU_EXTRA", device);
        }
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {vmm:?}: {e}"));
    RunningVm { child, vmm }
}

impl RunningVm {
    /// Waits for the VMM to end; the guest's `guest-*` values from its console.
    pub(crate) fn wait(&mut self) -> Values {
        let status = self.child.wait().expect("waiting for the VMM works");
        let console = std::fs::read_to_string("console.log").unwrap_or_default();
        let values = parse_values(&console);
        if !status.success() || !values.contains_key("guest-bench-done") {
            eprintln!("# {:?} run failed ({status}); console tail:", self.vmm);
            let lines: Vec<&str> = console.lines().collect();
            eprintln!("{}", lines[lines.len().saturating_sub(20)..].join("\n"));
        }
        values
    }

    /// husk's VM exits to the VMM during the run (all kinds), from `--timings` (or the
    /// exit report of `husk vmm`).
    pub(crate) fn exits(&self) -> Option<f64> {
        let file = match self.vmm {
            Vmm::HuskBoot => "timings.json",
            _ => "exit.json",
        };
        let text = std::fs::read_to_string(file).ok()?;
        let mut json: serde_json::Value = serde_json::from_str(&text).ok()?;
        if let Some(metrics) = json.get("metrics") {
            json = metrics.clone();
        }
        let exits = json.get("exits")?.as_object()?;
        Some(exits.values().filter_map(serde_json::Value::as_f64).sum())
    }

    /// Waits, then the exits.
    pub(crate) fn finish_exits(mut self) -> f64 {
        self.wait();
        self.exits().unwrap_or(f64::NAN)
    }
}
