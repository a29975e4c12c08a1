//! The image store: imports OCI image layouts and archives, `docker save` archives and
//! root filesystems, applies their layers (whiteouts included) into a staging directory,
//! and keeps the result as a read-only erofs file addressed by its sha256 digest.
//!
//! Layout under the data directory (`<root>/images`):
//! - `sha256/<hex>.erofs`: the filesystem image, `<hex>` being its own sha256;
//! - `sha256/<hex>.json`: its metadata ([`ImageConfig`], size, creation time, source);
//! - `names.json`: the name index (`name -> digest`), replaced atomically.
//!
//! Every import stages under `<root>/images/.tmp-*` and commits with renames, so a failed
//! import leaves the store as it was.

mod apt;
mod busybox;
mod docker;
mod fsimage;
mod import;
mod layer;
mod oci;
mod pull;
pub mod registry;
mod source;
mod store;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use pull::{login, PullOptions};
pub use store::ImageStore;

/// An error of the image store. Messages name the input, entry, blob or tool at fault;
/// the underlying cause, when there is one, is the error's `source`.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file system operation failed (ENOSPC included).
    #[error("{op} {path}")]
    Io {
        /// What was being done ("read", "create", "rename", ...).
        op: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The input is none of the supported formats.
    #[error("{input}: not an image: {reason}")]
    NotAnImage {
        /// The input given to `import`.
        input: PathBuf,
        /// What was looked for and not found.
        reason: String,
    },
    /// A manifest, index or config is missing or inconsistent.
    #[error("{input}: {reason}")]
    Manifest {
        /// The input given to `import`.
        input: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON document of the image does not parse.
    #[error("{input}: invalid JSON in {file}")]
    Json {
        /// The input given to `import`.
        input: PathBuf,
        /// The document (a path inside the image or a blob digest).
        file: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A blob's content does not hash to the digest its manifest gives.
    #[error("{input}: blob {blob} has digest {actual}")]
    DigestMismatch {
        /// The input given to `import`.
        input: PathBuf,
        /// The expected digest (or the blob's path when the digest is a diff id).
        blob: String,
        /// The digest of what was read.
        actual: String,
    },
    /// An archive entry would escape the staging directory or is otherwise refused.
    #[error("{archive}: entry {entry:?} refused: {reason}")]
    UnsafeEntry {
        /// The archive (input, layer index and blob).
        archive: String,
        /// The entry's path as stored in the archive.
        entry: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Reading or writing an archive entry failed (truncated or corrupt archive).
    #[error("{archive}: entry {entry:?}")]
    Entry {
        /// The archive (input, layer index and blob).
        archive: String,
        /// The entry's path, or `<header>` when the header itself is unreadable.
        entry: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An external tool could not be started.
    #[error("cannot run {tool}")]
    ToolSpawn {
        /// The program.
        tool: String,
        /// Why it could not start.
        #[source]
        source: io::Error,
    },
    /// An external tool exited unsuccessfully.
    #[error("{tool} exited with {status}: {stderr}")]
    Tool {
        /// The program and its main argument.
        tool: String,
        /// Its exit status.
        status: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// A registry pull failed.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// No image has this name or digest.
    #[error("no image {0:?}")]
    NotFound(String),
    /// A digest prefix matches more than one image.
    #[error("digest prefix {0:?} matches several images")]
    Ambiguous(String),
    /// A name given to `import` is not acceptable.
    #[error("invalid image name {0:?}: use 1-255 of [A-Za-z0-9._:/@-], starting alphanumeric")]
    InvalidName(String),
    /// No data directory could be chosen.
    #[error("no data directory: set HUSK_DATA_DIR, XDG_DATA_HOME or HOME")]
    NoDataDir,
    /// A metadata file of the store is corrupt.
    #[error("corrupt store metadata {path}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

impl ImageError {
    /// An [`ImageError::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.to_path_buf();
        move |source| ImageError::Io { op, path, source }
    }
}

/// How to run a container from an image: the parts of the OCI image config that the
/// guest agent needs (OCI image spec, config.md "Properties").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Environment, `NAME=value` each.
    pub env: Vec<String>,
    /// Entrypoint; the command's arguments are appended to it.
    pub entrypoint: Vec<String>,
    /// Default command (arguments to the entrypoint, or the program if there is none).
    pub cmd: Vec<String>,
    /// Working directory, `/` when absent.
    pub working_dir: Option<String>,
    /// User (`name`, `uid`, `uid:gid`, ...), root when absent.
    pub user: Option<String>,
}

impl ImageConfig {
    /// The configuration given to imported root filesystems, which carry none: a
    /// standard `PATH` and `/bin/sh` as the command.
    pub fn rootfs_default() -> Self {
        ImageConfig {
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ],
            cmd: vec!["/bin/sh".to_string()],
            ..ImageConfig::default()
        }
    }
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The name it was resolved or listed by, if any.
    pub name: Option<String>,
    /// `sha256:<hex>`, the digest of the filesystem image file.
    pub digest: String,
    /// The read-only erofs file (attach it to the guest as a read-only disk).
    pub fs_image: PathBuf,
    /// How to run it.
    pub config: ImageConfig,
    /// Size of the erofs file in bytes.
    pub size: u64,
    /// When it was first imported, in seconds since the Unix epoch.
    pub created: u64,
    /// What it was imported from (the input path, or `busybox-static`).
    pub source: String,
}

impl Image {
    /// The first 12 hex digits of the digest, as `docker images` shows them.
    pub fn short_id(&self) -> &str {
        let hex = self.digest.strip_prefix("sha256:").unwrap_or(&self.digest);
        hex.get(..12).unwrap_or(hex)
    }
}
