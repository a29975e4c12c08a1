//! What the agent does when the host says the guest was restored from a snapshot
//! ([`husk_protocol::Message::Restored`]): every clone of one snapshot starts with the
//! same memory, so the same random pool, the snapshot's wall clock and hostname, and
//! disks of the snapshot's sizes. Each is replaced before any workload runs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use husk_protocol::DiskSize;
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// Most entropy bytes taken from one request.
pub const MAX_ENTROPY: usize = 512;
/// Fewest entropy bytes accepted: a reseed from less would be a reseed in name only.
pub const MIN_ENTROPY: usize = 32;
/// How long to wait for a disk to show the size the host announced.
const DISK_WAIT: Duration = Duration::from_secs(10);

/// The sandbox generation this agent serves (see `Message::Hello`).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The generation to greet with.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// Errors of taking a restored sandbox's identity.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The request is unusable.
    #[error("bad restore request: {0}")]
    Invalid(String),
    /// A step failed.
    #[error("{0}")]
    Step(String, #[source] std::io::Error),
    /// A disk did not take its new size.
    #[error("disk {name} still has {have} sectors after {DISK_WAIT:?}, the host announced {want}")]
    DiskSize {
        /// The disk.
        name: String,
        /// Its size now.
        have: u64,
        /// The announced size.
        want: u64,
    },
}

/// The restore request's parts.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    /// New generation.
    pub generation: u64,
    /// Random bytes from the host.
    pub entropy: &'a [u8],
    /// Host wall clock, ns since the epoch.
    pub unix_time_ns: u64,
    /// Hostname.
    pub hostname: &'a str,
    /// Disks to wait for.
    pub disks: &'a [DiskSize],
}

/// Checks the request before anything is changed.
pub fn validate(identity: &Identity<'_>) -> Result<(), RestoreError> {
    let n = identity.entropy.len();
    if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&n) {
        return Err(RestoreError::Invalid(format!(
            "{n} bytes of entropy (want {MIN_ENTROPY} to {MAX_ENTROPY})"
        )));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if !name_ok(identity.hostname) {
        return Err(RestoreError::Invalid(format!(
            "hostname {:?}",
            identity.hostname
        )));
    }
    if let Some(d) = identity
        .disks
        .iter()
        .find(|d| !name_ok(&d.name) || d.name.contains('.'))
    {
        return Err(RestoreError::Invalid(format!("disk name {:?}", d.name)));
    }
    Ok(())
}

/// Take the identity: reseed the kernel's random generator, set the wall clock and the
/// hostname, wait for the disks, then adopt the generation.
pub fn apply(identity: &Identity<'_>) -> Result<(), RestoreError> {
    validate(identity)?;
    reseed(identity.entropy)?;
    let secs = identity.unix_time_ns / 1_000_000_000;
    let nanos = identity.unix_time_ns % 1_000_000_000;
    let now = TimeSpec::new(secs as libc::time_t, nanos as libc::c_long);
    clock_settime(ClockId::CLOCK_REALTIME, now)
        .map_err(|e| RestoreError::Step("setting the wall clock".into(), e.into()))?;
    nix::unistd::sethostname(identity.hostname)
        .map_err(|e| RestoreError::Step("setting the hostname".into(), e.into()))?;
    for disk in identity.disks {
        wait_for_size(disk)?;
    }
    GENERATION.store(identity.generation, Ordering::SeqCst);
    Ok(())
}

/// `struct rand_pool_info` with room for [`MAX_ENTROPY`] bytes.
#[repr(C)]
struct PoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_ENTROPY],
}

/// Mix `entropy` into the input pool, credited, and make the CRNG reseed from it now.
fn reseed(entropy: &[u8]) -> Result<(), RestoreError> {
    let step = |what: &str| {
        let what = what.to_string();
        move |e| RestoreError::Step(what, e)
    };
    let random = File::options()
        .write(true)
        .open("/dev/random")
        .map_err(step("opening /dev/random"))?;
    let mut info = PoolInfo {
        entropy_count: (entropy.len() * 8) as libc::c_int,
        buf_size: entropy.len() as libc::c_int,
        buf: [0; MAX_ENTROPY],
    };
    info.buf[..entropy.len()].copy_from_slice(entropy);
    // SAFETY: `info` is a rand_pool_info whose buffer holds `buf_size` bytes; the
    // kernel only reads it. The caller (root, PID 1) has CAP_SYS_ADMIN.
    let ret = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, &info) };
    if ret < 0 {
        return Err(step("RNDADDENTROPY")(std::io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let ret = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) };
    if ret < 0 {
        return Err(step("RNDRESEEDCRNG")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Wait until /sys/block/NAME/size shows `disk.sectors`.
fn wait_for_size(disk: &DiskSize) -> Result<(), RestoreError> {
    let path = format!("/sys/block/{}/size", disk.name);
    let started = Instant::now();
    loop {
        let have = std::fs::read_to_string(&path)
            .map_err(|e| RestoreError::Step(format!("reading {path}"), e))?
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
        if have == disk.sectors {
            return Ok(());
        }
        if started.elapsed() > DISK_WAIT {
            return Err(RestoreError::DiskSize {
                name: disk.name.clone(),
                have,
                want: disk.sectors,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity<'a>(entropy: &'a [u8], hostname: &'a str, disks: &'a [DiskSize]) -> Identity<'a> {
        Identity {
            generation: 2,
            entropy,
            unix_time_ns: 0,
            hostname,
            disks,
        }
    }

    #[test]
    fn too_little_entropy_is_refused_before_anything_changes() {
        let e = validate(&identity(&[1; 8], "husk-a", &[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad restore request: 8 bytes of entropy (want 32 to 512)"
        );
    }

    #[test]
    fn a_hostname_with_a_slash_is_refused() {
        assert!(validate(&identity(&[1; 32], "a/b", &[])).is_err());
    }

    #[test]
    fn a_disk_name_that_climbs_out_of_sys_block_is_refused() {
        let disks = [DiskSize {
            name: "../vda".into(),
            sectors: 1,
        }];
        assert!(validate(&identity(&[1; 32], "husk-a", &disks)).is_err());
    }

    #[test]
    fn a_good_request_passes() {
        let disks = [DiskSize {
            name: "vda".into(),
            sectors: 8,
        }];
        assert!(validate(&identity(&[1; 64], "husk-a1", &disks)).is_ok());
    }
}
