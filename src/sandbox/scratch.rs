//! Scratch disks for containers' writable layers (`husk run --disk`). Work in progress.

use std::path::{Path, PathBuf};

use super::SandboxError;

/// Create a sparse file of `size_mib` MiB in `dir`, formatted ext4; returns its path.
pub fn create(dir: &Path, size_mib: u64) -> Result<PathBuf, SandboxError> {
    Err(SandboxError::Agent(format!(
        "a {size_mib} MiB scratch disk in {} is not implemented yet",
        dir.display()
    )))
}
