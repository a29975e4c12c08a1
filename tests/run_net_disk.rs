//! Integration tests of `husk run --disk`, `--disk-rate`, `--net` and `--net-vhost`
//! (warm, and a detached one forked) with the real guest kernel, the real agent and a real TAP. One test-host boot runs
//! every sandbox; the script prints `key=value` lines that the test asserts on.
//!
//! The test host has no e2fsprogs, so this machine's `mkfs.ext4` goes in with its
//! shared libraries and dynamic loader, behind a wrapper on the script's PATH.
mod common;

use std::path::Path;

use common::{
    mkfs_ext4_files, run_sandbox_script, testhost_module_files, LOAD_MODULES, MKFS_EXT4_ON_PATH,
};

const CHECKS: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp
mkdir tmp
"#;

const CHECKS_AFTER_SETUP: &str = r#"
# A hung guest fails its run in 5 minutes with the guest's last output (exit 124),
# not the whole test host at its own timeout.
R="./husk run --kernel vmlinux --timeout 300"

# --disk: the writable layer is on the scratch disk, holds more than the memory limit
# would let a tmpfs hold, and every sandbox starts with a fresh one.
cat > disk1.sh <<'GUEST'
echo "disk1-df-total-kib=$(df -k / | awk 'NR == 2 {print $2}')"
echo data > /etc/written && echo "disk1-readback=$(cat /etc/written)"
GUEST
$R -i --disk 64 busybox -- sh < disk1.sh; echo "disk1-status=$?"
cat > disk2.sh <<'GUEST'
test -e /etc/written && echo "disk2-written=present" || echo "disk2-written=absent"
dd if=/dev/zero of=/big bs=1M count=40 2>/dev/null; echo "disk2-big-status=$?"
sync
echo "disk2-big-bytes=$(wc -c < /big)"
GUEST
$R -i --disk 64 --memory 32 busybox -- sh < disk2.sh; echo "disk2-status=$?"
$R --disk 8 busybox -- true 2> small.err; echo "disk-small-status=$?"
echo "disk-small-error=$(cat small.err)"

# --disk-rate: 3 MiB read with O_DIRECT from a scratch disk held to 1 MiB/s, timed by
# the guest's clock (its bucket starts full, so the read takes at least 2 s).
cat > rate.sh <<'GUEST'
mknod /tmp/vdb b $(tr ':' ' ' < /sys/block/vdb/dev)
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/tmp/vdb of=/dev/null bs=65536 count=48 iflag=direct 2> dd.err
echo "rate-dd-status=$? $(cat dd.err | tr '\n' ' ')"
t1=$(cut -d' ' -f1 /proc/uptime)
echo "rate-read-seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
GUEST
$R -i --disk 64 --disk-rate 1M/s busybox -- sh < rate.sh; echo "rate-status=$?"
$R --disk-rate 1M busybox -- true 2> rate.err; echo "rate-bad-status=$?"
echo "rate-bad-error=$(cat rate.err | head -n 1)"

# --net: the container reaches listeners on the host's end of the link, both ways.
ip link set lo up
mkdir www
echo hello-from-host > www/greeting
busybox httpd -f -p 7003 -h www &
httpd=$!
mkfifo keep-open
# Just longer than a husk run may take (--timeout 300): a hung guest fails in minutes.
timeout 330 nc -l -p 7002 < keep-open > from-guest &
listener=$!
exec 3> keep-open
cat > net.sh <<'GUEST'
gw=$(ip route | awk '/^default/ {print $3}')
echo "net-gateway=$gw"
echo "net-address=$(ip -4 addr show eth0 | awk '/inet / {print $2}')"
echo "net-links=$(echo $(ls /sys/class/net))"
# No -T: Debian's busybox wget crashes with it; timeout bounds each step instead.
echo "net-wget=$(timeout 60 wget -q -O - "http://$gw:7003/greeting")"
echo hello-from-guest | timeout 60 nc -w 5 "$gw" 7002; echo "net-nc-status=$?"
GUEST
$R -i --net link busybox -- sh < net.sh > net.out; echo "net-status=$?"
cat net.out
wait $listener
exec 3>&-
echo "net-from-guest=$(cat from-guest)"

# --net-vhost: the same with the card on the host kernel's vhost-net, warm from the
# template as the run above; the kernel's worker (a task vhost-PID) is looked for
# while it runs.
mkfifo keep-open-v
timeout 330 nc -l -p 7002 < keep-open-v > from-guest-v &
listener=$!
exec 4> keep-open-v
(while :; do
    cat /proc/[0-9]*/task/*/comm 2>/dev/null | grep -q '^vhost-' && { echo yes > saw-vhost; break; }
    sleep 0.1
done) &
watcher=$!
$R -i --net link --net-vhost busybox -- sh < net.sh > netv.out; echo "netv-status=$?"
kill $watcher 2>/dev/null
sed 's/^net-/netv-/' netv.out
wait $listener
exec 4>&-
echo "netv-from-guest=$(cat from-guest-v)"
echo "netv-saw-worker=$(cat saw-vhost 2>/dev/null)"
echo "taps-after=$(ls /sys/class/net | grep -c '^husk')"

# A conflict: a new interface's index is the last one plus one, so the next TAP's link
# is the one after the last run's; its host address goes on lo first, and husk must
# refuse.
net_address=$(sed -n 's/^net-address=//p' netv.out)
third=${net_address#10.213.}; c=${third%%.*}; d=${third#*.}; d=${d%%/*}
next=$(( ((c * 256 + d) / 4 + 1) % 16384 * 4 ))
taken=10.213.$((next / 256)).$((next % 256 + 1))
echo "conflict-address=$taken"
ip addr add "$taken/32" dev lo
$R --net link busybox -- true 2> conflict.err; echo "conflict-status=$?"
echo "conflict-error=$(cat conflict.err)"
ip addr del "$taken/32" dev lo
echo "taps-after-conflict=$(ls /sys/class/net | grep -c '^husk')"

# --net-vhost, detached, then forked: the snapshot takes the rings back from the
# kernel and gives them again, so the original still reaches the host, and the copy's
# card is on vhost-net too (two workers) and reaches it as well.
./husk run --kernel vmlinux -d --name vh --net link --net-vhost busybox -- sleep 100000 \
    > /dev/null; echo "vh-run-status=$?"
./husk fork vh --name vh2 > /dev/null 2> fork.err; echo "vh-fork-status=$?"
echo "vh-fork-error=$(head -n 3 fork.err | tr '\n' ' ')"
echo "vh-workers=$(cat /proc/[0-9]*/task/*/comm 2>/dev/null | grep -c '^vhost-')"
for s in vh vh2; do
    got=$(./husk exec $s sh -c 'gw=$(ip route | awk "/^default/ {print \$3}")
        timeout 60 wget -q -O - "http://$gw:7003/greeting"')
    echo "$s-wget=$got"
done
./husk rm -f vh vh2 > /dev/null 2>&1
kill $httpd
echo "taps-after-fork=$(ls /sys/class/net | grep -c '^husk')"

echo "husk-processes-left=$(husk_processes)"
echo "tmp-left=$(ls -A tmp | tr '\n' ' ')"
"#;

fn number(value: Option<&str>) -> u64 {
    value.and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn run_with_scratch_disk_and_network_reaches_the_host_and_cleans_up() {
    let e2fs = mkfs_ext4_files();
    let modules = testhost_module_files(&["vhost_net"]);
    let files: Vec<(&Path, &str)> = e2fs
        .iter()
        .chain(&modules)
        .map(|(p, n)| (p.as_path(), n.as_str()))
        .collect();
    let script = format!("{CHECKS}{MKFS_EXT4_ON_PATH}{LOAD_MODULES}{CHECKS_AFTER_SETUP}");
    let out = run_sandbox_script(&script, &files);
    // --disk: the root's size is the 64 MiB disk's (less ext4's metadata), not a tmpfs's.
    assert_eq!(out.value("disk1-status"), Some("0"), "{out}");
    let df_total = number(out.value("disk1-df-total-kib"));
    assert!((40_000..=65_536).contains(&df_total), "{out}");
    assert_eq!(out.value("disk1-readback"), Some("data"), "{out}");
    assert_eq!(out.value("disk2-written"), Some("absent"), "{out}");
    assert_eq!(out.value("disk2-big-status"), Some("0"), "{out}");
    assert_eq!(out.value("disk2-big-bytes"), Some("41943040"), "{out}");
    assert_eq!(out.value("disk2-status"), Some("0"), "{out}");
    assert_eq!(out.value("disk-small-status"), Some("125"), "{out}");
    assert!(
        out.value("disk-small-error")
            .is_some_and(|e| e.contains("8 MiB is out of range")),
        "{out}"
    );
    // --disk-rate: 3 MiB at no more than 1 MiB/s after a full 1 MiB bucket, so in no
    // less than 2 s of the guest's clock (an upper bound on throughput only: a slow
    // host lowers it).
    assert_eq!(out.value("rate-status"), Some("0"), "{out}");
    assert!(
        out.value("rate-dd-status")
            .is_some_and(|s| s.starts_with("0 ")),
        "{out}"
    );
    let seconds: f64 = out
        .value("rate-read-seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let mib_per_sec = 3.0 / seconds;
    eprintln!("--disk-rate 1M/s: 3 MiB read in {seconds} s of guest time ({mib_per_sec:.2} MiB/s)");
    assert!(mib_per_sec <= 1.5 * 1.05, "{mib_per_sec} MiB/s\n{out}");
    assert_eq!(out.value("rate-bad-status"), Some("2"), "{out}");
    assert!(
        out.value("rate-bad-error")
            .is_some_and(|e| e.contains(r#"rate "1M": it must end in /s"#)),
        "{out}"
    );
    // --net
    assert_eq!(out.value("net-status"), Some("0"), "{out}");
    let address = out.value("net-address").unwrap_or_default();
    assert!(
        address.starts_with("10.213.") && address.ends_with("/30"),
        "{out}"
    );
    assert!(
        out.value("net-gateway")
            .is_some_and(|g| g.starts_with("10.213.")),
        "{out}"
    );
    assert!(
        out.value("net-links")
            .is_some_and(|l| l.split(' ').any(|link| link == "eth0")),
        "{out}"
    );
    // --net-vhost
    assert_eq!(out.value("module-failed"), None, "{out}");
    assert_eq!(out.value("netv-status"), Some("0"), "{out}");
    assert_eq!(out.value("netv-saw-worker"), Some("yes"), "{out}");
    // Both runs (user-space and vhost-net) reached the host both ways.
    for run in ["net", "netv"] {
        let is = |key: &str, want: &str| {
            assert_eq!(out.value(&format!("{run}-{key}")), Some(want), "{out}");
        };
        is("wget", "hello-from-host");
        is("nc-status", "0");
        is("from-guest", "hello-from-guest");
    }
    // A vhost-net sandbox forked: both reach the host, each on the kernel's worker.
    assert_eq!(out.value("vh-run-status"), Some("0"), "{out}");
    assert_eq!(out.value("vh-fork-status"), Some("0"), "{out}");
    assert_eq!(out.value("vh-workers"), Some("2"), "{out}");
    assert_eq!(out.value("vh-wget"), Some("hello-from-host"), "{out}");
    assert_eq!(out.value("vh2-wget"), Some("hello-from-host"), "{out}");
    assert_eq!(out.value("taps-after"), Some("0"), "{out}");
    assert_eq!(out.value("conflict-status"), Some("125"), "{out}");
    assert!(
        out.value("conflict-error")
            .is_some_and(|e| e.contains("already in use") && e.contains("lo has")),
        "{out}"
    );
    assert_eq!(out.value("taps-after-conflict"), Some("0"), "{out}");
    assert_eq!(out.value("taps-after-fork"), Some("0"), "{out}");
    assert_eq!(out.value("husk-processes-left"), Some("0"), "{out}");
    assert_eq!(out.value("tmp-left"), Some(""), "{out}");
}
