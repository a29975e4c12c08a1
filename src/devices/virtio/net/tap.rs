//! A TAP interface opened through `/dev/net/tun` (the device's only ioctls).
//!
//! The TAP is created with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and is never made
//! persistent (no TUNSETPERSIST): a TAP that husk created disappears when its last fd
//! closes, i.e. when the device is dropped. Attaching to an existing persistent TAP
//! (`ip tuntap add`) leaves it in place afterwards, as its owner expects, unless the
//! VM claims it ([`Tap::claim`]): a jailed VMM cannot create a TAP, so the sandbox makes
//! a persistent one owned by the jail's uid ([`create_persistent`]) and the VMM clears
//! its persistence once attached. A jail may also attach to a caller's TAP as root
//! before its uid drop ([`attach_to_hold`]); the card then uses that descriptor.
#![expect(
    unsafe_code,
    reason = "TUNSETIFF and friends are ioctls without safe wrappers"
)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::config::{validate_ifname, NetConfigError};
use super::header::NET_HDR_LEN;
use super::queues::FrameIo;
use crate::devices::virtio::guest_io::IoVecs;

const TUN_PATH: &str = "/dev/net/tun";
/// Name template for TAPs husk creates; the kernel replaces `%d`.
const NAME_TEMPLATE: &str = "husk%d";

/// Errors opening a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The requested name is invalid.
    #[error(transparent)]
    Name(#[from] NetConfigError),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_PATH}")]
    OpenTun(#[source] io::Error),
    /// The TAP the jail holds could not be duplicated.
    #[error("cannot duplicate the held TAP {name}")]
    Held {
        /// The TAP's name.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The TAP to hold does not exist (holding never creates one).
    #[error("no TAP named {0}")]
    Missing(String),
    /// An ioctl on the TAP failed.
    #[error("{op} on tap {name}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// Interface name (or template).
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` with the `ifr_flags` member of its union (40 bytes on x86_64).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attach to TAP `name` (through the descriptor this process's jail holds for it,
    /// if any: `jail::held_tap`), or create one named `husk<N>` when `name` is None.
    pub fn open(name: Option<&str>) -> Result<Self, TapError> {
        let held = name.and_then(|n| crate::jail::held_tap(n).map(|file| (n, file)));
        let (file, name) = match held {
            Some((name, file)) => {
                let file = file.map_err(|source| TapError::Held {
                    name: name.into(),
                    source,
                })?;
                (file, name.to_string())
            }
            None => attach(name.unwrap_or(NAME_TEMPLATE), libc::O_NONBLOCK)?,
        };
        let label = name.clone();
        let err = |op, source| TapError::Ioctl {
            op,
            name: label.clone(),
            source,
        };
        let hdr_len = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
        let ret = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &hdr_len as *const libc::c_int,
            )
        };
        if ret < 0 {
            return Err(err("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        let tap = Self { file, name };
        // No offloads until a driver negotiates some (`set_offloads`).
        tap.set_offloads(0)
            .map_err(|source| err("TUNSETOFFLOAD", source))?;
        Ok(tap)
    }

    /// Clear the TAP's persistence, so that it goes when this file closes.
    pub fn claim(&self) -> Result<(), TapError> {
        set_persist(&self.file, false).map_err(|source| TapError::Ioctl {
            op: "TUNSETPERSIST",
            name: self.name.clone(),
            source,
        })
    }

    /// Tell the kernel which offloads the reader takes (`TUN_F_*`): with `TUN_F_CSUM`
    /// and TSO it hands over partially checksummed 64 KiB frames instead of
    /// segmenting and checksumming them first.
    pub fn set_offloads(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is accessed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        match ret {
            0.. => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TAP's file (handed to vhost-net).
    pub(super) fn file(&self) -> &File {
        &self.file
    }
}

/// Open `/dev/net/tun` (with `flags` besides O_CLOEXEC) and attach to (or create) the
/// TAP `name` (a name or a template the kernel completes); returns the TAP's name.
fn attach(name: &str, flags: libc::c_int) -> Result<(File, String), TapError> {
    validate_ifname(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags | libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(TapError::OpenTun)?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a valid,
    // exclusively borrowed ifreq-sized buffer for the duration of the call.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if ret < 0 {
        return Err(TapError::Ioctl {
            op: "TUNSETIFF",
            name: name.into(),
            source: io::Error::last_os_error(),
        });
    }
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(16);
    Ok((file, String::from_utf8_lossy(&req.name[..len]).into_owned()))
}

/// Attach to the existing TAP `name` (non-blocking, as a card uses it) for a jail to
/// hold before it drops its privileges (`jail::held_tap`); never creates one.
pub fn attach_to_hold(name: &str) -> Result<File, TapError> {
    validate_ifname(name)?;
    if !interface_exists(name) {
        return Err(TapError::Missing(name.into()));
    }
    attach(name, libc::O_NONBLOCK).map(|(file, _)| file)
}

/// Whether this process's network namespace has an interface `name` (asked of the
/// kernel: /sys shows the namespace of whoever mounted it).
fn interface_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads the NUL-terminated name, valid for the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

fn set_persist(file: &File, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value; no memory is accessed.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(persist),
        )
    };
    match ret {
        0.. => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Create the persistent TAP `name` owned by `uid` (who may then attach to it without
/// CAP_NET_ADMIN), replacing a persistent one of that name left by a killed sandbox.
pub fn create_persistent(name: &str, uid: u32) -> Result<(), TapError> {
    let (file, _) = attach(name, 0)?;
    let err = |op, source| TapError::Ioctl {
        op,
        name: name.into(),
        source,
    };
    // SAFETY: TUNSETOWNER takes the uid by value; no memory is accessed.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETOWNER,
            libc::c_ulong::from(uid),
        )
    };
    if ret < 0 {
        return Err(err("TUNSETOWNER", io::Error::last_os_error()));
    }
    set_persist(&file, true).map_err(|source| err("TUNSETPERSIST", source))
}

/// Remove the persistent TAP `name` if nothing holds it: attached, its persistence
/// cleared, it goes when this closes. One attached elsewhere (EBUSY) is left to its
/// holder, whose claim made it go with it; a missing one is no error.
pub fn remove_persistent(name: &str) -> Result<(), TapError> {
    if !std::path::Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    match attach(name, 0) {
        Ok((file, _)) => set_persist(&file, false).map_err(|source| TapError::Ioctl {
            op: "TUNSETPERSIST",
            name: name.into(),
            source,
        }),
        Err(TapError::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
impl Tap {
    /// A stand-in for a TAP in tests: one end of a non-blocking datagram socket pair,
    /// which moves whole frames as a TAP does.
    pub(crate) fn from_socket(sock: std::os::unix::net::UnixDatagram) -> Self {
        Self {
            file: File::from(std::os::fd::OwnedFd::from(sock)),
            name: "test-tap".into(),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl FrameIo for Tap {
    fn read_frame(&mut self, iov: &IoVecs) -> io::Result<usize> {
        iov.read_from(&self.file, None)
    }

    fn write_frame(&mut self, hdr: &[u8; NET_HDR_LEN], iov: &IoVecs) -> io::Result<usize> {
        iov.write_with_prefix(&self.file, hdr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_exists(name: &str) -> bool {
        std::path::Path::new("/sys/class/net").join(name).exists()
    }

    #[test]
    fn tap_created_by_husk_needs_root_and_vanishes_on_drop() {
        let tap = Tap::open(None).unwrap();
        let name = tap.name().to_string();
        assert!(name.starts_with("husk"));
        assert!(link_exists(&name));
        drop(tap);
        assert!(!link_exists(&name));
    }

    #[test]
    fn a_claimed_persistent_tap_goes_with_its_holder() {
        let name = "huskt-claim";
        create_persistent(name, 4242).unwrap();
        let owner = std::fs::read_to_string(format!("/sys/class/net/{name}/owner")).unwrap();
        assert_eq!(owner.trim(), "4242");
        let tap = Tap::open(Some(name)).unwrap();
        tap.claim().unwrap();
        // Held: left to the holder.
        remove_persistent(name).unwrap();
        assert!(link_exists(name));
        drop(tap);
        assert!(!link_exists(name));
    }

    #[test]
    fn an_unheld_persistent_tap_is_removed() {
        let name = "huskt-left";
        create_persistent(name, 4243).unwrap();
        assert!(link_exists(name));
        remove_persistent(name).unwrap();
        assert!(!link_exists(name));
        remove_persistent(name).unwrap();
    }

    #[test]
    fn holding_a_missing_tap_creates_none() {
        let e = attach_to_hold("huskt-none").unwrap_err();
        assert_eq!(e.to_string(), "no TAP named huskt-none");
        assert!(!link_exists("huskt-none"));
    }

    #[test]
    fn invalid_tap_name_is_rejected_before_any_ioctl() {
        assert!(matches!(
            Tap::open(Some("bad/name")),
            Err(TapError::Name(_))
        ));
    }
}
