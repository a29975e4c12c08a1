//! `husk run --net link --net-rate` measured: a sandbox's card capped at 1 MiB/s each
//! way moves 4 MiB of TCP to the host and 4 MiB back over a real TAP, in a network
//! namespace the test makes, and each direction's rate stays under the cap (only an
//! upper bound: a slow host lowers throughput, it never raises it) while the bytes
//! arrive intact (position-dependent pattern checksums on both ends). An uncapped run
//! in the same boot shows what the link moves without the cap. In the KVM test host.
//!
//! The container runs `husk-guest-tool`, which comes in on the sandbox's stdin.
mod common;

use std::path::Path;

use common::{run_sandbox_script, Output};

/// The husk-guest-tool binary (static: it runs in the guest and in the test host).
const GUEST_TOOL: &str = env!("CARGO_BIN_EXE_husk-guest-tool");

const SCRIPT: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp
mkdir tmp
chmod 755 husk-guest-tool
echo "pattern-sum=$(./husk-guest-tool pattern-sum 4M | cut -d= -f2)"
cat > netns.sh <<'NETNS_EOF'
mount --make-rprivate /
mount -t sysfs sysfs /sys
ip link set lo up
size=$(wc -c < husk-guest-tool)
# In the container: take the tool from stdin, send 4 MiB to the host's end of the link,
# then receive 4 MiB until the host closes.
guest="head -c $size > /tmp/tool && chmod 755 /tmp/tool &&
gw=\$(ip route | awk '/^default/ {print \$3}') &&
/tmp/tool tcp-connect \$gw 7002 --send 4M --half-close --patience 120"
# transfer NAME [husk run options]: one sandbox, the host's listener beside it.
transfer() {
    name=$1; shift
    timeout 330 ./husk-guest-tool tcp-listen 7002 --send 4M --half-close > host-$name.out 2>&1 &
    listener=$!
    ./husk run --kernel vmlinux --timeout 300 -i --net link "$@" busybox -- sh -c "$guest" \
        < husk-guest-tool > guest-$name.out 2> guest-$name.err
    echo "$name-status=$?"
    wait $listener
    sed "s/^/$name-host-/" host-$name.out
    sed "s/^/$name-guest-/" guest-$name.out
    echo "$name-err=$(head -c 300 guest-$name.err | tr '\n' ' ')"
}
transfer capped --net-rate 1M/s
transfer free --cold
echo "taps-left=$(ls /sys/class/net | grep -c '^husk')"
NETNS_EOF
unshare -n -m sh netns.sh
echo "husk-processes-left=$(husk_processes)"
"#;

const MIB: f64 = 1_048_576.0;

/// MiB/s of a `-bytes`/`-secs` pair named `prefix`.
fn rate(out: &Output, prefix: &str) -> f64 {
    let num = |key: &str| -> f64 {
        out.value(&format!("{prefix}-{key}"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}-{key}\n{out}"))
    };
    num("bytes") / num("secs").max(1e-3) / MIB
}

#[test]
fn net_rate_caps_both_directions_of_a_tap_and_the_bytes_arrive_intact() {
    let files: [(&Path, &str); 1] = [(Path::new(GUEST_TOOL), "husk-guest-tool")];
    let out = run_sandbox_script(SCRIPT, &files);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    let sum = out.value("pattern-sum").unwrap_or("none").to_string();
    for run in ["capped", "free"] {
        is(&format!("{run}-status"), "0");
        is(&format!("{run}-host-tcp-listen-recv-bytes"), "4194304");
        is(&format!("{run}-host-tcp-listen-recv-sum"), &sum);
        is(&format!("{run}-guest-tcp-connect-recv-bytes"), "4194304");
        is(&format!("{run}-guest-tcp-connect-recv-sum"), &sum);
    }
    let tx = rate(&out, "capped-host-tcp-listen-recv");
    let rx = rate(&out, "capped-guest-tcp-connect-recv");
    let (free_tx, free_rx) = (
        rate(&out, "free-host-tcp-listen-recv"),
        rate(&out, "free-guest-tcp-connect-recv"),
    );
    eprintln!(
        "--net-rate 1M/s: guest->host {tx:.2} MiB/s, host->guest {rx:.2} MiB/s; \
         uncapped: {free_tx:.2} and {free_rx:.2} MiB/s"
    );
    // The bucket (1 MiB, refilled over 1 s) starts full and a frame may take it one
    // 64 KiB GSO frame into debt, so 4 MiB can pass in (4 - 1 - 1/16) s at the least:
    // 1.36 MiB/s; 5% more for the clocks. Frames count with their headers, so the
    // payload's rate is lower still.
    let most = 4.0 / (4.0 - 1.0 - 1.0 / 16.0) * 1.05;
    assert!(tx <= most, "guest->host {tx} MiB/s\n{out}");
    assert!(rx <= most, "host->guest {rx} MiB/s\n{out}");
    is("taps-left", "0");
    is("husk-processes-left", "0");
}
