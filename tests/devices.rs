//! Integration tests of husk's virtio devices through the real path: the real guest
//! kernel boots with the test initramfs plus `husk-guest-tool` and a guest script, and
//! the host side of each device (image files, the vsock Unix sockets) is checked from
//! the same script, inside the KVM test host where this machine's KVM is unusable.
//!
//! One boot per test, many checks per boot. The guest prints `guest-KEY=VALUE` lines on
//! its console (the script copies the console to stdout), the host part prints
//! `KEY=VALUE` lines, and the test asserts on them by name. The TAP tests are in
//! `net_tap.rs`.
mod common;

use common::device_script::run_device_script;

/// Guest: reads the disks' serials and read-only flags, writes the pattern and two
/// sector markers to the read-write disk, tries to write the read-only one, reads the
/// read-only one back, reads the entropy device (256 more requests, each answered with
/// an interrupt), and counts the virtio interrupts it took.
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
dd if=/dev/hwrng of=/dev/null bs=64 count=256 2>/dev/null
echo "guest-virtio-irqs=$(awk '/virtio/ { for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i } END { print n + 0 }' /proc/interrupts)"
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
    // pages, mapped read-only into the guest, without a VM exit. Writes of the setup
    // still exit, but the InterruptACK of each interrupt stays in KVM: the boot took
    // fewer write exits than the guest handled interrupts (one exit per interrupt
    // before).
    assert_eq!(out.value("mmio-read-exits"), Some("0"), "{out}");
    let number = |key| out.value(key).and_then(|v| v.parse::<u64>().ok());
    let writes = number("mmio-write-exits").unwrap_or(0);
    let irqs = number("guest-virtio-irqs").unwrap_or(0);
    assert!(writes > 0, "{out}");
    assert!(irqs >= 256, "{out}");
    assert!(
        writes < irqs,
        "{writes} write exits, {irqs} interrupts: {out}"
    );
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
