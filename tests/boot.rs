//! Integration tests of `husk boot`: boot the real guest kernel with the test guest's
//! initramfs (`rootfs/test/`) and check what it printed and how husk ended; and check
//! that bad arguments are refused with an error naming the bad value.
//!
//! Each boot costs seconds to minutes in the KVM test host, so one test function makes
//! one boot and checks many things about it.
mod common;

use std::fs;

use common::{assets, run_husk, run_peer_script, run_script, Output, WorkDir};

/// Boots the test guest with 2 vCPUs to its reset, then looks for husk processes left
/// running and for files husk left in /tmp.
const BOOT_TWO_CPUS: &str = r#"
ls -A /tmp | sort > tmp-before
mkdir private-tmp
TMPDIR=$PWD/private-tmp "$PWD/husk" boot --kernel vmlinux --initrd initrd.cpio \
    --cpus 2 --memory 256 --console console.log
echo "husk-status=$?"
cat console.log
ls -A /tmp | sort > tmp-after
echo "new-tmp-entries=$(grep -vxF -f tmp-before tmp-after | tr '\n' ' ')"
echo "private-tmp-entries=$(ls -A private-tmp | tr '\n' ' ')"
echo "husk-processes-left=$(husk_processes)"
"#;

#[test]
fn boot_with_two_cpus_runs_init_and_resets_cleanly() {
    let assets = assets();
    let out = run_script(BOOT_TWO_CPUS, &assets.files());
    assert_eq!(out.value("husk-status"), Some("0"), "{out}");
    assert!(out.stdout.contains("HUSK-TEST: init started"), "{out}");
    assert!(out.stdout.contains("HUSK-TEST: cpus=2"), "{out}");
    assert!(out.stdout.contains("HUSK-TEST: loop done"), "{out}");
    assert!(out.stdout.contains("HUSK-TEST: spawned 200"), "{out}");
    assert!(out.stdout.contains("HUSK-TEST: resetting"), "{out}");
    assert_eq!(out.value("husk-processes-left"), Some("0"), "{out}");
    assert_eq!(out.value("new-tmp-entries"), Some(""), "{out}");
    assert_eq!(out.value("private-tmp-entries"), Some(""), "{out}");
}

const BOOT_PANIC: &str = r#"
"$PWD/husk" boot --kernel vmlinux --initrd initrd.cpio --cmdline husk.test=panic \
    --cpus 1 --memory 256 --console console.log
echo "husk-status=$?"
echo "console-says-kill-init=$(grep -c 'Attempted to kill init' console.log)"
"#;

#[test]
fn boot_of_panicking_guest_fails_with_panic_in_stderr() {
    let assets = assets();
    let out = run_script(BOOT_PANIC, &assets.files());
    assert_ne!(out.value("husk-status"), Some("0"), "{out}");
    assert!(out.value("husk-status").is_some(), "{out}");
    assert!(out.stderr.to_lowercase().contains("panic"), "{out}");
    assert_eq!(out.value("console-says-kill-init"), Some("1"), "{out}");
}

/// Reports what the runner gives a script: separate stdout and stderr, the exit status,
/// and in the test host a KVM device.
const RUNNER_SELF_CHECK: &str = r#"
echo "to-stdout"
echo "to-stderr" >&2
echo "husk-is-executable=$(test -x husk && echo yes)"
echo "kvm-is-char-device=$(test -c /dev/kvm && echo yes)"
exit 7
"#;

#[test]
fn runner_returns_stdout_stderr_and_status_separately() {
    let assets = assets();
    let out = run_script(RUNNER_SELF_CHECK, &assets.files());
    assert_eq!(out.status, 7, "{out}");
    assert_eq!(out.stdout.lines().next(), Some("to-stdout"), "{out}");
    assert_eq!(out.stderr.trim(), "to-stderr", "{out}");
    assert_eq!(out.value("husk-is-executable"), Some("yes"), "{out}");
    assert_eq!(out.value("kvm-is-char-device"), Some("yes"), "{out}");
}

/// Boots the test guest with the QEMU microvm peer: checks the guest kernel, the test
/// initramfs and the runner's KVM without depending on husk.
const PEER_BOOT: &str = r#"
husk-peer-qemu --kernel vmlinux --initrd initrd.cpio --cpus 2 --memory 256 \
    --console console.log
echo "peer-status=$?"
cat console.log
"#;

#[test]
fn qemu_peer_boots_test_guest_to_reset() {
    let assets = assets();
    let out = run_peer_script(PEER_BOOT, &assets.files());
    assert_eq!(out.value("peer-status"), Some("0"), "{out}");
    assert!(out.stdout.contains("HUSK-TEST: cpus=2"), "{out}");
    assert!(out.stdout.contains("HUSK-TEST: spawned 200"), "{out}");
    assert!(out.stdout.contains("HUSK-TEST: resetting"), "{out}");
}

/// Asserts that husk failed with exactly one error line on stderr (`husk: error: ...`;
/// warnings may come before it) and that this line contains every string in `named`.
fn assert_refused(out: &Output, named: &[&str]) {
    assert_ne!(out.status, 0, "{out}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|line| line.starts_with("husk: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{out}");
    let missing: Vec<&&str> = named.iter().filter(|s| !errors[0].contains(**s)).collect();
    assert!(
        missing.is_empty(),
        "the error does not name {missing:?}: {out}"
    );
}

/// A small file standing in for an initramfs where the initramfs is not the point.
fn dummy_initrd(dir: &WorkDir) -> String {
    let path = dir.path.join("dummy.cpio");
    fs::write(&path, b"070701").expect("the work dir is writable");
    path.display().to_string()
}

#[test]
fn boot_with_missing_kernel_fails_naming_the_path() {
    let dir = WorkDir::new();
    let missing = dir.path.join("no-such-vmlinux").display().to_string();
    let initrd = dummy_initrd(&dir);
    let out = run_husk(&["boot", "--kernel", &missing, "--initrd", &initrd]);
    assert_refused(&out, &[&missing]);
}

#[test]
fn boot_with_garbage_kernel_fails_naming_the_path() {
    let dir = WorkDir::new();
    let garbage = dir.path.join("garbage-vmlinux");
    let bytes: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&garbage, bytes).expect("the work dir is writable");
    let garbage = garbage.display().to_string();
    let initrd = dummy_initrd(&dir);
    let out = run_husk(&["boot", "--kernel", &garbage, "--initrd", &initrd]);
    assert_refused(&out, &[&garbage]);
}

#[test]
fn boot_with_zero_cpus_fails_naming_cpus() {
    let assets = assets();
    let kernel = assets.kernel.display().to_string();
    let initrd = assets.test_initrd.display().to_string();
    let out = run_husk(&[
        "boot", "--kernel", &kernel, "--initrd", &initrd, "--cpus", "0",
    ]);
    assert_refused(&out, &["cpus", "0"]);
}

#[test]
fn boot_with_one_mib_of_memory_fails_naming_memory() {
    let assets = assets();
    let kernel = assets.kernel.display().to_string();
    let initrd = assets.test_initrd.display().to_string();
    let out = run_husk(&[
        "boot", "--kernel", &kernel, "--initrd", &initrd, "--memory", "1",
    ]);
    assert_refused(&out, &["memory", "1"]);
}

#[test]
fn boot_with_initrd_larger_than_memory_fails_naming_the_initrd() {
    let assets = assets();
    let dir = WorkDir::new();
    let huge = dir.path.join("huge.cpio");
    let file = fs::File::create(&huge).expect("the work dir is writable");
    // Sparse: 512 MiB of apparent size costs no disk.
    file.set_len(512 << 20)
        .expect("the work dir's filesystem allows sparse files");
    let huge = huge.display().to_string();
    let kernel = assets.kernel.display().to_string();
    let out = run_husk(&[
        "boot", "--kernel", &kernel, "--initrd", &huge, "--memory", "128",
    ]);
    assert_refused(&out, &[&huge]);
}

/// Boots a bzImage (the test host's own Debian cloud kernel, which `scripts/testhost
/// prepare` caches) through the 64-bit boot protocol, to the test init and its reset.
const BOOT_BZIMAGE: &str = r#"
"$PWD/husk" boot --kernel bzImage --initrd initrd.cpio --cpus 1 --memory 256 \
    --cmdline quiet --console console.log
echo "husk-status=$?"
cat console.log
"#;

#[test]
fn boot_of_bzimage_runs_init_and_resets_cleanly() {
    let bzimage = husk::kernel::cache_root().join("testhost/current/vmlinuz");
    assert!(
        bzimage.is_file(),
        "{} not found: run `scripts/testhost prepare`",
        bzimage.display()
    );
    let assets = assets();
    let mut files = assets.files();
    files.push((bzimage.as_path(), "bzImage"));
    let out = run_script(BOOT_BZIMAGE, &files);
    assert_eq!(out.value("husk-status"), Some("0"), "{out}");
    assert!(out.stdout.contains("HUSK-TEST: init started"), "{out}");
    assert!(out.stdout.contains("HUSK-TEST: resetting"), "{out}");
}

/// SIGTERM to `husk boot` stops the VM and cleans up: the vsock socket is removed, the
/// TAP husk created is gone, and husk exits 128+15. Then `--timeout` does the same to a
/// guest that would sleep on: husk reports where it was and exits 124.
const BOOT_TERMINATED: &str = r#"
"$PWD/husk" boot --kernel vmlinux --initrd initrd.cpio --memory 256 --console console.log \
    --cmdline "husk.test=shell rdinit=/bin/busybox -- sleep 1000" \
    --vsock "cid=3,uds=$PWD/v.sock" --net tap= &
husk=$!
n=0
while [ ! -S v.sock ] && [ $n -lt 300 ]; do n=$((n + 1)); sleep 0.1; done
echo "socket-while-running=$(test -S v.sock && echo yes)"
echo "taps-while-running=$(ls /sys/class/net | grep -c '^husk')"
kill -TERM $husk
wait $husk
echo "husk-status=$?"
echo "socket-after=$(test -e v.sock && echo yes || echo no)"
echo "taps-after=$(ls /sys/class/net | grep -c '^husk')"
"$PWD/husk" boot --kernel vmlinux --initrd initrd.cpio --memory 256 --console console2.log \
    --cmdline "husk.test=shell rdinit=/bin/busybox -- sleep 1000" \
    --vsock "cid=3,uds=$PWD/v2.sock" --net tap= --timeout 30
echo "timeout-status=$?"
echo "socket-after-timeout=$(test -e v2.sock && echo yes || echo no)"
echo "taps-after-timeout=$(ls /sys/class/net | grep -c '^husk')"
"#;

#[test]
fn sigterm_or_timeout_stops_boot_and_removes_socket_and_tap() {
    let assets = assets();
    let out = run_script(BOOT_TERMINATED, &assets.files());
    assert_eq!(out.value("socket-while-running"), Some("yes"), "{out}");
    assert_eq!(out.value("taps-while-running"), Some("1"), "{out}");
    assert_eq!(out.value("husk-status"), Some("143"), "{out}");
    assert_eq!(out.value("socket-after"), Some("no"), "{out}");
    assert_eq!(out.value("taps-after"), Some("0"), "{out}");
    // --timeout: the report names the vCPUs and every device, then everything is gone.
    assert_eq!(out.value("timeout-status"), Some("124"), "{out}");
    for part in [
        "--timeout: the guest still ran after 30 s",
        "--- vCPUs ---\nvcpu0: rip",
        "--- devices ---\nvirtio-net: ",
        "(TAP husk",
        "virtio-vsock: ",
        "vsock: 0 connection(s)",
        "virtio-rng: ",
        "the VM was stopped after --timeout",
    ] {
        assert!(out.stderr.contains(part), "no {part:?} in {out}");
    }
    assert_eq!(out.value("socket-after-timeout"), Some("no"), "{out}");
    assert_eq!(out.value("taps-after-timeout"), Some("0"), "{out}");
}
