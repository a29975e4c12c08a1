//! Integration tests of detached sandboxes and terminals: `husk run -d`, `exec`, `ps`,
//! `logs`, `stop`, `rm`, and `-t`, with the real kernel and agent. One test-host boot
//! runs every check; the script prints `key=value` lines that the test asserts on.
mod common;

use std::path::Path;

use common::run_sandbox_script;

/// Plays the user at a terminal (`pty-run`).
const GUEST_TOOL: &str = env!("CARGO_BIN_EXE_husk-guest-tool");

const DETACHED_CHECKS: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp HUSK_RUNTIME_DIR=$PWD/run
mkdir tmp
R="./husk run --kernel vmlinux"
# Wait (at most 5 minutes) until `husk ps -a` shows NAME with STATUS.
await() {
    for _ in $(seq 1 600); do
        ./husk ps -a | grep -Eq "^$1 .*($2)" && return 0
        sleep 0.5
    done
    return 1
}

name=$($R -d --name web busybox -- sh -c 'echo main-out; echo main-err >&2; echo up > /tmp/state; exec sleep 1000')
echo "detach-status=$?"
echo "detach-name=$name"
$R -d --name web busybox -- true 2>dup.txt; echo "dup-status=$?"
echo "dup-named=$(grep -c 'named web already exists' dup.txt)"
$R -d --name 'bad/name' busybox -- true 2>bad.txt; echo "bad-name-status=$?"
echo "bad-name-named=$(grep -c 'bad/name' bad.txt)"
# The monitor's own failure reaches the caller, and leaves no record.
$R -d --name nocpu --cpus 0 busybox -- true 2>nocpu.txt; echo "nocpu-status=$?"
echo "nocpu-named=$(grep -c 'failed to start.*cpus' nocpu.txt)"
echo "nocpu-said=$(tr '\n' ' ' < nocpu.txt | head -c 400)"
echo "nocpu-gone=$(test -e run/nocpu || echo yes)"
echo "ps-running=$(./husk ps | grep -c '^web .*running')"
# web's VMM runs jailed (the test runs as root): its supervisor's child has a uid of
# husk's range, no capability, its own pid namespace, a seccomp filter on every thread.
sup=$(for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^[^ ]*husk vmm .*--id husk-' && basename $p; done | head -1)
vmm=$(cat /proc/$sup/task/*/children 2>/dev/null | tr -d ' ' | head -1)
echo "vmm-uid-range=$(awk '/^Uid:/{print ($2 > 1900000000) ? "yes" : $2}' /proc/$vmm/status)"
echo "vmm-caps=$(awk '/^CapEff:/{print $2}' /proc/$vmm/status)"
echo "vmm-pid-in-ns=$(awk '/^NSpid:/{print $3}' /proc/$vmm/status)"
echo "vmm-unfiltered-threads=$(grep -L '^Seccomp:[[:space:]]*2$' /proc/$vmm/task/*/status | wc -l)"
echo "exec-sees-state=$(./husk exec web sh -c 'until [ -e /tmp/state ]; do sleep 0.1; done; cat /tmp/state')"
./husk exec web sh -c 'exit 7'; echo "exec-status=$?"
echo "exec-flags=$(./husk exec -e X=1 -w /tmp -u 1000:1000 web sh -c 'echo $X,$(pwd),$(id -u)')"
echo "exec-init=$(./husk exec web cat /proc/1/cmdline | tr '\0' ' ' | sed 's/ $//')"
echo "exec-stderr=$(./husk exec web sh -c 'echo to-err >&2' 2>&1 >/dev/null)"
head -c 4194304 /dev/urandom > in.bin
./husk exec -i web cat < in.bin > out.bin; echo "exec-stdin-status=$?"
echo "exec-stdin-same=$(cmp -s in.bin out.bin && echo yes)"
# Two execs at once, each with its own output.
./husk exec web sh -c 'sleep 1; echo A' > a.txt & a=$!
./husk exec web sh -c 'echo B' > b.txt
wait $a
echo "exec-parallel=$(cat a.txt)$(cat b.txt)"
# A signal to `husk exec` reaches the exec'd process.
./husk exec web sh -c 'trap "exit 42" TERM; echo ready; while :; do sleep 1; done' > trap.txt &
e=$!
while ! grep -q ready trap.txt; do sleep 0.2; done
kill -TERM $e; wait $e; echo "exec-sigterm-status=$?"
# A process that never reads its stdin holds up only its own input: another exec, and a
# signal to it, still get through. Its stdin stays in the pipe: the client, the monitor
# and the agent each hold at most a window of it, so 64 MiB are never all taken (a
# monitor that buffered without bound had taken them 7 s after the other exec here).
(head -c 67108864 /dev/zero; echo yes > stdin-all-taken) | ./husk exec -i web sleep 1000 &
stuck=$!
sleep 2
echo "exec-beside-unread-stdin=$(timeout 120 ./husk exec web echo alive)"
n=0
while [ ! -e stdin-all-taken ] && [ $n -lt 40 ]; do sleep 1; n=$((n + 1)); done
echo "unread-stdin-all-taken=$(cat stdin-all-taken 2>/dev/null || echo no)"
kill -TERM $stuck
n=0
while kill -0 $stuck 2>/dev/null && [ $n -lt 120 ]; do sleep 1; n=$((n + 1)); done
kill -0 $stuck 2>/dev/null && { echo "unread-stdin-exec=still-running"; kill -9 $stuck; }
wait $stuck; echo "unread-stdin-sigterm-status=$?"
echo "exec-tty=$(./husk exec -t web sh -c '[ -t 0 ] && [ -t 1 ] && echo term; stty size; tty' | tr -d '\r' | tr '\n' ' ' | sed 's/ $//')"
# At a terminal (husk-guest-tool plays the user): the window's size, a resize, typed
# input in raw mode, and Ctrl-C, through `husk exec -it` and `husk run -it`.
TTY_SCRIPT='stty size; echo ready; while [ "$(stty size)" = "30 100" ]; do sleep 0.1; done
echo "resized $(stty size)"; read x; echo "got $x"
trap "echo interrupted; exit 5" INT; echo waiting; while :; do sleep 0.1; done'
at_terminal() {
    out=$1; shift
    ./husk-guest-tool pty-run 30 100 'ready=resize:40x120' 'resized=type:hi\r' \
        'waiting=type:^C' -- "$@" sh -c "$TTY_SCRIPT" > "$out.raw"
    status=$?
    tr -d '\r' < "$out.raw" > "$out.txt"
    return $status
}
at_terminal pty-exec ./husk exec -it web; echo "pty-exec-status=$?"
at_terminal pty-run $R -it busybox --; echo "pty-run-status=$?"
for f in pty-exec pty-run; do
    echo "$f-size=$(grep -c '^30 100$' $f.txt)"
    echo "$f-resized=$(grep -c '^resized 40 120$' $f.txt)"
    echo "$f-typed=$(grep -c '^got hi$' $f.txt)"
    echo "$f-interrupted=$(grep -c 'interrupted$' $f.txt)"
done
./husk exec nosuch true 2>missing.txt; echo "exec-missing-status=$?"
echo "exec-missing-named=$(grep -c 'no sandbox named nosuch' missing.txt)"
./husk logs web > logs-out.txt 2> logs-err.txt
echo "logs-out=$(cat logs-out.txt)"
echo "logs-err=$(cat logs-err.txt)"
./husk rm web 2>rm-running.txt; echo "rm-running-status=$?"
echo "stop-out=$(./husk stop -t 1 web)"
echo "stop-status=$(./husk ps -a | grep '^web ' | sed 's/.*  //')"
./husk exec web true 2>stopped.txt; echo "exec-stopped-status=$?"
echo "exec-stopped-named=$(grep -c 'web is not running' stopped.txt)"
echo "stopped-files=$(ls -A run/web | sort | tr '\n' ' ' | sed 's/ $//')"

# A main command that ends by itself; its record stays until rm.
$R -d --name quick busybox -- sh -c 'echo bye; exit 3' >/dev/null
await quick 'exited [(]3[)]'; echo "quick-await=$?"
echo "quick-logs=$(./husk logs quick)"
echo "ps-hides-ended=$(./husk ps | grep -c '^quick ')"
./husk rm quick web >/dev/null; echo "rm-status=$?"
# logs -f follows a running sandbox's output until it ends.
$R -d --name follow busybox -- sh -c 'echo one; sleep 2; echo two >&2; sleep 2; echo three' >/dev/null
echo "follow=$(./husk logs -f follow 2>&1 | tr '\n' ' ' | sed 's/ $//')"
./husk rm follow >/dev/null
# --rm removes the record at the end; -t gives the main command a terminal.
$R -d --rm --name tmp1 -t busybox -- sh -c 'sleep 1' >/dev/null
for _ in $(seq 1 600); do [ -e run/tmp1 ] || break; sleep 0.5; done
echo "autorm-gone=$(test -e run/tmp1 || echo yes)"
# rm -f of a running sandbox; a monitor killed by SIGTERM stops its sandbox cleanly.
$R -d --name forced busybox -- sleep 1000 >/dev/null
echo "rm-force=$(./husk rm -f forced)"
$R -d --name termed busybox -- sleep 1000 >/dev/null
kill -TERM "$(sed -n 's/.*"monitor_pid": *\([0-9]*\).*/\1/p' run/termed/state.json)"
await termed 'exited|stopped'; echo "termed-await=$?"
echo "termed-files=$(ls -A run/termed | sort | tr '\n' ' ' | sed 's/ $//')"
./husk rm termed >/dev/null
# --timeout stops a detached sandbox.
$R -d --name limited --timeout 5 busybox -- sleep 1000 >/dev/null
await limited 'exited [(]137[)]'; echo "timeout-await=$?"
echo "timeout-logged=$(grep -c 'on --timeout' run/limited/monitor.log)"
./husk rm limited >/dev/null
# Foreground -t.
echo "run-tty=$($R -t busybox -- sh -c '[ -t 0 ] && [ -t 1 ] && echo term; stty size; tty' | tr -d '\r' | tr '\n' ' ' | sed 's/ $//')"

echo "husk-processes-left=$(husk_processes)"
husk_processes -v
echo "run-left=$(ls -A run | tr '\n' ' ')"
echo "tmp-left=$(ls -A tmp | tr '\n' ' ')"
"#;

#[test]
fn detached_sandboxes_exec_log_stop_and_leave_nothing() {
    let tool = [(Path::new(GUEST_TOOL), "husk-guest-tool")];
    let out = run_sandbox_script(DETACHED_CHECKS, &tool);
    let expect = [
        ("detach-status", "0"),
        ("detach-name", "web"),
        ("dup-status", "125"),
        ("dup-named", "1"),
        ("bad-name-status", "125"),
        ("bad-name-named", "1"),
        ("nocpu-status", "125"),
        ("nocpu-named", "1"),
        ("nocpu-gone", "yes"),
        ("ps-running", "1"),
        ("vmm-uid-range", "yes"),
        ("vmm-caps", "0000000000000000"),
        ("vmm-pid-in-ns", "1"),
        ("vmm-unfiltered-threads", "0"),
        ("exec-sees-state", "up"),
        ("exec-status", "7"),
        ("exec-flags", "1,/tmp,1000"),
        ("exec-init", "sleep 1000"),
        ("exec-stderr", "to-err"),
        ("exec-stdin-status", "0"),
        ("exec-stdin-same", "yes"),
        ("exec-parallel", "AB"),
        ("exec-sigterm-status", "42"),
        ("exec-beside-unread-stdin", "alive"),
        ("unread-stdin-all-taken", "no"),
        ("unread-stdin-sigterm-status", "143"),
        ("pty-exec-status", "5"),
        ("pty-run-status", "5"),
        ("exec-missing-status", "125"),
        ("exec-missing-named", "1"),
        ("logs-out", "main-out"),
        ("logs-err", "main-err"),
        ("rm-running-status", "1"),
        ("stop-out", "web"),
        // `sleep` as PID 1 ignores SIGTERM; the shutdown after the grace time kills it.
        ("stop-status", "exited (137)"),
        ("exec-stopped-status", "125"),
        ("exec-stopped-named", "1"),
        (
            "stopped-files",
            "monitor.log state.json stderr.log stdout.log",
        ),
        ("quick-await", "0"),
        ("quick-logs", "bye"),
        ("ps-hides-ended", "0"),
        ("rm-status", "0"),
        ("follow", "one two three"),
        ("autorm-gone", "yes"),
        ("rm-force", "forced"),
        ("termed-await", "0"),
        ("timeout-await", "0"),
        ("timeout-logged", "1"),
        (
            "termed-files",
            "monitor.log state.json stderr.log stdout.log",
        ),
        ("husk-processes-left", "0"),
        ("run-left", ""),
        ("tmp-left", ""),
    ];
    for terminal in ["pty-exec", "pty-run"] {
        for check in ["size", "resized", "typed", "interrupted"] {
            let key = format!("{terminal}-{check}");
            assert_eq!(out.value(&key), Some("1"), "{key}\n{out}");
        }
    }
    for (key, value) in expect {
        assert_eq!(out.value(key), Some(value), "{key}\n{out}");
    }
    // stdin and stdout are a terminal, named inside the container; with none on the
    // host side it is 24x80.
    for key in ["exec-tty", "run-tty"] {
        let tty = out.value(key).unwrap_or_default();
        assert!(tty.starts_with("term 24 80 /dev/pts/"), "{key}\n{out}");
    }
}
