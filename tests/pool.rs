//! Pools of parked sandboxes through the real path, in one test-host boot: `husk pool
//! add` parks a sandbox, `husk run` claims it (its command, env, cwd, user, stdin and
//! exit code as in a sandbox of its own, each claim a sandbox of its own identity), the
//! pool refills, the claimed sandbox is gone after its command, a `husk run` killed
//! mid-command takes its claimed sandbox down, `husk run -d` takes a parked sandbox as
//! its named detached sandbox, a changed kernel makes the pool stale,
//! `husk pool add` again resizes it, and `husk pool rm` leaves nothing behind.
mod common;

use common::run_sandbox_script;

const POOL_CHECKS: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp HUSK_RUNTIME_DIR=$PWD/run HUSK_CACHE_DIR=$PWD/cache
mkdir tmp
cp vmlinux kernel
R="./husk run --kernel kernel"
sandboxes() { ps -eo args | grep -c '^[^ ]*husk __monitor'; }
parked() { ./husk pool ls | awk 'NR > 1 { n += $5 } END { print n + 0 }'; }
wait_parked() {
    i=0; while [ "$(parked)" -lt 1 ] && [ $i -lt 600 ]; do usleep 100000; i=$((i+1)); done
    parked
}
pooled() { tr -d ' \n' < "$1" | grep -o '"pooled":[a-z]*' | cut -d: -f2; }

./husk pool add --kernel kernel --size 1 busybox > key 2> add.err; echo "add-status=$?"
echo "add-said=$(grep -c 'parked sandbox 1 of 1 ready' add.err)"
echo "ls-parked=$(parked)"
echo "ps-lists=$(./husk ps -a | tail -n +2 | wc -l)"
echo "sandboxes-parked=$(sandboxes)"

# A claim: the run's own command, env, cwd, user and exit code.
$R --timings c1.json -e FOO=bar -w /tmp -u 1000:1000 busybox -- \
    sh -c 'echo $FOO $(pwd) $(id -u); hostname; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n"; echo; exit 3' > c1
echo "c1-status=$?"; echo "c1-pooled=$(pooled c1.json)"; echo "c1-out=$(sed -n 1p c1)"
echo "refilled-1=$(wait_parked)"
$R --timings c2.json busybox -- sh -c 'hostname; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n"; echo' > c2
echo "c2-status=$?"; echo "c2-pooled=$(pooled c2.json)"
echo "hostname-differs=$(test "$(sed -n 2p c1)" != "$(sed -n 1p c2)" && echo yes)"
echo "random-differs=$(test "$(sed -n 3p c1)" != "$(sed -n 2p c2)" && echo yes)"
wait_parked > /dev/null
echo "stdin=$(echo through-stdin | $R -i --timings c3.json busybox -- cat)"
echo "c3-pooled=$(pooled c3.json)"
wait_parked > /dev/null
# A claimed sandbox goes once its command ends: one (the parked one) is left.
i=0; while [ "$(sandboxes)" -gt 1 ] && [ $i -lt 300 ]; do usleep 100000; i=$((i+1)); done
echo "sandboxes-after-runs=$(sandboxes)"
echo "pool-folders=$(ls run/.pool/$(cat key) | grep -vc pool.json)"

# --no-pool starts a sandbox of its own.
$R --timings np.json --no-pool busybox -- true; echo "np-status=$?"
echo "np-pooled=$(pooled np.json)"

# husk run -d takes a parked sandbox: it becomes the named detached sandbox (listed,
# its logs, exec, stop, rm as any), and a replacement parks. Its VM's runtime folder
# is outside the renamed folder, and goes with it.
wait_parked > /dev/null
$R -d --name adopted -e FOO=d busybox -- sh -c 'echo started-$FOO; exec sleep 600' > d.out
echo "d-status=$?"; echo "d-said=$(cat d.out)"
echo "d-folder=$(test -f run/adopted/state.json && echo yes)"
echo "d-ps=$(./husk ps | awk '$1 == "adopted"' | grep -c running)"
i=0; while ! ./husk logs adopted | grep -q started-d && [ $i -lt 300 ]; do usleep 100000; i=$((i+1)); done
echo "d-logs=$(./husk logs adopted)"
echo "d-exec=$(./husk exec adopted sh -c 'echo in-$FOO')"
echo "d-refilled=$(wait_parked)"
echo "d-pool-folders=$(ls run/.pool/$(cat key) | grep -vc pool.json)"
$R -d --name adopted busybox -- true > dup.out 2> dup.err; echo "dup-status=$?"
echo "dup-said=$(grep -c 'sandbox named adopted exists' dup.err)"
echo "dup-parked=$(parked)"
./husk stop adopted > /dev/null; echo "d-stop=$?"
./husk rm adopted > /dev/null; echo "d-rm=$?"
echo "d-gone=$(test -e run/adopted || echo yes)"
echo "d-runtime-left=$(ls run/.run | wc -l)"
echo "d-sandboxes=$(sandboxes)"

# A husk run killed mid-command: its claimed sandbox is stopped, and replaced.
$R busybox -- sleep 600 & pid=$!
i=0; while [ "$(parked)" -gt 0 ] && [ $i -lt 300 ]; do usleep 100000; i=$((i+1)); done
sleep 1
kill -9 $pid; wait $pid 2>/dev/null
echo "refilled-after-kill=$(wait_parked)"
i=0; while [ "$(sandboxes)" -gt 1 ] && [ $i -lt 300 ]; do usleep 100000; i=$((i+1)); done
echo "sandboxes-after-kill=$(sandboxes)"

# Another kernel file makes the pool stale: not claimed, said once, refilled.
printf 'x' >> kernel
$R --timings s.json busybox -- true 2> stale.err; echo "stale-status=$?"
echo "stale-pooled=$(pooled s.json)"
echo "stale-said=$(grep -c 'pool of busybox was made with another kernel' stale.err)"
echo "refilled-after-stale=$(wait_parked)"

# husk pool add again sets the size: up, then down.
./husk pool add --kernel kernel --size 2 busybox > /dev/null 2>&1; echo "grown=$(parked)"
./husk pool add --kernel kernel --size 1 busybox > /dev/null 2>&1; echo "shrunk=$(parked)"
./husk pool rm busybox > /dev/null; echo "rm-status=$?"
echo "ls-after-rm=$(./husk pool ls | tail -n +2 | wc -l)"
echo "pool-left=$(ls run/.pool | wc -l)"
echo "runtime-left=$(ls run/.run | wc -l)"
echo "rm-unknown=$(./husk pool rm nosuch 2>&1 | grep -c 'no pool of "nosuch"')"
i=0; while [ "$(husk_processes)" -gt 0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
echo "husk-processes-left=$(husk_processes)"
husk_processes -v
"#;

#[test]
fn a_pool_parks_sandboxes_that_husk_run_claims_each_as_its_own() {
    let out = run_sandbox_script(POOL_CHECKS, &[]);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    is("add-status", "0");
    is("add-said", "1");
    is("ls-parked", "1");
    is("ps-lists", "0");
    is("sandboxes-parked", "1");
    is("c1-status", "3");
    is("c1-pooled", "true");
    is("c1-out", "bar /tmp 1000");
    is("refilled-1", "1");
    is("c2-status", "0");
    is("c2-pooled", "true");
    is("hostname-differs", "yes");
    is("random-differs", "yes");
    is("stdin", "through-stdin");
    is("c3-pooled", "true");
    is("sandboxes-after-runs", "1");
    is("pool-folders", "1");
    is("np-status", "0");
    is("np-pooled", "");
    is("d-status", "0");
    is("d-said", "adopted");
    is("d-folder", "yes");
    is("d-ps", "1");
    is("d-logs", "started-d");
    is("d-exec", "in-d");
    is("d-refilled", "1");
    is("d-pool-folders", "1");
    is("dup-status", "125");
    is("dup-said", "1");
    is("dup-parked", "1");
    is("d-stop", "0");
    is("d-rm", "0");
    is("d-gone", "yes");
    is("d-runtime-left", "1");
    is("d-sandboxes", "1");
    is("refilled-after-kill", "1");
    is("sandboxes-after-kill", "1");
    is("stale-status", "0");
    is("stale-pooled", "");
    is("stale-said", "1");
    is("refilled-after-stale", "1");
    is("grown", "2");
    is("shrunk", "1");
    is("rm-status", "0");
    is("ls-after-rm", "0");
    is("pool-left", "0");
    is("runtime-left", "0");
    is("rm-unknown", "1");
    is("husk-processes-left", "0");
}
