//! `husk run --net nat`, `-p`, `--dns`, `--allow` and `--net link`'s isolation with the
//! real kernel, agent, TAP and nftables, inside network namespaces the script makes: a
//! "host" namespace (where husk runs, with a private mount namespace whose
//! /etc/resolv.conf names a loopback resolver and the stub) joined by a veth pair to a
//! "world" namespace that runs an HTTP server and a DNS stub (Debian's dnsmasq). No
//! packet can go anywhere else: those namespaces have no other route. One test-host
//! boot runs every check; the script prints `key=value` lines.
//!
//! The test host has no nftables, dnsmasq or mkfs.ext4: this machine's go in with their
//! libraries, and the test host kernel's nftables modules with
//! `scripts/testhost-modules`.
mod common;

use std::path::Path;

use common::{
    mkfs_ext4_files, run_sandbox_script, testhost_module_files, tool_files, LOAD_MODULES,
    MKFS_EXT4_ON_PATH,
};

const SETUP: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp HUSK_RUNTIME_DIR=$PWD/run
mkdir tmp bin
for tool in nft dnsmasq; do
    printf '#!/bin/sh\nexec %s/%s/ld.so --library-path %s/%s %s/%s/%s "$@"\n' \
        "$PWD" $tool "$PWD" $tool "$PWD" $tool $tool > bin/$tool
    chmod 755 bin/$tool
done
export PATH=$PWD/bin:$PATH
# A file to bind a test resolv.conf over (the test host has none).
[ -e /etc/resolv.conf ] || { mkdir -p /etc && : > /etc/resolv.conf; }
"#;

/// Runs in new network and mount namespaces ("host"), as `sh host.sh`.
const HOST: &str = r#"
mount --make-rprivate / 2>/dev/null
printf 'nameserver 127.0.0.53\nnameserver 10.99.0.3\n' > resolv.test
mount --bind resolv.test /etc/resolv.conf
ip link set lo up
# The "world": a namespace of its own behind a veth pair; it routes the sandboxes'
# links back to the host, so only husk's rules keep a link-only guest out of it.
unshare -n sleep 100000 & world=$!
sleep 0.5
ip link add up0 type veth
peer=$(ip -o link | sed -n 's/^[0-9]*: \([^@:]*\)@up0:.*/\1/p')
ip link set "$peer" netns $world
ip addr add 10.99.0.1/24 dev up0; ip link set up0 up
W="nsenter -t $world -n"
$W sh -c "ip link set lo up; ip addr add 10.99.0.2/24 dev $peer; ip addr add 10.99.0.3/24 dev $peer
          ip link set $peer up; ip route add 10.213.0.0/16 via 10.99.0.1"
mkdir www; echo hello-through-nat > www/greeting
$W busybox httpd -f -p 10.99.0.2:80 -h "$PWD/www" & httpd=$!
$W dnsmasq --no-daemon --conf-file=/dev/null --user= --pid-file --no-resolv --no-hosts \
    --listen-address=10.99.0.3 --bind-interfaces --local=/test/ --address=/web.test/10.99.0.2 \
    2> dnsmasq.log & dnsmasq=$!
sleep 1
tables() { nft list tables ip | grep -c ' husk_'; }
R="./husk run --kernel vmlinux --timeout 300"

# NAT with the host's DNS servers: the loopback one is dropped, the stub kept; a page
# fetched by name. (busybox wget without -T: Debian's crashes with it.)
cat > nat.sh <<'GUEST'
echo "nat-resolv=$(grep nameserver /etc/resolv.conf | tr '\n' ' ')"
echo "nat-lookup=$(nslookup web.test | grep -c 10.99.0.2)"
echo "nat-page=$(timeout 60 wget -q -O - http://web.test/greeting)"
GUEST
$R -i --net nat busybox -- sh < nat.sh > nat.out; echo "nat-status=$?"
cat nat.out
echo "tables-after-run=$(tables)"
echo "ip-forward=$(cat /proc/sys/net/ipv4/ip_forward)"

# --dns and --allow: the DNS server stays reachable, the web server (not allowed) not.
cat > allow.sh <<'GUEST'
echo "allow-lookup=$(nslookup web.test | grep -c 10.99.0.2)"
timeout 10 wget -q -O - http://10.99.0.2/greeting > page || echo "allow-page=blocked"
GUEST
$R -i --net nat --dns 10.99.0.3 --allow 192.0.2.0/24 busybox -- sh < allow.sh > allow.out
cat allow.out

# A link-only guest: the world would answer (it routes 10.213/16 back), husk's table
# keeps it out.
$R --net link busybox -- sh -c 'timeout 10 wget -q -O - http://10.99.0.2/greeting || echo isolated' > link.out
echo "link=$(cat link.out)"
echo "tables-after-link=$(tables)"

# -p on a detached sandbox: the world and the host itself reach the guest's server.
./husk run --kernel vmlinux -d --name srv --net nat -p 8080:8000 busybox -- sh -c \
    'mkdir /w && echo served-by-guest > /w/index.html && exec httpd -f -p 8000 -h /w' > /dev/null
echo "srv-status=$?"
n=0
until wget -q -O - http://127.0.0.1:8080/index.html > p-host.out 2>/dev/null || [ $n -ge 120 ]; do
    sleep 0.5; n=$((n + 1))
done
echo "p-host=$(cat p-host.out)"
echo "p-world=$($W wget -q -O - http://10.99.0.1:8080/index.html)"
echo "srv-tables=$(tables)"
./husk stop -t 0 srv > /dev/null
echo "stopped-tables=$(tables)"
echo "stopped-port=$(wget -q -O - http://127.0.0.1:8080/index.html 2>/dev/null || echo closed)"
./husk rm srv

# A killed monitor leaves its table behind; the next sandbox's start removes it.
./husk run --kernel vmlinux -d --name victim --net nat busybox -- sleep 1000 > /dev/null
monitor=$(sed -n 's/.*"monitor_pid": *\([0-9]*\).*/\1/p' run/victim/state.json)
kill -9 "$monitor"
while kill -0 "$monitor" 2>/dev/null; do sleep 0.1; done
echo "killed-tables=$(tables)"
$R --net nat busybox -- true; echo "next-status=$?"
echo "cleaned-tables=$(tables)"
./husk rm victim

# The README's CI job (examples/ci-job.sh): the checkout in, a dependency fetched by
# name from the world's server through NAT, a build, the artifact out.
mkdir -p checkout/src ci-bin
echo 'int main() {}' > checkout/src/main.c
cat > checkout/build.sh <<'BUILD'
set -e
wget -q -O deps.txt "$DEPS_URL"
mkdir -p out
{ cat deps.txt; wc -c < src/main.c; } > out/artifact.txt
BUILD
echo dependency-from-world > www/deps.txt
ln -s "$PWD/husk" ci-bin/husk
PATH=$PWD/ci-bin:$PATH HUSK_RUN_OPTS="--kernel vmlinux"     sh ./ci-job.sh checkout busybox http://web.test/deps.txt artifacts > ci.out 2>&1
echo "ci-job-status=$?"
cat ci.out >&2
echo "ci-job-artifact=$(tr '\n' ' ' < artifacts/artifact.txt)"
echo "ci-job-left=$(./husk ps -a | grep -c ci-job)"

kill $httpd $dnsmasq $world
"#;

#[test]
fn nat_reaches_a_world_namespace_by_name_ports_publish_and_rules_go_with_the_sandbox() {
    let example = common::repo_dir().join("examples/ci-job.sh");
    let mut owned = vec![(example, "ci-job.sh".to_string())];
    owned.extend(tool_files("nft", "nft", "nftables"));
    // The CI job keeps its writable layer on a scratch disk (`--disk`).
    owned.extend(mkfs_ext4_files());
    owned.extend(tool_files("dnsmasq", "dnsmasq", "dnsmasq-base"));
    owned.extend(testhost_module_files(&[
        "nf_tables",
        "nft_chain_nat",
        "nft_masq",
        "nft_ct",
    ]));
    let files: Vec<(&Path, &str)> = owned
        .iter()
        .map(|(p, n)| (p.as_path(), n.as_str()))
        .collect();
    let script = format!(
        "{SETUP}{MKFS_EXT4_ON_PATH}{LOAD_MODULES}cat > host.sh <<'HOST'\n{HOST}\nHOST\nunshare -mn sh host.sh\n\
         echo \"husk-processes-left=$(husk_processes)\"\n"
    );
    let out = run_sandbox_script(&script, &files);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    assert_eq!(out.value("module-failed"), None, "{out}");
    is("nat-status", "0");
    is("nat-resolv", "nameserver 10.99.0.3 ");
    is("nat-lookup", "1");
    is("nat-page", "hello-through-nat");
    is("tables-after-run", "0");
    is("ip-forward", "1");
    is("allow-lookup", "1");
    is("allow-page", "blocked");
    is("link", "isolated");
    is("tables-after-link", "0");
    is("srv-status", "0");
    is("p-host", "served-by-guest");
    is("p-world", "served-by-guest");
    is("srv-tables", "1");
    is("stopped-tables", "0");
    is("stopped-port", "closed");
    is("killed-tables", "1");
    is("next-status", "0");
    is("cleaned-tables", "0");
    is("ci-job-status", "0");
    is("ci-job-artifact", "dependency-from-world 14 ");
    is("ci-job-left", "0");
    is("husk-processes-left", "0");
}
