//! `husk cp`'s archives, the same on both sides of the copy: the side that has the
//! source packs it as a tar stream whose first component is the source's name; the
//! side that has the destination unpacks it where docker's `cp` rules put it
//! ([`rules`]; a source written `DIR/.` means the directory's contents), mapping that
//! first component onto the destination path. Modes and modification times are kept;
//! owners only when asked (`husk cp -a` into a sandbox).
//!
//! The unpacking side never trusts the archive: every entry must lie under the same
//! first component, no path may hold `..` or be absolute, no entry is written through a
//! symlink (its own or the destination's below the copy's top), and hard links must
//! point inside the copy.

mod pack;
pub mod rules;
mod unpack;

pub use pack::{is_contents, pack, source_kind};
pub use rules::{place, Dest, Kind};
pub use unpack::{check_destination, unpack, unpack_into, UnpackOptions};

/// One copy between the caller and a container, as the host asks it and the agent
/// carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyRequest {
    /// The container's `path` comes out as a tar stream on the process's stdout.
    Out {
        /// The source in the container.
        path: String,
    },
    /// The tar stream given as the process's stdin goes to the container's `path`.
    In {
        /// The destination in the container.
        path: String,
        /// The source was written `DIR/.`: only its contents go.
        contents: bool,
        /// Keep the archived owners (`husk cp -a`); else root owns the files.
        preserve_owner: bool,
        /// The archive is the caller's own tar stream (`husk cp - NAME:DIR`): its
        /// entries go into the existing directory `path` as they are.
        as_is: bool,
    },
}

/// Errors of a copy, worded after docker's.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source does not exist.
    #[error("no such file or directory: {0}")]
    NotFound(String),
    /// A path ending in `/` names something that is not a directory.
    #[error("not a directory: {0}")]
    NotADirectory(String),
    /// A directory onto an existing file.
    #[error("cannot copy a directory to a file: {0}")]
    DirectoryToFile(String),
    /// A destination ending in `/` that does not exist.
    #[error("the destination directory must exist: {0}")]
    DestinationMissing(String),
    /// The destination's parent does not exist.
    #[error("no such directory: {0}")]
    NoParent(String),
    /// The archive breaks the rules above.
    #[error("refused archive entry {entry:?}: {reason}")]
    Refused {
        /// The entry's path as stored.
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// The archive is empty.
    #[error("the archive is empty")]
    Empty,
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// On what.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl CopyError {
    fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| CopyError::Io { what, path, source }
    }
}
