//! `husk cp` with a detached sandbox, both ways, with the real kernel and agent: files,
//! directories, `DIR/.`, symlinks, tar streams on stdin and stdout, modes and times
//! kept, owners with `-a`, docker's errors, and a refusal while the sandbox is paused.
//! One test-host boot runs every check; the script prints `key=value` lines.
mod common;

use common::run_sandbox_script;

const CP_CHECKS: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store TMPDIR=$PWD/tmp HUSK_RUNTIME_DIR=$PWD/run
mkdir tmp
in_job() { ./husk exec job sh -c "$1"; }
./husk run --kernel vmlinux -d --name job busybox -- sh -c '
    mkdir -p /out/dir/sub && echo built > /out/artifact && chmod 750 /out/artifact
    touch -d "2001-02-03 04:05:06" /out/artifact && echo deep > /out/dir/sub/f
    ln -s artifact /out/link && touch /tmp/ready && exec sleep 1000' > /dev/null
echo "run-status=$?"
in_job 'until [ -e /tmp/ready ]; do sleep 0.1; done'

# Out of the sandbox.
mkdir got
./husk cp job:/out/artifact got/; echo "out-file-status=$?"
echo "out-file=$(cat got/artifact) $(stat -c %a got/artifact)"
echo "out-file-mtime-same=$( [ "$(stat -c %Y got/artifact)" = "$(in_job 'stat -c %Y /out/artifact')" ] && echo yes)"
./husk cp job:/out/dir got/dir-copy; echo "out-dir-status=$?"
echo "out-dir=$(cat got/dir-copy/sub/f)"
mkdir got/contents
./husk cp job:/out/. got/contents; echo "out-contents-status=$?"
echo "out-contents=$(ls got/contents | tr '\n' ' ')"
echo "out-link=$(readlink got/contents/link)"
./husk cp job:/out/artifact got/renamed; echo "out-renamed=$(cat got/renamed)"
echo "out-stream=$(./husk cp job:/out/dir - | tar tf - | sort | tr '\n' ' ')"

# Into the sandbox.
echo host-data > src.txt; chmod 640 src.txt; touch -d "2002-03-04 05:06:07" src.txt
./husk cp src.txt job:/tmp/; echo "in-file-status=$?"
echo "in-file=$(in_job 'cat /tmp/src.txt; stat -c "%a %U %Y" /tmp/src.txt' | tr '\n' ' ')"
echo "in-file-mtime=$(stat -c %Y src.txt)"
mkdir -p srcdir/a && echo bee > srcdir/a/b
./husk cp srcdir job:/tmp/newdir; echo "in-dir=$(in_job 'cat /tmp/newdir/a/b')"
in_job 'mkdir /tmp/merged'
./husk cp srcdir/. job:/tmp/merged; echo "in-contents=$(in_job 'cat /tmp/merged/a/b')"
in_job 'mkdir /tmp/streamed'
(cd srcdir && tar cf - .) | ./husk cp - job:/tmp/streamed; echo "in-stream-status=$?"
echo "in-stream=$(in_job 'cat /tmp/streamed/a/b')"
echo owned > owned.txt; chown 1234:2345 owned.txt
./husk cp -a owned.txt job:/tmp/kept.txt; ./husk cp owned.txt job:/tmp/rooted.txt
echo "in-owners=$(in_job 'stat -c %u:%g /tmp/kept.txt /tmp/rooted.txt' | tr '\n' ' ')"
head -c 3000000 /dev/urandom > big.bin
./husk cp big.bin job:/tmp/ && ./husk cp job:/tmp/big.bin got/big.bin
echo "round-trip-same=$(cmp -s big.bin got/big.bin && echo yes)"

# Docker's errors.
./husk cp job:/nope got/ 2> e1; echo "err-missing-status=$?"; echo "err-missing=$(cat e1)"
./husk cp job:/out/dir got/artifact 2> e2; echo "err-dir-to-file=$(cat e2)"
./husk cp src.txt job:/no/such/dir 2> e3; echo "err-no-parent=$(cat e3)"
./husk cp nope.txt job:/tmp 2> e4; echo "err-host-missing=$(cat e4)"
./husk cp src.txt job:/tmp/not-there/ 2> e5; echo "err-dest-dir=$(cat e5)"
./husk cp src.txt nosuch:/tmp 2> e6; echo "err-no-sandbox=$(cat e6)"
./husk pause job
./husk cp job:/out/artifact got/paused 2> e7; echo "err-paused-status=$?"; echo "err-paused=$(cat e7)"
./husk resume job
./husk cp job:/out/artifact got/resumed; echo "after-resume-status=$?"

./husk stop -t 0 job > /dev/null; ./husk rm job
echo "husk-processes-left=$(husk_processes)"
"#;

#[test]
fn cp_copies_both_ways_as_docker_does_and_refuses_as_docker_does() {
    let out = run_sandbox_script(CP_CHECKS, &[]);
    let is = |key: &str, want: &str| assert_eq!(out.value(key), Some(want), "{key}\n{out}");
    let has = |key: &str, want: &str| {
        assert!(
            out.value(key).is_some_and(|v| v.contains(want)),
            "{key} should contain {want:?}\n{out}"
        )
    };
    is("run-status", "0");
    is("out-file-status", "0");
    is("out-file", "built 750");
    is("out-file-mtime-same", "yes");
    is("out-dir-status", "0");
    is("out-dir", "deep");
    is("out-contents-status", "0");
    is("out-contents", "artifact dir link ");
    is("out-link", "artifact");
    is("out-renamed", "built");
    is("out-stream", "dir dir/sub dir/sub/f ");
    is("in-file-status", "0");
    let mtime = out.value("in-file-mtime").unwrap_or_default();
    is("in-file", &format!("host-data 640 root {mtime} "));
    is("in-dir", "bee");
    is("in-contents", "bee");
    is("in-stream-status", "0");
    is("in-stream", "bee");
    is("in-owners", "1234:2345 0:0 ");
    is("round-trip-same", "yes");
    is("err-missing-status", "1");
    has(
        "err-missing",
        "could not find the file /nope in sandbox job",
    );
    has("err-dir-to-file", "cannot copy a directory to a file");
    has("err-no-parent", "no such directory: /no/such");
    has("err-host-missing", "no such file or directory: nope.txt");
    has("err-dest-dir", "the destination directory must exist");
    has("err-no-sandbox", "no sandbox named nosuch");
    is("err-paused-status", "1");
    has("err-paused", "is paused");
    is("after-resume-status", "0");
    is("husk-processes-left", "0");
}
