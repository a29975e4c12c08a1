//! `SendCtrlAltDel` to a detached sandbox's VMM (its API socket in the VM's runtime
//! folder) shuts the guest down through the agent, not the kernel's immediate restart:
//! a container's writes that were never synced reach the scratch disk's file, the VM
//! ends by itself, `husk ps` shows the sandbox ended, and a container that ignores
//! SIGTERM holds the guest only for the agent's grace. One test-host boot runs both
//! sandboxes; the script prints `key=value` lines that the test asserts on.
mod common;

use std::path::Path;

use common::{mkfs_ext4_files, run_sandbox_script, tool_files, API_CLIENT, MKFS_EXT4_ON_PATH};

const CHECKS: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp HUSK_RUNTIME_DIR=$PWD/run
mkdir tmp
# A guest that ignores the keys is stopped by --timeout, which `husk ps` then shows.
R="./husk run --kernel vmlinux -d --timeout 600"
wait_for() { n=0; until grep -q "$2" "$1" 2>/dev/null; do n=$((n+1)); [ $n -gt 1500 ] && return 1; sleep 0.2; done; }
now() { cut -d' ' -f1 /proc/uptime; }
status_of() { ./husk ps -a | grep "^$1 " | sed 's/.*  //'; }
ended() { status_of "$1" | grep -Eq '^(exited|failed|stopped)'; }
# Presses Ctrl+Alt+Del on sandbox $1's VMM, then waits (at most 5 minutes) for the
# sandbox to end on its own; prints $1-cad-status, $1-end-seconds and $1-ps.
press_cad() {
    SOCK=$(ls run/$1/husk-*/api.sock | head -n 1)
    t0=$(now)
    call "$1-cad" PUT /actions '{"action_type": "SendCtrlAltDel"}'
    n=0; until ended "$1" || [ $n -ge 600 ]; do sleep 0.5; n=$((n+1)); done
    echo "$1-end-seconds=$(awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%d", b - a + 0.5}')"
    echo "$1-ps=$(status_of "$1")"
}

# 1 MiB written to the scratch disk without a sync by a container that ends on SIGTERM;
# the pattern is made in the guest, so only that write can put it into the disk's file.
$R --name unsynced --disk 64 --console "$PWD/unsynced-console.log" busybox -- \
    sh -c 'trap "exit 0" TERM; yes CAD-$((6 * 7))-UNSYNCED | head -c 1048576 > /unsynced.txt
        echo written; while :; do sleep 1; done' > /dev/null
echo "unsynced-detach-status=$?"
wait_for run/unsynced/stdout.log written && echo "unsynced-written=yes"
# The monitor removes the VM's folder at the end; a second link keeps the disk's file.
ln run/unsynced/husk-*/scratch.ext4 unsynced.ext4 && echo "unsynced-disk-kept=yes"
echo "unsynced-pattern-before=$(grep -ac CAD-42-UNSYNCED unsynced.ext4)"
press_cad unsynced
echo "unsynced-pattern-after=$(grep -ac CAD-42-UNSYNCED unsynced.ext4)"
echo "unsynced-vm-folder-left=$(ls -d run/unsynced/husk-* 2>/dev/null | wc -l)"
echo "unsynced-agent-stopped=$(grep -c 'Ctrl+Alt+Del: stopping containers' unsynced-console.log)"

# A container that ignores SIGTERM (sleep inherits the ignored disposition).
$R --name stubborn --console "$PWD/stubborn-console.log" busybox -- \
    sh -c "trap '' TERM; echo ready; sleep 1000" > /dev/null
echo "stubborn-detach-status=$?"
wait_for run/stubborn/stdout.log ready && echo "stubborn-ready=yes"
press_cad stubborn
echo "stubborn-agent-stopped=$(grep -c 'Ctrl+Alt+Del: stopping containers' stubborn-console.log)"

n=0; until [ "$(husk_processes)" = 0 ] || [ $n -ge 60 ]; do sleep 0.5; n=$((n+1)); done
husk_processes -v
echo "husk-processes-left=$(husk_processes)"
echo "== unsynced console"; tr -d '\r' < unsynced-console.log | tail -n 8
echo "== stubborn console"; tr -d '\r' < stubborn-console.log | tail -n 8
"#;

#[test]
fn send_ctrl_alt_del_to_a_sandbox_syncs_its_disk_and_ends_the_vm_within_the_grace() {
    let mkfs = mkfs_ext4_files();
    let curl = tool_files("curl", "curl", "curl");
    let files: Vec<(&Path, &str)> = mkfs
        .iter()
        .chain(curl.iter())
        .map(|(p, n)| (p.as_path(), n.as_str()))
        .collect();
    let script = format!("{MKFS_EXT4_ON_PATH}{API_CLIENT}{CHECKS}");
    let out = run_sandbox_script(&script, &files);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    let seconds = |key: &str| -> u64 {
        out.value(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key}\n{out}"))
    };
    eprintln!(
        "unsynced pattern lines in the disk file before the keys: {}; sandbox ended {} s \
         after them (ignoring SIGTERM: {} s)",
        out.value("unsynced-pattern-before").unwrap_or("?"),
        out.value("unsynced-end-seconds").unwrap_or("?"),
        out.value("stubborn-end-seconds").unwrap_or("?"),
    );
    is("unsynced-detach-status", "0");
    is("unsynced-written", "yes");
    is("unsynced-disk-kept", "yes");
    is("unsynced-cad-status", "204");
    // The agent took the keys (not the kernel's restart); its container handles SIGTERM
    // and ends at once.
    is("unsynced-agent-stopped", "1");
    // Every 16-byte line of the 1 MiB written is in the disk's file.
    is("unsynced-pattern-after", "65536");
    is("unsynced-vm-folder-left", "0");
    let ps = out.value("unsynced-ps").unwrap_or_default();
    assert!(
        ps.starts_with("exited") || ps.starts_with("failed"),
        "{out}"
    );
    is("stubborn-detach-status", "0");
    is("stubborn-ready", "yes");
    is("stubborn-cad-status", "204");
    is("stubborn-agent-stopped", "1");
    // Held for the grace (3 s), then killed: the VM ended no sooner.
    assert!(seconds("stubborn-end-seconds") >= 3, "{out}");
    let ps = out.value("stubborn-ps").unwrap_or_default();
    assert!(
        ps.starts_with("exited") || ps.starts_with("failed"),
        "{out}"
    );
    // Bounded by the grace (3 s) and the VM's teardown, in a test host ~10x slower than
    // hardware; a guest that ignored the keys would take the 600 s --timeout.
    assert!(seconds("unsynced-end-seconds") < 120, "{out}");
    assert!(seconds("stubborn-end-seconds") < 120, "{out}");
    is("husk-processes-left", "0");
}
