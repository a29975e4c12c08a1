//! Warm sandboxes through the real path, in one test-host boot: templates (made on
//! first use, listed, rebuilt when the kernel changes), what every sandbox restored
//! from one template must differ in (entropy, hostname, wall clock, MAC and address),
//! pause and resume of a detached sandbox, fork of a running one (memory, processes,
//! writable layer), and snapshot create/restore after the sandbox that was saved is
//! gone.
mod common;

use std::path::Path;

use common::{mkfs_ext4_files, run_sandbox_script, MKFS_EXT4_ON_PATH};

const WARM_CHECKS: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp HUSK_RUNTIME_DIR=$PWD/run HUSK_CACHE_DIR=$PWD/cache
mkdir tmp
R="./husk run --kernel vmlinux --timeout 300"

# A template, built on purpose, then listed.
./husk template build --kernel vmlinux 2> build.err; echo "build-status=$?"
echo "build-said=$(grep -c 'template 1cpu-320mib made' build.err)"
echo "template-ls=$(./husk template ls | grep -c '^1cpu-320mib ')"
built_at=$(date +%s)

# Two clones of one template, once it is 30 s old: what must differ does.
while [ $(( $(date +%s) - built_at )) -lt 31 ]; do sleep 1; done
probe='head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n"; echo; hostname; date +%s'
$R busybox -- sh -c "$probe" > c1; echo "c1-status=$?"; h1=$(date +%s)
# The first sandbox that ran a container left the template's working set, which the
# second maps before its guest runs.
# The first run also made the image's own template (its container made ahead).
echo "working-set=$(ls cache/templates/1cpu-320mib-*/snapshot/working-set | wc -l)"
$R --timings c2.json busybox -- sh -c "$probe" > c2; echo "c2-status=$?"; h2=$(date +%s)
prepared() { tr -d ' \n' < "$1" | grep -o '"container_prepared":[a-z]*' | cut -d: -f2; }
echo "c2-prepared=$(prepared c2.json)"
echo "image-template-ls=$(./husk template ls | grep -c '^1cpu-320mib-')"
# The prepared container takes the run's own command, user, env, cwd and hostname.
$R --timings p.json -e FOO=bar -w /tmp -u 1000:1000 busybox -- \
    sh -c 'echo $$ $FOO $(pwd) $(id -u) $(hostname | cut -c1-5); exit 3' > p1
echo "p1-status=$?"; echo "p1-out=$(cat p1)"; echo "p1-prepared=$(prepared p.json)"
$R --timings np.json --no-prepared busybox -- true; echo "np-status=$?"
echo "np-prepared=$(prepared np.json)"
$R --timings d.json --disk 16 busybox -- true; echo "disk-status=$?"
echo "disk-prepared=$(prepared d.json)"
echo "prefaulted=$(tr -d ' \n' < c2.json | grep -o '"prefaulted_pages":[0-9]*' | cut -d: -f2)"
echo "prefaulted-written=$(tr -d ' \n' < c2.json | grep -o '"prefaulted_written_pages":[0-9]*' | cut -d: -f2)"
echo "random-differs=$(test "$(sed -n 1p c1)" != "$(sed -n 1p c2)" && echo yes)"
echo "random-length=$(sed -n 1p c1 | tr -d '\n' | wc -c)"
echo "hostname-differs=$(test "$(sed -n 2p c1)" != "$(sed -n 2p c2)" && echo yes)"
echo "clock-skew-1=$(( $(sed -n 3p c1) - h1 ))"
echo "clock-skew-2=$(( $(sed -n 3p c2) - h2 ))"
id='cat /sys/class/net/eth0/address; ip -4 addr show eth0 | grep -o "inet [0-9.]*"'
$R --net link busybox -- sh -c "$id" > n1; echo "n1-status=$?"
$R --net link busybox -- sh -c "$id" > n2; echo "n2-status=$?"
echo "mac-differs=$(test "$(sed -n 1p n1)" != "$(sed -n 1p n2)" && echo yes)"
echo "address-set=$(grep -c 'inet 10.213' n1)"
echo "address-differs=$(test "$(sed -n 2p n1)" != "$(sed -n 2p n2)" && echo yes)"
echo "cold-status=$($R --cold busybox -- true; echo $?)"

# Pause and resume a sandbox whose process prints.
./husk run -d --name p --kernel vmlinux busybox -- sh -c 'i=0; while :; do i=$((i+1)); echo $i; usleep 100000; done'
sleep 2
./husk pause p; echo "pause-status=$?"
echo "ps-paused=$(./husk ps | grep '^p ' | grep -c paused)"
sleep 1; n1=$(wc -l < run/p/stdout.log); sleep 3; n2=$(wc -l < run/p/stdout.log)
echo "lines-while-paused=$(( n2 - n1 ))"
./husk resume p; echo "resume-status=$?"
sleep 3; n3=$(wc -l < run/p/stdout.log)
echo "lines-after-resume=$(( n3 - n2 ))"
echo "ps-running=$(./husk ps | grep '^p ' | grep -c running)"
./husk rm -f p > /dev/null

# Fork a sandbox with a running process and a writable layer on its scratch disk.
./husk run -d --name src --disk 64 --kernel vmlinux busybox -- sh -c 'i=0; while :; do i=$((i+1)); echo $i; usleep 100000; done'
./husk exec src sh -c 'echo before > /before'
./husk fork src --name clone; echo "fork-status=$?"
./husk exec src sh -c 'echo after > /after-src'
./husk exec clone sh -c 'echo after > /after-clone'
echo "src-sees-before=$(./husk exec src cat /before)"
echo "clone-sees-before=$(./husk exec clone cat /before)"
echo "src-sees-clone-file=$(./husk exec src sh -c 'test -e /after-clone && echo yes || echo no')"
echo "clone-sees-src-file=$(./husk exec clone sh -c 'test -e /after-src && echo yes || echo no')"
echo "clone-hostname-differs=$(test "$(./husk exec src hostname)" != "$(./husk exec clone hostname)" && echo yes)"
c1=$(wc -l < run/clone/stdout.log); sleep 2; c2=$(wc -l < run/clone/stdout.log)
echo "clone-main-runs=$(test $c2 -gt $c1 && echo yes)"
echo "clone-counts-on=$(tail -20 run/clone/stdout.log | awk 'NR>1 && $1 != prev+1 {bad=1} {prev=$1} END {print bad ? "no" : "yes"}')"
echo "ps-clone=$(./husk ps | grep -c '^clone ')"

# Snapshot, end the saved sandbox, restore it in a new monitor.
./husk snapshot create src snap; echo "snapshot-status=$?"
echo "snap-files=$(ls snap | tr '\n' ' ')"
./husk rm -f src > /dev/null
./husk snapshot restore snap --name again; echo "restore-status=$?"
echo "again-sees-before=$(./husk exec again cat /before)"
echo "again-sees-after=$(./husk exec again cat /after-src)"
./husk rm -f clone again > /dev/null

# A rebuilt kernel makes the template stale: rebuilt, with one line saying why.
cp vmlinux vmlinux2 && printf 'x' >> vmlinux2
./husk run --kernel vmlinux2 --timeout 300 busybox -- true 2> stale.err; echo "stale-status=$?"
echo "stale-said=$(grep -c 'template 1cpu-320mib is stale (kernel changed' stale.err)"
echo "stale-lines=$(wc -l < stale.err)"
echo "husk-processes-left=$(husk_processes)"
echo "taps-left=$(ls /sys/class/net | grep -c '^husk')"
echo "run-left=$(ls run | tr '\n' ' ')"
"#;

#[test]
fn warm_sandboxes_differ_where_they_must_pause_fork_and_restore() {
    let e2fs = mkfs_ext4_files();
    let files: Vec<(&Path, &str)> = e2fs
        .iter()
        .map(|(p, n)| (p.as_path(), n.as_str()))
        .collect();
    let out = run_sandbox_script(&format!("{MKFS_EXT4_ON_PATH}{WARM_CHECKS}"), &files);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    is("build-status", "0");
    is("build-said", "1");
    is("template-ls", "1");
    is("c1-status", "0");
    is("c2-status", "0");
    is("working-set", "1");
    is("c2-prepared", "true");
    is("image-template-ls", "1");
    is("p1-status", "3");
    is("p1-out", "1 bar /tmp 1000 husk-");
    is("p1-prepared", "true");
    is("np-status", "0");
    is("np-prepared", "false");
    is("disk-status", "0");
    is("disk-prepared", "false");
    let prefaulted: u64 = out
        .value("prefaulted")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(prefaulted > 100, "{prefaulted} pages prefaulted\n{out}");
    // Pages the first run wrote are copied ahead: part of those mapped.
    let written: u64 = out
        .value("prefaulted-written")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        written > 10 && written < prefaulted,
        "{written} of {prefaulted} pages copied ahead\n{out}"
    );
    is("random-length", "64");
    is("random-differs", "yes");
    is("hostname-differs", "yes");
    for key in ["clock-skew-1", "clock-skew-2"] {
        let skew: i64 = out
            .value(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key}\n{out}"));
        assert!(skew.abs() <= 1, "{key}={skew}\n{out}");
    }
    is("n1-status", "0");
    is("n2-status", "0");
    is("mac-differs", "yes");
    is("address-set", "1");
    is("address-differs", "yes");
    is("cold-status", "0");
    is("pause-status", "0");
    is("ps-paused", "1");
    is("lines-while-paused", "0");
    is("resume-status", "0");
    is("ps-running", "1");
    let resumed: u32 = out
        .value("lines-after-resume")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(resumed > 5, "{resumed} lines after resume\n{out}");
    is("fork-status", "0");
    is("src-sees-before", "before");
    is("clone-sees-before", "before");
    is("src-sees-clone-file", "no");
    is("clone-sees-src-file", "no");
    is("clone-hostname-differs", "yes");
    is("clone-main-runs", "yes");
    is("clone-counts-on", "yes");
    is("ps-clone", "1");
    is("snapshot-status", "0");
    is("snap-files", "detached.json sandbox.json scratch.img vm ");
    is("restore-status", "0");
    is("again-sees-before", "before");
    is("again-sees-after", "after");
    is("stale-status", "0");
    is("stale-said", "1");
    is("stale-lines", "1");
    is("husk-processes-left", "0");
    is("taps-left", "0");
    is("run-left", "");
}
