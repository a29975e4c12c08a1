#!/bin/sh
# The test host side of scripts/vmm-hot-symbols: makes the templates, then, for each
# husk binary named (files in /work), runs warm `husk run`s doing I/O with their VMMs
# under callgrind (husk-callgrind). The dumps are left in /work/cg/BINARY; each
# function's own instructions, summed by phase (start, restore, run; boot and cold for
# the VMM of a cold `husk run`: its kernel loading, then the guest's boot and run) over
# the runs and binaries, are printed as `PHASE<TAB>Ir<TAB>name` lines.
cd /work || exit 1
tar xf store.tar
mkdir -p tmp run cache cg
export HUSK_DATA_DIR=/work/store TMPDIR=/work/tmp HUSK_RUNTIME_DIR=/work/run \
    HUSK_CACHE_DIR=/work/cache
ip link set lo up
say() { echo "vmm-hot-symbols: $*" >&2; }
# The plain template, then the image's own (the first warm run makes it, and records
# its working set; the second starts from it).
./husk template build --kernel vmlinux >/dev/null || { say "template build failed"; exit 1; }
./husk run --kernel vmlinux busybox -- true || { say "first husk run failed"; exit 1; }
./husk run --kernel vmlinux busybox -- true || { say "second husk run failed"; exit 1; }
mkdir -p www && head -c 200000 /dev/zero > www/f
busybox httpd -p 8000 -h /work/www
say "templates made; profiling"
# The runs' own output goes to stderr: stdout is the profile.
profiled() { HUSK_BIN=/work/husk-callgrind ./husk run --kernel vmlinux --timeout 600 "$@" >&2; }
for bin; do
    export HUSK_PROFILED="/work/$bin" HUSK_DUMPS="/work/cg/$bin"
    mkdir -p "$HUSK_DUMPS"
    # Console, vsock both ways (standard input and output), reads of the image's disk.
    head -c 300000 /dev/zero | profiled -i busybox -- sh -c '
        echo to the console > /dev/console 2>/dev/null; wc -c; seq 1 20000 | tail -n 1
        find / -xdev | wc -l; cat /bin/* | md5sum; echo vsock done >&2' ||
        say "$bin: workload vsock failed"
    # A scratch disk (the plain template): writes, sync, reads back.
    profiled --disk 32 busybox -- sh -c '
        dd if=/dev/zero of=/big bs=64k count=128 2>/dev/null; sync
        md5sum /big; rm /big; sync; echo disk done' || say "$bin: workload disk failed"
    # The network: the guest fetches a file from a server on the host's end of its link.
    # shellcheck disable=SC2016 # expanded in the guest
    profiled --net link busybox -- sh -c '
        gw=$(ip route | awk "/default/ {print \$3}")
        wget -q -O - "http://$gw:8000/f" | wc -c; echo net done' ||
        say "$bin: workload net failed"
    ls -l "$HUSK_DUMPS" >&2
    # A cold boot: the guest probes its devices and the kernel writes to the console.
    export HUSK_DUMPS="/work/cg/$bin.cold"
    mkdir -p "$HUSK_DUMPS"
    profiled --cold busybox -- sh -c 'echo cold done' || say "$bin: workload cold failed"
    ls -l "$HUSK_DUMPS" >&2
done
# Each function's own instructions (not its callees'): a cost line right after calls=
# is the call's, the others the current function's.
for dump in cg/*/out.*; do
    case $dump in
    *.1) phase=start ;;
    *.cold/*.2) phase=boot ;;
    *.2) phase=restore ;;
    *.cold/*) phase=cold ;;
    *) phase=run ;;
    esac
    awk -v phase="$phase" '
        /^fn=/ { fn = substr($0, 4); sub(/\047[0-9]+$/, "", fn); next }
        /^calls=/ { call = 1; next }
        /^[0-9+*-]/ { if (!call && fn != "") ir[fn] += $2; call = 0; next }
        END { for (f in ir) printf "%s\t%d\t%s\n", phase, ir[f], f }' "$dump"
done | awk -F '\t' '
    { sum[$1 "\t" $3] += $2 }
    END { for (k in sum) { split(k, p, "\t"); printf "%s\t%d\t%s\n", p[1], sum[k], p[2] } }'
