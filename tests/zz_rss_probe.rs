//! Throwaway probe (not committed): where a warm VMM's resident memory is.
mod common;
use common::run_sandbox_script;
const SCRIPT: &str = r#"
for i in 1 2 3; do
  for k in vmlinux vmlinux-old; do
    ./husk boot --kernel $k --initrd initrd.cpio --memory 128 --console /dev/null --timings b.json --cmdline "quiet rdinit=/bin/busybox -- reboot -f"
    echo "boot-$k-$i status=$? $(tr -d ' \n' < b.json | grep -o '"\(exit_ms\|first_console_byte_ms\|io_in\|io_out\)":[0-9.]*' | tr '\n' ' ')"
  done
done
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp
mkdir tmp
R="./husk run --kernel vmlinux --timeout 300"
$R busybox -- true; echo "first=$?"
$R busybox -- true; echo "second=$?"
$R --timings warm.json busybox -- true; echo "warm=$?"
$R --cold --timings cold.json busybox -- true; echo "cold=$?"
echo "warm-process=$(tr -d ' \n' < warm.json | grep -o '"process":{[^}]*}')"
echo "cold-process=$(tr -d ' \n' < cold.json | grep -o '"process":{[^}]*}')"
$R -d --name probe busybox -- sleep 600; echo "detached=$?"
sleep 3
for p in /proc/[0-9]*; do
  c=$(tr '\0' ' ' < $p/cmdline 2>/dev/null)
  case "$c" in *" vmm "*|*"husk vmm"*) echo "vmm-proc=${p#/proc/} $c";; esac
done
for p in /proc/[0-9]*; do
  c=$(tr '\0' ' ' < $p/cmdline 2>/dev/null)
  case "$c" in *api-sock*) ;; *) continue;; esac
  grep -E '^(RssAnon|RssFile|RssShmem|VmRSS)' $p/status | tr '\n' ' '; echo " pid=${p#/proc/}"
  awk '/^[0-9a-f]+-[0-9a-f]+ /{m=$0} /^Rss:/{r=$2} /^Anonymous:/{if (r>0) print "map rss=" r " anon=" $2 " " m}' $p/smaps | sort -t= -k2 -n -r | head -25
done
./husk rm -f probe; echo "rm=$?"
"#;
#[test]
fn probe() {
    let a = common::assets();
    let old = std::path::Path::new("/root/.cache/husk/kernels/6.1-fc2027c59007/vmlinux");
    let out = run_sandbox_script(
        SCRIPT,
        &[
            (old, "vmlinux-old"),
            (a.test_initrd.as_path(), "initrd.cpio"),
        ],
    );
    eprintln!("{out}");
}
