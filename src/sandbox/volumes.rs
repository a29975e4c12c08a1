//! Host folders shared into a sandbox (`husk run -v HOST:GUEST[:ro]`): the parsed and
//! checked request, and what the sandbox keeps while it runs (each folder's
//! `virtiofsd`, and the mounts every container gets).
//!
//! Each volume is a virtio-fs device (tag `husk-vol-N`) served by a `virtiofsd` of its
//! own (`sandbox::virtiofsd`); the agent mounts the tag once per container at GUEST,
//! read-only for `:ro`, which virtiofsd's `--readonly` enforces again on the host.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use husk_protocol::VolumeMount;

use super::virtiofsd::{Daemon, VirtiofsdError};
use crate::devices::virtio::fs::FsConfig;

/// One host folder shared with the sandbox's containers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    /// The host folder (made absolute when the sandbox starts).
    pub host: PathBuf,
    /// Where containers see it: an absolute path.
    pub guest: String,
    /// Containers may only read it.
    pub read_only: bool,
}

/// A volume that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Not `HOST:GUEST` or `HOST:GUEST:MODE`.
    #[error("volume {0:?} is not HOST:GUEST[:ro|rw]")]
    Syntax(String),
    /// A mode other than `ro` or `rw`.
    #[error("volume {spec:?}: mode {mode:?} is not ro or rw")]
    Mode {
        /// The whole argument.
        spec: String,
        /// The mode given.
        mode: String,
    },
    /// The host side is no folder.
    #[error("volume host folder {0} does not exist or is not a folder")]
    HostMissing(PathBuf),
    /// The guest side is relative, or is `/`.
    #[error("volume guest path {0:?} must be absolute and not /")]
    GuestPath(String),
    /// The daemon could not be found or started.
    #[error(transparent)]
    Daemon(#[from] VirtiofsdError),
}

impl FromStr for Volume {
    type Err = VolumeError;

    /// `HOST:GUEST`, `HOST:GUEST:ro` or `HOST:GUEST:rw` (docker's `-v` form).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, guest, read_only) = match parts.as_slice() {
            [host, guest] => (*host, *guest, false),
            [host, guest, "ro"] => (*host, *guest, true),
            [host, guest, "rw"] => (*host, *guest, false),
            [_, _, mode] => {
                return Err(VolumeError::Mode {
                    spec: spec.into(),
                    mode: (*mode).into(),
                })
            }
            _ => return Err(VolumeError::Syntax(spec.into())),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(VolumeError::Syntax(spec.into()));
        }
        let volume = Self {
            host: host.into(),
            guest: guest.into(),
            read_only,
        };
        volume.check_guest()?;
        Ok(volume)
    }
}

impl Volume {
    fn check_guest(&self) -> Result<(), VolumeError> {
        let guest = Path::new(&self.guest);
        let normal = guest
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
        if !guest.is_absolute() || guest == Path::new("/") || !normal {
            return Err(VolumeError::GuestPath(self.guest.clone()));
        }
        Ok(())
    }

    /// Check both sides: the host folder exists, the guest path is absolute.
    pub fn validate(&self) -> Result<(), VolumeError> {
        self.check_guest()?;
        if !self.host.is_dir() {
            return Err(VolumeError::HostMissing(self.host.clone()));
        }
        Ok(())
    }
}

/// The virtio-fs tag of the `index`-th volume.
pub fn tag(index: usize) -> String {
    format!("husk-vol-{index}")
}

/// A running sandbox's volumes: their daemons and the mounts each container gets.
#[derive(Debug, Default)]
pub struct Shares {
    mounts: Vec<VolumeMount>,
    daemons: Mutex<Vec<Daemon>>,
}

impl Shares {
    /// Start a daemon for each of `volumes`, listening in `runtime`; the devices to
    /// give the VM. The daemons end when the returned value is dropped or
    /// [`Shares::end`]ed, whatever happens to the start.
    pub fn start(volumes: &[Volume], runtime: &Path) -> Result<(Self, Vec<FsConfig>), VolumeError> {
        let mut shares = Self::default();
        let mut devices = Vec::new();
        for (i, volume) in volumes.iter().enumerate() {
            volume.validate()?;
            let tag = tag(i);
            let daemon = Daemon::start(volume, runtime, i)?;
            devices.push(FsConfig {
                socket: daemon.socket().to_path_buf(),
                tag: tag.clone(),
            });
            shares.lock().push(daemon);
            shares.mounts.push(VolumeMount {
                tag,
                target: volume.guest.clone(),
                read_only: volume.read_only,
            });
        }
        Ok((shares, devices))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Daemon>> {
        self.daemons.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the sandbox shares any folder.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }

    /// The mounts of every container.
    pub fn mounts(&self) -> &[VolumeMount] {
        &self.mounts
    }

    /// The first daemon that has already ended, as an error naming its log.
    pub fn ended(&self) -> Option<VolumeError> {
        self.lock()
            .iter_mut()
            .find_map(Daemon::ended)
            .map(VolumeError::from)
    }

    /// Stop and reap every daemon (the VM is gone), removing its socket.
    pub fn end(&self) {
        for daemon in self.lock().drain(..) {
            daemon.stop();
        }
    }

    /// Refuse `what` (pause, snapshot, fork) for a sandbox that shares folders.
    pub fn refuse(&self, what: &str) -> Result<(), super::SandboxError> {
        match self.is_empty() {
            true => Ok(()),
            false => Err(super::SandboxError::Refused(format!(
                "cannot {what} a sandbox with volumes (-v): their state lives in virtiofsd, \
                 outside the VM"
            ))),
        }
    }
}

impl Drop for Shares {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_guest_parse_as_read_write() {
        let v: Volume = "/srv/data:/data".parse().unwrap();
        assert_eq!(
            v,
            Volume {
                host: "/srv/data".into(),
                guest: "/data".into(),
                read_only: false
            }
        );
    }

    #[test]
    fn ro_suffix_makes_the_volume_read_only() {
        let v: Volume = "./in:/in:ro".parse().unwrap();
        assert!(v.read_only);
    }

    #[test]
    fn rw_suffix_is_read_write() {
        let v: Volume = "./in:/in:rw".parse().unwrap();
        assert!(!v.read_only);
    }

    #[test]
    fn an_unknown_mode_is_named() {
        let e = "/a:/b:rx".parse::<Volume>().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"volume "/a:/b:rx": mode "rx" is not ro or rw"#
        );
    }

    #[test]
    fn a_relative_guest_path_is_named() {
        let e = "/a:data".parse::<Volume>().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"volume guest path "data" must be absolute and not /"#
        );
    }

    #[test]
    fn the_guest_root_is_refused() {
        assert!(matches!(
            "/a:/".parse::<Volume>(),
            Err(VolumeError::GuestPath(_))
        ));
    }

    #[test]
    fn a_guest_path_with_dot_dot_is_refused() {
        assert!(matches!(
            "/a:/x/../etc".parse::<Volume>(),
            Err(VolumeError::GuestPath(_))
        ));
    }

    #[test]
    fn one_part_is_a_syntax_error() {
        assert!(matches!(
            "/a".parse::<Volume>(),
            Err(VolumeError::Syntax(_))
        ));
    }

    #[test]
    fn a_missing_host_folder_is_named() {
        let v: Volume = "/nonexistent/husk-vol:/data".parse().unwrap();
        assert_eq!(
            v.validate().unwrap_err().to_string(),
            "volume host folder /nonexistent/husk-vol does not exist or is not a folder"
        );
    }

    #[test]
    fn tags_count_from_zero() {
        assert_eq!(tag(0), "husk-vol-0");
    }
}
