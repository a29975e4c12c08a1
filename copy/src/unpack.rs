//! The destination side: a tar stream from [`crate::pack`] (or from an untrusted peer)
//! unpacked where [`crate::rules::place`] says. Every entry must lie under the first
//! entry's top component, which is mapped onto that place; nothing is written through a
//! symlink below it; hard links must point inside the copy. Directories get their
//! mode, owner and time once everything inside them is written.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use filetime::FileTime;

use crate::rules::{place, Dest, Kind};
use crate::CopyError;

/// How to unpack.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnpackOptions {
    /// Give entries their archived owners (`husk cp -a`); else the unpacking user owns
    /// them.
    pub preserve_owner: bool,
    /// Keep set-uid, set-gid and sticky bits; else only the permission bits.
    pub preserve_special_bits: bool,
}

/// Checks that `dest` can take a copy: it exists, or its parent is a directory.
pub fn check_destination(dest: &str) -> Result<Dest, CopyError> {
    let path = Path::new(dest);
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(Dest::Dir),
        Ok(_) if dest.ends_with('/') => Err(CopyError::NotADirectory(dest.to_string())),
        Ok(_) => Ok(Dest::File),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match fs::metadata(parent) {
                Ok(meta) if meta.is_dir() => Ok(Dest::Missing),
                _ => Err(CopyError::NoParent(parent.display().to_string())),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            Err(CopyError::NoParent(dest.to_string()))
        }
        Err(e) => Err(CopyError::io("stat", path)(e)),
    }
}

/// Unpacks the archive `reader` to `dest` by docker's rules (`contents`: the source
/// was written `DIR/.`).
pub fn unpack<R: Read>(
    reader: R,
    dest: &str,
    contents: bool,
    options: UnpackOptions,
) -> Result<(), CopyError> {
    let state = check_destination(dest)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_ownerships(options.preserve_owner);
    let read_err = |e| CopyError::Io {
        what: "read",
        path: "the archive".into(),
        source: e,
    };
    let mut entries = archive.entries().map_err(read_err)?;
    let first = entries.next().ok_or(CopyError::Empty)?.map_err(read_err)?;
    let (name, rest) = split_top(&first)?;
    // An archive may leave out its top directory's own entry.
    let kind = match first.header().entry_type().is_dir() || !rest.as_os_str().is_empty() {
        true => Kind::Dir,
        false => Kind::Other,
    };
    let top = place(&name, kind, contents, dest, state)?;
    let mut unpacker = Unpacker {
        name: Some(name),
        // The top's own metadata goes on a directory the copy makes, not on the
        // user's existing one it merges into.
        keep_top_metadata: top != Path::new(dest) || state == Dest::Missing,
        top,
        options,
        dirs: Vec::new(),
    };
    unpacker.entry(first)?;
    for entry in entries {
        unpacker.entry(entry.map_err(read_err)?)?;
    }
    unpacker.finish()
}

/// Unpacks an archive the user made (`husk cp - NAME:DIR`, docker's "tar stream on
/// STDIN") into the existing directory `dir`, its entries where they say, under the
/// same checks.
pub fn unpack_into<R: Read>(reader: R, dir: &str, options: UnpackOptions) -> Result<(), CopyError> {
    if check_destination(dir)? != Dest::Dir {
        return Err(CopyError::NotADirectory(dir.to_string()));
    }
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_ownerships(options.preserve_owner);
    let mut unpacker = Unpacker {
        name: None,
        top: PathBuf::from(dir),
        keep_top_metadata: false,
        options,
        dirs: Vec::new(),
    };
    let entries = archive.entries().map_err(|e| CopyError::Io {
        what: "read",
        path: "the archive".into(),
        source: e,
    })?;
    for entry in entries {
        unpacker.entry(entry.map_err(|e| CopyError::Io {
            what: "read",
            path: "the archive".into(),
            source: e,
        })?)?;
    }
    unpacker.finish()
}

/// An entry's top component and the rest of its path, refusing absolute paths, `..`
/// and anything but plain names.
fn split_top<R: Read>(entry: &tar::Entry<'_, R>) -> Result<(String, PathBuf), CopyError> {
    let raw = entry.path().map_err(|e| CopyError::Io {
        what: "read an entry name of",
        path: "the archive".into(),
        source: e,
    })?;
    let refuse = |reason| CopyError::Refused {
        entry: raw.display().to_string(),
        reason,
    };
    let mut parts = raw.components().filter(|c| !matches!(c, Component::CurDir));
    let top = match parts.next() {
        Some(Component::Normal(top)) => top.to_string_lossy().into_owned(),
        _ => return Err(refuse("not a relative path")),
    };
    let mut rest = PathBuf::new();
    for part in parts {
        match part {
            Component::Normal(p) => rest.push(p),
            _ => return Err(refuse("a path with `..`")),
        }
    }
    Ok((top, rest))
}

/// A directory to finish: path, mode, owner, mtime.
type DirMeta = (PathBuf, u32, Option<(u64, u64)>, Option<u64>);

struct Unpacker {
    /// The archive's top component, mapped onto `top`; `None`: entries go under `top`
    /// as they are.
    name: Option<String>,
    /// Where it goes.
    top: PathBuf,
    keep_top_metadata: bool,
    options: UnpackOptions,
    dirs: Vec<DirMeta>,
}

impl Unpacker {
    /// Where an archived path (an entry's, or a hard link's target) lies below `top`.
    fn below_top(&self, path: &Path) -> Option<PathBuf> {
        let (first, rest) = split_link(path)?;
        match &self.name {
            Some(name) => (first == *name).then_some(rest),
            None if rest.as_os_str().is_empty() => Some(PathBuf::from(first)),
            None => Some(Path::new(&first).join(rest)),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), CopyError> {
        let shown = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let refuse = |reason| CopyError::Refused {
            entry: shown.clone(),
            reason,
        };
        let raw = entry
            .path()
            .map_err(|e| CopyError::io("read the name of", Path::new(&shown))(e))?;
        if self.name.is_none() && raw.components().all(|c| matches!(c, Component::CurDir)) {
            return Ok(()); // `./`: the directory unpacked into, left as it is.
        }
        split_top(&entry)?;
        let rest = self
            .below_top(&raw)
            .ok_or_else(|| refuse("outside the copy's top directory"))?;
        let target = match rest.as_os_str().is_empty() {
            true => self.top.clone(),
            false => self.top.join(&rest),
        };
        self.check_parents(&rest)
            .map_err(|_| refuse("below a symlink"))?;
        if let Some(parent) = target.parent().filter(|_| !rest.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(CopyError::io("create", parent))?;
        }
        let header = entry.header();
        let kind = header.entry_type();
        if kind.is_dir() {
            return self.directory(&target, header, rest.as_os_str().is_empty());
        }
        if kind.is_hard_link() {
            let link = entry
                .link_name()
                .ok()
                .flatten()
                .ok_or_else(|| refuse("a hard link without target"))?;
            let link_rest = self
                .below_top(&link)
                .ok_or_else(|| refuse("a hard link outside the copy"))?;
            self.check_parents(&link_rest)
                .map_err(|_| refuse("a hard link below a symlink"))?;
            remove_existing(&target)?;
            let source = self.top.join(link_rest);
            return fs::hard_link(&source, &target).map_err(CopyError::io("link", &target));
        }
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Ok(()); // Device nodes and FIFOs are not copied.
        }
        entry.set_preserve_permissions(self.options.preserve_special_bits);
        entry.set_preserve_mtime(true);
        entry.set_unpack_xattrs(false);
        entry
            .unpack(&target)
            .map(|_| ())
            .map_err(CopyError::io("write", &target))
    }

    /// Refuses a path any of whose directories below the top (the top included when
    /// the path goes below it and the copy made it) is a symlink.
    fn check_parents(&self, rest: &Path) -> Result<(), ()> {
        let mut path = self.top.clone();
        let mut parts = rest.components().peekable();
        if parts.peek().is_some() && self.keep_top_metadata && is_symlink(&path) {
            return Err(());
        }
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                break;
            }
            path.push(part);
            if is_symlink(&path) {
                return Err(());
            }
        }
        Ok(())
    }

    fn directory(
        &mut self,
        target: &Path,
        header: &tar::Header,
        is_top: bool,
    ) -> Result<(), CopyError> {
        match fs::symlink_metadata(target) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(CopyError::Refused {
                    entry: target.display().to_string(),
                    reason: "a directory over an existing file or link",
                })
            }
            Err(_) => fs::create_dir(target).map_err(CopyError::io("create", target))?,
        }
        if is_top && !self.keep_top_metadata {
            return Ok(());
        }
        let mode = header.mode().unwrap_or(0o755);
        let owner = match (self.options.preserve_owner, header.uid(), header.gid()) {
            (true, Ok(uid), Ok(gid)) => Some((uid, gid)),
            _ => None,
        };
        self.dirs
            .push((target.to_path_buf(), mode, owner, header.mtime().ok()));
        Ok(())
    }

    /// Gives directories their mode, owner and time, deepest first (writing inside a
    /// directory changes its time; a read-only one must be filled first).
    fn finish(mut self) -> Result<(), CopyError> {
        self.dirs
            .sort_by_key(|(path, ..)| std::cmp::Reverse(path.components().count()));
        for (path, mode, owner, mtime) in self.dirs {
            if let Some((uid, gid)) = owner {
                let (uid, gid) = (u32::try_from(uid).ok(), u32::try_from(gid).ok());
                std::os::unix::fs::chown(&path, uid, gid).map_err(CopyError::io("chown", &path))?;
            }
            let bits = if self.options.preserve_special_bits {
                0o7777
            } else {
                0o777
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & bits))
                .map_err(CopyError::io("chmod", &path))?;
            if let Some(mtime) = mtime {
                let time = FileTime::from_unix_time(mtime as i64, 0);
                filetime::set_file_times(&path, time, time)
                    .map_err(CopyError::io("set the time of", &path))?;
            }
        }
        Ok(())
    }
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// An archived path as its top component and the rest (plain names only).
fn split_link(link: &Path) -> Option<(String, PathBuf)> {
    let mut parts = link
        .components()
        .filter(|c| !matches!(c, Component::CurDir));
    let top = match parts.next()? {
        Component::Normal(top) => top.to_string_lossy().into_owned(),
        _ => return None,
    };
    let mut rest = PathBuf::new();
    for part in parts {
        match part {
            Component::Normal(p) => rest.push(p),
            _ => return None,
        }
    }
    Some((top, rest))
}

fn remove_existing(path: &Path) -> Result<(), CopyError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(CopyError::Refused {
            entry: path.display().to_string(),
            reason: "a link over an existing directory",
        }),
        Ok(_) => fs::remove_file(path).map_err(CopyError::io("replace", path)),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
