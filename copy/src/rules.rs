//! Where a copy lands, by docker's `cp` rules ("docker container cp", its table of
//! SRC_PATH and DEST_PATH cases): a file goes to a missing destination under that name,
//! over an existing file, or into an existing directory under its own name; a
//! directory becomes a missing destination, goes into an existing directory under its
//! own name (its contents only, for `SRC/.`), and never onto a file.

use std::path::PathBuf;

use crate::CopyError;

/// What the source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// Anything else: a file, a symlink (copied as a link).
    Other,
}

/// What is at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Nothing (its parent exists).
    Missing,
    /// A directory (or a symlink to one).
    Dir,
    /// Anything else.
    File,
}

/// The path the source's top entry takes: for a source named `name` of `kind`
/// (`contents`: written `DIR/.`), copied to `dest` (as the user wrote it) where
/// `state` is found.
pub fn place(
    name: &str,
    kind: Kind,
    contents: bool,
    dest: &str,
    state: Dest,
) -> Result<PathBuf, CopyError> {
    let slash = dest.ends_with('/');
    match (kind, state) {
        (Kind::Dir, Dest::Dir) if contents => Ok(PathBuf::from(dest)),
        (_, Dest::Dir) => Ok(PathBuf::from(dest).join(name)),
        (Kind::Dir, Dest::File) => Err(CopyError::DirectoryToFile(dest.to_string())),
        (Kind::Other, Dest::File) if slash => Err(CopyError::NotADirectory(dest.to_string())),
        (Kind::Other, Dest::Missing) if slash => {
            Err(CopyError::DestinationMissing(dest.to_string()))
        }
        (Kind::Other, _) | (Kind::Dir, Dest::Missing) => Ok(PathBuf::from(dest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(result: Result<PathBuf, CopyError>) -> String {
        match result {
            Ok(path) => path.display().to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn file_to_missing_existing_file_or_directory() {
        assert_eq!(
            at(place("a.txt", Kind::Other, false, "/out/b", Dest::Missing)),
            "/out/b"
        );
        assert_eq!(
            at(place("a.txt", Kind::Other, false, "/out/b", Dest::File)),
            "/out/b"
        );
        assert_eq!(
            at(place("a.txt", Kind::Other, false, "/out", Dest::Dir)),
            "/out/a.txt"
        );
    }

    #[test]
    fn file_to_a_missing_or_file_path_ending_in_slash_is_refused() {
        assert_eq!(
            at(place("a", Kind::Other, false, "/out/new/", Dest::Missing)),
            "error: the destination directory must exist: /out/new/"
        );
        assert_eq!(
            at(place("a", Kind::Other, false, "/out/f/", Dest::File)),
            "error: not a directory: /out/f/"
        );
    }

    #[test]
    fn directory_becomes_a_missing_destination_or_goes_into_a_directory() {
        assert_eq!(
            at(place("src", Kind::Dir, false, "/out/new", Dest::Missing)),
            "/out/new"
        );
        assert_eq!(
            at(place("src", Kind::Dir, false, "/out", Dest::Dir)),
            "/out/src"
        );
        assert_eq!(at(place("src", Kind::Dir, true, "/out", Dest::Dir)), "/out");
    }

    #[test]
    fn directory_onto_a_file_is_refused() {
        assert_eq!(
            at(place("src", Kind::Dir, false, "/out/f", Dest::File)),
            "error: cannot copy a directory to a file: /out/f"
        );
    }
}
