//! A sandbox with disks of the caller's: a read-write data disk and a read-only one,
//! files the caller made and keeps (husk changes neither their owner nor their mode).
//! The job's container reads their sizes, read-only flags and serials from the
//! guest's /sys and writes a line to the first sector of the data disk through a
//! device node of its own. When the caller is root the sandbox's VMM runs jailed, as a
//! uid of its own, on the two files its jail opened before dropping to that uid.
//!
//! With `--net tap=NAME,mac=MAC` the sandbox also has a network card of the caller's
//! on the existing TAP NAME (the guest's eth0), which a jailed VMM holds: attached as
//! root by its jail before the uid drop, so the TAP needs no owner. With
//! `--new-tap-mac MAC` it has one more card that names no TAP (the guest's next ethN):
//! for a jailed VMM, which cannot make one, the sandbox makes it for the jail's uid
//! (`huskj<slot>c<card>`), and it goes with the VM.
//!
//! ```sh
//! cargo run --release --example data_disks -- --rw DATA.img --ro SEED.img \
//!     [--kernel VMLINUX] [--console FILE] [--net tap=NAME,mac=MAC] [--new-tap-mac MAC]
//! ```
//! Prints the job's output (`vdb=SECTORS,RO,SERIAL`, `vdc=...`, `vdb-write=...`,
//! `eth0-mac=...`, `eth1-mac=...`), then `taps=...` (the cards' TAPs) and
//! `made-tap-owners=...` (the owner uid of each TAP made for the sandbox), read while
//! it ran, `vmm-uid=UID` (the uid the VMM ran the VM as, read from /proc while the
//! sandbox ran) and `exit=CODE`.

use std::path::{Path, PathBuf};

use husk::config::ConsoleConfig;
use husk::devices::virtio::block::BlockConfig;
use husk::devices::virtio::net::NetConfig;
use husk::{RunSpec, Sandbox, SandboxImage, Stdio};

/// The job: what the guest shows of the two disks, and a write to the data disk.
const JOB: &str = r#"
for d in vdb vdc; do
    echo "$d=$(cat /sys/block/$d/size),$(cat /sys/block/$d/ro),$(cat /sys/block/$d/serial)"
done
echo "eth0-mac=$(cat /sys/class/net/eth0/address 2>/dev/null)"
echo "eth1-mac=$(cat /sys/class/net/eth1/address 2>/dev/null)"
mknod /tmp/data b $(tr ':' ' ' < /sys/block/vdb/dev) 2>&1 \
    && printf 'written-in-the-guest' | dd of=/tmp/data bs=512 conv=notrunc,sync,fsync 2>&1 \
    && echo vdb-write=ok || echo vdb-write=failed
"#;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn disk(path: String, read_only: bool, id: &str) -> BlockConfig {
    BlockConfig {
        path: PathBuf::from(path),
        read_only,
        id: Some(id.into()),
        root: false,
        rate_limiter: None,
    }
}

/// The `Uid:` of process `pid` (its real uid).
fn uid_of(pid: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The uid this process's `husk vmm` child runs the VM as: a jailed VMM's child (the
/// process it jailed), else its own.
fn vmm_uid() -> Option<u32> {
    let me = std::process::id();
    let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).ok()?;
    let vmm = children.split_whitespace().find(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline.windows(5).any(|w| w == b"\0vmm\0")
    })?;
    let jailed = std::fs::read_to_string(format!("/proc/{vmm}/task/{vmm}/children")).ok()?;
    match jailed.split_whitespace().next() {
        Some(child) => uid_of(child),
        None => uid_of(vmm),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (rw, ro) = match (arg("--rw"), arg("--ro")) {
        (Some(rw), Some(ro)) => (rw, ro),
        _ => return Err("usage: data_disks --rw DATA.img --ro SEED.img [--kernel VMLINUX]".into()),
    };
    let kernel = match arg("--kernel") {
        Some(k) => PathBuf::from(k),
        None => husk::kernel::cached(None)?.vmlinux,
    };
    let store = husk::image::ImageStore::open(None)?;
    let image = SandboxImage::from_store(&store.ensure_busybox(false)?);
    let mut builder = Sandbox::builder(image, kernel)
        .disk(disk(rw, false, "data"))
        .disk(disk(ro, true, "seed"));
    if let Some(card) = arg("--net") {
        builder = builder.net(card.parse::<NetConfig>()?);
    }
    // A second card on a TAP made for the sandbox (no name given).
    if let Some(mac) = arg("--new-tap-mac") {
        builder = builder.net(format!("mac={mac}").parse::<NetConfig>()?);
    }
    if let Some(console) = arg("--console") {
        builder = builder.console(ConsoleConfig::File(Path::new(&console).to_path_buf()));
    }
    let sandbox = builder.start()?;
    let uid = vmm_uid();
    let taps = sandbox.tap_names()?;
    let made: Vec<&String> = taps.iter().filter(|t| t.starts_with("huskj")).collect();
    let owners: Vec<String> = made
        .iter()
        .map(|t| std::fs::read_to_string(format!("/sys/class/net/{t}/owner")).unwrap_or_default())
        .map(|o| o.trim().to_string())
        .collect();
    println!("taps={}", taps.join(","));
    println!("made-tap-owners={}", owners.join(","));
    let spec = RunSpec {
        args: vec!["sh".into(), "-c".into(), JOB.into()],
        ..RunSpec::default()
    };
    let status = sandbox.run(&spec, Stdio::inherit(false))?;
    sandbox.stop()?;
    println!("vmm-uid={}", uid.map_or("?".into(), |u| u.to_string()));
    println!("exit={}", status.docker_code());
    Ok(())
}
