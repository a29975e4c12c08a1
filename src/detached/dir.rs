//! A detached sandbox's folder: its name, files and `state.json`.

use std::fs;
use std::io;
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

    /// Remove the folder.
    pub fn remove(&self) -> Result<(), DetachedError> {
        fs::remove_dir_all(&self.path).map_err(io_err("cannot remove", &self.path))
    }
}
