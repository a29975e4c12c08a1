//! A guest that floods its vsock device with connections, booted for real next to a
//! second VM in the same process (`examples/neighbours.rs`, inside the KVM test host):
//! the flood gets no more host sockets than its budget, the process's descriptors stay
//! within what its VMs reserved, the neighbour starts and runs normally meanwhile, and
//! the flooded device, reset by its guest, works again.
//!
//! One boot of each VM; the steps are ordered through the host script: the guest of VM
//! `a` waits for the host on a mailbox disk (its vsock is busy with the flood), the host
//! waits for the guests' console lines. Guest lines reach stdout as `a-KEY=VALUE` and
//! `b-KEY=VALUE`.
mod common;

use std::path::{Path, PathBuf};

use common::device_script::GUEST_PRELUDE;
use common::{assets, run_script, Output};
use husk::devices::virtio::vsock::DEFAULT_MAX_SOCKETS;

/// The husk-guest-tool binary (static, so it runs in the guest and in the test host).
const GUEST_TOOL: &str = env!("CARGO_BIN_EXE_husk-guest-tool");

/// Connections the flooding guest opens at once.
const FLOOD: usize = 5000;

/// The example binary cargo built next to husk.
fn example() -> PathBuf {
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    let example = husk.with_file_name("examples").join("neighbours");
    assert!(
        example.is_file(),
        "{} not built: run `cargo build --release --examples`",
        example.display()
    );
    example
}

/// End of both guest scripts: a reset, which ends the VM cleanly.
const GUEST_END: &str = "\necho guest-done=yes\nreboot -f\n";

/// Guest `a`: 5,000 connections to host port 7000 held open; after the host's `go` a
/// reset of the vsock device by its driver (unbind and bind again) while they are held;
/// after `g2` a connection from the host (port 5001) and one to the host (port 7001).
const GUEST_A: &str = r#"
husk-guest-tool vsock-flood 2 7000 --count FLOOD --patience 300 --hold > /tmp/flood.out 2>&1 &
flood=$!
until grep -q holding=yes /tmp/flood.out; do kill -0 $flood 2>/dev/null || break; sleep 0.5; done
sed 's/^/guest-/' /tmp/flood.out
husk-guest-tool wait-for /dev/vda go --patience 900 | sed 's/^/guest-go-/'
driver=/sys/bus/virtio/drivers/vmw_vsock_virtio_transport
for d in $driver/virtio*; do dev=${d##*/}; done
echo "guest-vsock-device=$dev"
echo "$dev" > $driver/unbind
echo "$dev" > $driver/bind
echo "guest-rebound=$(ls -d $driver/virtio* | wc -l)"
echo guest-reset-done=yes
husk-guest-tool wait-for /dev/vda g2 --patience 900 | sed 's/^/guest-g2-/'
kill $flood
husk-guest-tool vsock-listen 5001 --recv 64K --send 64K | sed 's/^/guest-/'
husk-guest-tool vsock-connect 2 7001 --send 64K --half-close --patience 60 | sed 's/^/guest-/'
"#;

/// Guest `b`: one ordinary exchange with a host listener.
const GUEST_B: &str = r#"
husk-guest-tool vsock-connect 2 6000 --send 64K --half-close --patience 120 | sed 's/^/guest-/'
"#;

/// Host: both initramfs images, the host services, then the steps in order through the
/// example's commands (`say`).
const HOST: &str = r#"
for vm in a b; do
    mkdir -p g$vm/bin
    cp husk-guest-tool g$vm/bin/
    (cd g$vm && find bin guest.sh | cpio -o -H newc 2>/dev/null) > $vm-extra.cpio
    cat initrd.cpio $vm-extra.cpio > $vm.cpio
done
head -c 1048576 /dev/zero > mailbox.img
echo "host-nofile-hard=$(ulimit -Hn)"
echo "host-nofile-soft=$(ulimit -Sn)"
timeout 900 ./husk-guest-tool uds-hold "$PWD/a.sock_7000" > hold.out &
holder=$!
timeout 900 ./husk-guest-tool uds-listen "$PWD/a.sock_7001" --send 64K > a-listen.out &
a_listener=$!
timeout 900 ./husk-guest-tool uds-listen "$PWD/b.sock_6000" --send 64K > b-listen.out &
b_listener=$!
mkfifo ctl
./neighbours --kernel vmlinux --memory 256 --timeout 600 \
    --cmdline "quiet rdinit=/bin/busybox -- sh /guest.sh" < ctl > neighbours.out 2> neighbours.err &
vmm=$!
exec 4> ctl
say() { echo "$*" >&4; }
# Wait until FILE has a line with TEXT (10 minutes at most, less if the VMM ends).
wait_for() {
    n=0
    until grep -q "$2" "$1" 2>/dev/null; do
        kill -0 $vmm 2>/dev/null || return 1
        n=$((n + 1)); [ $n -gt 3000 ] && return 1
        sleep 0.2
    done
}
say start a a.cpio console-a.log "$PWD/a.sock" mailbox.img
wait_for console-a.log guest-vsock-flood-holding=yes && echo "host-saw-flood=yes"
say fds flood
say start b b.cpio console-b.log "$PWD/b.sock"
say wait b
wait_for neighbours.out vm-b-exit= && say fds holding
wait_for neighbours.out fds-holding= && printf go | dd of=mailbox.img conv=notrunc 2>/dev/null
wait_for console-a.log guest-reset-done=yes && say fds after-reset
wait_for neighbours.out fds-after-reset= && printf g2 | dd of=mailbox.img conv=notrunc 2>/dev/null
./husk-guest-tool uds-connect "$PWD/a.sock" 5001 --send 64K --recv 64K --patience 300 > a-connect.out
say wait a
exec 4>&-
wait $vmm
echo "neighbours-status=$?"
# Both VMs are gone: a listener still waiting will never be called.
kill $holder $a_listener $b_listener 2>/dev/null
wait
cat neighbours.out a-connect.out
sed 's/^/a-/' a-listen.out
sed 's/^/b-/' b-listen.out
echo "--- neighbours stderr"; cat neighbours.err
for vm in a b; do echo "--- console $vm"; tr -d '\r' < console-$vm.log | sed "s/^guest-/$vm-/"; done
"#;

fn script() -> String {
    let guest = |body: &str| format!("{GUEST_PRELUDE}{body}{GUEST_END}");
    let guest_a = GUEST_A.replace("FLOOD", &FLOOD.to_string());
    format!(
        "mkdir -p ga gb\ncat > ga/guest.sh <<'GUEST_EOF'\n{}GUEST_EOF\n\
         cat > gb/guest.sh <<'GUEST_EOF'\n{}GUEST_EOF\n{HOST}",
        guest(&guest_a),
        guest(GUEST_B)
    )
}

fn number(out: &Output, key: &str) -> usize {
    out.value(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in\n{out}"))
}

#[test]
fn guest_connection_flood_stays_within_its_budget_and_spares_its_neighbour_and_its_device() {
    let (assets, example) = (assets(), example());
    let mut files = assets.files();
    files.push((Path::new(GUEST_TOOL), "husk-guest-tool"));
    files.push((example.as_path(), "neighbours"));
    let out = run_script(&script(), &files);
    // The measurements, for a reader of `--nocapture` (the test asserts on them below).
    let keys = [
        "fds-at-start",
        "fds-flood",
        "fds-holding",
        "fds-after-reset",
        "fds-max",
    ];
    let keys = keys
        .iter()
        .chain(&["vm-a-reserved-fds", "vm-b-reserved-fds", "nofile-soft"]);
    keys.for_each(|k| eprintln!("{k}={}", out.value(k).unwrap_or("?")));
    assert_eq!(out.value("neighbours-status"), Some("0"), "{out}");
    // husk raised its soft descriptor limit to the hard one.
    assert_eq!(
        out.value("nofile-soft"),
        out.value("host-nofile-hard"),
        "{out}"
    );
    // The flood got exactly the budget; every other connection was refused (RST).
    assert_eq!(out.value("vm-a-started"), Some("yes"), "{out}");
    assert_eq!(out.value("host-saw-flood"), Some("yes"), "{out}");
    let budget = DEFAULT_MAX_SOCKETS;
    assert_eq!(number(&out, "a-vsock-flood-connected"), budget, "{out}");
    assert_eq!(
        number(&out, "a-vsock-flood-refused"),
        FLOOD - budget,
        "{out}"
    );
    assert_eq!(out.value("a-vsock-flood-errors"), Some("0"), "{out}");
    assert_eq!(out.value("a-vsock-flood-pending"), Some("0"), "{out}");
    // The neighbour started and ran normally during the flood.
    assert_eq!(out.value("vm-b-started"), Some("yes"), "{out}");
    assert_eq!(out.value("vm-b-exit"), Some("ok"), "{out}");
    assert_eq!(out.value("b-vsock-connect-status"), Some("ok"), "{out}");
    assert_eq!(
        out.value("b-vsock-connect-recv-bytes"),
        Some("65536"),
        "{out}"
    );
    assert_eq!(out.value("b-uds-listen-recv-bytes"), Some("65536"), "{out}");
    // The flood's host sockets, and nothing of the neighbour, stayed until the reset,
    // which closed them all.
    assert_eq!(
        number(&out, "fds-flood"),
        number(&out, "fds-holding"),
        "{out}"
    );
    let released = number(&out, "fds-holding") - number(&out, "fds-after-reset");
    assert_eq!(released, budget, "{out}");
    // The process never held more than its VMs reserved.
    let reserved = number(&out, "vm-a-reserved-fds") + number(&out, "vm-b-reserved-fds");
    assert!(
        number(&out, "fds-max") <= number(&out, "fds-at-start") + reserved,
        "{out}"
    );
    // The reset device works both ways.
    assert_eq!(out.value("a-rebound"), Some("1"), "{out}");
    assert_eq!(out.value("uds-connect-status"), Some("ok"), "{out}");
    assert_eq!(out.value("uds-connect-recv-bytes"), Some("65536"), "{out}");
    assert_eq!(
        out.value("a-vsock-listen-recv-bytes"),
        Some("65536"),
        "{out}"
    );
    assert_eq!(out.value("a-vsock-connect-status"), Some("ok"), "{out}");
    assert_eq!(
        out.value("a-vsock-connect-recv-bytes"),
        Some("65536"),
        "{out}"
    );
    assert_eq!(out.value("vm-a-exit"), Some("ok"), "{out}");
}
