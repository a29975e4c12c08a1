//! Applies layers (tar streams: gzip, zstd or uncompressed, told by magic) onto a
//! staging directory: regular files, directories, symlinks and hardlinks with their
//! mode, owner, mtime and extended attributes (pax `SCHILY.xattr.*`); OCI whiteouts
//! (`.wh.NAME`, `.wh..wh..opq`, image spec layer.md "Whiteouts"). Device nodes and
//! FIFOs are skipped (the guest has devtmpfs).
//!
//! Security: the archive is hostile. Entry paths with `..` or an absolute path are
//! refused; parents are resolved one component at a time without the kernel following
//! links, a symlinked parent is followed only when its relative target stays inside the
//! staging root; the last component is never followed; hardlink targets must resolve
//! inside too. Written by hand because `tar::Entry::unpack_in` silently skips what it
//! refuses, and refusing must fail the import.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use filetime::FileTime;
use tar::EntryType;

use super::ImageError;

/// Symlinks followed while resolving one path, as the kernel's limit (`MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: usize = 40;
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Wraps `reader` in a decompressor chosen by the stream's magic bytes (gzip, zstd) or
/// passes it through (plain tar), whatever the media type claims.
pub(crate) fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let head = buffered.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buffered)));
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(Box::new(zstd::stream::read::Decoder::with_buffer(
            buffered,
        )?));
    }
    Ok(Box::new(buffered))
}

/// Why one entry failed.
enum Refusal {
    /// Refused on security or consistency grounds.
    Unsafe(&'static str),
    /// The file system or the archive stream failed.
    Io(io::Error),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Refusal::Io(e)
    }
}

/// A staging directory being filled layer after layer.
pub(crate) struct Staging {
    root: PathBuf,
    /// Directory mtimes from the archives, applied by [`Staging::finish`] because
    /// adding children changes them.
    dir_times: HashMap<PathBuf, i64>,
}

/// What one layer has unpacked so far, for opaque whiteouts, which only hide lower
/// layers.
#[derive(Default)]
struct LayerState {
    unpacked: HashSet<PathBuf>,
    skipped: usize,
}

impl Staging {
    /// Starts filling `root`, an existing empty directory.
    pub(crate) fn new(root: &Path) -> Result<Self, ImageError> {
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io("chmod", root))?;
        Ok(Staging {
            root: root.to_path_buf(),
            dir_times: HashMap::new(),
        })
    }

    /// Applies one layer read from `reader` (already decompressed); `archive` names it
    /// in errors. Reads the stream to its end so that a digest over it is complete.
    pub(crate) fn apply<R: Read>(&mut self, reader: R, archive: &str) -> Result<(), ImageError> {
        let entry_err = |entry: &str, source| ImageError::Entry {
            archive: archive.to_string(),
            entry: entry.to_string(),
            source,
        };
        let mut tar = tar::Archive::new(reader);
        let mut state = LayerState::default();
        for entry in tar.entries().map_err(|e| entry_err("<header>", e))? {
            let mut entry = entry.map_err(|e| entry_err("<header>", e))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.apply_entry(&mut state, &mut entry)
                .map_err(|refusal| match refusal {
                    Refusal::Unsafe(reason) => ImageError::UnsafeEntry {
                        archive: archive.to_string(),
                        entry: name.clone(),
                        reason,
                    },
                    Refusal::Io(e) => entry_err(&name, e),
                })?;
        }
        io::copy(&mut tar.into_inner(), &mut io::sink())
            .map_err(|e| entry_err("<end of archive>", e))?;
        if state.skipped > 0 {
            log::info!(
                "{archive}: skipped {} device nodes and FIFOs (the guest has devtmpfs)",
                state.skipped
            );
        }
        Ok(())
    }

    /// Sets every directory's mtime (from the archives, else 0) so that the tree, and
    /// so the filesystem image, does not depend on when it was staged.
    pub(crate) fn finish(self) -> Result<(), ImageError> {
        for entry in walkdir::WalkDir::new(&self.root) {
            let entry = entry.map_err(|e| ImageError::Io {
                op: "walk",
                path: self.root.clone(),
                source: e.into(),
            })?;
            if !entry.file_type().is_dir() {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(&self.root)
                .unwrap_or(Path::new(""));
            let mtime = self.dir_times.get(rel).copied().unwrap_or(0);
            let time = FileTime::from_unix_time(mtime, 0);
            filetime::set_symlink_file_times(entry.path(), time, time)
                .map_err(ImageError::io("set mtime of", entry.path()))?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        state: &mut LayerState,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), Refusal> {
        let parts = normalize(&entry.path()?)?;
        let meta = Meta::of(entry)?;
        let Some((name, parents)) = parts.split_last() else {
            return self.root_entry(entry.header().entry_type(), &meta);
        };
        let name_str = name.to_string_lossy();
        if name_str == OPAQUE_MARKER {
            if let Some(dir) = self.resolve_dir(parents, false)? {
                self.clear_lower(state, &dir)?;
            }
            return Ok(());
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(Refusal::Unsafe("whiteout of an invalid name"));
            }
            if let Some(dir) = self.resolve_dir(parents, false)? {
                remove_any(&self.root.join(dir).join(hidden))?;
            }
            return Ok(());
        }
        let Some(dir) = self.resolve_dir(parents, true)? else {
            return Err(Refusal::Unsafe("parent directory cannot be created"));
        };
        let rel = dir.join(name);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            self.write_dir(&meta, &rel)?;
        } else if kind.is_file() || kind == EntryType::Continuous || kind.is_gnu_sparse() {
            // The tar crate expands sparse entries to their full content when read.
            self.write_file(entry, &meta, &rel)?;
        } else if kind.is_symlink() {
            self.write_symlink(entry, &meta, &rel)?;
        } else if kind.is_hard_link() {
            self.write_hardlink(entry, &rel)?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            state.skipped += 1;
            return Ok(());
        } else {
            // pax global headers and vendor extensions carry nothing to unpack.
            log::debug!("ignoring {kind:?} entry {}", rel.display());
            return Ok(());
        }
        if !kind.is_hard_link() {
            set_xattrs(&self.root.join(&rel), &meta.xattrs);
        }
        state.unpacked.insert(rel);
        Ok(())
    }

    /// An entry for the root itself (`./`): only its metadata applies.
    fn root_entry(&mut self, kind: EntryType, meta: &Meta) -> Result<(), Refusal> {
        if kind.is_dir() {
            meta.set_owner_mode(&self.root)?;
            self.dir_times.insert(PathBuf::new(), meta.mtime);
        }
        Ok(())
    }

    fn write_dir(&mut self, meta: &Meta, rel: &Path) -> Result<(), Refusal> {
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&path)?;
                fs::create_dir(&path)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&path)?,
            Err(e) => return Err(e.into()),
        }
        meta.set_owner_mode(&path)?;
        self.dir_times.insert(rel.to_path_buf(), meta.mtime);
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        meta: &Meta,
        rel: &Path,
    ) -> Result<(), Refusal> {
        let path = self.root.join(rel);
        remove_any(&path)?;
        // create_new is O_EXCL: it never follows a link at the last component.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        io::copy(entry, &mut file)?;
        drop(file);
        meta.set_owner_mode(&path)?;
        meta.set_mtime(&path)
    }

    fn write_symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        meta: &Meta,
        rel: &Path,
    ) -> Result<(), Refusal> {
        let target = entry
            .link_name()?
            .ok_or(Refusal::Unsafe("symlink without a target"))?;
        let path = self.root.join(rel);
        remove_any(&path)?;
        // The target is stored verbatim: it is resolved in the guest, never here.
        symlink(&target, &path)?;
        lchown(&path, Some(meta.uid), Some(meta.gid))?;
        meta.set_mtime(&path)
    }

    fn write_hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
    ) -> Result<(), Refusal> {
        let link = entry
            .link_name()?
            .ok_or(Refusal::Unsafe("hardlink without a target"))?;
        let parts = normalize(&link)?;
        let Some((name, parents)) = parts.split_last() else {
            return Err(Refusal::Unsafe("hardlink to the root directory"));
        };
        let Some(dir) = self.resolve_dir(parents, false)? else {
            return Err(Refusal::Unsafe("hardlink target does not exist"));
        };
        let target = self.root.join(dir).join(name);
        match fs::symlink_metadata(&target) {
            Ok(meta) if !meta.is_dir() => {}
            _ => return Err(Refusal::Unsafe("hardlink target missing or a directory")),
        }
        let path = self.root.join(rel);
        if path == target {
            return Ok(());
        }
        remove_any(&path)?;
        fs::hard_link(&target, &path)?;
        Ok(())
    }

    /// Resolves the directory `parts` to a real directory inside the root, as a path
    /// relative to it. Missing directories are created (mode 0755) when `create`, else
    /// `None` is returned. A symlink on the way is followed only when its target is
    /// relative and stays inside the root.
    fn resolve_dir(&self, parts: &[OsString], create: bool) -> Result<Option<PathBuf>, Refusal> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut pending: VecDeque<OsString> = parts.iter().cloned().collect();
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            if part == ".." {
                resolved
                    .pop()
                    .ok_or(Refusal::Unsafe("a parent symlink points outside the root"))?;
                continue;
            }
            let rel: PathBuf = resolved.iter().chain([&part]).collect();
            let path = self.root.join(&rel);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => resolved.push(part),
                Ok(meta) if meta.is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(Refusal::Unsafe("too many symlinks in a parent"));
                    }
                    let target = fs::read_link(&path)?;
                    for part in symlink_parts(&target)?.into_iter().rev() {
                        pending.push_front(part);
                    }
                }
                Ok(_) => return Err(Refusal::Unsafe("a parent is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&path)?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
                    resolved.push(part);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(resolved.iter().collect()))
    }

    /// Removes what lower layers left in `dir` (relative), keeping what this layer has
    /// unpacked (recursively: a directory unpacked by this layer loses its lower
    /// children too).
    fn clear_lower(&self, state: &LayerState, dir: &Path) -> io::Result<()> {
        for child in fs::read_dir(self.root.join(dir))? {
            let child = child?;
            let rel = dir.join(child.file_name());
            if !state.unpacked.contains(&rel) {
                remove_any(&child.path())?;
            } else if child.file_type()?.is_dir() {
                self.clear_lower(state, &rel)?;
            }
        }
        Ok(())
    }
}

/// Splits an archive path into its components, refusing `..` and absolute paths.
fn normalize(path: &Path) -> Result<Vec<OsString>, Refusal> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_os_string()),
            Component::ParentDir => return Err(Refusal::Unsafe("path has a `..` component")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(Refusal::Unsafe("path is absolute"))
            }
        }
    }
    Ok(parts)
}

/// The components of a symlink's target met while resolving a parent. An absolute
/// target would be resolved against the host's root here, so it is refused.
fn symlink_parts(target: &Path) -> Result<Vec<OsString>, Refusal> {
    let mut parts = Vec::new();
    for component in target.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_os_string()),
            Component::ParentDir => parts.push(OsStr::new("..").to_os_string()),
            Component::RootDir | Component::Prefix(_) => {
                return Err(Refusal::Unsafe(
                    "a parent is a symlink pointing outside the root",
                ))
            }
        }
    }
    Ok(parts)
}

/// Removes whatever is at `path` without following it; nothing there is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// An entry's metadata: the header's, overridden by its pax records (`uid`, `gid`,
/// `mtime` for values the header cannot hold; `SCHILY.xattr.<name>`).
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    fn of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Self, Refusal> {
        let header = entry.header();
        let mut meta = Meta {
            uid: header.uid()? as u32,
            gid: header.gid()? as u32,
            mode: header.mode()? & 0o7777,
            mtime: header.mtime()? as i64,
            xattrs: Vec::new(),
        };
        let Some(records) = entry.pax_extensions()? else {
            return Ok(meta);
        };
        for record in records {
            let record = record?;
            let value = String::from_utf8_lossy(record.value_bytes());
            // pax mtimes may carry a fraction ("1700000000.123"): seconds are kept.
            let number = || value.split('.').next().and_then(|v| v.parse::<i64>().ok());
            match record.key_bytes() {
                b"uid" => meta.uid = number().ok_or(Refusal::Unsafe("bad pax uid"))? as u32,
                b"gid" => meta.gid = number().ok_or(Refusal::Unsafe("bad pax gid"))? as u32,
                b"mtime" => meta.mtime = number().ok_or(Refusal::Unsafe("bad pax mtime"))?,
                key => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        let name = OsStr::from_bytes(name).to_os_string();
                        meta.xattrs.push((name, record.value_bytes().to_vec()));
                    }
                }
            }
        }
        Ok(meta)
    }

    /// Owner then mode (chown clears set-id bits, so it comes first). Not for symlinks.
    fn set_owner_mode(&self, path: &Path) -> Result<(), Refusal> {
        lchown(path, Some(self.uid), Some(self.gid))?;
        fs::set_permissions(path, fs::Permissions::from_mode(self.mode))?;
        Ok(())
    }

    fn set_mtime(&self, path: &Path) -> Result<(), Refusal> {
        let time = FileTime::from_unix_time(self.mtime, 0);
        filetime::set_symlink_file_times(path, time, time)?;
        Ok(())
    }
}

/// Sets extended attributes (after chown, which clears `security.capability`), never
/// following a symlink. Best effort: the staging file system or the host's security
/// module may refuse some (`security.selinux`), which only loses them with a warning.
fn set_xattrs(path: &Path, xattrs: &[(OsString, Vec<u8>)]) {
    for (name, value) in xattrs {
        if let Err(e) = xattr::set(path, name, value) {
            log::warn!("{}: cannot set xattr {name:?}: {e}", path.display());
        }
    }
}

#[cfg(test)]
#[path = "layer_tests.rs"]
mod tests;
