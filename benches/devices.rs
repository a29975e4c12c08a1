//! Device benchmark: guest-side throughput of virtio-blk (sequential O_DIRECT write and
//! read), virtio-vsock (a stream each way) and virtio-net (TCP over a TAP, each way) in
//! husk, against QEMU `microvm` with the same devices and against the host doing the
//! same work directly (file I/O, loopback TCP) as the upper bound; and husk's VM exits
//! per MiB moved; and small requests next to them: 512-byte O_DIRECT reads and writes
//! per second on blk, 64-byte round trips per second (to an echo in the guest) on vsock
//! and net. husk is `husk vmm --config-file`, the process sandboxes run their VM in,
//! with its syscall filters; beside it, interleaved in the same rounds, the same with
//! `--no-seccomp` (what the filters cost) and `husk boot` (the VM in the caller's own
//! process). On net, when the test host has vhost-net, both husk (`"vhost": true`)
//! and QEMU (`vhost=on`) run once more with their cards on the kernel's data path, and
//! are compared with each other and with the user-space columns. Beside each ratio of
//! medians, the median of each round's own ratio (a
//! round's runs follow each other; drift of the test host between rounds cancels out).
//! And for husk and QEMU alike, KVM's own counters of the VM over each phase
//! (`devices/kvm_stats.rs`): exits, interrupts injected, second-level page faults,
//! halts and the share of time the vCPU was halted (the guest waiting for the host
//! side), with the VMM process's page faults and the host's idle share, per MiB or per
//! round trip. Prints numbers and ratios; asserts nothing about time.
//!
//! Like `benches/boot.rs`, it re-runs itself with `--inner` inside the KVM test host
//! when this machine has no usable hardware KVM. Inside, `husk-guest-tool` moves the
//! bytes on both sides. Absolute numbers in the test host are emulated (~10x slower);
//! compare the ratios, which come from one test host boot.
//!
//! Environment: `HUSK_BENCH_ROUNDS` (default 1), `HUSK_BENCH_MIB` (64),
//! `HUSK_BENCH_ONLY` (device families to run, comma-separated from `blk,vsock,net`;
//! default all: `HUSK_BENCH_ONLY=vsock` iterates on one family in a third of the time),
//! `HUSK_BENCH_SECCOMP` (`0` skips the seccomp on/off comparison; default `1`),
//! `HUSK_BENCH_BASELINE` (path of another `husk` binary, e.g. one built from `main`:
//! it runs as one more VMM, interleaved with the others, and gets a table of its own, so
//! a change is measured against its base in one test-host boot; a script that runs
//! `./husk` with an environment of its own, such as `HUSK_MMIO_WINDOW=0`, measures a
//! switch of the same binary), `HUSK_TEST_HOST` (auto|always|never),
//! `HUSK_TESTHOST_SMP` (the test host's CPUs, default 1: the guest's vCPU, the device
//! side and the host-side peer then take turns on one CPU, and the ratios compare their
//! CPU time per byte; with 2 the device side runs beside the vCPU, as on a real host,
//! but the emulator fails far more often, scripts/README.md).
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;
use common::{env_or, hardware_kvm, median};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Instant;

#[path = "devices/kvm_stats.rs"]
mod kvm_stats;
#[path = "devices/report.rs"]
mod report;
use report::{report, report_beside, report_pair, Figures, KVM_ROW};
#[path = "devices/support.rs"]
mod support;
use kvm_stats::{phase, Sampler, Samples};
use support::{
    boot_vmm, finish_host_tool, finish_host_tool_beside, host_tool, host_tool_beside, sh,
    spawn_host_tool, RunningVm, Values, Vmm,
};

fn main() {
    common::dispatch(outer, inner);
}

fn stdout_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn outer() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let kernel = husk::kernel::cached(None)
        .unwrap_or_else(|e| panic!("the device benchmark needs the guest kernel: {e}"))
        .vmlinux;
    let initrd = stdout_of(&mut Command::new(root.join("scripts/build-test-initramfs")))
        .expect("scripts/build-test-initramfs builds the test initramfs");
    let me = std::env::current_exe().expect("the bench binary knows its path");
    let files = [
        (me, "bench"),
        (PathBuf::from(env!("CARGO_BIN_EXE_husk")), "husk"),
        (
            PathBuf::from(env!("CARGO_BIN_EXE_husk-guest-tool")),
            "husk-guest-tool",
        ),
        (kernel, "vmlinux"),
        (
            PathBuf::from(initrd.lines().last().unwrap_or_default()),
            "initrd.cpio",
        ),
    ];
    let rounds = env_or("HUSK_BENCH_ROUNDS", "1");
    let mib = env_or("HUSK_BENCH_MIB", "64");
    let only = env_or("HUSK_BENCH_ONLY", "blk,vsock,net");
    let seccomp = env_or("HUSK_BENCH_SECCOMP", "1");
    let inner_args = ["--inner", &rounds, &mib, &only, &seccomp];
    let baseline = std::env::var_os("HUSK_BENCH_BASELINE").map(PathBuf::from);
    let files: Vec<(PathBuf, &str)> = files
        .into_iter()
        .chain(baseline.map(|b| (b, "husk-base")))
        .collect();
    let status = if hardware_kvm() {
        let dir = std::env::temp_dir().join(format!("husk-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the bench dir");
        for (src, name) in &files {
            std::os::unix::fs::symlink(src, dir.join(name)).expect("symlink into the bench dir");
        }
        let peer = root.join("scripts/testhost.d");
        let path = format!("{}:{}", peer.display(), env_or("PATH", ""));
        let status = Command::new(dir.join("bench"))
            .args(inner_args)
            .current_dir(&dir)
            .env("PATH", path)
            .status();
        let _ = std::fs::remove_dir_all(&dir);
        status
    } else {
        println!("# /dev/kvm is missing or paravirtual: running inside the KVM test host");
        let mut cmd = Command::new(root.join("scripts/testhost"));
        cmd.args(["run", "--with-qemu", "--timeout", "3600"]);
        for (src, name) in &files {
            cmd.args(["--file", &format!("{}:{name}", src.display())]);
        }
        // QEMU's vsock needs /dev/vhost-vsock: the test host kernel's modules, if we can
        // get them; without them only blk and net are compared. vhost-net's likewise, for
        // both VMMs' cards on it (without them those columns are left out).
        match stdout_of(&mut Command::new(root.join("scripts/vhost-vsock-modules"))) {
            Some(dir) => cmd.args(["--dir", &format!("{dir}:vhost")]),
            None => &mut cmd,
        };
        let net = stdout_of(Command::new(root.join("scripts/testhost-modules")).arg("vhost_net"));
        if let Some(dir) = net {
            cmd.args(["--dir", &format!("{dir}:vhostnet")]);
        }
        cmd.args(["--", "./bench"]).args(inner_args);
        // The emulator under the test host sometimes freezes it (exit 125, see
        // scripts/README.md): the rounds then run once more from the start, rather
        // than the bench failing.
        let mut status = cmd.status();
        if status.as_ref().is_ok_and(|s| s.code() == Some(125)) {
            println!("# the test host failed (an emulator fault?): running the rounds again");
            status = cmd.status();
        }
        status
    };
    let status = status.expect("the benchmark runner starts");
    assert!(status.success(), "the device benchmark failed: {status}");
}

/// The guest script: runs the workload named by `bench=` on the kernel command line.
const GUEST_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin 2>/dev/null
for arg in $(cat /proc/cmdline); do
    case $arg in bench=*) w=${arg#bench=} ;; mib=*) mib=${arg#mib=} ;; esac
done
t=husk-guest-tool
case $w in
blk)
    $t write-file /dev/vda --bytes ${mib}M --direct --no-check | sed 's/^/guest-/'
    $t read-file /dev/vda --bytes ${mib}M --direct --no-check | sed 's/^/guest-/'
    $t write-file /dev/vda --bytes 1M --direct --no-check --block 512 | sed 's/^/guest-small-/'
    $t read-file /dev/vda --bytes 1M --direct --no-check --block 512 | sed 's/^/guest-small-/'
    ;;
vsock)
    $t vsock-listen 5000 --recv ${mib}M --send ${mib}M --no-check | sed 's/^/guest-/'
    $t vsock-listen 5001 --echo | sed 's/^/guest-/'
    ;;
net)
    ip link set lo up
    ip addr add 10.0.2.15/24 dev eth0
    ip link set eth0 up
    $t tcp-listen 7001 --no-check | sed 's/^/guest-/'
    $t tcp-connect 10.0.2.1 7002 --send ${mib}M --half-close --no-check --patience 120 \
        | sed 's/^/guest-/'
    $t tcp-listen 7003 --echo | sed 's/^/guest-/'
    ;;
esac
echo guest-bench-done=yes
reboot -f
"#;

/// Prepares the test host: the guest initramfs with the tool and script, the disk image,
/// a TAP both VMMs attach to, vhost-vsock and vhost-net if their modules came along.
/// Whether each of those two is there.
fn setup(mib: u64) -> (bool, bool) {
    std::fs::write("g-guest.sh", GUEST_SCRIPT).expect("write the guest script");
    let prepared = sh(&format!(
        "set -e
        mkdir -p g/bin && cp husk-guest-tool g/bin/ && mv g-guest.sh g/bench.sh
        chmod 755 g/bench.sh
        (cd g && find bin bench.sh | cpio -o -H newc 2>/dev/null) > extra.cpio
        cat initrd.cpio extra.cpio > guest.cpio
        head -c {bytes} /dev/zero > disk.img
        tunctl -t hb0 > /dev/null
        ip addr add 10.0.2.1/24 dev hb0
        ip link set hb0 up
        ip link set lo up
        mkdir -p qwrap
        printf '#!/bin/sh\n# shellcheck disable=SC2086\nexec %s \"$@\" $HUSK_BENCH_QEMU_EXTRA\n' \
            \"$(command -v qemu-system-x86_64)\" > qwrap/qemu-system-x86_64
        chmod 755 qwrap/qemu-system-x86_64",
        bytes = mib << 20
    ));
    assert!(prepared, "preparing the test host failed");
    // In the test host the modules come along in vhost/ (skipped when the test host's
    // kernel already has one loaded); on a hardware KVM machine the device may already
    // be there.
    let vhost = sh("if [ -f vhost/load-order ]; then
            for m in $(cat vhost/load-order); do
                grep -q \"^$m \" /proc/modules || insmod vhost/$m.ko || exit 1
            done
        fi
        test -c /dev/vhost-vsock");
    let vhost_net = sh("if [ -f vhostnet/load-order ]; then
            for m in $(cat vhostnet/load-order); do
                [ -d /sys/module/$m ] || insmod vhostnet/$m.ko || exit 1
            done
        fi
        test -c /dev/vhost-net");
    println!(
        "# both VMMs' cards on vhost-net too: {}",
        if vhost_net { "yes" } else { "no" }
    );
    println!(
        "# QEMU vsock through vhost-vsock: {}",
        if vhost {
            "yes"
        } else {
            "no (blk and net only)"
        }
    );
    (vhost, vhost_net)
}

fn mibps(v: &Values, key: &str) -> f64 {
    v.get(key).and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

/// Runs one workload in one VMM and returns its figures.
fn run_workload(vmm: Vmm, workload: &str, mib: u64, kvm: bool) -> Figures {
    let size = format!("{mib}M");
    let mut host: Option<Child> = None;
    let client: Option<Vec<String>> = match (workload, vmm) {
        ("vsock", vmm) if vmm.is_husk() => {
            Some(["uds-connect", "v.sock", "5000"].map(String::from).to_vec())
        }
        ("vsock", Vmm::Qemu) => Some(["vsock-connect", "3", "5000"].map(String::from).to_vec()),
        ("net", _) => {
            host = Some(spawn_host_tool(&["tcp-listen", "7002", "--no-check"]));
            Some(
                ["tcp-connect", "10.0.2.15", "7001", "--half-close"]
                    .map(String::from)
                    .to_vec(),
            )
        }
        _ => None,
    };
    let sampler = kvm.then(Sampler::start);
    let mut vm = boot_vmm(vmm, workload, mib);
    let mut fig = Figures::new();
    // Phases to cut out of KVM's counters: (row, start, end, what a count is divided by).
    let mut phases = Vec::new();
    if let Some(mut args) = client {
        args.extend(["--send", &size, "--no-check", "--patience", "600"].map(String::from));
        if workload == "vsock" {
            args.extend(["--recv", &size].map(String::from));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = host_tool_beside(&refs, &mut vm);
        let streamed = Instant::now();
        let cmd = refs[0];
        fig.insert("to guest".into(), mibps(&out, &format!("{cmd}-send-mibps")));
        let recv_secs = match workload {
            "vsock" => {
                let secs = mibps(&out, &format!("{cmd}-recv-secs"));
                let (from, end) = phase(streamed, secs);
                phases.push(("from guest, per MiB", from, end, mib as f64));
                fig.insert(
                    "from guest".into(),
                    mibps(&out, &format!("{cmd}-recv-mibps")),
                );
                secs
            }
            _ => 0.0,
        };
        let (_, sent) = phase(streamed, recv_secs);
        let (from, end) = phase(sent, mibps(&out, &format!("{cmd}-send-secs")));
        phases.push(("to guest, per MiB", from, end, mib as f64));
        let rr = round_trips(vmm, workload, &mut vm);
        let (from, end) = phase(Instant::now(), mibps(&rr, &format!("{cmd}-rr-secs")));
        phases.push(("round trips, per round trip", from, end, RR_COUNT as f64));
        fig.insert(RR_KEY.into(), mibps(&rr, &format!("{cmd}-rr-per-sec")));
    }
    let guest = vm.wait();
    if let Some(samples) = sampler.map(Sampler::finish) {
        kvm_rows(&mut fig, &samples, &phases);
    }
    if let Some(listener) = host.take() {
        let out = finish_host_tool_beside(listener, &mut vm);
        fig.insert("from guest".into(), mibps(&out, "tcp-listen-recv-mibps"));
    }
    match workload {
        "blk" => {
            fig.insert("write".into(), mibps(&guest, "guest-write-file-mibps"));
            fig.insert("read".into(), mibps(&guest, "guest-read-file-mibps"));
            let small_w = mibps(&guest, "guest-small-write-file-iops");
            fig.insert("512 B writes/s (O_DIRECT)".into(), small_w);
            let small_r = mibps(&guest, "guest-small-read-file-iops");
            fig.insert("512 B reads/s (O_DIRECT)".into(), small_r);
        }
        "vsock" => {
            // The guest's own clock: receive time starts at its first byte.
            fig.insert(
                "to guest (guest clock)".into(),
                mibps(&guest, "guest-vsock-listen-recv-mibps"),
            );
        }
        _ => {}
    }
    if let Some(exits) = vm.exits() {
        fig.insert("exits".into(), exits);
    }
    fig
}

/// The row of the 64-byte round trips.
const RR_KEY: &str = "64 B round trips/s";
/// How many round trips are timed.
const RR_COUNT: u32 = 2000;

/// KVM's counters over each phase, as rows `kvm PHASE: COUNTER`, divided by the
/// phase's MiB or round trips (the shares as they are).
fn kvm_rows(fig: &mut Figures, samples: &Samples, phases: &[(&str, Instant, Instant, f64)]) {
    for (name, from, end, per) in phases {
        let Some(counts) = samples.window(*from, *end) else {
            continue;
        };
        for (counter, value) in counts {
            // Shares (`... %`) stand as they are; counts are divided.
            let value = if counter.ends_with('%') {
                value
            } else {
                value / per
            };
            fig.insert(format!("{KVM_ROW}{name}: {counter}"), value);
        }
    }
}

/// 64-byte round trips from the host to the guest's echo (vsock port 5001, TCP port
/// 7003), once the stream is done.
fn round_trips(vmm: Vmm, workload: &str, vm: &mut RunningVm) -> Values {
    let args: &[&str] = match (workload, vmm) {
        ("vsock", vmm) if vmm.is_husk() => &["uds-connect", "v.sock", "5001"],
        ("vsock", Vmm::Qemu) => &["vsock-connect", "3", "5001"],
        _ => &["tcp-connect", "10.0.2.15", "7003"],
    };
    let mut args = args.to_vec();
    let count = RR_COUNT.to_string();
    args.extend(["--rr", &count, "--patience", "300"]);
    host_tool_beside(&args, vm)
}

/// The upper bound: the same tool doing the same work directly in the test host.
fn upper_bound(workload: &str, mib: u64) -> Figures {
    let size = format!("{mib}M");
    let mut fig = Figures::new();
    match workload {
        "blk" => {
            let w = host_tool(&["write-file", "bound.img", "--bytes", &size, "--no-check"]);
            let r = host_tool(&["read-file", "bound.img", "--bytes", &size, "--no-check"]);
            fig.insert("write".into(), mibps(&w, "write-file-mibps"));
            fig.insert("read".into(), mibps(&r, "read-file-mibps"));
            let _ = std::fs::remove_file("bound.img");
        }
        _ => {
            let listener = spawn_host_tool(&["tcp-listen", "7100", "--no-check", "--send", &size]);
            let c = host_tool(&[
                "tcp-connect",
                "127.0.0.1",
                "7100",
                "--send",
                &size,
                "--half-close",
                "--no-check",
            ]);
            let _ = finish_host_tool(listener);
            fig.insert("to guest".into(), mibps(&c, "tcp-connect-send-mibps"));
            fig.insert("from guest".into(), mibps(&c, "tcp-connect-recv-mibps"));
            let echo = spawn_host_tool(&["tcp-listen", "7101", "--echo"]);
            let count = RR_COUNT.to_string();
            let rr = host_tool(&["tcp-connect", "127.0.0.1", "7101", "--rr", &count]);
            let _ = finish_host_tool(echo);
            fig.insert(RR_KEY.into(), mibps(&rr, "tcp-connect-rr-per-sec"));
        }
    }
    fig
}

fn inner(args: &[String]) {
    let [rounds, mib, only, seccomp] = args else {
        panic!("usage: bench --inner ROUNDS MIB FAMILIES SECCOMP");
    };
    let families: Vec<&str> = only.split(',').map(str::trim).collect();
    let rounds: usize = rounds.parse().expect("rounds is a number");
    let mib: u64 = mib.parse().expect("MiB is a number");
    let (vhost, vhost_net) = setup(mib);
    let kvm = kvm_stats::available();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "# device benchmark: {rounds} round(s), {mib} MiB per direction, 1 vCPU, 256 MiB guest"
    );
    println!("# CPUs of the host the VMMs run on: {cpus}");
    println!("# husk = `husk vmm --config-file`, the process a sandbox's VM runs in, filters on");
    println!("# host = the same tool in the test host directly: file I/O on its RAM-backed");
    println!("#   root filesystem for blk, loopback TCP for vsock and net (no VM in the path)");
    println!("# exits = KVM_RUN returns to husk (MMIO, port I/O); ioeventfd kicks stay in KVM");
    let idle: Vec<f64> = (0..rounds)
        .map(|_| boot_vmm(Vmm::Husk, "idle", mib).finish_exits())
        .collect();
    let idle_exits = median(idle);
    println!("# husk exits of a boot without workload (baseline): {idle_exits:.0}");
    // Every VMM of a round, in an order that turns each round so that none always
    // runs first or right after the same other one (a change measured against its
    // base in one fixed order met a bias of its own).
    let mut vmms = vec![Vmm::Husk, Vmm::HuskBoot];
    if std::path::Path::new("husk-base").exists() {
        vmms.push(Vmm::HuskBase);
    }
    if seccomp != "0" {
        vmms.push(Vmm::HuskUnfiltered);
    }
    for workload in ["blk", "vsock", "net"] {
        if !families.contains(&workload) {
            continue;
        }
        let mut these = vmms.clone();
        if workload != "vsock" || vhost {
            these.push(Vmm::Qemu);
        }
        if workload == "net" && vhost_net {
            these.extend([Vmm::HuskVhost, Vmm::QemuVhost]);
            if vmms.contains(&Vmm::HuskBase) {
                these.push(Vmm::HuskBaseVhost);
            }
        }
        let mut runs: BTreeMap<&str, Vec<Figures>> = BTreeMap::new();
        let mut bound = Vec::new();
        for round in 0..rounds {
            let mut order = these.clone();
            order.rotate_left(round % these.len());
            for vmm in order {
                let figures = run_workload(vmm, workload, mib, kvm);
                let each: Vec<String> = figures
                    .iter()
                    .filter(|(k, _)| !k.starts_with(KVM_ROW))
                    .map(|(k, v)| format!("{k}={v:.1}"))
                    .collect();
                println!(
                    "# round {round} {workload} {}: {}",
                    vmm.label(),
                    each.join(", ")
                );
                runs.entry(vmm.label()).or_default().push(figures);
            }
            bound.push(upper_bound(workload, mib));
        }
        let none = Vec::new();
        let husk = runs.get(Vmm::Husk.label()).unwrap_or(&none);
        let qemu = runs.get(Vmm::Qemu.label()).unwrap_or(&none);
        report(workload, mib, husk, qemu, &bound, idle_exits);
        for other in [Vmm::HuskBoot, Vmm::HuskBase, Vmm::HuskUnfiltered] {
            if let Some(figures) = runs.get(other.label()) {
                report_beside(workload, other.label(), husk, figures, qemu);
            }
        }
        // Both cards on vhost-net: against each other, and against user-space QEMU.
        let (hv, qv) = (Vmm::HuskVhost.label(), Vmm::QemuVhost.label());
        if let (Some(h), Some(q)) = (runs.get(hv), runs.get(qv)) {
            report_pair(workload, (hv, h), (qv, q));
            report_pair(workload, (hv, h), (Vmm::Qemu.label(), qemu));
            report_pair(workload, (Vmm::Husk.label(), husk), (qv, q));
        }
        let bv = Vmm::HuskBaseVhost.label();
        if let (Some(h), Some(b)) = (runs.get(hv), runs.get(bv)) {
            report_pair(workload, (hv, h), (bv, b));
        }
    }
    // On a hardware KVM machine this ran in a temp dir on the real host: remove the TAP.
    sh("tunctl -d hb0 > /dev/null");
}
