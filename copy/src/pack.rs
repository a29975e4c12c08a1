//! The source side: a path packed as a tar stream named after its last component.
//! Directories are walked without following symlinks (a link is copied as a link);
//! sockets are skipped, as docker does.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::rules::Kind;
use crate::CopyError;

/// Whether `src` asks for a directory's contents (`DIR/.`).
pub fn is_contents(src: &str) -> bool {
    src == "." || src.ends_with("/.")
}

/// What `src` is, refusing a missing source and a file written with a trailing `/`.
/// The last component is not followed (a symlink is copied as one) unless the path
/// ends in `/`.
pub fn source_kind(src: &str) -> Result<Kind, CopyError> {
    let path = Path::new(src);
    let follow = src.ends_with('/') || is_contents(src);
    let meta = if follow {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    };
    let meta = meta.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CopyError::NotFound(src.to_string()),
        std::io::ErrorKind::NotADirectory => CopyError::NotADirectory(src.to_string()),
        _ => CopyError::io("stat", path)(e),
    })?;
    match meta.is_dir() {
        true => Ok(Kind::Dir),
        false if follow => Err(CopyError::NotADirectory(src.to_string())),
        false => Ok(Kind::Other),
    }
}

/// The name the source's top entry has: its last component (`root` for `/`).
fn top_name(src: &str) -> String {
    let trimmed = src.trim_end_matches("/.").trim_end_matches('/');
    Path::new(trimmed)
        .file_name()
        .map_or_else(|| "root".to_string(), |n| n.to_string_lossy().into_owned())
}

/// Writes `src` (checked by [`source_kind`]) as a tar stream into `out`, with modes,
/// owners and modification times.
pub fn pack<W: Write>(src: &str, out: W) -> Result<(), CopyError> {
    let kind = source_kind(src)?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let name = top_name(src);
    let path = Path::new(src);
    match kind {
        Kind::Dir => append_tree(&mut builder, path, Path::new(&name), &mut HashMap::new())?,
        Kind::Other => builder
            .append_path_with_name(path, &name)
            .map_err(CopyError::io("archive", path))?,
    }
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(CopyError::io("write the archive of", path))
}

/// Files with more than one link seen so far, by (device, inode): their name in the
/// archive, which later links point to.
type Links = HashMap<(u64, u64), PathBuf>;

fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
    links: &mut Links,
) -> Result<(), CopyError> {
    builder
        .append_path_with_name(dir, name)
        .map_err(CopyError::io("archive", dir))?;
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(CopyError::io("read", dir))?
        .collect::<Result<_, _>>()
        .map_err(CopyError::io("read", dir))?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        let child_name = name.join(child.file_name());
        let file_type = child.file_type().map_err(CopyError::io("stat", &path))?;
        if file_type.is_dir() {
            append_tree(builder, &path, &child_name, links)?;
        } else if file_type.is_file() {
            append_file(builder, &path, &child_name, links)?;
        } else if !file_type.is_socket() {
            builder
                .append_path_with_name(&path, &child_name)
                .map_err(CopyError::io("archive", &path))?;
        }
    }
    Ok(())
}

/// A regular file, or a hard link to the name under which its inode was archived.
fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    links: &mut Links,
) -> Result<(), CopyError> {
    let meta = fs::symlink_metadata(path).map_err(CopyError::io("stat", path))?;
    if meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            let mut header = tar::Header::new_gnu();
            header.set_metadata(&meta);
            header.set_entry_type(tar::EntryType::Link);
            header.set_size(0);
            return builder
                .append_link(&mut header, name, first)
                .map_err(CopyError::io("archive", path));
        }
        links.insert((meta.dev(), meta.ino()), name.to_path_buf());
    }
    builder
        .append_path_with_name(path, name)
        .map_err(CopyError::io("archive", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_names_are_the_last_component() {
        assert_eq!(top_name("/etc/hosts"), "hosts");
        assert_eq!(top_name("/etc/"), "etc");
        assert_eq!(top_name("/etc/."), "etc");
        assert_eq!(top_name("/"), "root");
    }

    #[test]
    fn contents_are_asked_for_with_slash_dot() {
        assert!(is_contents("/srv/."));
        assert!(is_contents("."));
        assert!(!is_contents("/srv/.hidden"));
    }

    #[test]
    fn missing_source_and_file_with_slash_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("f");
        fs::write(&file, "x").expect("write");
        let missing = dir.path().join("nope").display().to_string();
        assert!(matches!(source_kind(&missing), Err(CopyError::NotFound(_))));
        let slashed = format!("{}/", file.display());
        assert!(matches!(
            source_kind(&slashed),
            Err(CopyError::NotADirectory(_))
        ));
    }
}
