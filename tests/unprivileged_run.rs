//! `husk run` by a caller that is not root (uid 1000, with `/dev/kvm` open to it as a
//! `kvm` group would make it): the template is built, a warm and a cold run and a
//! detached sandbox with an exec work, and every sandbox VMM is jailed in a user
//! namespace: the caller's uid, no capability, its filters on, a user and mount
//! namespace of its own. Nothing is left after `husk rm`. In the KVM test host.
mod common;

use std::path::Path;

use common::run_sandbox_script;

const SCRIPT: &str = r#"
tar xf store.tar
chmod 666 /dev/kvm
mkdir -p u/run u/cache u/tmp
mv store u/store
cp husk husk-agent vmlinux husk-guest-tool u/
chown -R 1000:1000 u
chmod 755 u u/husk u/husk-agent u/husk-guest-tool
cd u
as_user() {
    ./husk-guest-tool run-as 1000 1000 -- env HOME="$PWD" HUSK_DATA_DIR="$PWD/store" \
        TMPDIR="$PWD/tmp" XDG_RUNTIME_DIR="$PWD/run" HUSK_CACHE_DIR="$PWD/cache" "$@"
}
as_user ./husk run --kernel vmlinux busybox -- sh -c 'echo "warm-out=hello"'
echo "warm-status=$?"
as_user ./husk run --cold --kernel vmlinux busybox -- sh -c 'echo "cold-out=hello"'
echo "cold-status=$?"
as_user ./husk run -d --name svc --kernel vmlinux busybox -- sleep 1000
echo "detached-status=$?"
# The detached sandbox's VMM: the jailed child of the `husk vmm` supervisor.
vmm="" husk=$(readlink -f husk)
for d in /proc/[0-9]*; do
    [ "$(readlink "$d/exe" 2>/dev/null)" = "$husk" ] || continue
    [ "$(tr '\0' '\n' < "$d/cmdline" | sed -n 2p)" = vmm ] || continue
    # The jailed child matches too, and has no child of its own.
    child=$(cat "$d/task/${d#/proc/}/children")
    [ -n "$child" ] && vmm=${child% }
done
echo "vmm-pid=$vmm"
st=/proc/$vmm/status
echo "vmm-uid=$(awk '/^Uid:/{print $2}' $st)"
echo "vmm-caps=$(awk '/^CapEff:/{print $2}' $st)"
echo "vmm-no-new-privs=$(awk '/^NoNewPrivs:/{print $2}' $st)"
echo "vmm-threads-unfiltered=$(grep -h '^Seccomp:' /proc/$vmm/task/*/status | grep -vc '2$')"
[ "$(readlink /proc/$vmm/ns/user)" != "$(readlink /proc/self/ns/user)" ] && echo "vmm-own-userns=yes"
[ "$(readlink /proc/$vmm/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] && echo "vmm-own-mntns=yes"
as_user ./husk exec svc -- sh -c 'echo "exec-out=$(hostname)"'
echo "exec-status=$?"
as_user ./husk rm -f svc
echo "rm-status=$?"
n=0
while [ "$(husk_processes)" != 0 ] && [ $n -lt 50 ]; do n=$((n+1)); sleep 0.1; done
husk_processes -v
echo "husk-processes-left=$(husk_processes)"
echo "jails-left=$(ls -A run/husk-jails-1000 2>/dev/null | tr '\n' ' ')"
"#;

#[test]
fn a_caller_that_is_not_root_runs_sandboxes_whose_vmms_are_jailed_in_a_user_namespace() {
    let tool = Path::new(env!("CARGO_BIN_EXE_husk-guest-tool"));
    let out = run_sandbox_script(SCRIPT, &[(tool, "husk-guest-tool")]);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    is("warm-out", "hello");
    is("warm-status", "0");
    is("cold-out", "hello");
    is("cold-status", "0");
    is("detached-status", "0");
    is("vmm-uid", "1000");
    is("vmm-caps", "0000000000000000");
    is("vmm-no-new-privs", "1");
    is("vmm-threads-unfiltered", "0");
    is("vmm-own-userns", "yes");
    is("vmm-own-mntns", "yes");
    assert!(
        out.value("exec-out")
            .is_some_and(|h| h.starts_with("husk-")),
        "{out}"
    );
    is("exec-status", "0");
    is("rm-status", "0");
    is("husk-processes-left", "0");
    is("jails-left", "");
}
