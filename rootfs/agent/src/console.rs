//! Messages to the guest console, and the way out when the agent cannot go on: PID 1
//! must never hang or exit, so a fatal error is printed and the guest is reset.

use std::io::Write;

/// Prints one `husk-agent: ...` line on stderr (the console when the agent is PID 1).
pub fn log(message: &str) {
    let _ = writeln!(std::io::stderr(), "husk-agent: {message}");
}

/// Prints `message` on /dev/console (the VMM shows it) and stderr, then resets the
/// guest when running as PID 1, or exits 1 otherwise.
pub fn fatal(message: &str) -> ! {
    let line = format!("husk-agent: fatal: {message}\n");
    if let Ok(mut console) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = console.write_all(line.as_bytes());
    }
    let _ = std::io::stderr().write_all(line.as_bytes());
    if std::process::id() == 1 {
        reboot();
    }
    std::process::exit(1)
}

/// Syncs filesystems and resets the guest (`reboot(RB_AUTOBOOT)`); husk ends the VM
/// with exit 0 on a guest reset.
pub fn reboot() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reached when the reboot was refused; PID 1 must not return.
    let _ = writeln!(std::io::stderr(), "husk-agent: reboot failed: {err:?}");
    loop {
        std::thread::park();
    }
}
