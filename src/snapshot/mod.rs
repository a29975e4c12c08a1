//! Snapshots of a VM: a folder with the state file ([`format`]) and the memory file
//! ([`memory`]). [`create`] pauses the VM (if it runs), holds its devices still, writes
//! both files and lets it go on; [`load`] reads and checks a snapshot without touching
//! KVM state; [`restore`] builds a running VM from it (see `vmm::restore`).
//!
//! ```text
//! DIR/state    header, fingerprint, vCPU/VM/device state (docs/design.md, "Snapshots")
//! DIR/memory   guest RAM, as large as it, with holes for zero pages
//! ```

pub mod files;
pub mod fingerprint;
pub mod format;
pub mod memory;
pub mod working_set;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvm_ioctls::{Cap, Kvm};

use crate::vmm::{self, RestoreOptions, RunningVm, VmError};
use fingerprint::{device_list, Expect, Fingerprint, HostFingerprint, Mismatch};
use format::{FormatError, StateFile};
pub use memory::MemoryStats;
use working_set::WorkingSet;

/// The state file's name in a snapshot folder.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot folder.
pub const MEMORY_FILE: &str = "memory";

/// Errors taking, reading or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state file is not a good snapshot.
    #[error("{path}: {source}")]
    Format {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
    /// The snapshot does not fit this host or this request.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    /// KVM could not be asked about this host.
    #[error(transparent)]
    Kvm(#[from] crate::kvm::KvmError),
    /// Pausing, saving or rebuilding the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The VM has a device whose state lives outside it (virtio-fs: its daemon).
    #[error(
        "a VM with {0} virtio-fs device(s) cannot be snapshotted: their state lives in virtiofsd"
    )]
    SharedFolders(usize),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { what, path, source }
}

/// How to take a snapshot.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The guest agent's digest, recorded in the fingerprint (sandbox snapshots).
    pub agent_digest: Option<String>,
    /// Sync both files to disk before returning (templates and user snapshots; a
    /// fork's short-lived snapshot skips it).
    pub durable: bool,
}

/// What taking a snapshot did and how long each part took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Created {
    /// The memory file.
    pub memory: MemoryStats,
    /// Size of the state file.
    pub state_bytes: u64,
    /// Parking the vCPUs.
    pub pause: Duration,
    /// Saving vCPU, VM and device state.
    pub save_state: Duration,
    /// Writing the memory file.
    pub write_memory: Duration,
}

/// This host's side of a fingerprint.
pub fn host_fingerprint(kvm: &Kvm) -> Result<HostFingerprint, SnapshotError> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmError::Setup {
            what: "reading the supported CPUID",
            source: e,
        })?;
    let (cpu_vendor, cpu_family, cpu_model) = fingerprint::host_cpu();
    let xsave2 = usize::try_from(kvm.check_extension_int(Cap::Xsave2)).unwrap_or(0);
    Ok(HostFingerprint {
        cpu_vendor,
        cpu_family,
        cpu_model,
        supported_cpuid: supported
            .as_slice()
            .iter()
            .map(|e| [e.function, e.index, e.eax, e.ebx, e.ecx, e.edx])
            .collect(),
        xsave2_size: if xsave2 > std::mem::size_of::<kvm_bindings::kvm_xsave>() {
            xsave2
        } else {
            0
        },
    })
}

/// Snapshot `vm` into the new folder `dir` (its parent must exist). A running VM is
/// paused for the time it takes and resumed after; a paused one stays paused.
pub fn create(
    vm: &RunningVm,
    dir: &Path,
    options: &CreateOptions,
) -> Result<Created, SnapshotError> {
    refuse_outside_state(vm.config())?;
    std::fs::create_dir(dir).map_err(io("cannot create the snapshot folder", dir))?;
    create_files(vm, &dir.join(STATE_FILE), &dir.join(MEMORY_FILE), options)
}

/// Refuse a VM with device state outside husk, before anything is written.
fn refuse_outside_state(config: &crate::config::VmConfig) -> Result<(), SnapshotError> {
    match config.fs.len() {
        0 => Ok(()),
        n => Err(SnapshotError::SharedFolders(n)),
    }
}

/// Snapshot `vm` into the new files `state_path` and `memory_path`.
pub fn create_files(
    vm: &RunningVm,
    state_path: &Path,
    memory_path: &Path,
    options: &CreateOptions,
) -> Result<Created, SnapshotError> {
    let config = vm.config();
    refuse_outside_state(config)?;
    let kernel_sha256 =
        crate::digest::sha256_cached(&config.kernel, &crate::kernel::cache_root().join("digests"))
            .map_err(io("cannot read the kernel", &config.kernel))?;
    let host = host_fingerprint(&crate::kvm::open()?)?;
    let fingerprint = Fingerprint {
        host,
        memory_mib: config.memory_mib,
        vcpus: config.cpus,
        devices: device_list(config),
        kernel_sha256,
        agent_digest: options.agent_digest.clone(),
    };
    let started = Instant::now();
    let was_paused = vm.is_paused();
    if !was_paused {
        vm.pause()?;
    }
    let targets = Targets {
        state: state_path,
        memory: memory_path,
        durable: options.durable,
    };
    let result = write_both(vm, &targets, fingerprint, started);
    if !was_paused {
        vm.resume();
    }
    result
}

/// Where a snapshot goes.
struct Targets<'a> {
    state: &'a Path,
    memory: &'a Path,
    durable: bool,
}

fn write_both(
    vm: &RunningVm,
    targets: &Targets<'_>,
    fingerprint: Fingerprint,
    started: Instant,
) -> Result<Created, SnapshotError> {
    let paused = Instant::now();
    let quiesced = vm.quiesce()?;
    let saved = Instant::now();
    let memory = memory::write(vm.guest_ram(), targets.memory, targets.durable)
        .map_err(io("cannot write guest memory to", targets.memory))?;
    let written = Instant::now();
    let file = StateFile {
        husk_version: env!("CARGO_PKG_VERSION").to_string(),
        fingerprint,
        state: quiesced.state,
    };
    let bytes = format::encode(&file).map_err(|source| SnapshotError::Format {
        path: targets.state.to_path_buf(),
        source,
    })?;
    write_file(targets.state, &bytes, targets.durable)?;
    Ok(Created {
        memory,
        state_bytes: bytes.len() as u64,
        pause: paused - started,
        save_state: saved - paused,
        write_memory: written - saved,
    })
}

fn write_file(path: &Path, bytes: &[u8], durable: bool) -> Result<(), SnapshotError> {
    use std::io::Write;
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io("cannot create", path))?;
    f.write_all(bytes).map_err(io("cannot write", path))?;
    if durable {
        f.sync_all().map_err(io("cannot sync", path))?;
    }
    Ok(())
}

/// A snapshot read and checked, ready to restore.
pub struct Loaded {
    /// The state file's body.
    pub file: StateFile,
    /// The memory file, open.
    pub memory: File,
    /// The pages a restored guest is known to touch, if recorded (see
    /// [`working_set`]).
    pub working_set: Option<WorkingSet>,
}

/// Read the snapshot in `dir`, check it against this host (CPU, CPUID, KVM) and
/// `expect`; nothing of a VM is built yet.
pub fn load(dir: &Path, expect: &Expect) -> Result<Loaded, SnapshotError> {
    // Both files are opened through one handle on the folder, so a folder replaced
    // meanwhile (a template rebuilt) gives both files of one snapshot or an error,
    // never the state of one and the memory of another.
    let handle = File::open(dir).map_err(io("cannot open", dir))?;
    let pinned = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
    let memory_path = dir.join(MEMORY_FILE);
    let memory = File::open(pinned.join(MEMORY_FILE)).map_err(io("cannot open", &memory_path))?;
    let state_path = dir.join(STATE_FILE);
    let bytes = std::fs::read(pinned.join(STATE_FILE)).map_err(io("cannot read", &state_path))?;
    let mut loaded = check(&state_path, &bytes, memory, expect)?;
    let file_pages = loaded.memory.metadata().map_or(0, |m| m.len()) / working_set::PAGE;
    // Only an optimisation: a bad one is reported and left unused.
    loaded.working_set = WorkingSet::read(&pinned, file_pages).unwrap_or_else(|e| {
        log::warn!("snapshot {}: {}", dir.display(), crate::error_chain(&e));
        None
    });
    Ok(loaded)
}

/// The configuration a snapshot's VM was built from (its devices, in slot order): the
/// state file decoded, nothing else opened or checked (the VMM that restores it does).
pub fn read_config(dir: &Path) -> Result<crate::config::VmConfig, SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&state_path).map_err(io("cannot read", &state_path))?;
    let file = format::decode(&bytes).map_err(|source| SnapshotError::Format {
        path: state_path,
        source,
    })?;
    Ok(file.state.config)
}

/// Read the snapshot made of `state_path` and `memory_path` and check it (see [`load`]).
pub fn load_files(
    state_path: &Path,
    memory_path: &Path,
    expect: &Expect,
) -> Result<Loaded, SnapshotError> {
    let memory = File::open(memory_path).map_err(io("cannot open", memory_path))?;
    let bytes = std::fs::read(state_path).map_err(io("cannot read", state_path))?;
    check(state_path, &bytes, memory, expect)
}

/// Decode a state file's `bytes` and check its fingerprint.
fn check(
    state_path: &Path,
    bytes: &[u8],
    memory: File,
    expect: &Expect,
) -> Result<Loaded, SnapshotError> {
    let file = format::decode(bytes).map_err(|source| SnapshotError::Format {
        path: state_path.to_path_buf(),
        source,
    })?;
    let here = host_fingerprint(&crate::kvm::open()?)?;
    file.fingerprint.host.check(&here)?;
    file.fingerprint.check_expected(expect)?;
    Ok(Loaded {
        file,
        memory,
        working_set: None,
    })
}

/// Load the snapshot in `dir` and build a running VM from it.
pub fn restore(
    dir: &Path,
    expect: &Expect,
    options: &RestoreOptions,
) -> Result<RunningVm, SnapshotError> {
    let loaded = load(dir, expect)?;
    let set = loaded.working_set.as_ref();
    Ok(vmm::restore_with(
        &loaded.file.state,
        loaded.memory,
        set,
        options,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_with_a_shared_folder_is_refused_and_one_on_vhost_net_is_not() {
        let config = |extra: &str| -> crate::config::VmConfig {
            serde_json::from_str(&format!(r#"{{"kernel": "/k"{extra}}}"#)).unwrap()
        };
        let kernel = config(r#", "nets": [{"tap": "t0"}, {"tap": "t1", "vhost": true}]"#);
        assert!(refuse_outside_state(&kernel).is_ok());
        let shared = config(r#", "fs": [{"socket": "/s", "tag": "t"}]"#);
        let err = refuse_outside_state(&shared).unwrap_err();
        assert!(matches!(err, SnapshotError::SharedFolders(1)), "{err}");
        assert!(err.to_string().contains("virtiofsd"), "{err}");
    }
}
