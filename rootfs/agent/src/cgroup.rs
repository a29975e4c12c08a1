//! cgroup v2 leaves for containers: `<root>/husk/<id>` with memory.max, pids.max and
//! cpu.max from the run's limits, and the OOM-kill count read back at exit.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::Limits;

/// The controllers the agent enables for container leaves.
pub const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Errors of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Creating, writing or reading a cgroup file failed.
    #[error("cgroup file {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The pids of a `cgroup.procs` file, one a line; anything else is skipped (pid 0 and
/// negative numbers too: `kill` would take them for groups).
pub fn parse_pids(procs: &str) -> Vec<i32> {
    procs
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .filter(|&pid| pid > 0)
        .collect()
}

/// The `(file, value)` pairs a leaf gets for `limits`, in write order. memory.oom.group
/// makes an OOM kill take the whole container, as docker's does.
pub fn limit_values(limits: &Limits) -> Vec<(&'static str, String)> {
    let mut values = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        values.push(("memory.max", bytes.to_string()));
        values.push(("memory.oom.group", "1".to_string()));
    }
    if let Some(pids) = limits.pids {
        values.push(("pids.max", pids.to_string()));
    }
    if let Some(cpu) = limits.cpu_quota {
        values.push(("cpu.max", format!("{} {}", cpu.quota_us, cpu.period_us)));
    }
    values
}

/// The `oom_kill` counter of a memory.events file (0 when absent).
pub fn parse_oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The `+memory +pids +cpu` line for cgroup.subtree_control, limited to the controllers
/// `available` (the text of cgroup.controllers) offers.
pub fn subtree_line(available: &str) -> String {
    let offered: Vec<&str> = available.split_whitespace().collect();
    CONTROLLERS
        .iter()
        .filter(|c| offered.contains(c))
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Enables the container controllers in `dir`'s children (cgroup.subtree_control).
pub fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let controllers = dir.join("cgroup.controllers");
    let available = fs::read_to_string(&controllers).map_err(io_err(&controllers))?;
    let line = subtree_line(&available);
    if line.is_empty() {
        return Ok(());
    }
    let control = dir.join("cgroup.subtree_control");
    fs::write(&control, line).map_err(io_err(&control))
}

/// The parent of container leaves, once [`prepare`] made it.
static PARENT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes `<root>/husk` with the container controllers enabled for its children, once
/// per agent: the agent does it as it starts, so a template's guest already has it and
/// a container's start only makes its leaf.
pub fn prepare(root: &Path) -> Result<PathBuf, CgroupError> {
    let parent = root.join("husk");
    if PARENT.get() == Some(&parent) {
        return Ok(parent);
    }
    if !parent.exists() {
        enable_controllers(root)?;
        // Another thread of a test process may have made it since the check.
        match fs::create_dir(&parent) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            made => made.map_err(io_err(&parent))?,
        }
    }
    enable_controllers(&parent)?;
    // The agent has one root; a test process may use several, each prepared each time.
    drop(PARENT.set(parent.clone()));
    Ok(parent)
}

/// One container's leaf cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<root>/husk/<id>` (enabling controllers on the way) and writes `limits`.
    pub fn create(root: &Path, id: &str, limits: &Limits) -> Result<Self, CgroupError> {
        let path = prepare(root)?.join(id);
        match fs::create_dir(&path) {
            // A leaf left by a container of that id that ended without its cleanup:
            // removed only when empty (a live one keeps it busy), then made anew.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                fs::remove_dir(&path)
                    .and_then(|()| fs::create_dir(&path))
                    .map_err(|_| io_err(&path)(e))?;
            }
            made => made.map_err(io_err(&path))?,
        }
        let cgroup = Self { path };
        if let Err(e) = cgroup.apply(limits) {
            cgroup.remove();
            return Err(e);
        }
        Ok(cgroup)
    }

    /// Writes `limits` (unset ones are left as they are).
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        for (file, value) in limit_values(limits) {
            let file = self.path.join(file);
            fs::write(&file, value).map_err(io_err(&file))?;
        }
        Ok(())
    }

    /// The leaf's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many processes the kernel OOM-killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        fs::read_to_string(self.path.join("memory.events")).map_or(0, |e| parse_oom_kills(&e))
    }

    /// Kills every process in the cgroup (cgroup.kill, Linux 5.14+), best effort.
    pub fn kill_all(&self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
    }

    /// Sends `signal` to every process in the cgroup (as `cgroup.procs` lists them at
    /// the time), best effort: a process forked meanwhile is missed.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        for pid in parse_pids(&procs) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Removes the leaf, waiting up to a second for its last processes to be reaped.
    pub fn remove(&self) {
        for _ in 0..100 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::CpuQuota;

    #[test]
    fn no_limits_write_nothing() {
        assert!(limit_values(&Limits::default()).is_empty());
    }

    #[test]
    fn all_limits_format_as_cgroup_v2_values() {
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            pids: Some(32),
            cpu_quota: Some(CpuQuota {
                quota_us: 50_000,
                period_us: 100_000,
            }),
        };
        let values = limit_values(&limits);
        assert_eq!(
            values,
            vec![
                ("memory.max", "67108864".to_string()),
                ("memory.oom.group", "1".to_string()),
                ("pids.max", "32".to_string()),
                ("cpu.max", "50000 100000".to_string()),
            ]
        );
    }

    #[test]
    fn an_empty_leaf_left_behind_is_made_anew_and_a_busy_one_refused() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().join("husk");
        fs::create_dir(&parent).unwrap();
        fs::write(parent.join("cgroup.controllers"), "").unwrap();
        // Left behind, empty: removed and made again.
        fs::create_dir(parent.join("cow")).unwrap();
        let made = Cgroup::create(root.path(), "cow", &Limits::default()).unwrap();
        assert_eq!(made.path(), parent.join("cow"));
        // Busy (here: not empty, as a live cgroup cannot be removed): refused.
        fs::write(parent.join("cow").join("cgroup.procs"), "1").unwrap();
        let err = Cgroup::create(root.path(), "cow", &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("cow"), "{err}");
    }

    #[test]
    fn oom_kill_count_is_read_from_memory_events() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(parse_oom_kills(events), 1);
    }

    #[test]
    fn missing_oom_kill_line_counts_zero() {
        assert_eq!(parse_oom_kills("low 0\n"), 0);
    }

    #[test]
    fn pids_are_read_one_a_line_and_group_ids_skipped() {
        assert_eq!(parse_pids("12\n345\n\n0\n-1\nx\n 7 \n"), vec![12, 345, 7]);
    }

    #[test]
    fn subtree_line_enables_only_offered_controllers() {
        assert_eq!(
            subtree_line("cpuset cpu io memory hugetlb\n"),
            "+memory +cpu"
        );
    }
}
