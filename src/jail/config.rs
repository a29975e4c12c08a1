//! What a jail is asked for (plain data): its folder, its binds, how the process's
//! privileges go ([`JailMode`]), and the checks made before anything changes.

use std::path::PathBuf;

use super::{running_as_root, JailError};

/// A path bound into the jail at the same absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path (a file or a folder), absolute.
    pub path: PathBuf,
    /// Writable from the jail (read-only otherwise).
    pub writable: bool,
}

impl std::str::FromStr for Bind {
    type Err = String;

    /// `PATH` (read-only) or `PATH:rw`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, writable) = match s.strip_suffix(":rw") {
            Some(path) => (path, true),
            None => (s.strip_suffix(":ro").unwrap_or(s), false),
        };
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!("bind {s:?}: the path must be absolute"));
        }
        Ok(Self { path, writable })
    }
}

/// How the jailed process loses its privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailMode {
    /// Started as root: device nodes made, a cgroup leaf, then a drop to this uid and
    /// gid (`--uid`, `--gid`).
    Root {
        /// The uid the process drops to.
        uid: u32,
        /// The gid the process drops to.
        gid: u32,
    },
    /// Started by another user (`--userns`): a user namespace that maps only the
    /// caller's own uid and gid, whose capabilities build the jail and are then
    /// dropped; the process keeps the caller's ids ([`super::userns`]).
    UserNamespace,
}

impl JailMode {
    /// The mode `husk vmm --jail` asks for with `--uid`/`--gid` or `--userns`, for a
    /// caller that is root (`root`) or not. `--jail` alone means a user namespace when
    /// the caller is not root.
    pub fn choose(
        uid: Option<u32>,
        gid: Option<u32>,
        userns: bool,
        root: bool,
    ) -> Result<Self, JailError> {
        let bad = |m: &str| Err(JailError::Config(m.into()));
        match (uid, gid, userns) {
            (Some(uid), Some(gid), false) => Ok(Self::Root { uid, gid }),
            (None, None, true) => Ok(Self::UserNamespace),
            (None, None, false) if !root => Ok(Self::UserNamespace),
            (None, None, false) => bad(
                "--jail as root needs --uid and --gid (--userns is for callers that are not root)",
            ),
            (_, _, true) => bad("--userns keeps the caller's ids: it takes no --uid or --gid"),
            _ => bad("--uid and --gid go together"),
        }
    }
}

/// How to jail a VMM process.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The folder that becomes the root (made if missing; must be empty).
    pub dir: PathBuf,
    /// Root's jail (a uid and gid to drop to) or a user-namespace jail.
    pub mode: JailMode,
    /// A network namespace to join (a file such as /run/netns/NAME); root's jail only.
    pub netns: Option<PathBuf>,
    /// cgroup v2 limits of the VM's leaf (`memory.max=...`, `pids.max=...`); root's
    /// jail only.
    pub cgroup: Vec<super::CgroupLimit>,
    /// What the jail holds besides its devices.
    pub binds: Vec<Bind>,
    /// Files opened before the privileges go (as root in root's jail, as the caller in
    /// a user namespace), read-only or read-write (`writable`), and kept open for the
    /// VM's disks ([`super::held_file`]).
    pub held: Vec<Bind>,
    /// TAPs attached before the privileges go (in the jail's network namespace), for
    /// the VM's cards on them ([`super::held_tap`]).
    pub held_taps: Vec<String>,
    /// A persistent TAP made for the jail's uid slot, and the slot's lock file: when
    /// the jailed process ends and nobody holds the lock (the caller that reserved the
    /// slot is gone), the supervisor removes the TAP, claimed by the VM or not. Root's
    /// jail only.
    pub slot_tap: Option<(String, PathBuf)>,
    /// The VM's id: the hostname in the jail and the cgroup leaf's name.
    pub id: String,
    /// RLIMIT_NOFILE (soft and hard; in a user namespace at most the caller's hard
    /// limit, which only root may raise).
    pub max_files: u64,
    /// RLIMIT_FSIZE in bytes (`None`: unlimited).
    pub max_file_size: Option<u64>,
    /// Make `/dev/vhost-net` in the jail (when the host has it), for a card on the
    /// kernel's vhost-net (`husk vmm --vhost-net`).
    pub vhost_net: bool,
}

impl JailConfig {
    /// The uid and gid of root's jail; `None` for a user-namespace jail.
    pub fn dropped_ids(&self) -> Option<(u32, u32)> {
        match self.mode {
            JailMode::Root { uid, gid } => Some((uid, gid)),
            JailMode::UserNamespace => None,
        }
    }

    /// Check what can be checked before anything changes.
    pub(super) fn validate(&self) -> Result<(), JailError> {
        self.validate_mode(running_as_root())?;
        if let Some(bind) = self
            .binds
            .iter()
            .chain(&self.held)
            .find(|b| !b.path.exists())
        {
            return Err(JailError::Config(format!(
                "bind {}: no such file or folder",
                bind.path.display()
            )));
        }
        if let Some(netns) = &self.netns {
            if !netns.exists() {
                return Err(JailError::Config(format!(
                    "--netns {}: no such file",
                    netns.display()
                )));
            }
        }
        Ok(())
    }

    /// The checks that depend on the mode, for a caller that is root (`root`) or not.
    fn validate_mode(&self, root: bool) -> Result<(), JailError> {
        let bad = |m: String| Err(JailError::Config(m));
        if !self.dir.is_absolute() {
            return bad(format!(
                "--jail {}: the folder must be absolute",
                self.dir.display()
            ));
        }
        match self.mode {
            JailMode::Root { uid, gid } if uid == 0 || gid == 0 => bad(format!(
                "--uid {uid} --gid {gid}: a jail keeps neither uid 0 nor gid 0"
            )),
            JailMode::Root { .. } if !root => bad(
                "--jail with --uid/--gid needs root: it makes device nodes, then drops to --uid \
                 (without root, --jail alone makes a user-namespace jail)"
                    .into(),
            ),
            JailMode::Root { .. } => Ok(()),
            JailMode::UserNamespace if root => bad(
                "--userns as root would keep uid 0 outside the jail: give --uid and --gid".into(),
            ),
            JailMode::UserNamespace => self.validate_user_namespace(),
        }
    }

    /// What a user-namespace jail cannot do, refused by name.
    fn validate_user_namespace(&self) -> Result<(), JailError> {
        let refuse = |what: String, why: &str| {
            Err(JailError::Config(format!(
                "{what}: a user-namespace jail cannot {why}"
            )))
        };
        if let Some(netns) = &self.netns {
            return refuse(
                format!("--netns {}", netns.display()),
                "join a network namespace (that takes CAP_SYS_ADMIN over it, which only root has)",
            );
        }
        if let Some(limit) = self.cgroup.first() {
            return refuse(
                format!("--cgroup {}={}", limit.key, limit.value),
                "set cgroup limits (it makes no cgroup leaf)",
            );
        }
        if let Some((tap, _)) = &self.slot_tap {
            return refuse(
                format!("--slot-tap {tap}"),
                "own a uid slot's TAP (it has no uid slot)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
impl JailConfig {
    /// A jail in `dir` with nothing bound, held or limited, for tests.
    pub(crate) fn for_tests(dir: &str, mode: JailMode) -> Self {
        Self {
            dir: PathBuf::from(dir),
            mode,
            netns: None,
            cgroup: Vec::new(),
            binds: Vec::new(),
            held: Vec::new(),
            held_taps: Vec::new(),
            slot_tap: None,
            id: "vm".into(),
            max_files: 1024,
            max_file_size: None,
            vhost_net: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_bind_is_read_only_unless_it_ends_in_rw() {
        let ro: Bind = "/srv/kernel".parse().unwrap();
        assert_eq!(
            (ro.path.as_path(), ro.writable),
            (Path::new("/srv/kernel"), false)
        );
        let also_ro: Bind = "/srv/kernel:ro".parse().unwrap();
        assert!(!also_ro.writable);
        let rw: Bind = "/run/vm:rw".parse().unwrap();
        assert_eq!(
            (rw.path.as_path(), rw.writable),
            (Path::new("/run/vm"), true)
        );
        let err = "kernel".parse::<Bind>().unwrap_err();
        assert!(err.contains("must be absolute"), "{err}");
    }

    fn config(mode: JailMode) -> JailConfig {
        JailConfig::for_tests("/srv/jail", mode)
    }

    const ROOT_JAIL: JailMode = JailMode::Root {
        uid: 1000,
        gid: 1000,
    };

    fn mode_error(config: &JailConfig, root: bool) -> String {
        config.validate_mode(root).unwrap_err().to_string()
    }

    #[test]
    fn a_jail_refuses_root_ids_and_relative_folders() {
        let root = config(JailMode::Root { uid: 0, gid: 7 });
        assert!(mode_error(&root, true).contains("neither uid 0 nor gid 0"));
        let relative = JailConfig {
            dir: PathBuf::from("jail"),
            ..config(ROOT_JAIL)
        };
        let err = mode_error(&relative, true);
        assert!(
            err.contains("--jail jail: the folder must be absolute"),
            "{err}"
        );
    }

    #[test]
    fn a_root_jail_needs_root_and_a_user_namespace_jail_refuses_root() {
        assert!(config(ROOT_JAIL).validate_mode(true).is_ok());
        let err = mode_error(&config(ROOT_JAIL), false);
        assert!(err.contains("needs root"), "{err}");
        assert!(config(JailMode::UserNamespace).validate_mode(false).is_ok());
        let err = mode_error(&config(JailMode::UserNamespace), true);
        assert!(err.contains("--userns as root"), "{err}");
    }

    #[test]
    fn a_user_namespace_jail_refuses_netns_cgroup_limits_and_slot_taps_by_name() {
        let netns = JailConfig {
            netns: Some("/run/netns/n".into()),
            ..config(JailMode::UserNamespace)
        };
        assert!(mode_error(&netns, false).starts_with("jail: --netns /run/netns/n: a user"));
        let cgroup = JailConfig {
            cgroup: vec!["pids.max=64".parse().unwrap()],
            ..config(JailMode::UserNamespace)
        };
        assert!(mode_error(&cgroup, false).contains("--cgroup pids.max=64: a user"));
        let tap = JailConfig {
            slot_tap: Some(("huskj1".into(), "/run/l".into())),
            ..config(JailMode::UserNamespace)
        };
        assert!(mode_error(&tap, false).contains("--slot-tap huskj1: a user"));
    }

    #[test]
    fn jail_alone_is_a_user_namespace_unless_root() {
        let choose = JailMode::choose;
        assert_eq!(
            choose(Some(5), Some(6), false, true).unwrap(),
            JailMode::Root { uid: 5, gid: 6 }
        );
        assert_eq!(
            choose(None, None, false, false).unwrap(),
            JailMode::UserNamespace
        );
        assert_eq!(
            choose(None, None, true, false).unwrap(),
            JailMode::UserNamespace
        );
        let as_root = choose(None, None, false, true).unwrap_err().to_string();
        assert!(as_root.contains("needs --uid and --gid"), "{as_root}");
        let both = choose(Some(5), Some(6), true, false)
            .unwrap_err()
            .to_string();
        assert!(both.contains("takes no --uid or --gid"), "{both}");
        let half = choose(Some(5), None, false, true).unwrap_err().to_string();
        assert!(half.contains("go together"), "{half}");
    }

    #[test]
    fn a_missing_bind_is_named() {
        let missing = JailConfig {
            binds: vec!["/nonexistent/husk-kernel".parse().unwrap()],
            ..config(ROOT_JAIL)
        };
        // As root the bind is checked; otherwise root is what is missing.
        let err = missing.validate().unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/husk-kernel: no such file") || err.contains("needs root"),
            "{err}"
        );
    }
}
