//! The TAP a sandbox makes for a jail's uid slot (`husk vmm --slot-tap`), in the KVM
//! test host: the jail's supervisor removes it when the jailed VMM ends once the slot
//! is free (the caller that reserved it is gone, as when it was killed between making
//! the TAP and its VM's claim), and leaves it while the slot is held (this machine's
//! iproute2 and flock carried in).
mod common;

use std::path::Path;

use common::{assets, run_script, tool_files};

/// A jail's slot TAP (`--slot-tap`: made persistent for the jail's uid by a sandbox,
/// perhaps never claimed) with no VM at all: the supervisor removes it when the jailed
/// process ends while nobody holds the slot's lock (its caller is gone), and leaves it
/// while the lock is held (that caller removes its own TAP).
const SLOT_TAP: &str = r#"
ip() { iproute/ld.so --library-path iproute iproute/ip "$@"; }
flock() { flk/ld.so --library-path flk flk/flock "$@"; }
mkdir -p ids jrun && chown 1000:1001 jrun && touch ids/uid-7.lock
slot_vmm() {
    ip tuntap add huskj7 mode tap user 1000
    ./husk vmm --api-sock "$PWD/jrun/api.sock" --jail /tmp/husk-jail-slot --uid 1000 \
        --gid 1001 --bind "$PWD/jrun:rw" --slot-tap huskj7 --slot-lock "$PWD/ids/uid-7.lock" \
        2>> slot.err &
    sup=$!
    n=0; until [ -S jrun/api.sock ]; do n=$((n + 1)); [ $n -gt 300 ] && break; sleep 0.1; done
    kill -TERM $sup
    wait $sup
}
slot_vmm
echo "free-slot-tap=$(test -e /sys/class/net/huskj7 && echo left || echo removed)"
exec 9> ids/uid-7.lock
flock -x 9
slot_vmm
echo "held-slot-tap=$(test -e /sys/class/net/huskj7 && echo left || echo removed)"
flock -u 9
ip tuntap del huskj7 mode tap
echo "slot-err=$(cat slot.err | tr '\n' ' ')"
echo "jail-dir-left=$(test -e /tmp/husk-jail-slot && echo yes || echo no)"
echo "husk-processes-left=$(husk_processes)"
"#;

#[test]
fn a_slot_tap_goes_with_its_vmm_once_the_slot_is_free_and_stays_while_it_is_held() {
    let mut tools = tool_files("ip", "iproute", "iproute2");
    tools.extend(tool_files("flock", "flk", "util-linux"));
    let mut files: Vec<(&Path, &str)> = tools
        .iter()
        .map(|(p, n)| (p.as_path(), n.as_str()))
        .collect();
    let assets = assets();
    files.extend(assets.files());
    let out = run_script(SLOT_TAP, &files);
    assert_eq!(out.value("free-slot-tap"), Some("removed"), "{out}");
    assert_eq!(out.value("held-slot-tap"), Some("left"), "{out}");
    assert_eq!(out.value("jail-dir-left"), Some("no"), "{out}");
    assert_eq!(out.value("husk-processes-left"), Some("0"), "{out}");
}
