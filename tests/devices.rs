//! Integration tests of husk's virtio devices through the real path: the real guest
//! kernel boots with the test initramfs plus `husk-guest-tool` and a guest script, and
//! the host side of each device (image files, a TAP, the vsock Unix sockets) is checked
//! from the same script, inside the KVM test host where this machine's KVM is unusable.
//!
//! One boot per test, many checks per boot. The guest prints `guest-KEY=VALUE` lines on
//! its console (the script copies the console to stdout), the host part prints
//! `KEY=VALUE` lines, and the test asserts on them by name.
mod common;

use std::path::Path;

use common::{assets, run_script, Output};

/// The husk-guest-tool binary (static, so it runs in the guest and in the test host).
const GUEST_TOOL: &str = env!("CARGO_BIN_EXE_husk-guest-tool");

/// Start of every guest script: the pseudo filesystems and every busybox applet.
const GUEST_PRELUDE: &str = r#"export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin 2>/dev/null
echo guest-started=yes
"#;

/// End of every guest script: flush and reset, which makes husk exit 0.
const GUEST_END: &str = r#"
sync
echo guest-done=yes
reboot -f
"#;

/// Host side, first: packs the guest script and the tool into a second cpio archive
/// appended to the test initramfs (the kernel unpacks both).
const HOST_PRELUDE: &str = r#"
mkdir -p g/bin
cp husk-guest-tool g/bin/husk-guest-tool
chmod 755 g/bin/husk-guest-tool
(cd g && find bin guest.sh | cpio -o -H newc 2>/dev/null) > extra.cpio
cat initrd.cpio extra.cpio > guest.cpio
BOOT="./husk boot --kernel vmlinux --initrd guest.cpio --memory 256 --console console.log --timeout 480"
CMDLINE="quiet rdinit=/bin/busybox -- sh /guest.sh"
"#;

/// Host side, last: the console (without the serial line's carriage returns, and
/// ended by a line break: a VMM killed mid-line leaves its last line open), then what
/// is left behind.
const HOST_END: &str = r#"
tr -d '\r' < console.log
echo
echo "husk-processes-left=$(husk_processes)"
echo "husk-taps-left=$(ls /sys/class/net | grep -c '^husk')"
"#;

/// The whole test-host script: guest script written into `g/`, then the host part.
fn script(guest: &str, host: &str) -> String {
    format!(
        "mkdir -p g\ncat > g/guest.sh <<'GUEST_EOF'\n{GUEST_PRELUDE}{guest}{GUEST_END}GUEST_EOF\n\
         {HOST_PRELUDE}{host}{HOST_END}"
    )
}

/// Runs a device test script with the assets and the guest tool.
fn run_device_script(guest: &str, host: &str) -> Output {
    let assets = assets();
    let mut files = assets.files();
    files.push((Path::new(GUEST_TOOL), "husk-guest-tool"));
    run_script(&script(guest, host), &files)
}

/// Guest: reads the disks' serials and read-only flags, writes the pattern and two
/// sector markers to the read-write disk, tries to write the read-only one, reads the
/// read-only one back, and reads the entropy device.
const DISK_GUEST: &str = r#"
echo "guest-vda-serial=$(cat /sys/block/vda/serial)"
echo "guest-vdb-serial=$(cat /sys/block/vdb/serial)"
echo "guest-vda-ro=$(cat /sys/block/vda/ro)"
echo "guest-vdb-ro=$(cat /sys/block/vdb/ro)"
echo "guest-vda-sectors=$(cat /sys/block/vda/size)"
husk-guest-tool write-file /dev/vda --bytes 1M --direct | sed 's/^/guest-/'
printf 'husk-sector-4097' | dd of=/dev/vda bs=512 seek=4097 conv=notrunc,sync 2>/dev/null
printf 'husk-last-sector' | dd of=/dev/vda bs=512 seek=16383 conv=notrunc,sync 2>/dev/null
printf 'past-the-end' | dd of=/dev/vda bs=512 seek=16384 conv=notrunc,sync 2>/dev/null
echo "guest-write-past-end-status=$?"
husk-guest-tool read-file /dev/vda --bytes 1M --direct | sed 's/^/guest-readback-/'
printf 'must-not-land' | dd of=/dev/vdb bs=512 count=1 conv=notrunc,sync,fsync 2>ro-error
echo "guest-ro-write-status=$?"
echo "guest-ro-write-error=$(cat ro-error | tr '\n' ' ')"
husk-guest-tool read-file /dev/vdb | sed 's/^/guest-ro-/'
echo "guest-rng-current=$(cat /sys/class/misc/hw_random/rng_current)"
echo "guest-rng-bytes=$(head -c 4096 /dev/hwrng | wc -c)"
a=$(head -c 64 /dev/hwrng | sha256sum)
b=$(head -c 64 /dev/hwrng | sha256sum)
[ "$a" != "$b" ] && echo "guest-rng-reads-differ=yes"
"#;

/// Host: an 8 MiB zeroed read-write image and a 4 MiB random read-only one; after the
/// boot, compares the read-write image with the expected one byte for byte.
const DISK_HOST: &str = r#"
head -c 8388608 /dev/zero > rw.img
head -c 4194304 /dev/urandom > ro.img
ro_before=$(sha256sum < ro.img)
./husk-guest-tool read-file ro.img | sed 's/^/host-ro-/'
$BOOT --cmdline "$CMDLINE" --disk path=rw.img,id=husk-rw-serial \
    --disk path=ro.img,ro=true,id=husk-ro-serial --timings timings.json
echo "husk-status=$?"
echo "mmio-read-exits=$(tr -d ' \n' < timings.json | grep -o '"mmio_read":[0-9]*' | cut -d: -f2)"
echo "mmio-write-exits=$(tr -d ' \n' < timings.json | grep -o '"mmio_write":[0-9]*' | cut -d: -f2)"
head -c 8388608 /dev/zero > expected.img
./husk-guest-tool write-file expected.img --bytes 1M > /dev/null
printf 'husk-sector-4097' | dd of=expected.img bs=512 seek=4097 conv=notrunc,sync 2>/dev/null
printf 'husk-last-sector' | dd of=expected.img bs=512 seek=16383 conv=notrunc,sync 2>/dev/null
echo "rw-image-size=$(stat -c %s rw.img)"
cmp rw.img expected.img && echo "rw-image-matches=yes"
[ "$(sha256sum < ro.img)" = "$ro_before" ] && echo "ro-image-unchanged=yes"
./husk-guest-tool pattern-sum 1M
"#;

#[test]
fn disks_keep_guest_writes_refuse_read_only_writes_and_show_serials_and_rng_works() {
    let out = run_device_script(DISK_GUEST, DISK_HOST);
    assert_eq!(out.value("husk-status"), Some("0"), "{out}");
    assert_eq!(out.value("guest-done"), Some("yes"), "{out}");
    // Serials and flags as configured.
    assert_eq!(
        out.value("guest-vda-serial"),
        Some("husk-rw-serial"),
        "{out}"
    );
    assert_eq!(
        out.value("guest-vdb-serial"),
        Some("husk-ro-serial"),
        "{out}"
    );
    assert_eq!(out.value("guest-vda-ro"), Some("0"), "{out}");
    assert_eq!(out.value("guest-vdb-ro"), Some("1"), "{out}");
    assert_eq!(out.value("guest-vda-sectors"), Some("16384"), "{out}");
    // Every register read of the three virtio devices was served by their register
    // pages, mapped read-only into the guest, without a VM exit; writes still exit.
    assert_eq!(out.value("mmio-read-exits"), Some("0"), "{out}");
    let writes: u64 = out
        .value("mmio-write-exits")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(writes > 0, "{out}");
    // Guest writes land in the image exactly, nothing else changes, the end is the end.
    let pattern = out.value("pattern-sum");
    assert_eq!(out.value("guest-write-file-status"), Some("ok"), "{out}");
    assert_eq!(out.value("guest-write-file-sum"), pattern, "{out}");
    assert_eq!(out.value("guest-readback-read-file-sum"), pattern, "{out}");
    assert_ne!(out.value("guest-write-past-end-status"), Some("0"), "{out}");
    assert_eq!(out.value("rw-image-size"), Some("8388608"), "{out}");
    assert_eq!(out.value("rw-image-matches"), Some("yes"), "{out}");
    // The read-only disk reads like its image and refuses writes.
    assert_eq!(
        out.value("guest-ro-read-file-bytes"),
        Some("4194304"),
        "{out}"
    );
    assert_eq!(
        out.value("guest-ro-read-file-sum"),
        out.value("host-ro-read-file-sum"),
        "{out}"
    );
    // The guest kernel itself refuses (EPERM on a disk with VIRTIO_BLK_F_RO, even after
    // `blockdev --setrw`), so the device's own IOERR answer is covered by the unit test
    // `write_to_read_only_disk_is_ioerr_and_leaves_image`.
    assert_ne!(out.value("guest-ro-write-status"), Some("0"), "{out}");
    assert_eq!(out.value("ro-image-unchanged"), Some("yes"), "{out}");
    // The entropy device is the guest's hwrng and produces fresh bytes.
    assert_eq!(
        out.value("guest-rng-current"),
        Some("virtio_rng.0"),
        "{out}"
    );
    assert_eq!(out.value("guest-rng-bytes"), Some("4096"), "{out}");
    assert_eq!(out.value("guest-rng-reads-differ"), Some("yes"), "{out}");
    assert_eq!(out.value("husk-processes-left"), Some("0"), "{out}");
}

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
  "guest_mac": "52:54:00:12:34:56"}]}
VM_EOF
ln -s jnet/console.log console.log
./husk vmm --no-api --config-file "$PWD/jnet/vm.json" --console "$PWD/jnet/console.log" \
    --id held-tap --jail /tmp/husk-jail-tap --uid 1000 --gid 1001 --bind "$PWD/vmlinux" \
    --bind "$PWD/guest.cpio" --bind "$PWD/jnet:rw" --hold-tap ctap0 2> jvmm.err &
husk=$!
"#;

/// What the jailed run records once traffic has flowed: the uid of the process the
/// supervisor jailed.
const RECORD_JAIL_UID: &str = r#"
jailed=$(tr -d ' ' < /proc/$husk/task/$husk/children)
echo "vmm-uid=$(awk '/^Uid:/{print $2}' /proc/$jailed/status)"
"#;

#[test]
fn tcp_over_a_callers_tap_held_by_a_jailed_vmm_moves_files_both_ways_and_the_tap_stays() {
    let ip = common::tool_files("ip", "iproute", "iproute2");
    let mut files: Vec<(&Path, &str)> = ip.iter().map(|(p, n)| (p.as_path(), n.as_str())).collect();
    let assets = assets();
    files.extend(assets.files());
    files.push((Path::new(GUEST_TOOL), "husk-guest-tool"));
    let host = net_host(JAIL_HOLDS_THE_TAP, RECORD_JAIL_UID).replace(
        "echo \"tap-exists-after=",
        "echo \"tap-owner-after=$(cat /sys/class/net/ctap0/owner)\"\n\
         echo \"jail-dir-left=$(test -e /tmp/husk-jail-tap && echo yes || echo no)\"\n\
         echo \"jvmm-err=$(cat jvmm.err)\"\n\
         echo \"tap-exists-after=",
    );
    let out = run_script(&script(NET_GUEST, &host), &files);
    assert_eq!(out.value("vmm-uid"), Some("1000"), "{out}");
    assert_eq!(out.value("tap-name"), Some("ctap0"), "{out}");
    check_traffic(&out);
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

/// Guest: accepts the host's connection on port 5000 (64 MiB in, 64 MiB out), then
/// connects to the host's port 6000 (1 MiB out, then whatever the host answers).
const VSOCK_GUEST: &str = r#"
husk-guest-tool vsock-listen 5000 --recv 64M --send 64M | sed 's/^/guest-/'
husk-guest-tool vsock-connect 2 6000 --send 1M --half-close --patience 60 | sed 's/^/guest-/'
"#;

/// Host: listens on `<uds>_6000` for the guest's connection, boots with vsock, streams
/// 64 MiB each way through `<uds>` and checks the socket files are gone afterwards.
const VSOCK_HOST: &str = r#"
timeout 600 ./husk-guest-tool uds-listen "$PWD/v.sock_6000" --send 256K > uds-listen.out &
listener=$!
$BOOT --cmdline "$CMDLINE" --vsock "cid=3,uds=$PWD/v.sock" &
husk=$!
./husk-guest-tool uds-connect "$PWD/v.sock" 5000 --send 64M --recv 64M --patience 600 &
client=$!
wait $husk
status=$?
echo "husk-status=$status"
# A guest that failed will not connect or send: do not wait out the helpers' patience.
[ $status = 0 ] || kill $client $listener 2>/dev/null
wait $client
wait $listener
cat uds-listen.out
./husk-guest-tool pattern-sum 64M
echo "uds-exists-after=$(test -e v.sock && echo yes || echo no)"
echo "sockets-left=$(ls | grep -c '^v\.sock')"
"#;

#[test]
fn vsock_streams_64_mib_both_ways_reaches_host_listener_and_removes_socket() {
    let out = run_device_script(VSOCK_GUEST, VSOCK_HOST);
    assert_eq!(out.value("husk-status"), Some("0"), "{out}");
    assert_eq!(out.value("guest-done"), Some("yes"), "{out}");
    let pattern = out.value("pattern-sum");
    // Host -> guest through `CONNECT 5000`.
    assert_eq!(out.value("uds-connect-status"), Some("ok"), "{out}");
    assert!(out.value("uds-connect-host-port").is_some(), "{out}");
    assert_eq!(
        out.value("guest-vsock-listen-recv-bytes"),
        Some("67108864"),
        "{out}"
    );
    assert_eq!(out.value("guest-vsock-listen-recv-sum"), pattern, "{out}");
    // Guest -> host on the same connection.
    assert_eq!(
        out.value("uds-connect-recv-bytes"),
        Some("67108864"),
        "{out}"
    );
    assert_eq!(out.value("uds-connect-recv-sum"), pattern, "{out}");
    // The guest-initiated connection reached `<uds>_6000`, both ways.
    assert_eq!(out.value("guest-vsock-connect-status"), Some("ok"), "{out}");
    assert_eq!(out.value("uds-listen-recv-bytes"), Some("1048576"), "{out}");
    assert_eq!(
        out.value("uds-listen-recv-sum"),
        out.value("guest-vsock-connect-send-sum"),
        "{out}"
    );
    assert_eq!(
        out.value("guest-vsock-connect-recv-bytes"),
        Some("262144"),
        "{out}"
    );
    assert_eq!(
        out.value("guest-vsock-connect-recv-sum"),
        out.value("uds-listen-send-sum"),
        "{out}"
    );
    assert_eq!(out.value("uds-exists-after"), Some("no"), "{out}");
    assert_eq!(out.value("sockets-left"), Some("0"), "{out}");
    assert_eq!(out.value("husk-processes-left"), Some("0"), "{out}");
}

/// Guest: writes the pattern through the page cache of /dev/vda, waits for fdatasync
/// (a virtio-blk FLUSH), says so, then waits to be killed.
const FLUSH_GUEST: &str = r#"
husk-guest-tool write-file /dev/vda --bytes 1M | sed 's/^/guest-/'
echo "guest-synced=yes"
sleep 600
"#;

/// Host: kills husk with SIGKILL as soon as the guest says its fdatasync returned, then
/// reads the image.
const FLUSH_HOST: &str = r#"
head -c 4194304 /dev/zero > rw.img
$BOOT --cmdline "$CMDLINE" --disk path=rw.img &
husk=$!
n=0
until grep -q guest-synced=yes console.log 2>/dev/null; do
    kill -0 $husk 2>/dev/null || break
    n=$((n + 1)); [ $n -gt 4000 ] && break; sleep 0.1
done
kill -9 $husk
wait $husk
echo "husk-status=$?"
./husk-guest-tool read-file rw.img --bytes 1M | sed 's/^/host-/'
./husk-guest-tool pattern-sum 1M
"#;

#[test]
fn data_the_guest_synced_survives_a_kill_of_husk() {
    let out = run_device_script(FLUSH_GUEST, FLUSH_HOST);
    assert_eq!(out.value("guest-synced"), Some("yes"), "{out}");
    assert_eq!(out.value("husk-status"), Some("137"), "{out}");
    let pattern = out.value("pattern-sum");
    assert_eq!(out.value("guest-write-file-sum"), pattern, "{out}");
    assert_eq!(out.value("host-read-file-sum"), pattern, "{out}");
    assert_eq!(out.value("husk-processes-left"), Some("0"), "{out}");
}
