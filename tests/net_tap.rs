//! Integration tests of husk's virtio-net through the real path: TCP both ways between
//! the real guest kernel and the host over a TAP (one husk made, one a caller made and
//! a jail holds), with the guest's offloads on and off, and a jailed VMM's card on the
//! host kernel's vhost-net (`"vhost": true`). The scripts are the device tests' (`common/device_script.rs`).
mod common;

use std::path::Path;

use common::device_script::{run_device_script, script, GUEST_TOOL};
use common::{assets, run_script, testhost_module_files, Output, LOAD_MODULES};

/// Guest: configures eth0, receives a file from the host over TCP, then sends its own.
const NET_GUEST: &str = r#"
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
echo "guest-mac=$(cat /sys/class/net/eth0/address)"
echo "guest-net-features=$(cat /sys/class/net/eth0/device/features)"
head -c 1048576 /dev/urandom > /tmp/to-host
echo "guest-to-host-sha=$(sha256sum < /tmp/to-host | cut -d' ' -f1)"
nc -l -p 7001 > /tmp/from-host
echo "guest-from-host-sha=$(sha256sum < /tmp/from-host | cut -d' ' -f1)"
echo "guest-from-host-bytes=$(wc -c < /tmp/from-host)"
n=0
until nc -w 2 10.0.2.1 7002 < /tmp/to-host; do
    n=$((n + 1)); [ $n -gt 100 ] && break; sleep 0.5
done
echo "guest-to-host-attempts=$((n + 1))"
ping -c 1 -W 5 10.0.2.1 > /dev/null && echo "guest-ping-host=yes"
"#;

/// Host: in a network namespace of its own (`unshare -n`, gone when the script's
/// processes end), husk creates the TAP (`--net tap=`); the script finds it, gives it an
/// address, sends a file to the guest and receives one.
const NET_HOST: &str = r#"
export BOOT CMDLINE
echo "root-ns-links-before=$(echo $(ls /sys/class/net))"
cat > net-host.sh <<'NETNS_EOF'
# sysfs shows the namespace of whoever mounted it: remount it, privately.
mount --make-rprivate /
mount -t sysfs sysfs /sys
echo "netns-links-at-start=$(echo $(ls /sys/class/net))"
ip link set lo up
head -c 1048576 /dev/urandom > to-guest
# The listener's stdin stays open (a FIFO held by fd 3) so it only ends when the guest
# has sent everything; with stdin at EOF it would half-close first and the guest's nc
# would stop as soon as it saw that, before its data had left.
mkfifo keep-open
timeout 600 nc -l -p 7002 < keep-open > from-guest &
listener=$!
exec 3> keep-open
START_VM
ip addr add 10.0.2.1/24 dev "$tap"
ip link set "$tap" up
n=0
until nc -w 2 10.0.2.15 7001 < to-guest; do
    kill -0 $husk 2>/dev/null || break
    n=$((n + 1)); [ $n -gt 600 ] && break; sleep 0.5
done
AFTER_SEND
wait $husk
status=$?
echo "husk-status=$status"
[ $status = 0 ] || kill $listener 2>/dev/null
wait $listener
exec 3>&-
echo "to-guest-sha=$(sha256sum < to-guest | cut -d' ' -f1)"
echo "from-guest-sha=$(sha256sum < from-guest | cut -d' ' -f1)"
echo "from-guest-bytes=$(wc -c < from-guest)"
echo "tap-exists-after=$(test -e "/sys/class/net/$tap" && echo yes || echo no)"
NETNS_EOF
unshare -n -m sh net-host.sh
echo "root-ns-links-after=$(echo $(ls /sys/class/net))"
"#;

/// How the plain TCP tests start the VM: `husk boot` makes the TAP (`--net tap=`), and
/// the script finds it.
const HUSK_MAKES_THE_TAP: &str = r#"
$BOOT --cmdline "$CMDLINE" --net tap=,mac=52:54:00:12:34:56 &
husk=$!
tap=
n=0
while [ -z "$tap" ] && [ $n -lt 600 ] && kill -0 $husk 2>/dev/null; do
    tap=$(ls /sys/class/net | grep '^husk' | head -n 1)
    n=$((n + 1)); sleep 0.1
done
echo "tap-name=$tap"
"#;

/// The TCP host script with the VM started by `start_vm` (which sets `husk` and `tap`)
/// and `after_send` run once the host's file reached the guest.
fn net_host(start_vm: &str, after_send: &str) -> String {
    NET_HOST
        .replace("START_VM\n", start_vm)
        .replace("AFTER_SEND\n", after_send)
}

#[test]
fn tcp_over_husk_created_tap_moves_files_both_ways_and_tap_vanishes() {
    let out = run_device_script(NET_GUEST, &net_host(HUSK_MAKES_THE_TAP, ""));
    // The guest negotiated checksum and TSO offloads both ways and merged RX buffers
    // (virtio feature bits 0, 1, 7, 11 and 15 of the string Linux shows).
    let features = out.value("guest-net-features").unwrap_or_default();
    let bits: Vec<char> = features.chars().collect();
    assert!(
        [0, 1, 7, 11, 15].iter().all(|&b| bits.get(b) == Some(&'1')),
        "{out}"
    );
    check_tcp_both_ways(&out);
}

/// The guest's driver told not to use its offloads when sending (`virtio_net.csum=0
/// virtio_net.gso=0`: every frame checksummed and segmented by the guest). The
/// register pages stay unmapped here (`HUSK_MMIO_WINDOW=0`): every register read exits
/// to husk, which answers it from the same page.
#[test]
fn tcp_over_a_tap_moves_files_both_ways_when_the_guest_sends_without_offloads() {
    let host = format!(
        "export HUSK_MMIO_WINDOW=0\nCMDLINE=\"virtio_net.csum=0 virtio_net.gso=0 $CMDLINE\"\n{}",
        net_host(HUSK_MAKES_THE_TAP, "")
    );
    let out = run_device_script(NET_GUEST, &host);
    check_tcp_both_ways(&out);
}

/// A jailed `husk vmm` (uid 1000, from a config file) on a TAP the caller made
/// (root-owned, `ip tuntap add`, this machine's iproute2 carried in): the jail attaches
/// to it as root before its uid drop (`--hold-tap`); the card uses that TAP.
const JAIL_HOLDS_THE_TAP: &str = r#"
iproute/ld.so --library-path iproute iproute/ip tuntap add ctap0 mode tap
tap=ctap0
echo "tap-name=$tap"
echo "tap-owner-before=$(cat /sys/class/net/ctap0/owner)"
mkdir jnet && chown 1000:1001 jnet
cat > jnet/vm.json <<VM_EOF
{"boot-source": {"kernel_image_path": "$PWD/vmlinux", "initrd_path": "$PWD/guest.cpio",
  "boot_args": "$CMDLINE"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
 "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "ctap0",
  "guest_mac": "52:54:00:12:34:56"VHOST}]}
VM_EOF
ln -s jnet/console.log console.log
./husk vmm --no-api --config-file "$PWD/jnet/vm.json" --console "$PWD/jnet/console.log" VHOST_FLAG\
    --id held-tap --jail /tmp/husk-jail-tap --uid 1000 --gid 1001 --bind "$PWD/vmlinux" \
    --bind "$PWD/guest.cpio" --bind "$PWD/jnet:rw" --hold-tap ctap0 2> jvmm.err &
husk=$!
"#;

/// What the jailed run records once traffic has flowed: the uid of the process the
/// supervisor jailed, and how many vhost-net workers it owns: tasks named `vhost-PID`
/// (since Linux 6.4 threads of the owner's process, kernel threads before), looked for
/// in the whole of /proc.
const RECORD_JAIL_UID: &str = r#"
jailed=$(tr -d ' ' < /proc/$husk/task/$husk/children)
echo "vmm-uid=$(awk '/^Uid:/{print $2}' /proc/$jailed/status)"
echo "vhost-workers=$(cat /proc/[0-9]*/task/*/comm 2>/dev/null | grep -c "^vhost-$jailed\$")"
"#;

/// The jailed TAP test's run: the card on husk's device thread, or with `vhost` on the
/// host kernel's vhost-net (whose modules the test host then loads first).
fn jailed_tcp(vhost: bool) -> Output {
    let ip = common::tool_files("ip", "iproute", "iproute2");
    let modules = if vhost {
        testhost_module_files(&["vhost_net"])
    } else {
        Vec::new()
    };
    let mut files: Vec<(&Path, &str)> = ip
        .iter()
        .chain(&modules)
        .map(|(p, n)| (p.as_path(), n.as_str()))
        .collect();
    let assets = assets();
    files.extend(assets.files());
    files.push((Path::new(GUEST_TOOL), "husk-guest-tool"));
    let start_vm = JAIL_HOLDS_THE_TAP
        .replace("VHOST_FLAG", if vhost { "--vhost-net " } else { "" })
        .replace("VHOST", if vhost { r#", "vhost": true"# } else { "" });
    let load = if vhost { LOAD_MODULES } else { "" };
    let host = load.to_string()
        + &net_host(&start_vm, RECORD_JAIL_UID).replace(
            "echo \"tap-exists-after=",
            "echo \"tap-owner-after=$(cat /sys/class/net/ctap0/owner)\"\n\
             echo \"jail-dir-left=$(test -e /tmp/husk-jail-tap && echo yes || echo no)\"\n\
             echo \"jvmm-err=$(cat jvmm.err)\"\n\
             echo \"tap-exists-after=",
        );
    let out = run_script(&script(NET_GUEST, &host), &files);
    assert_eq!(out.value("module-failed"), None, "{out}");
    out
}

#[test]
fn tcp_over_a_callers_tap_held_by_a_jailed_vmm_moves_files_both_ways_and_the_tap_stays() {
    let out = jailed_tcp(false);
    assert_eq!(out.value("vhost-workers"), Some("0"), "{out}");
    check_jailed_tcp(&out);
}

/// The same jailed VMM with its card on the host kernel's vhost-net (`"vhost": true`):
/// the jail's /dev/vhost-net, the ioctls its filters allow, the kernel's worker for the
/// VMM, the guest's offloads (checksums and TSO both ways, merged RX buffers,
/// EVENT_IDX: virtio feature bits 0, 1, 7, 11, 15 and 29).
#[test]
fn tcp_through_vhost_net_in_a_jailed_vmm_moves_files_both_ways_with_offloads() {
    let out = jailed_tcp(true);
    assert_eq!(out.value("vhost-workers"), Some("1"), "{out}");
    let features = out.value("guest-net-features").unwrap_or_default();
    let bits: Vec<char> = features.chars().collect();
    assert!(
        [0, 1, 7, 11, 15, 29]
            .iter()
            .all(|&b| bits.get(b) == Some(&'1')),
        "{out}"
    );
    check_jailed_tcp(&out);
}

/// What a jailed run on the caller's TAP checks: the VMM's uid, the traffic, and that
/// the TAP stays the caller's while the jail goes.
fn check_jailed_tcp(out: &Output) {
    assert_eq!(out.value("vmm-uid"), Some("1000"), "{out}");
    assert_eq!(out.value("tap-name"), Some("ctap0"), "{out}");
    check_traffic(out);
    // The caller's TAP stays, with its owner (none: -1).
    assert_eq!(out.value("tap-exists-after"), Some("yes"), "{out}");
    assert_eq!(out.value("tap-owner-before"), Some("-1"), "{out}");
    assert_eq!(out.value("tap-owner-after"), Some("-1"), "{out}");
    assert_eq!(out.value("jail-dir-left"), Some("no"), "{out}");
    assert_eq!(out.value("husk-processes-left"), Some("0"), "{out}");
}

/// What both TCP tests on a TAP husk made check: the files arrived whole both ways,
/// and nothing is left.
fn check_tcp_both_ways(out: &Output) {
    assert!(
        out.value("tap-name").is_some_and(|t| t.starts_with("husk")),
        "{out}"
    );
    check_traffic(out);
    assert_eq!(out.value("tap-exists-after"), Some("no"), "{out}");
    assert_eq!(out.value("husk-taps-left"), Some("0"), "{out}");
    assert_eq!(out.value("husk-processes-left"), Some("0"), "{out}");
}

/// The VM ended cleanly, the files arrived whole both ways, the guest reached the
/// host, and the script's network namespace left the host's alone.
fn check_traffic(out: &Output) {
    assert_eq!(out.value("husk-status"), Some("0"), "{out}");
    assert_eq!(out.value("guest-done"), Some("yes"), "{out}");
    assert_eq!(out.value("guest-mac"), Some("52:54:00:12:34:56"), "{out}");
    assert_eq!(out.value("guest-from-host-bytes"), Some("1048576"), "{out}");
    assert_eq!(
        out.value("guest-from-host-sha"),
        out.value("to-guest-sha"),
        "{out}"
    );
    assert_eq!(
        out.value("from-guest-sha"),
        out.value("guest-to-host-sha"),
        "{out}"
    );
    assert_eq!(out.value("guest-ping-host"), Some("yes"), "{out}");
    assert_eq!(out.value("netns-links-at-start"), Some("lo"), "{out}");
    assert_eq!(
        out.value("root-ns-links-after"),
        out.value("root-ns-links-before"),
        "{out}"
    );
}
