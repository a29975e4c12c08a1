use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;
use crate::pack;

fn packed(src: &str) -> Vec<u8> {
    let mut out = Vec::new();
    pack(src, &mut out).expect("pack");
    out
}

/// A tree: `src/` (mode 0750) with `a.txt` (0640, mtime 1e9), `sub/b`, `link -> a.txt`,
/// and `hard` (a hard link to `a.txt`).
fn source_tree(root: &Path) -> String {
    let src = root.join("src");
    fs::create_dir_all(src.join("sub")).expect("mkdir");
    fs::write(src.join("a.txt"), "alpha").expect("write");
    fs::write(src.join("sub/b"), "beta").expect("write");
    fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o640)).expect("chmod");
    let time = FileTime::from_unix_time(1_000_000_000, 0);
    filetime::set_file_times(src.join("a.txt"), time, time).expect("time");
    symlink("a.txt", src.join("link")).expect("symlink");
    fs::hard_link(src.join("a.txt"), src.join("hard")).expect("hard link");
    fs::set_permissions(&src, fs::Permissions::from_mode(0o750)).expect("chmod");
    filetime::set_file_times(&src, time, time).expect("time");
    src.display().to_string()
}

fn unpacked(archive: &[u8], dest: &Path, contents: bool) -> Result<(), CopyError> {
    unpack(
        archive,
        &dest.display().to_string(),
        contents,
        UnpackOptions::default(),
    )
}

#[test]
fn directory_into_an_existing_directory_keeps_modes_times_and_links() {
    let (from, to) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let src = source_tree(from.path());
    unpacked(&packed(&src), to.path(), false).expect("unpack");
    let copy = to.path().join("src");
    let a = fs::metadata(copy.join("a.txt")).expect("a.txt");
    assert_eq!((a.mode() & 0o777, a.mtime()), (0o640, 1_000_000_000));
    assert_eq!(fs::read_to_string(copy.join("sub/b")).expect("b"), "beta");
    assert_eq!(
        fs::read_link(copy.join("link")).expect("link"),
        Path::new("a.txt")
    );
    assert_eq!(
        fs::metadata(copy.join("hard")).expect("hard").ino(),
        a.ino()
    );
    let dir = fs::metadata(&copy).expect("src");
    assert_eq!((dir.mode() & 0o777, dir.mtime()), (0o750, 1_000_000_000));
}

#[test]
fn directory_contents_merge_into_the_destination_leaving_its_mode() {
    let (from, to) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let src = source_tree(from.path());
    fs::set_permissions(to.path(), fs::Permissions::from_mode(0o711)).expect("chmod");
    unpacked(&packed(&format!("{src}/.")), to.path(), true).expect("unpack");
    assert_eq!(
        fs::read_to_string(to.path().join("a.txt")).expect("a"),
        "alpha"
    );
    assert_eq!(fs::metadata(to.path()).expect("dest").mode() & 0o777, 0o711);
}

#[test]
fn file_to_a_new_name_and_over_an_existing_file() {
    let (from, to) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let src = source_tree(from.path());
    let archive = packed(&format!("{src}/a.txt"));
    let renamed = to.path().join("renamed");
    unpacked(&archive, &renamed, false).expect("unpack");
    fs::write(to.path().join("old"), "old content, longer").expect("write");
    unpacked(&archive, &to.path().join("old"), false).expect("unpack over");
    assert_eq!(fs::read_to_string(&renamed).expect("renamed"), "alpha");
    assert_eq!(
        fs::read_to_string(to.path().join("old")).expect("old"),
        "alpha"
    );
}

#[test]
fn missing_parent_and_directory_onto_file_fail_as_docker_does() {
    let (from, to) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let src = source_tree(from.path());
    let err = unpacked(&packed(&src), &to.path().join("no/such"), false).expect_err("no parent");
    assert!(matches!(err, CopyError::NoParent(_)), "{err}");
    fs::write(to.path().join("file"), "x").expect("write");
    let err = unpacked(&packed(&src), &to.path().join("file"), false).expect_err("dir to file");
    assert!(matches!(err, CopyError::DirectoryToFile(_)), "{err}");
}

/// A raw tar of (path, kind, link target, content) entries, names unchecked.
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, link, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(content.len() as u64);
        let old = header.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        builder.append(&header, content.as_bytes()).expect("append");
    }
    builder.into_inner().expect("finish")
}

use tar::EntryType::{Directory, Link, Regular, Symlink};

#[test]
fn entries_through_an_archived_symlink_are_refused() {
    let (outside, to) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let target = outside.path().display().to_string();
    let archive = raw_tar(&[
        ("top", Directory, "", ""),
        ("top/esc", Symlink, &target, ""),
        ("top/esc/owned", Regular, "", "pwned"),
    ]);
    let err = unpacked(&archive, to.path(), false).expect_err("refused");
    assert!(matches!(err, CopyError::Refused { .. }), "{err}");
    assert!(!outside.path().join("owned").exists());
}

#[test]
fn dotdot_absolute_other_tops_and_outside_hard_links_are_refused() {
    let to = tempfile::tempdir().expect("tmp");
    for archive in [
        raw_tar(&[("top", Directory, "", ""), ("top/../x", Regular, "", "x")]),
        raw_tar(&[("/etc/x", Regular, "", "x")]),
        raw_tar(&[("top", Directory, "", ""), ("other/x", Regular, "", "x")]),
        raw_tar(&[
            ("top", Directory, "", ""),
            ("top/h", Link, "/etc/passwd", ""),
        ]),
        raw_tar(&[
            ("top", Directory, "", ""),
            ("top/h", Link, "top/../../x", ""),
        ]),
    ] {
        let err = unpacked(&archive, to.path(), false).expect_err("refused");
        assert!(matches!(err, CopyError::Refused { .. }), "{err}");
    }
    assert!(!to.path().join("x").exists());
}

#[test]
fn a_file_over_an_archived_symlink_replaces_the_link_not_its_target() {
    let (outside, to) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let victim = outside.path().join("victim");
    fs::write(&victim, "safe").expect("write");
    let target = victim.display().to_string();
    let archive = raw_tar(&[
        ("top", Directory, "", ""),
        ("top/x", Symlink, &target, ""),
        ("top/x", Regular, "", "new"),
    ]);
    unpacked(&archive, to.path(), false).expect("unpack");
    assert_eq!(fs::read_to_string(&victim).expect("victim"), "safe");
    assert_eq!(
        fs::read_to_string(to.path().join("top/x")).expect("x"),
        "new"
    );
}

#[test]
fn a_users_stream_goes_into_the_directory_as_it_is() {
    let to = tempfile::tempdir().expect("tmp");
    let archive = raw_tar(&[
        ("./", Directory, "", ""),
        ("./a", Directory, "", ""),
        ("./a/b", Regular, "", "bee"),
        ("c", Regular, "", "sea"),
    ]);
    let dir = to.path().display().to_string();
    unpack_into(&archive[..], &dir, UnpackOptions::default()).expect("unpack");
    assert_eq!(fs::read_to_string(to.path().join("a/b")).expect("b"), "bee");
    assert_eq!(fs::read_to_string(to.path().join("c")).expect("c"), "sea");
    let escape = raw_tar(&[("./../x", Regular, "", "x")]);
    let err = unpack_into(&escape[..], &dir, UnpackOptions::default()).expect_err("refused");
    assert!(matches!(err, CopyError::Refused { .. }), "{err}");
    let file = to.path().join("c").display().to_string();
    let err = unpack_into(&archive[..], &file, UnpackOptions::default()).expect_err("not a dir");
    assert!(matches!(err, CopyError::NotADirectory(_)), "{err}");
}
