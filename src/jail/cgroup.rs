//! A cgroup v2 leaf per jailed VM, `/sys/fs/cgroup/husk/<id>-<pid>`, with the limits
//! asked for (`--cgroup memory.max=...`): made by the supervisor before the child
//! exists, the child put in it before it runs, removed once it ended.

use std::path::{Path, PathBuf};

use super::JailError;

/// Where cgroup v2 is expected.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// statfs's magic for cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The controllers enabled for the leaves when the host has them.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// One `KEY=VALUE` written to the leaf's file KEY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimit {
    /// A controller file, such as `memory.max`.
    pub key: String,
    /// What is written to it.
    pub value: String,
}

impl std::str::FromStr for CgroupLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = s.split_once('=').ok_or_else(|| {
            format!("--cgroup {s:?}: expected KEY=VALUE, such as memory.max=512M")
        })?;
        let valid_key = key.contains('.')
            && !key.starts_with("cgroup.")
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_');
        if !valid_key {
            return Err(format!(
                "--cgroup {s:?}: {key:?} is not a controller file (such as memory.max, pids.max, cpu.max)"
            ));
        }
        if value.is_empty() || value.contains('\n') {
            return Err(format!(
                "--cgroup {s:?}: the value must be one non-empty line"
            ));
        }
        Ok(Self {
            key: key.into(),
            value: value.into(),
        })
    }
}

/// A VM's cgroup leaf.
#[derive(Debug)]
pub(super) struct Leaf {
    path: PathBuf,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Os { what, source }
}

/// Whether cgroup v2 is mounted at [`CGROUP_ROOT`].
fn cgroup2_mounted() -> bool {
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: a NUL-terminated path and a statfs buffer we own.
    let ret = unsafe { libc::statfs(c"/sys/fs/cgroup".as_ptr(), stat.as_mut_ptr()) };
    // SAFETY: statfs filled the buffer when it returned 0.
    ret == 0 && unsafe { stat.assume_init() }.f_type == CGROUP2_SUPER_MAGIC
}

/// `+controller` for each of [`CONTROLLERS`] the folder offers, written to its
/// subtree_control one at a time (a missing one must not stop the others).
fn enable_controllers(dir: &Path) -> Result<(), JailError> {
    let offered = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let control = dir.join("cgroup.subtree_control");
    for controller in CONTROLLERS
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
    {
        std::fs::write(&control, format!("+{controller}")).map_err(io_err(format!(
            "enable the {controller} controller in {}",
            control.display()
        )))?;
    }
    Ok(())
}

/// A leaf name from the VM's id: letters, digits, `-`, `_` and `.` kept, the rest `_`.
fn leaf_name(id: &str, pid: u32) -> String {
    let id: String = id
        .chars()
        .take(64)
        .map(
            |c| match c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                true => c,
                false => '_',
            },
        )
        .collect();
    format!("{id}-{pid}")
}

/// Remove the leaf the supervisor `pid` made for `id`, if it is still there (and
/// empty).
pub(super) fn remove_leaf_of(id: &str, pid: u32) {
    let path = Path::new(CGROUP_ROOT).join("husk").join(leaf_name(id, pid));
    if path.is_dir() {
        Leaf { path }.remove();
    }
}

impl Leaf {
    /// Make the leaf with `limits`; none when cgroup v2 is not mounted and no limit
    /// was asked for (a warning says so).
    pub(super) fn create(id: &str, limits: &[CgroupLimit]) -> Result<Option<Self>, JailError> {
        if !cgroup2_mounted() {
            if let Some(limit) = limits.first() {
                return Err(JailError::Config(format!(
                    "--cgroup {}={}: cgroup v2 is not mounted at {CGROUP_ROOT}",
                    limit.key, limit.value
                )));
            }
            log::warn!(
                "cgroup v2 is not mounted at {CGROUP_ROOT}: the VM gets no cgroup of its own"
            );
            return Ok(None);
        }
        let root = Path::new(CGROUP_ROOT);
        let parent = root.join("husk");
        match std::fs::create_dir(&parent) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io_err(format!("make {}", parent.display()))(e));
            }
            _ => {}
        }
        enable_controllers(root)?;
        enable_controllers(&parent)?;
        let path = parent.join(leaf_name(id, std::process::id()));
        std::fs::create_dir(&path).map_err(io_err(format!("make {}", path.display())))?;
        let leaf = Self { path };
        for limit in limits {
            let file = leaf.path.join(&limit.key);
            if let Err(e) = std::fs::write(&file, &limit.value) {
                leaf.remove();
                return Err(JailError::Os {
                    what: format!(
                        "--cgroup {}={}: write {}",
                        limit.key,
                        limit.value,
                        file.display()
                    ),
                    source: e,
                });
            }
        }
        Ok(Some(leaf))
    }

    /// The leaf's folder.
    pub(super) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The leaf's folder, opened for `clone3`'s `CLONE_INTO_CGROUP`.
    pub(super) fn open(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&self.path)?;
        Ok(dir.into())
    }

    /// Move process `pid` into the leaf.
    pub(super) fn add(&self, pid: libc::pid_t) -> Result<(), JailError> {
        let procs = self.path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .map_err(io_err(format!("put process {pid} in {}", procs.display())))
    }

    /// Remove the leaf; the kernel may need a moment after its last process ended.
    pub(super) fn remove(&self) {
        for tries in 1..=50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => {
                    log::debug!("jail: cgroup leaf removed (try {tries})");
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        log::warn!(
            "cannot remove the cgroup {}: it is still busy",
            self.path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_a_controller_file_and_one_line() {
        let limit: CgroupLimit = "memory.max=512M".parse().unwrap();
        assert_eq!(
            (limit.key.as_str(), limit.value.as_str()),
            ("memory.max", "512M")
        );
        let cpu: CgroupLimit = "cpu.max=50000 100000".parse().unwrap();
        assert_eq!(cpu.value, "50000 100000");
        for bad in [
            "memory.max",
            "../escape=1",
            "cgroup.procs=1",
            "memory.max=",
            "pids.max=1\n2",
        ] {
            let err = bad.parse::<CgroupLimit>().unwrap_err();
            assert!(err.starts_with("--cgroup"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_leaf_name_keeps_only_safe_characters_of_the_id() {
        assert_eq!(leaf_name("vm-1.a_b", 7), "vm-1.a_b-7");
        assert_eq!(leaf_name("../x y", 9), ".._x_y-9");
    }
}
