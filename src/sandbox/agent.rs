//! The guest side of a sandbox: the husk-agent binary and the initramfs that makes it
//! PID 1 (`/init` plus `/dev/console`, nothing else), cached by the agent's digest.
//! Hashing the agent on every start costs more than the rest of the VM's setup on a
//! slow host, so a stamp of the agent file's identity (device, inode, size, mtime,
//! ctime: any write changes ctime) remembers which archive it built.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::initramfs::{write_archive, Entry};
use super::SandboxError;
use crate::digest::{file_stamp, write_atomically};

/// Where the agent binary is: `$HUSK_AGENT`, else `husk-agent` next to the running
/// executable (cargo builds both into the same folder).
pub fn agent_binary() -> Result<PathBuf, SandboxError> {
    if let Some(path) = std::env::var_os("HUSK_AGENT") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|e| SandboxError::Agent(format!("cannot find this executable: {e}")))?;
    let beside = exe.with_file_name("husk-agent");
    if beside.is_file() {
        return Ok(beside);
    }
    // Test and bench binaries live one folder down, in deps/.
    let above = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("husk-agent"));
    match above {
        Some(p) if p.is_file() => Ok(p),
        _ => Err(SandboxError::Agent(format!(
            "no husk-agent next to {}: build it with `cargo build --release -p husk-agent` or set HUSK_AGENT",
            exe.display()
        ))),
    }
}

/// Build (or reuse) the agent initramfs in `cache_dir`; returns its path.
pub fn agent_initramfs(agent: &Path, cache_dir: &Path) -> Result<PathBuf, SandboxError> {
    let stamp = file_stamp(agent).map(|s| cache_dir.join("stamps").join(s));
    if let Some(known) = stamp.as_ref().and_then(|s| std::fs::read_to_string(s).ok()) {
        let path = cache_dir.join(known.trim());
        if path.is_file() {
            return Ok(path);
        }
    }
    let path = build_initramfs(agent, cache_dir)?;
    if let (Some(stamp), Some(name)) = (stamp, path.file_name()) {
        // Best effort: without the stamp the next start hashes again.
        drop(write_atomically(&stamp, name.to_string_lossy().as_bytes()));
    }
    Ok(path)
}

/// Build (or find) the archive named by the agent's digest.
fn build_initramfs(agent: &Path, cache_dir: &Path) -> Result<PathBuf, SandboxError> {
    let binary = std::fs::read(agent)
        .map_err(|e| SandboxError::Agent(format!("cannot read {}: {e}", agent.display())))?;
    let digest = Sha256::digest(&binary);
    let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let path = cache_dir.join(format!("agent-{name}.cpio"));
    if path.is_file() {
        // Archives cached before they were made readable to jailed VMMs.
        let readable = std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0);
        if !readable {
            let mode = std::fs::Permissions::from_mode(0o644);
            std::fs::set_permissions(&path, mode).map_err(|e| {
                SandboxError::Agent(format!("cannot chmod {}: {e}", path.display()))
            })?;
        }
        return Ok(path);
    }
    let entries = [
        Entry::Dir {
            path: "dev".into(),
            mode: 0o755,
        },
        Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        },
        Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: binary,
        },
    ];
    let io =
        |e: std::io::Error| SandboxError::Agent(format!("cannot write {}: {e}", path.display()));
    std::fs::create_dir_all(cache_dir).map_err(io)?;
    // A temp file of its own per caller: sandboxes starting together in one process
    // build the same archive at once, and the last rename wins with identical bytes.
    let tmp = tempfile::NamedTempFile::new_in(cache_dir).map_err(io)?;
    let mut out = std::io::BufWriter::new(tmp);
    write_archive(&entries, &mut out).map_err(io)?;
    let tmp = out.into_inner().map_err(|e| io(e.into_error()))?;
    // Readable by jailed VMMs, which run as uids of their own (it holds no secret).
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_builds_of_one_initramfs_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("husk-agent");
        std::fs::write(&agent, vec![7u8; 1 << 20]).unwrap();
        let cache = dir.path().join("a/b/initramfs");
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| agent_initramfs(&agent, &cache)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    #[test]
    fn initramfs_is_cached_by_agent_content() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("husk-agent");
        std::fs::write(&agent, b"not really an agent").unwrap();
        let first = agent_initramfs(&agent, dir.path()).unwrap();
        let second = agent_initramfs(&agent, dir.path()).unwrap();
        assert_eq!(first, second);
        // The second call took the stamp's word for it.
        let stamps: Vec<_> = std::fs::read_dir(dir.path().join("stamps"))
            .unwrap()
            .collect();
        assert_eq!(stamps.len(), 1);
        std::fs::write(&agent, b"another agent").unwrap();
        assert_ne!(agent_initramfs(&agent, dir.path()).unwrap(), first);
    }
}

#[cfg(test)]
mod stamp_tests {
    use super::*;

    #[test]
    fn a_stamp_pointing_to_a_removed_archive_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("husk-agent");
        std::fs::write(&agent, b"agent").unwrap();
        let first = agent_initramfs(&agent, dir.path()).unwrap();
        std::fs::remove_file(&first).unwrap();
        assert_eq!(agent_initramfs(&agent, dir.path()).unwrap(), first);
        assert!(first.is_file());
    }
}
