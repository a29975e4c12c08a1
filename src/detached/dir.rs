//! A detached sandbox's folder: its name, files and `state.json`.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::{io_err, root, validate_name, DetachedError, State};

/// A sandbox folder.
#[derive(Debug, Clone)]
pub struct SandboxDir {
    pub(super) name: String,
    pub(super) path: PathBuf,
}

impl SandboxDir {
    /// The folder of an existing sandbox.
    pub fn open(name: &str) -> Result<Self, DetachedError> {
        validate_name(name)?;
        let path = root().join(name);
        if !path.join("state.json").is_file() {
            return Err(DetachedError::NotFound(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            path,
        })
    }

    /// Create the folder of a new sandbox; fails if the name is taken.
    pub fn create(name: &str) -> Result<Self, DetachedError> {
        validate_name(name)?;
        let root = root();
        fs::create_dir_all(&root).map_err(io_err("cannot create", &root))?;
        let path = root.join(name);
        match fs::create_dir(&path) {
            Ok(()) => Ok(Self {
                name: name.to_string(),
                path,
            }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(DetachedError::Exists(name.to_string()))
            }
            Err(e) => Err(io_err("cannot create", &path)(e)),
        }
    }

    /// Every sandbox folder, by name.
    pub fn list() -> Result<Vec<Self>, DetachedError> {
        let mut dirs: Vec<Self> = super::named_entries(&root())?
            .into_iter()
            .filter_map(|(name, _)| Self::open(&name).ok())
            .collect();
        dirs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(dirs)
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }

    /// The main process's stdout (`false`) or stderr (`true`) log.
    pub fn log(&self, stderr: bool) -> PathBuf {
        self.path
            .join(if stderr { "stderr.log" } else { "stdout.log" })
    }

    /// The main process's output log (`stderr` or stdout), opened for appending.
    pub(super) fn open_log(&self, stderr: bool) -> Result<fs::File, DetachedError> {
        let path = self.log(stderr);
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("cannot open", &path))
    }

    /// Read `state.json`.
    pub fn state(&self) -> Result<State, DetachedError> {
        let path = self.path.join("state.json");
        let text = fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
        serde_json::from_str(&text)
            .map_err(|e| io_err("corrupt", &path)(io::Error::new(io::ErrorKind::InvalidData, e)))
    }

    /// Write `state.json` atomically.
    pub fn write_state(&self, state: &State) -> Result<(), DetachedError> {
        let path = self.path.join("state.json");
        let tmp = self.path.join(".state.json.tmp");
        let json = serde_json::to_vec_pretty(state).map_err(|e| {
            io_err("cannot encode", &path)(io::Error::new(io::ErrorKind::InvalidData, e))
        })?;
        fs::write(&tmp, json).map_err(io_err("cannot write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("cannot replace", &path))
    }

    /// Whether a monitor answers on the control socket.
    pub fn is_running(&self) -> bool {
        UnixStream::connect(self.control_socket()).is_ok()
    }

    /// Remove the folder, and its VM's runtime folder when that lives elsewhere (left
    /// behind by a monitor that was killed).
    pub fn remove(&self) -> Result<(), DetachedError> {
        self.remove_vm_runtime();
        fs::remove_dir_all(&self.path).map_err(io_err("cannot remove", &self.path))
    }

    /// Record that this sandbox's VM makes its runtime folder in `parent`, outside this
    /// folder (a parked sandbox's, see `super::adopt`), so that it goes with the folder.
    pub(super) fn set_vm_runtime(&self, parent: &Path) -> Result<(), DetachedError> {
        let path = self.path.join(VM_RUNTIME);
        let text = parent.as_os_str().as_encoded_bytes();
        fs::write(&path, text).map_err(io_err("cannot write", &path))
    }

    /// Remove the runtime parent [`SandboxDir::set_vm_runtime`] recorded, if any: only
    /// ever a folder of the detached root's parked runtime folder.
    pub(super) fn remove_vm_runtime(&self) {
        let Ok(text) = fs::read(self.path.join(VM_RUNTIME)) else {
            return;
        };
        let path = PathBuf::from(std::ffi::OsString::from_vec(text));
        if path.parent() == Some(&super::adopt::parked_runtime_root()) {
            drop(fs::remove_dir_all(&path));
        }
    }
}

/// The file naming a sandbox's VM runtime parent when it is outside its folder.
const VM_RUNTIME: &str = "vm-runtime";
