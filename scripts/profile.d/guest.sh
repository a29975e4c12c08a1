#!/bin/sh
# The guest side of scripts/profile-devices (its /bench.sh): moves the bytes the host
# side asks for, then powers off.
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin 2>/dev/null
t=husk-guest-tool
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
    case $arg in bench=*) w=${arg#bench=} ;; mib=*) mib=${arg#mib=} ;; esac
done
case $w in
vsock)
    $t vsock-listen 5000 --recv "${mib}M" --send "${mib}M" --no-check | sed 's/^/guest-/'
    ;;
net)
    ip link set lo up
    ip addr add 10.0.2.15/24 dev eth0
    ip link set eth0 up
    $t tcp-listen 7001 --no-check | sed 's/^/guest-/'
    $t tcp-connect 10.0.2.1 7002 --send "${mib}M" --half-close --no-check --patience 120 \
        | sed 's/^/guest-/'
    ;;
esac
reboot -f
