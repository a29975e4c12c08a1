//! Integration tests of `husk run`: a container from the image store in a fresh micro-VM
//! with the real guest kernel and the real agent. One test-host boot runs many sandboxes
//! and checks each; the script prints `key=value` lines that the test asserts on.
mod common;

use common::run_sandbox_script;

const RUN_CHECKS: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp
mkdir tmp
# A hung guest fails its run in 5 minutes with the guest's last output (exit 124),
# not the whole test host at its own timeout.
R="./husk run --kernel vmlinux --timeout 300"
digest_before=$(sha256sum store/images/sha256/*.erofs | cut -d' ' -f1)

$R busybox -- true; echo "true-status=$?"
$R busybox -- sh -c 'exit 3'; echo "exit3-status=$?"
$R busybox -- sh -c 'sh -c "kill -9 \$\$"; exit $?'; echo "kill9-status=$?"
$R busybox -- sh -c 'trap "exit 42" TERM; echo ready; while :; do sleep 1; done' >sig.txt &
run_pid=$!
while ! grep -q ready sig.txt; do sleep 1; done
kill -TERM $run_pid
wait $run_pid; echo "sigterm-status=$?"
$R busybox -- sh -c 'echo to-out; echo to-err >&2' >out.txt 2>err.txt
echo "stdout=$(cat out.txt)"
echo "stderr-has-to-err=$(grep -c to-err err.txt)"
echo "stdout-has-to-err=$(grep -c to-err out.txt)"
head -c 33554432 /dev/urandom > in.bin
$R -i busybox -- cat < in.bin > echoed.bin; echo "stdin-status=$?"
echo "stdin-in=$(sha256sum < in.bin | cut -d' ' -f1)"
echo "stdin-out=$(sha256sum < echoed.bin | cut -d' ' -f1)"
echo "flags=$($R -e FOO=bar -w /tmp -u 1000:1000 busybox -- sh -c 'echo "$FOO,$(pwd),$(id -u):$(id -g)"')"
echo "image-path=$($R busybox -- sh -c 'echo $PATH')"
echo "pid=$($R busybox -- sh -c 'echo $$')"
echo "write=$($R busybox -- sh -c 'echo x > /etc/written && cat /etc/written')"
echo "second-run=$($R busybox -- sh -c 'test -e /etc/written && echo present || echo absent')"
$R --memory 32 busybox -- dd if=/dev/zero of=/dev/null bs=64M count=1 2>oom.txt
echo "oom-status=$?"
echo "oom-reported=$(grep -c 'memory limit' oom.txt)"
# --timeout ends a run whose process never does: the guest's output, then 124.
./husk run --kernel vmlinux --timeout 20 busybox -- sleep 1000 2>timeout.err
echo "timeout-status=$?"
echo "timeout-reported=$(grep -c 'stopped after 20 s (--timeout)' timeout.err)"
echo "timeout-guest-log=$(grep -c 'guest kernel log, read from guest memory' timeout.err)"
echo "timeout-vcpu=$(grep -c '^vcpu0: rip 0x' timeout.err)"
# A VMM killed by its seccomp filter (the test hook makes its vCPU call execve) fails
# the run with a message that says so.
HUSK_TEST_VCPU_EXECVE=1 $R --cold busybox -- true 2>sigsys.err; echo "sigsys-status=$?"
echo "sigsys-reported=$(grep -c 'killed by its seccomp filter (SIGSYS)' sigsys.err)"
echo "digest-unchanged=$(test "$digest_before" = "$(sha256sum store/images/sha256/*.erofs | cut -d' ' -f1)" && echo yes)"
echo "husk-processes-left=$(husk_processes)"
echo "tmp-left=$(ls -A tmp | tr '\n' ' ')"
"#;

/// Also: SIGTERM sent to `husk run` reaches the container's process (here a shell that
/// traps it). A container's first process is PID 1 of its namespace, so, as with
/// `docker run` without `--init`, signals it has no handler for are ignored; a signal
/// death is checked through the OOM kill (SIGKILL from the kernel, reported as 137).
#[test]
fn run_streams_stdio_returns_exit_codes_and_isolates_the_image() {
    let out = run_sandbox_script(RUN_CHECKS, &[]);
    assert_eq!(out.value("true-status"), Some("0"), "{out}");
    assert_eq!(out.value("exit3-status"), Some("3"), "{out}");
    assert_eq!(out.value("kill9-status"), Some("137"), "{out}");
    assert_eq!(out.value("sigterm-status"), Some("42"), "{out}");
    assert_eq!(out.value("stdout"), Some("to-out"), "{out}");
    assert_eq!(out.value("stderr-has-to-err"), Some("1"), "{out}");
    assert_eq!(out.value("stdout-has-to-err"), Some("0"), "{out}");
    assert_eq!(out.value("stdin-status"), Some("0"), "{out}");
    assert_eq!(out.value("stdin-in"), out.value("stdin-out"), "{out}");
    assert_eq!(out.value("flags"), Some("bar,/tmp,1000:1000"), "{out}");
    assert!(
        out.value("image-path").is_some_and(|p| p.contains("/bin")),
        "{out}"
    );
    assert_eq!(out.value("pid"), Some("1"), "{out}");
    assert_eq!(out.value("write"), Some("x"), "{out}");
    assert_eq!(out.value("second-run"), Some("absent"), "{out}");
    assert_eq!(out.value("oom-status"), Some("137"), "{out}");
    assert_eq!(out.value("oom-reported"), Some("1"), "{out}");
    assert_eq!(out.value("timeout-status"), Some("124"), "{out}");
    assert_eq!(out.value("timeout-reported"), Some("1"), "{out}");
    assert_eq!(out.value("timeout-guest-log"), Some("1"), "{out}");
    assert_eq!(out.value("timeout-vcpu"), Some("1"), "{out}");
    assert_eq!(out.value("digest-unchanged"), Some("yes"), "{out}");
    assert_ne!(out.value("sigsys-status"), Some("0"), "{out}");
    assert_eq!(out.value("sigsys-reported"), Some("1"), "{out}");
    assert_eq!(out.value("husk-processes-left"), Some("0"), "{out}");
    assert_eq!(out.value("tmp-left"), Some(""), "{out}");
}
