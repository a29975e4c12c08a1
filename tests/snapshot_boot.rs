//! Snapshot and restore of a whole VM through `husk boot`, with the real guest kernel:
//! a guest counts on its console, husk snapshots it in the middle (`--snapshot-on`),
//! and a second husk process restores the snapshot (`--restore`) and the count goes on
//! from where it was, on one and on two vCPUs. Damaged snapshots are refused with what
//! is wrong, and leave nothing running.
mod common;

use common::{assets, run_script};

/// The guest: counts to 60, one line every 50 ms, on every CPU's behalf, then resets.
/// Its monotonic clock is printed with each count so the host can check it never goes
/// back across the restore.
const GUEST: &str = r#"#!/bin/sh
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin 2>/dev/null
echo "guest-cpus=$(grep -c ^processor /proc/cpuinfo)"
i=0
while [ $i -lt 60 ]; do
    i=$((i+1))
    echo "count=$i up=$(cut -d' ' -f1 /proc/uptime)"
    usleep 50000
done
echo "guest-cpus-after=$(grep -c ^processor /proc/cpuinfo)"
echo guest-done=yes
reboot -f
"#;

/// Host side for `cpus` vCPUs: boot and snapshot at count 20, stop; restore in a new
/// husk process; then damage copies of the snapshot and try to restore each.
fn script(cpus: u8) -> String {
    format!(
        r#"
mkdir -p g
cat > g/guest.sh <<'GUEST_EOF'
{GUEST}GUEST_EOF
chmod 755 g/guest.sh
(cd g && echo guest.sh | cpio -o -H newc 2>/dev/null) > extra.cpio
cat initrd.cpio extra.cpio > guest.cpio
./husk boot --kernel vmlinux --initrd guest.cpio --memory 128 --cpus {cpus} \
    --cmdline "quiet rdinit=/bin/busybox -- sh /guest.sh" --console first.log \
    --snapshot-on 'count=20 ' --snapshot-dir snap --snapshot-stop --timeout 600 2> first.err
echo "first-status=$?"
cat first.err
echo "snap-files=$(ls snap | tr '\n' ' ' | sed 's/ $//')"
echo "memory-file-bytes=$(stat -c %s snap/memory)"
echo "memory-file-blocks-kib=$(du -k snap/memory | cut -f1)"
./husk boot --restore snap --console second.log --timeout 300
echo "second-status=$?"
tr -d '\r' < first.log > first.txt
echo "first-last-count=$(grep '^count=' first.txt | tail -1 | sed 's/count=\([0-9]*\).*/\1/')"
tr -d '\r' < second.log > second.txt
echo "second-first-count=$(grep -m1 '^count=' second.txt | sed 's/count=\([0-9]*\).*/\1/')"
echo "second-last-count=$(grep '^count=' second.txt | tail -1 | sed 's/count=\([0-9]*\).*/\1/')"
grep '^count=' second.txt | sed 's/count=\([0-9]*\).*/\1/' > counts
seq "$(head -1 counts)" 60 > expected-counts
cmp -s counts expected-counts && echo "second-counts-consecutive=yes"
# Whole readings only: the snapshot may cut the last line of first.log mid-number.
cat first.txt second.txt | grep -E '^count=[0-9]+ up=[0-9]+\.[0-9]{{2}}$' | sed 's/.*up=//' > ups
sort -n -c ups 2>/dev/null && echo "uptime-never-goes-back=yes"
echo "uptime-readings=$(wc -l < ups)"
echo "uptimes-around-restore=$(grep '^count=' first.txt | tail -2 | sed 's/.*up=//' | tr '\n' ' ')| $(grep '^count=' second.txt | head -3 | sed 's/.*up=//' | tr '\n' ' ')"
grep '^guest-' second.txt | sed 's/^/second-/'
# Damaged snapshots: each refused with one line, no VM left behind.
cp -r snap trunc && head -c 100 snap/state > trunc/state
./husk boot --restore trunc --console /dev/null 2> trunc.err; echo "trunc-status=$?"
echo "trunc-error=$(cat trunc.err)"
cp -r snap flip && cp snap/state flip/state && printf 'X' | dd of=flip/state bs=1 seek=200 conv=notrunc 2>/dev/null
./husk boot --restore flip --console /dev/null 2> flip.err; echo "flip-status=$?"
echo "flip-error=$(cat flip.err)"
mkdir foreign && cp snap/memory foreign/ && head -c 4096 vmlinux > foreign/state
./husk boot --restore foreign --console /dev/null 2> foreign.err; echo "foreign-status=$?"
echo "foreign-error=$(cat foreign.err)"
cp -r snap short && truncate -s 1M short/memory
./husk boot --restore short --console /dev/null 2> short.err; echo "short-status=$?"
echo "short-error=$(cat short.err)"
echo "husk-processes-left=$(husk_processes)"
"#
    )
}

fn round_trip(cpus: u8) {
    let out = run_script(&script(cpus), &assets().files());
    assert_eq!(out.value("first-status"), Some("0"), "{out}");
    assert_eq!(out.value("snap-files"), Some("memory state"), "{out}");
    assert_eq!(out.value("second-status"), Some("0"), "{out}");
    // The restored guest goes on counting from the snapshot, not from the start.
    let first: u32 = out
        .value("second-first-count")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count after the restore\n{out}"));
    assert!(
        (20..=22).contains(&first),
        "restored at count {first}\n{out}"
    );
    assert_eq!(out.value("second-last-count"), Some("60"), "{out}");
    assert_eq!(out.value("second-counts-consecutive"), Some("yes"), "{out}");
    assert_eq!(out.value("uptime-never-goes-back"), Some("yes"), "{out}");
    let readings: u32 = out
        .value("uptime-readings")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(readings >= 55, "too few whole uptime readings\n{out}");
    let expected_cpus = cpus.to_string();
    assert_eq!(
        out.value("second-guest-cpus-after"),
        Some(expected_cpus.as_str()),
        "{out}"
    );
    assert_eq!(out.value("second-guest-done"), Some("yes"), "{out}");
    // The memory file is as large as RAM but sparse.
    assert_eq!(out.value("memory-file-bytes"), Some("134217728"), "{out}");
    let kib: u64 = out
        .value("memory-file-blocks-kib")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(kib < 128 * 1024, "memory file not sparse: {kib} KiB\n{out}");
    // Damage is refused with what is wrong.
    assert_eq!(out.value("trunc-status"), Some("1"), "{out}");
    assert!(
        out.value("trunc-error")
            .is_some_and(|e| e.contains("truncated")),
        "{out}"
    );
    assert_eq!(out.value("flip-status"), Some("1"), "{out}");
    assert!(
        out.value("flip-error")
            .is_some_and(|e| e.contains("corrupt")),
        "{out}"
    );
    assert_eq!(out.value("foreign-status"), Some("1"), "{out}");
    assert!(
        out.value("foreign-error")
            .is_some_and(|e| e.contains("not a husk snapshot")),
        "{out}"
    );
    assert_eq!(out.value("short-status"), Some("1"), "{out}");
    assert!(
        out.value("short-error")
            .is_some_and(|e| e.contains("memory file holds 1048576 bytes")),
        "{out}"
    );
    assert_eq!(out.value("husk-processes-left"), Some("0"), "{out}");
}

#[test]
fn a_guest_restored_on_one_vcpu_counts_on_from_its_snapshot() {
    round_trip(1);
}

#[test]
fn a_guest_restored_on_two_vcpus_counts_on_from_its_snapshot() {
    round_trip(2);
}
