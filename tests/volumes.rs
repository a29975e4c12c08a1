//! `husk run -v HOST:GUEST[:ro]` with the real kernel, agent and virtiofsd (carried
//! into the test host with its libraries), as root: the VMM runs jailed as a uid of
//! husk's range, the daemons' sockets that uid's with mode 0600; writes both ways,
//! `:ro` refused in the guest and by the daemon, a link in the share that points out of
//! it, the host owner of a file a container user made, pause refused, the bad
//! arguments named, and no virtiofsd left after a foreground run, `husk stop`, `husk rm
//! -f` and a killed monitor. One test-host boot runs every check; the script prints `key=value` lines.
mod common;

use std::path::{Path, PathBuf};

use common::{binary_files, run_sandbox_script};

const VOLUME_CHECKS: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp HUSK_RUNTIME_DIR=$PWD/run
mkdir tmp bin
cat > bin/virtiofsd <<WRAPPER
#!/bin/sh
exec $PWD/vfs/ld.so --library-path $PWD/vfs $PWD/vfs/virtiofsd "\$@"
WRAPPER
chmod 755 bin/virtiofsd
export HUSK_VIRTIOFSD=$PWD/bin/virtiofsd
# The test host runs from its initramfs, where virtiofsd's pivot_root cannot work.
export HUSK_VIRTIOFSD_SANDBOX=chroot
# Processes whose program is the carried virtiofsd (argv[0] is its loader; this
# script's own command line holds the name too, so match the start).
daemons() {
    n=0
    for c in /proc/[0-9]*/cmdline; do
        case "$(tr '\0' ' ' < "$c" 2>/dev/null)" in "$PWD/vfs/ld.so "*) n=$((n + 1)) ;; esac
    done
    echo $n
}
# Waits (bounded, no timing asserted) for every virtiofsd to be gone.
daemons_gone() {
    i=0
    while [ "$(daemons)" != 0 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
    daemons
}
in_job() { ./husk exec "$@"; }
# The uids of the processes running `husk vmm` (a jailed VMM's supervisor runs as root,
# the process it jailed as the jail's uid).
vmm_uids() {
    for c in /proc/[0-9]*/cmdline; do
        [ "$(tr '\0' '\n' < "$c" 2>/dev/null | sed -n 2p)" = vmm ] || continue
        awk '/^Uid:/ {print $2}' "${c%cmdline}status"
    done | sort -n | tr '\n' ' '
}

# Bad arguments: one line naming the value, no sandbox started.
./husk run --kernel vmlinux -v nope:/data busybox -- true 2> e1; echo "err-host=$(cat e1)"
mkdir share ro
./husk run --kernel vmlinux -v share:data busybox -- true 2> e2; echo "err-guest=$(cat e2)"
./husk run --kernel vmlinux -v share:/data:rx busybox -- true 2> e3; echo "err-mode=$(cat e3)"

echo from-host > share/host.txt
echo ro-data > ro/data.txt
chmod 777 share
ln -s /etc share/escape
./husk run --kernel vmlinux -d --name vols -v share:/data -v $PWD/ro:/ro:ro busybox \
    -- sh -c 'touch /tmp/ready && exec sleep 1000' > /dev/null 2> run.err
echo "run-status=$? $(cat run.err)"
in_job vols sh -c 'until [ -e /tmp/ready ]; do sleep 0.1; done'
echo "daemons-running=$(daemons)"
echo "vmm-uids=$(vmm_uids)"
echo "caller-uid=$(id -u)"
echo "sockets-mode=$(find run tmp -name 'fs-*.sock' -exec stat -c '%a:%u' {} + | sort -u | tr '\n' ' ')"
echo "guest-reads=$(in_job vols cat /data/host.txt)"
in_job vols sh -c 'echo from-guest > /data/guest.txt'
echo "host-reads=$(cat share/guest.txt)"
echo later > share/later.txt
echo "guest-reads-later=$(in_job vols cat /data/later.txt)"
in_job vols sh -c 'echo x > /ro/new.txt' 2> e4; echo "ro-write-refused=$([ $? -ne 0 ] && echo yes)"
echo "ro-write-error=$(cat e4)"
echo "ro-host-file=$( [ -e ro/new.txt ] && echo present || echo absent)"
echo "ro-read=$(in_job vols cat /ro/data.txt)"
in_job vols sh -c 'echo escaped > /data/escape/husk-escape' 2> /dev/null
echo "escape-host=$( [ -e /etc/husk-escape ] && echo present || echo absent)"
in_job vols -u 1234:2345 touch /data/by-user
echo "owners=$(stat -c %u:%g share/by-user share/guest.txt | tr '\n' ' ')"
./husk pause vols 2> e5; echo "pause-status=$?"; echo "pause-error=$(cat e5)"
./husk stop -t 0 vols > /dev/null
echo "after-stop=$(daemons_gone)"
./husk rm vols

./husk run --kernel vmlinux -d --name gone -v share:/data busybox -- sleep 1000 > /dev/null
in_job gone true
./husk rm -f gone > /dev/null
echo "after-rm-f=$(daemons_gone)"

./husk run --kernel vmlinux -d --name killed -v share:/data busybox -- sleep 1000 > /dev/null
in_job killed true
kill -9 "$(sed -n 's/.*"monitor_pid": *\([0-9]*\).*/\1/p' run/killed/state.json)"
echo "after-kill=$(daemons_gone)"
./husk rm -f killed > /dev/null 2>&1

echo "foreground=$(./husk run --kernel vmlinux -v share:/data busybox -- cat /data/later.txt)"
echo "after-run=$(daemons)"
echo "husk-processes-left=$(husk_processes)"
echo "sockets-left=$(find run -name 'fs-*.sock' 2>/dev/null | wc -l)"
"#;

/// virtiofsd as husk finds it on this machine.
fn virtiofsd() -> PathBuf {
    husk::sandbox::virtiofsd::binary().unwrap_or_else(|e| panic!("{e} (scripts/test installs it)"))
}

#[test]
fn volumes_share_host_folders_both_ways_and_leave_no_daemon() {
    let tool = binary_files(&virtiofsd(), "vfs");
    let files: Vec<(&Path, &str)> = tool
        .iter()
        .map(|(p, n)| (p.as_path(), n.as_str()))
        .collect();
    let out = run_sandbox_script(VOLUME_CHECKS, &files);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    let has = |key: &str, want: &str| {
        assert!(
            out.value(key).is_some_and(|v| v.contains(want)),
            "{key} should contain {want:?}\n{out}"
        )
    };
    has("err-host", "volume host folder nope does not exist");
    has("err-guest", r#"volume guest path "data" must be absolute"#);
    has("err-mode", r#"mode "rx" is not ro or rw"#);
    is("run-status", "0 ");
    is("daemons-running", "2");
    // As root the VMM runs jailed (the jail's uids start at 1,900,000,001) and reaches
    // the daemons through sockets only its uid may connect to.
    is("caller-uid", "0");
    let jail_uid = out
        .value("vmm-uids")
        .and_then(|u| u.split_whitespace().last())
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(jail_uid > 1_900_000_000, "vmm-uids\n{out}");
    is("sockets-mode", &format!("600:{jail_uid} "));
    is("guest-reads", "from-host");
    is("host-reads", "from-guest");
    is("guest-reads-later", "later");
    is("ro-write-refused", "yes");
    has("ro-write-error", "Read-only file system");
    is("ro-host-file", "absent");
    is("ro-read", "ro-data");
    is("escape-host", "absent");
    is("owners", "1234:2345 0:0 ");
    is("pause-status", "1");
    has("pause-error", "with volumes");
    is("after-stop", "0");
    is("after-rm-f", "0");
    is("after-kill", "0");
    is("foreground", "later");
    is("after-run", "0");
    is("husk-processes-left", "0");
    is("sockets-left", "0");
}
