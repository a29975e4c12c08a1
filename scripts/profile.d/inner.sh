#!/bin/sh
# The test host side of scripts/profile-devices: boots `husk boot` per workload, records
# its threads with perf while the bytes move, and prints where they spent their time.
# Arguments: MiB per direction, then the workloads (vsock, net).
cd /work || exit 1
mib=$1
shift
mkdir -p g/bin && cp husk-guest-tool g/bin/ && cp guest.sh g/bench.sh && chmod 755 g/bench.sh
(cd g && find bin bench.sh | cpio -o -H newc 2>/dev/null) > extra.cpio
cat initrd.cpio extra.cpio > guest.cpio
tunctl -t hb0 > /dev/null && ip addr add 10.0.2.1/24 dev hb0 && ip link set hb0 up
ip link set lo up
for w in "$@"; do
    case $w in
    vsock) dev="--vsock cid=3,uds=v.sock" ;;
    net) dev="--net tap=hb0,mac=52:54:00:12:34:56" ;;
    *) echo "unknown workload $w" >&2; exit 2 ;;
    esac
    # shellcheck disable=SC2086 # $dev is two words on purpose
    ./husk boot --no-rng --kernel vmlinux --initrd guest.cpio --memory 256 \
        --console "console-$w.log" --cmdline "quiet bench=$w mib=$mib rdinit=/bench.sh" $dev &
    vmm=$!
    sleep 3
    # The whole test host is recorded while the transfer runs, from its first byte to
    # its last (perf's workload is the host side): the tool and the kernel's threads are
    # the other half of the same bytes, and attaching to the VMM's pid fails when one of
    # its short-lived threads ends while perf attaches.
    if [ "$w" = vsock ]; then
        ./perf record -F 999 -g -e cpu-clock -a -o "perf-$w.data" -- \
            ./husk-guest-tool uds-connect v.sock 5000 --send "${mib}M" --recv "${mib}M" \
            --no-check --patience 600 2> perf-record.txt | grep mibps
    else
        ./perf record -F 999 -g -e cpu-clock -a -o "perf-$w.data" -- sh -c "
            ./husk-guest-tool tcp-listen 7002 --no-check > from-guest.txt &
            listener=\$!
            ./husk-guest-tool tcp-connect 10.0.2.15 7001 --half-close --send ${mib}M \\
                --no-check --patience 600 | grep send-mibps
            wait \$listener" 2> perf-record.txt
        grep recv-mibps from-guest.txt
    fi
    wait "$vmm"
    printf '\n== %s: threads and where their samples fall\n' "$w"
    ./perf report -i "perf-$w.data" --stdio --no-children --sort comm,dso -g none \
        --percent-limit 1 2>&1 | grep -v '^#' | grep -v '^$'
    for thread in husk-devices husk-vcpu0; do
        printf '\n== %s: %s, with callees (children), above 2.5%%\n' "$w" "$thread"
        ./perf report -i "perf-$w.data" --comm "$thread" --stdio --children --sort sym \
            -g none --percent-limit 2.5 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
    done
    printf '\n== %s: husk-devices, own samples by function, above 0.2%%\n' "$w"
    ./perf report -i "perf-$w.data" --comm husk-devices --stdio --no-children \
        --sort dso,sym -g none --percent-limit 0.2 2>/dev/null | grep -v '^#' | grep -v '^$' |
        head -50
done
