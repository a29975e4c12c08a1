//! `husk vmm`'s API driven with curl, the way Firecracker's getting-started guide
//! drives Firecracker: configure, start, pause, snapshot, resume, then load the snapshot
//! in a second `husk vmm`; the error paths on the way; and a VM from `--config-file`
//! without an API. In the KVM test host, with the real guest kernel.
mod common;

use std::path::Path;

use common::{assets, run_script, tool_files, Output};

/// What every API script starts with: the guest script added to the initramfs as
/// `guest.cpio`, the API client (`call`), and `wait_for FILE TEXT`.
const PROLOGUE: &str = r#"
mkdir -p g
cat > g/guest.sh <<'GUEST_EOF'
GUEST_SCRIPT
GUEST_EOF
(cd g && echo guest.sh | cpio -o -H newc 2>/dev/null) > extra.cpio
cat initrd.cpio extra.cpio > guest.cpio
API_CLIENT
wait_for() { n=0; until grep -q "$2" "$1" 2>/dev/null; do n=$((n+1)); [ $n -gt 3000 ] && return 1; sleep 0.2; done; }
"#;

/// Run [`PROLOGUE`] then `host` (with the guest script `guest`) with the kernel, the
/// agent initramfs, curl and `extra` files.
fn run_api_script(host: &str, guest: &str, extra: &[(&Path, &str)]) -> Output {
    let curl = tool_files("curl", "curl", "curl");
    let assets = assets();
    let mut files = assets.files();
    files.extend(curl.iter().map(|(p, n)| (p.as_path(), n.as_str())));
    files.extend_from_slice(extra);
    let script = format!("{PROLOGUE}{host}")
        .replace("GUEST_SCRIPT", guest.trim_end())
        .replace("API_CLIENT", common::API_CLIENT.trim());
    run_script(&script, &files)
}

/// The guest: writes a marker to its drive, counts to 100 on the console, resets.
const GUEST: &str = r#"#!/bin/sh
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin 2>/dev/null
printf api-disk | dd of=/dev/vda conv=notrunc 2>/dev/null
sync
i=0
while [ $i -lt 100 ]; do i=$((i+1)); echo "count=$i"; usleep 100000; done
reboot -f
"#;

const HOST: &str = r#"
mkdir -p bin
head -c 1048576 /dev/zero > data.img
SOCK=$PWD/api.sock
./husk vmm --api-sock "$SOCK" --console console.log 2> vmm.err &
vmm=$!
n=0; until [ -S "$SOCK" ]; do n=$((n+1)); [ $n -gt 100 ] && break; sleep 0.1; done
echo "socket-mode=$(stat -c %a "$SOCK")"
call info GET /
call machine PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
call machine-get GET /machine-config
call unknown-field PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128, "turbo": true}'
call bad-cpus PUT /machine-config '{"vcpu_count": 64, "mem_size_mib": 128}'
call wrong-method DELETE /machine-config
call no-path GET /balloon
call boot PUT /boot-source "{\"kernel_image_path\": \"$PWD/vmlinux\", \"initrd_path\": \"$PWD/guest.cpio\", \"boot_args\": \"quiet rdinit=/bin/busybox -- sh /guest.sh\"}"
call drive PUT /drives/data "{\"drive_id\": \"data\", \"path_on_host\": \"$PWD/data.img\", \"is_root_device\": false, \"is_read_only\": false}"
call vsock PUT /vsock "{\"guest_cid\": 3, \"uds_path\": \"$PWD/v.sock\"}"
call start PUT /actions '{"action_type": "InstanceStart"}'
call running GET /
# Every thread of the running VMM is under a seccomp filter (mode 2), with no_new_privs.
echo "vmm-threads=$(ls /proc/$vmm/task | wc -l)"
echo "vmm-threads-filtered=$(cat /proc/$vmm/task/*/status | grep -c '^Seccomp:[[:space:]]*2$')"
echo "vmm-no-new-privs=$(grep '^NoNewPrivs:' /proc/$vmm/status | tr -dc 0-9)"
call late-drive PUT /drives/more "{\"drive_id\": \"more\", \"path_on_host\": \"$PWD/data.img\", \"is_root_device\": false, \"is_read_only\": true}"
wait_for console.log 'count=5' && echo "guest-counting=yes"
call pause PATCH /vm '{"state": "Paused"}'
call paused GET /
call snapshot PUT /snapshot/create "{\"snapshot_path\": \"$PWD/snap.state\", \"mem_file_path\": \"$PWD/snap.mem\"}"
call resume PATCH /vm '{"state": "Resumed"}'
call config GET /vm/config
wait $vmm; echo "vmm-status=$?"
echo "socket-left=$(test -e "$SOCK" && echo yes || echo no)"
echo "disk-marker=$(head -c 8 data.img)"
echo "first-last-count=$(tr -d '\r' < console.log | grep '^count=' | tail -1)"

# A second husk vmm loads the snapshot and resumes it.
SOCK=$PWD/api2.sock
./husk vmm --api-sock "$SOCK" --console console2.log 2> vmm2.err &
vmm2=$!
n=0; until [ -S "$SOCK" ]; do n=$((n+1)); [ $n -gt 100 ] && break; sleep 0.1; done
call load-both PUT /snapshot/load "{\"snapshot_path\": \"$PWD/snap.state\", \"mem_file_path\": \"$PWD/snap.mem\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$PWD/snap.mem\"}}"
call load PUT /snapshot/load "{\"snapshot_path\": \"$PWD/snap.state\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$PWD/snap.mem\"}, \"resume_vm\": true, \"vsock_override\": {\"uds_path\": \"$PWD/v2.sock\"}}"
call loaded GET /
grep -q '"state":"Running"' body.txt || kill $vmm2
wait $vmm2; echo "vmm2-status=$?"
echo "second-first-count=$(tr -d '\r' < console2.log | grep '^count=' | head -1)"
echo "second-last-count=$(tr -d '\r' < console2.log | grep '^count=' | tail -1)"

# Without an API: the VM of a config file.
cat > vm.json <<EOF
{"boot-source": {"kernel_image_path": "$PWD/vmlinux", "initrd_path": "$PWD/guest.cpio",
  "boot_args": "quiet rdinit=/bin/busybox -- sh /guest.sh"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
 "drives": [{"drive_id": "data", "path_on_host": "$PWD/data.img", "is_root_device": false, "is_read_only": false}]}
EOF
./husk vmm --no-api --config-file vm.json --console console3.log; echo "config-file-status=$?"
echo "config-file-last-count=$(tr -d '\r' < console3.log | grep '^count=' | tail -1)"
# A vCPU that makes a forbidden call (the test hook: execve once filtered) kills the
# process with SIGSYS; with --no-seccomp the hook does nothing and the guest runs.
HUSK_TEST_VCPU_EXECVE=1 ./husk vmm --no-api --config-file vm.json --console console4.log
echo "forbidden-status=$?"
HUSK_TEST_VCPU_EXECVE=1 ./husk vmm --no-api --no-seccomp --config-file vm.json --console console5.log
echo "unfiltered-status=$?"
# boot_jailed P DIR: configure and start, through the API at $SOCK (calls named P...),
# the guest with DIR/data.img as its drive; true once it counts.
boot_jailed() {
    n=0; until [ -S "$SOCK" ]; do n=$((n+1)); [ $n -gt 100 ] && break; sleep 0.1; done
    call "${1}machine" PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
    call "${1}boot" PUT /boot-source "{\"kernel_image_path\": \"$PWD/vmlinux\", \"initrd_path\": \"$PWD/guest.cpio\", \"boot_args\": \"quiet rdinit=/bin/busybox -- sh /guest.sh\"}"
    call "${1}drive" PUT /drives/data "{\"drive_id\": \"data\", \"path_on_host\": \"$PWD/$2/data.img\", \"is_root_device\": false, \"is_read_only\": false}"
    call "${1}start" PUT /actions '{"action_type": "InstanceStart"}'
    wait_for "$2/console.log" 'count=5'
}
# A jailed VMM: its files bound at their paths, the API socket's folder writable by
# the jail's uid; its limits in a cgroup of its own. Then kill -9 of it.
mkdir jrun && cp data.img jrun/data.img && chown -R 1000:1000 jrun
SOCK=$PWD/jrun/api.sock
HUSK_DEBUG=1 ./husk vmm --api-sock "$SOCK" --console "$PWD/jrun/console.log" --id jailed \
    --jail /tmp/husk-jail --uid 1000 --gid 1001 --bind "$PWD/vmlinux" --bind "$PWD/guest.cpio" \
    --bind "$PWD/jrun:rw" --cgroup pids.max=64 --cgroup memory.max=512M 2> jvmm.err &
jsup=$!
boot_jailed j jrun && echo "jail-guest-counting=yes"
jvmm=$(cat /proc/$jsup/task/$jsup/children | tr -d ' ')
st=/proc/$jvmm/status
echo "jail-ids=$(awk '/^Uid:/{print $2}' $st):$(awk '/^Gid:/{print $2}' $st)"
echo "jail-groups=$(awk '/^Groups:/{print $2}' $st)"
echo "jail-caps=$(awk '/^CapEff:/{print $2}' $st) $(awk '/^CapPrm:/{print $2}' $st) $(awk '/^CapBnd:/{print $2}' $st)"
echo "jail-no-new-privs=$(awk '/^NoNewPrivs:/{print $2}' $st)"
echo "jail-threads=$(ls /proc/$jvmm/task | wc -l)"
echo "jail-threads-filtered=$(cat /proc/$jvmm/task/*/status | grep -c '^Seccomp:[[:space:]]*2$')"
echo "jail-root=$(ls -A /proc/$jvmm/root | tr '\n' ' ')"
echo "jail-dev=$(ls /proc/$jvmm/root/dev | tr '\n' ' ')"
echo "jail-pid-in-ns=$(awk '/^NSpid:/{print $3}' $st)"
echo "jail-own-mount-ns=$(test "$(readlink /proc/$jvmm/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" && echo yes)"
echo "jail-cgroup=$(cat /proc/$jvmm/cgroup)"
echo "jail-pids-max=$(cat /sys/fs/cgroup$(cut -d: -f3 /proc/$jvmm/cgroup)/pids.max)"
echo "jail-fds=$(ls /proc/$jvmm/fd | wc -l)"
echo "jail-host-dir=$(ls -A /tmp/husk-jail | wc -l)"
kill -9 $jvmm
wait $jsup; echo "jail-vmm-status=$?"
echo "jail-dir-left=$(test -e /tmp/husk-jail && echo yes || echo no)"
echo "jail-cgroups-left=$(find /sys/fs/cgroup/husk -mindepth 1 -type d | wc -l)"
# The same jail where the host's root is a mount point of its own, as on a machine
# that booted from a disk: the test host's root is its initramfs, which cannot be
# pivoted away, so above the VMM moved the jail onto / and chrooted. Under a bind
# mount of / it pivots into the jail and detaches the host's tree.
mkdir -p /nr prun && cp data.img prun/data.img && chown -R 1000:1000 prun
SOCK=$PWD/prun/api.sock
HUSK_DEBUG=1 unshare -m sh -c "mount --make-rprivate / && mount --rbind / /nr && exec chroot /nr sh -c 'cd $PWD && exec ./husk vmm --api-sock $SOCK --console $PWD/prun/console.log --id pivoted --jail /tmp/husk-pjail --uid 1000 --gid 1000 --bind $PWD/vmlinux --bind $PWD/guest.cpio --bind $PWD/prun:rw'" 2> pvmm.err &
psup=$!
boot_jailed p prun && echo "pivot-guest-counting=yes"
pvmm=$(cat /proc/$psup/task/$psup/children | tr -d ' ')
echo "pivot-root=$(ls -A /proc/$pvmm/root | tr '\n' ' ')"
echo "pivot-way=$(grep -o 'jail: pivoted into\|jail: moved onto /' pvmm.err | head -1)"
echo "pivot-filtered=$(grep -c '^Seccomp:[[:space:]]*2$' /proc/$pvmm/status)"
kill -9 $pvmm
wait $psup; echo "pivot-vmm-status=$?"
echo "pivot-dir-left=$(test -e /tmp/husk-pjail && echo yes || echo no)"
echo "pivot-cgroups-left=$(find /sys/fs/cgroup/husk -mindepth 1 -type d | wc -l)"
echo "jail-way=$(grep -o 'jail: pivoted into\|jail: moved onto /' jvmm.err | head -1)"
# Born in its cgroup leaf (clone3 with CLONE_INTO_CGROUP), not moved there afterwards.
echo "jail-forked-then-moved=$(grep -c 'clone3 into the cgroup leaf refused' jvmm.err)"
# Refusals: not empty, uid 0.
mkdir -p full && touch full/x
./husk vmm --api-sock "$PWD/x.sock" --jail "$PWD/full" --uid 1000 --gid 1000 2> jfull.err; echo "jail-full-status=$?"
echo "jail-full-error=$(cat jfull.err)"
./husk vmm --api-sock "$PWD/x.sock" --jail /tmp/j0 --uid 0 --gid 0 2> jroot.err; echo "jail-root-status=$?"
echo "jail-root-error=$(cat jroot.err)"
echo '{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "gpus": []}' > bad.json
./husk vmm --no-api --config-file bad.json 2> bad.err; echo "bad-config-status=$?"
echo "bad-config-error=$(cat bad.err)"
echo "husk-processes-left=$(husk_processes)"
"#;

#[test]
fn the_api_configures_starts_pauses_snapshots_and_loads_a_vm_as_firecrackers_does() {
    let out = run_api_script(HOST, GUEST, &[]);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    let has = |key: &str, part: &str| {
        assert!(
            out.value(key).is_some_and(|v| v.contains(part)),
            "{key} lacks {part:?}\n{out}"
        )
    };
    is("socket-mode", "600");
    is("info-status", "200");
    has("info-body", r#""state":"Not started""#);
    is("machine-status", "204");
    has("machine-get-body", r#""mem_size_mib":128"#);
    is("unknown-field-status", "400");
    has("unknown-field-body", "unknown field `turbo`");
    is("bad-cpus-status", "400");
    has("bad-cpus-body", "vcpu_count 64");
    is("wrong-method-status", "405");
    is("no-path-status", "404");
    is("boot-status", "204");
    is("drive-status", "204");
    is("vsock-status", "204");
    is("start-status", "204");
    has("running-body", r#""state":"Running""#);
    let threads: u32 = out
        .value("vmm-threads")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no thread count\n{out}"));
    assert!(threads >= 4, "{threads} threads\n{out}");
    is("vmm-threads-filtered", &threads.to_string());
    is("vmm-no-new-privs", "1");
    is("late-drive-status", "400");
    has("late-drive-body", "not allowed after the VM started");
    is("guest-counting", "yes");
    is("pause-status", "204");
    has("paused-body", r#""state":"Paused""#);
    is("snapshot-status", "204");
    is("resume-status", "204");
    has("config-body", r#""drive_id":"data""#);
    is("vmm-status", "0");
    is("socket-left", "no");
    is("disk-marker", "api-disk");
    is("first-last-count", "count=100");
    is("load-both-status", "400");
    has(
        "load-both-body",
        "exactly one of mem_file_path and mem_backend",
    );
    is("load-status", "204");
    has("loaded-body", r#""state":"Running""#);
    is("vmm2-status", "0");
    is("second-last-count", "count=100");
    let first: u32 = out
        .value("second-first-count")
        .and_then(|v| v.trim_start_matches("count=").parse().ok())
        .unwrap_or_else(|| panic!("no count after the load\n{out}"));
    assert!(
        (6..40).contains(&first),
        "the loaded guest started at count {first}\n{out}"
    );
    is("config-file-status", "0");
    is("config-file-last-count", "count=100");
    // 128 + SIGSYS.
    is("forbidden-status", "159");
    is("unfiltered-status", "0");
    is("jmachine-status", "204");
    is("jboot-status", "204");
    is("jdrive-status", "204");
    is("jstart-status", "204");
    is("jail-guest-counting", "yes");
    is("jail-ids", "1000:1001");
    is("jail-groups", "");
    is(
        "jail-caps",
        "0000000000000000 0000000000000000 0000000000000000",
    );
    is("jail-no-new-privs", "1");
    let jail_threads = out.value("jail-threads").unwrap_or("none").to_string();
    is("jail-threads-filtered", &jail_threads);
    // Only what was bound, the devices and /proc: /work holds the bound files.
    is("jail-root", "dev proc work ");
    is("jail-dev", "kvm net null urandom ");
    is("jail-pid-in-ns", "1");
    is("jail-own-mount-ns", "yes");
    has("jail-cgroup", "0::/husk/jailed-");
    is("jail-pids-max", "64");
    is("jail-host-dir", "0");
    is("jail-vmm-status", "137");
    is("jail-dir-left", "no");
    is("jail-cgroups-left", "0");
    is("jail-way", "jail: moved onto /");
    is("jail-forked-then-moved", "0");
    is("pivot-guest-counting", "yes");
    is("pivot-root", "dev proc work ");
    is("pivot-way", "jail: pivoted into");
    is("pivot-filtered", "1");
    is("pivot-vmm-status", "137");
    is("pivot-dir-left", "no");
    is("pivot-cgroups-left", "0");
    is("jail-full-status", "1");
    has("jail-full-error", "the folder is not empty");
    is("jail-root-status", "1");
    has("jail-root-error", "neither uid 0 nor gid 0");
    is("bad-config-status", "1");
    has("bad-config-error", "unknown field `gpus`");
    is("husk-processes-left", "0");
}

/// The guest: says whether its keyboard driver bound, then waits to be stopped.
const CAD_GUEST: &str = r#"#!/bin/sh
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin 2>/dev/null
# The keyboard binds from the kernel's serio thread, maybe after init started.
n=0
until grep -q keyboard /proc/bus/input/devices || [ $n -gt 100 ]; do n=$((n+1)); usleep 100000; done
echo "keyboards=$(grep -c 'AT Translated Set 2 keyboard' /proc/bus/input/devices)"
echo "keyboard-irq=$(grep -c 'i8042' /proc/interrupts)"
echo guest-waiting
while true; do sleep 1; done
"#;

const CAD_HOST: &str = r#"
SOCK=$PWD/api.sock
./husk vmm --api-sock "$SOCK" --console console.log 2> vmm.err &
vmm=$!
n=0; until [ -S "$SOCK" ]; do n=$((n+1)); [ $n -gt 100 ] && break; sleep 0.1; done
call early PUT /actions '{"action_type": "SendCtrlAltDel"}'
call machine PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
call boot PUT /boot-source "{\"kernel_image_path\": \"$PWD/vmlinux\", \"initrd_path\": \"$PWD/guest.cpio\", \"boot_args\": \"quiet rdinit=/bin/busybox -- sh /guest.sh\"}"
call start PUT /actions '{"action_type": "InstanceStart"}'
wait_for console.log 'guest-waiting' && echo "guest-waiting=yes"
# A guest that does not reboot would leave the VMM running: bounded here.
( sleep 300; kill $vmm 2>/dev/null ) &
guard=$!
t0=$(cut -d' ' -f1 /proc/uptime)
call cad PUT /actions '{"action_type": "SendCtrlAltDel"}'
wait $vmm; echo "vmm-status=$?"
echo "cad-to-exit-ms=$(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN {print (b - a) * 1000}')"
kill $guard 2>/dev/null
echo "vmm-err=$(tr '\n' ' ' < vmm.err)"
echo "socket-left=$(test -e "$SOCK" && echo yes || echo no)"
tr -d '\r' < console.log | grep -E '^keyboard'
echo "husk-processes-left=$(husk_processes)"
"#;

#[test]
fn send_ctrl_alt_del_reaches_the_guest_keyboard_and_its_reboot_ends_the_vmm() {
    let out = run_api_script(CAD_HOST, CAD_GUEST, &[]);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    is("early-status", "400");
    is("start-status", "204");
    is("guest-waiting", "yes");
    is("keyboards", "1");
    is("keyboard-irq", "1");
    is("cad-status", "204");
    eprintln!(
        "SendCtrlAltDel to the VMM's exit: {} ms",
        out.value("cad-to-exit-ms").unwrap_or("?")
    );
    is("vmm-status", "0");
    is("socket-left", "no");
    is("husk-processes-left", "0");
}

/// `husk vmm` started by a caller that is not root: unjailed, its filters and
/// no_new_privs on every thread, no capability, the caller's ids; then jailed in a user
/// namespace (`--jail DIR` alone): a guest boots through the API while the VMM has
/// a user and mount namespace of its own, a root holding only the jail's files, no
/// capability, and its filters; root's options are refused by name.
const UNPRIVILEGED_HOST: &str = r#"
chmod 755 husk-guest-tool
# The caller: uid 1000, with /dev/kvm open to it (as a kvm group would).
chmod 666 /dev/kvm
mkdir u && chown 1000:1000 u
as_user() { ./husk-guest-tool run-as 1000 1000 -- "$@"; }
SOCK=$PWD/u/api.sock
# run-as execs husk, so $! is the VMM's pid.
./husk-guest-tool run-as 1000 1000 -- ./husk vmm --api-sock "$SOCK" --console u/console.log \
    2> u/vmm.err &
vmm=$!
n=0; until [ -S "$SOCK" ]; do n=$((n+1)); [ $n -gt 100 ] && break; sleep 0.1; done
call machine PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
call boot PUT /boot-source "{\"kernel_image_path\": \"$PWD/vmlinux\", \"initrd_path\": \"$PWD/guest.cpio\", \"boot_args\": \"quiet rdinit=/bin/busybox -- sh /guest.sh\"}"
call start PUT /actions '{"action_type": "InstanceStart"}'
wait_for u/console.log 'guest-waiting' && echo "guest-waiting=yes"
st=/proc/$vmm/status
echo "user-ids=$(awk '/^Uid:/{print $2 ":" $3}' $st) $(awk '/^Gid:/{print $2}' $st)"
echo "user-groups=$(awk '/^Groups:/{print $2}' $st)"
echo "user-caps=$(awk '/^CapEff:/{print $2}' $st) $(awk '/^CapPrm:/{print $2}' $st)"
echo "user-no-new-privs=$(awk '/^NoNewPrivs:/{print $2}' $st)"
echo "user-threads=$(ls /proc/$vmm/task | wc -l)"
echo "user-threads-filtered=$(cat /proc/$vmm/task/*/status | grep -c '^Seccomp:[[:space:]]*2$')"
echo "user-same-mount-ns=$(test "$(readlink /proc/$vmm/ns/mnt)" = "$(readlink /proc/self/ns/mnt)" && echo yes)"
call cad PUT /actions '{"action_type": "SendCtrlAltDel"}'
wait $vmm; echo "user-vmm-status=$?"
# The same caller jailed in a user namespace: the kernel and initramfs bound read-only,
# its own folder writable; the jail's folder in /tmp, made by the VMM.
mkdir uj && chown 1000:1000 uj
SOCK=$PWD/uj/api.sock
./husk-guest-tool run-as 1000 1000 -- ./husk vmm --api-sock "$SOCK" --console uj/console.log \
    --id ujailed --jail /tmp/husk-ujail --bind "$PWD/vmlinux" --bind "$PWD/guest.cpio" \
    --bind "$PWD/uj:rw" 2> uj/vmm.err &
usup=$!
n=0; until [ -S "$SOCK" ]; do n=$((n+1)); [ $n -gt 100 ] && break; sleep 0.1; done
call ujmachine PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
call ujboot PUT /boot-source "{\"kernel_image_path\": \"$PWD/vmlinux\", \"initrd_path\": \"$PWD/guest.cpio\", \"boot_args\": \"quiet rdinit=/bin/busybox -- sh /guest.sh\"}"
call ujstart PUT /actions '{"action_type": "InstanceStart"}'
# uj/console.log is relative: taken from here, not from the jail's root.
wait_for uj/console.log 'guest-waiting' && echo "uj-guest-waiting=yes" || cat uj/vmm.err
ujvmm=$(cat /proc/$usup/task/$usup/children | tr -d ' ')
st=/proc/$ujvmm/status
echo "uj-ids=$(awk '/^Uid:/{print $2 ":" $3}' $st) $(awk '/^Gid:/{print $2}' $st)"
echo "uj-caps=$(awk '/^CapEff:/{print $2}' $st) $(awk '/^CapPrm:/{print $2}' $st) $(awk '/^CapBnd:/{print $2}' $st)"
echo "uj-no-new-privs=$(awk '/^NoNewPrivs:/{print $2}' $st)"
echo "uj-threads=$(ls /proc/$ujvmm/task | wc -l)"
echo "uj-threads-filtered=$(cat /proc/$ujvmm/task/*/status | grep -c '^Seccomp:[[:space:]]*2$')"
echo "uj-threads-no-new-privs=$(cat /proc/$ujvmm/task/*/status | grep -c '^NoNewPrivs:[[:space:]]*1$')"
echo "uj-threads-no-caps=$(cat /proc/$ujvmm/task/*/status | grep -c '^CapEff:[[:space:]]*0000000000000000$')"
echo "uj-supervisor-caps=$(awk '/^CapEff:/{print $2}' /proc/$usup/status)"
echo "uj-own-user-ns=$(test "$(readlink /proc/$ujvmm/ns/user)" != "$(readlink /proc/self/ns/user)" && echo yes)"
echo "uj-own-mount-ns=$(test "$(readlink /proc/$ujvmm/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" && echo yes)"
echo "uj-own-pid-ns=$(test "$(readlink /proc/$ujvmm/ns/pid)" != "$(readlink /proc/self/ns/pid)" && echo yes)"
echo "uj-pid-in-ns=$(awk '/^NSpid:/{print $3}' $st)"
echo "uj-root=$(ls -A /proc/$ujvmm/root | tr '\n' ' ')"
echo "uj-dev=$(ls /proc/$ujvmm/root/dev | tr '\n' ' ')"
echo "uj-work=$(ls -A /proc/$ujvmm/root$PWD | tr '\n' ' ')"
echo "uj-host-dir=$(ls -A /tmp/husk-ujail | wc -l)"
call ujcad PUT /actions '{"action_type": "SendCtrlAltDel"}'
n=0; while kill -0 $usup 2>/dev/null && [ $n -lt 600 ]; do n=$((n+1)); sleep 0.2; done
kill -9 $usup 2>/dev/null
wait $usup; echo "uj-vmm-status=$?"
echo "uj-socket-left=$(test -e "$SOCK" && echo yes || echo no)"
echo "uj-dir-left=$(test -e /tmp/husk-ujail && echo yes || echo no)"
# Root's options are refused by name; root's jail needs root.
as_user ./husk vmm --api-sock "$PWD/u/x.sock" --jail /tmp/husk-uj2 --cgroup pids.max=64 2> u/cg.err
echo "user-cgroup-status=$?"
echo "user-cgroup-error=$(cat u/cg.err)"
as_user ./husk vmm --api-sock "$PWD/u/x.sock" --jail "$PWD/u/jail" --uid 1000 --gid 1000 2> u/jail.err
echo "user-jail-status=$?"
echo "user-jail-error=$(cat u/jail.err)"
echo "husk-processes-left=$(husk_processes)"
"#;

#[test]
fn an_unprivileged_vmm_runs_filtered_and_jails_itself_in_a_user_namespace() {
    let tool = Path::new(env!("CARGO_BIN_EXE_husk-guest-tool"));
    let out = run_api_script(UNPRIVILEGED_HOST, CAD_GUEST, &[(tool, "husk-guest-tool")]);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    let has = |key: &str, want: &str| {
        let value = out.value(key).unwrap_or_default();
        assert!(
            value.contains(want),
            "{key}: {value:?} lacks {want:?}\n{out}"
        );
    };
    is("start-status", "204");
    is("guest-waiting", "yes");
    is("user-ids", "1000:1000 1000");
    is("user-groups", "");
    is("user-caps", "0000000000000000 0000000000000000");
    is("user-no-new-privs", "1");
    let threads = out.value("user-threads").unwrap_or("none").to_string();
    is("user-threads-filtered", &threads);
    is("user-same-mount-ns", "yes");
    is("cad-status", "204");
    is("user-vmm-status", "0");
    is("ujstart-status", "204");
    is("uj-guest-waiting", "yes");
    is("uj-ids", "1000:1000 1000");
    let zero = "0000000000000000";
    is("uj-caps", &format!("{zero} {zero} {zero}"));
    is("uj-no-new-privs", "1");
    let threads = out.value("uj-threads").unwrap_or("none").to_string();
    is("uj-threads-filtered", &threads);
    is("uj-threads-no-new-privs", &threads);
    is("uj-threads-no-caps", &threads);
    is("uj-supervisor-caps", zero);
    is("uj-own-user-ns", "yes");
    is("uj-own-mount-ns", "yes");
    is("uj-own-pid-ns", "yes");
    is("uj-pid-in-ns", "1");
    is("uj-root", "dev proc work ");
    is("uj-dev", "kvm net null urandom ");
    is("uj-work", "guest.cpio uj vmlinux ");
    is("uj-host-dir", "0");
    is("ujcad-status", "204");
    is("uj-vmm-status", "0");
    is("uj-socket-left", "no");
    is("uj-dir-left", "no");
    is("user-cgroup-status", "1");
    has(
        "user-cgroup-error",
        "--cgroup pids.max=64: a user-namespace jail cannot",
    );
    is("user-jail-status", "1");
    has("user-jail-error", "--uid/--gid needs root");
    is("husk-processes-left", "0");
}
