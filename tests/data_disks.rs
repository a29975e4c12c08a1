//! A sandbox with disks of the caller's, started as root through the library (the
//! `data_disks` example): its VMM runs jailed as a uid of husk's range, on two root-owned
//! files of mode 0600 that the jail opened before its uid drop; the guest sees both
//! disks with their sizes, read-only flags and serials, its write reaches the data
//! disk, and neither file changes owner or mode (the read-only one not a byte). The
//! sandbox also has a card of the caller's on a root-owned TAP (`ip tuntap add`, this
//! machine's iproute2 carried in) that the jail holds: the guest sees it, and the TAP
//! stays. A second card names no TAP: the sandbox makes one for the jail's uid, which
//! the jailed VMM claims, and it goes with the VM. In the KVM test host.
mod common;

use std::path::{Path, PathBuf};

use common::run_sandbox_script;

/// The example binary cargo built next to husk (`cargo test` builds examples).
fn example() -> PathBuf {
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    let example = husk.with_file_name("examples").join("data_disks");
    assert!(
        example.is_file(),
        "{} not built: run `cargo build --release --examples`",
        example.display()
    );
    example
}

const SCRIPT: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp
mkdir tmp
echo "caller-uid=$(id -u)"
# A root-owned TAP of the caller's (no owner), for a card the jail holds.
iproute/ld.so --library-path iproute iproute/ip tuntap add ctap0 mode tap
head -c 8388608 /dev/zero > data.img
head -c 4194304 /dev/urandom > seed.img
chmod 600 data.img seed.img
seed_sum=$(sha256sum < seed.img)
./data_disks --rw "$PWD/data.img" --ro "$PWD/seed.img" --kernel vmlinux \
    --console "$PWD/console.log" --net tap=ctap0,mac=52:54:00:12:34:57 \
    --new-tap-mac 52:54:00:12:34:58
echo "example-status=$?"
echo "made-taps-after=$(ls /sys/class/net | grep '^huskj' | tr '\n' ' ')"
echo "tap-after=$(cat /sys/class/net/ctap0/owner 2>/dev/null || echo gone)"
echo "data-stat=$(stat -c %u:%g:%a data.img)"
echo "seed-stat=$(stat -c %u:%g:%a seed.img)"
echo "data-head=$(head -c 20 data.img)"
[ "$(sha256sum < seed.img)" = "$seed_sum" ] && echo "seed-unchanged=yes"
echo "jails-left=$(ls -A /run/husk/jails 2>/dev/null | grep -vx ids | tr '\n' ' ')"
echo "== console"; tail -n 20 console.log
"#;

#[test]
fn a_root_callers_disks_are_served_by_a_jailed_vmm_without_changing_the_files() {
    let example = example();
    let ip = common::tool_files("ip", "iproute", "iproute2");
    let mut files: Vec<(&Path, &str)> = ip.iter().map(|(p, n)| (p.as_path(), n.as_str())).collect();
    files.push((example.as_path(), "data_disks"));
    let out = run_sandbox_script(SCRIPT, &files);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    is("caller-uid", "0");
    is("example-status", "0");
    is("exit", "0");
    // 8 MiB and 4 MiB in 512-byte sectors; the seed disk read-only.
    is("vdb", "16384,0,data");
    is("vdc", "8192,1,seed");
    is("vdb-write", "ok");
    is("data-head", "written-in-the-guest");
    is("seed-unchanged", "yes");
    // The caller's card: the guest's eth0 with the MAC asked for, on the TAP the jail
    // held; the TAP stays the caller's (no owner) after the sandbox.
    is("eth0-mac", "52:54:00:12:34:57");
    is("tap-after", "-1");
    // The card without a TAP name: eth1, on a TAP made for the jail's uid, claimed by
    // the jailed VMM and gone with it.
    is("eth1-mac", "52:54:00:12:34:58");
    let taps = out.value("taps").unwrap_or_default();
    assert!(
        taps.starts_with("ctap0,huskj") && taps.ends_with("c1"),
        "{taps}\n{out}"
    );
    is("made-taps-after", "");
    is("data-stat", "0:0:600");
    is("seed-stat", "0:0:600");
    // The jail's uids start at 1,900,000,001.
    let uid: u64 = out
        .value("vmm-uid")
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    eprintln!(
        "the sandbox's VMM ran as uid {uid}; the guest saw vdb={} vdc={}, wrote {:?}",
        out.value("vdb").unwrap_or("?"),
        out.value("vdc").unwrap_or("?"),
        out.value("data-head").unwrap_or("?")
    );
    assert!(uid > 1_900_000_000, "{out}");
    is("made-tap-owners", &uid.to_string());
    is("jails-left", "");
}
