//! The device tests' scripts: a guest script (between [`GUEST_PRELUDE`] and
//! [`GUEST_END`]) packed into a second initramfs beside the test one, and the host part
//! (between [`HOST_PRELUDE`] and [`HOST_END`]) that boots it and prints what it finds.

use std::path::Path;

use super::{assets, run_script, Output};

/// The husk-guest-tool binary (static, so it runs in the guest and in the test host).
pub const GUEST_TOOL: &str = env!("CARGO_BIN_EXE_husk-guest-tool");

/// Start of every guest script: the pseudo filesystems and every busybox applet.
pub const GUEST_PRELUDE: &str = r#"export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin 2>/dev/null
echo guest-started=yes
"#;

/// End of every guest script: flush and reset, which makes husk exit 0.
pub const GUEST_END: &str = r#"
sync
echo guest-done=yes
reboot -f
"#;

/// Host side, first: packs the guest script and the tool into a second cpio archive
/// appended to the test initramfs (the kernel unpacks both).
pub const HOST_PRELUDE: &str = r#"
mkdir -p g/bin
cp husk-guest-tool g/bin/husk-guest-tool
chmod 755 g/bin/husk-guest-tool
(cd g && find bin guest.sh | cpio -o -H newc 2>/dev/null) > extra.cpio
cat initrd.cpio extra.cpio > guest.cpio
BOOT="./husk boot --kernel vmlinux --initrd guest.cpio --memory 256 --console console.log --timeout 480"
CMDLINE="quiet rdinit=/bin/busybox -- sh /guest.sh"
"#;

/// Host side, last: the console (without the serial line's carriage returns, and
/// ended by a line break: a VMM killed mid-line leaves its last line open), then what
/// is left behind.
pub const HOST_END: &str = r#"
tr -d '\r' < console.log
echo
echo "husk-processes-left=$(husk_processes)"
echo "husk-taps-left=$(ls /sys/class/net | grep -c '^husk')"
"#;

/// The whole test-host script: guest script written into `g/`, then the host part.
pub fn script(guest: &str, host: &str) -> String {
    format!(
        "mkdir -p g\ncat > g/guest.sh <<'GUEST_EOF'\n{GUEST_PRELUDE}{guest}{GUEST_END}GUEST_EOF\n\
         {HOST_PRELUDE}{host}{HOST_END}"
    )
}

/// Runs a device test script with the assets and the guest tool.
pub fn run_device_script(guest: &str, host: &str) -> Output {
    let assets = assets();
    let mut files = assets.files();
    files.push((Path::new(GUEST_TOOL), "husk-guest-tool"));
    run_script(&script(guest, host), &files)
}
