//! Unit tests of layer application: each builds layers with the `tar` crate, applies
//! them to a temporary staging directory and inspects the tree (no mkfs involved).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{decompress, Staging};
use crate::image::ImageError;

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o755);
        header.set_mtime(1234);
        header.set_uid(0);
        header.set_gid(0);
        let (kind, path, data, link) = match *entry {
            E::Dir(p) => (tar::EntryType::Directory, p, "", None),
            E::File(p, d) => (tar::EntryType::Regular, p, d, None),
            E::Symlink(p, t) => (tar::EntryType::Symlink, p, "", Some(t)),
            E::Hardlink(p, t) => (tar::EntryType::Link, p, "", Some(t)),
            E::Fifo(p) => (tar::EntryType::Fifo, p, "", None),
        };
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        match link {
            Some(target) => builder.append_link(&mut header, path, target).unwrap(),
            None => builder
                .append_data(&mut header, path, data.as_bytes())
                .unwrap(),
        }
    }
    builder.into_inner().unwrap()
}

/// Applies the layers in order to a fresh staging directory.
fn staged(layers: &[Vec<u8>]) -> Result<tempfile::TempDir, ImageError> {
    let dir = tempfile::tempdir().unwrap();
    let mut staging = Staging::new(dir.path())?;
    for (i, layer) in layers.iter().enumerate() {
        staging.apply(&layer[..], &format!("layer {i}"))?;
    }
    staging.finish()?;
    Ok(dir)
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap()
}

#[test]
fn relative_symlink_parent_inside_the_root_is_followed() {
    let lower = tar_of(&[E::Dir("usr/lib"), E::Symlink("lib", "usr/lib")]);
    let upper = tar_of(&[E::File("lib/libc.so", "c")]);
    let root = staged(&[lower, upper]).unwrap();
    assert_eq!(read(root.path(), "usr/lib/libc.so"), "c");
}

#[test]
fn symlink_parent_climbing_out_with_dotdot_is_refused() {
    let layer = tar_of(&[
        E::Dir("a/b"),
        E::Symlink("a/b/up", "../../.."),
        E::File("a/b/up/x", "x"),
    ]);
    let err = staged(&[layer]).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { entry, .. } if entry == "a/b/up/x"));
}

#[test]
fn symlink_loop_in_a_parent_is_refused() {
    let layer = tar_of(&[
        E::Symlink("a", "b"),
        E::Symlink("b", "a"),
        E::File("a/x", "x"),
    ]);
    let err = staged(&[layer]).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { reason, .. } if reason.contains("too many")));
}

#[test]
fn final_symlink_component_is_replaced_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("victim");
    fs::write(&target, "safe").unwrap();
    let lower = tar_of(&[E::Symlink("f", target.to_str().unwrap())]);
    let upper = tar_of(&[E::File("f", "new")]);
    let root = staged(&[lower, upper]).unwrap();
    assert_eq!(
        (read(root.path(), "f"), read(outside.path(), "victim")),
        ("new".into(), "safe".into())
    );
}

#[test]
fn opaque_dir_drops_lower_children_even_under_dirs_the_layer_recreates() {
    let lower = tar_of(&[E::Dir("p/c"), E::File("p/c/x", "x"), E::File("p/old", "o")]);
    let upper = tar_of(&[
        E::Dir("p/c"),
        E::File("p/c/y", "y"),
        E::File("p/.wh..wh..opq", ""),
    ]);
    let root = staged(&[lower, upper]).unwrap();
    let names: Vec<_> = walkdir::WalkDir::new(root.path().join("p"))
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(root.path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["p", "p/c", "p/c/y"]);
}

#[test]
fn whiteout_of_a_directory_removes_its_tree() {
    let lower = tar_of(&[E::Dir("d/e"), E::File("d/e/f", "f")]);
    let upper = tar_of(&[E::File(".wh.d", "")]);
    let root = staged(&[lower, upper]).unwrap();
    assert!(!root.path().join("d").exists());
}

#[test]
fn whiteout_of_a_missing_path_is_a_no_op() {
    let layer = tar_of(&[E::File("nowhere/.wh.thing", ""), E::File("kept", "k")]);
    let root = staged(&[layer]).unwrap();
    assert_eq!(read(root.path(), "kept"), "k");
}

#[test]
fn file_replaces_a_lower_directory() {
    let lower = tar_of(&[E::Dir("x/y"), E::File("x/y/z", "z")]);
    let upper = tar_of(&[E::File("x", "file")]);
    let root = staged(&[lower, upper]).unwrap();
    assert_eq!(read(root.path(), "x"), "file");
}

#[test]
fn hardlink_to_a_lower_layer_file_shares_its_inode() {
    let lower = tar_of(&[E::File("a", "data")]);
    let upper = tar_of(&[E::Hardlink("b", "a")]);
    let root = staged(&[lower, upper]).unwrap();
    let (a, b) = (
        fs::metadata(root.path().join("a")).unwrap(),
        fs::metadata(root.path().join("b")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn hardlink_to_a_missing_target_is_refused() {
    let layer = tar_of(&[E::Hardlink("b", "missing")]);
    let err = staged(&[layer]).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { entry, .. } if entry == "b"));
}

#[test]
fn hardlink_through_an_escaping_symlink_is_refused() {
    let layer = tar_of(&[E::Symlink("etc", "/etc"), E::Hardlink("pw", "etc/passwd")]);
    let err = staged(&[layer]).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { entry, .. } if entry == "pw"));
}

#[test]
fn fifo_is_skipped() {
    let layer = tar_of(&[E::Fifo("pipe"), E::File("kept", "k")]);
    let root = staged(&[layer]).unwrap();
    assert!(!root.path().join("pipe").exists());
}

#[test]
fn directories_get_archive_mtimes_and_implicit_ones_the_epoch() {
    let layer = tar_of(&[E::Dir("a"), E::File("a/f", "f"), E::File("implicit/g", "g")]);
    let root = staged(&[layer]).unwrap();
    let mtime = |rel: &str| fs::metadata(root.path().join(rel)).unwrap().mtime();
    assert_eq!((mtime("a"), mtime("implicit"), mtime("")), (1234, 0, 0));
}

#[test]
fn whiteout_of_dotdot_is_refused() {
    let layer = tar_of(&[E::File("d/.wh..", "")]);
    let err = staged(&[layer]).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { .. }));
}

#[test]
fn pax_xattr_record_becomes_an_extended_attribute() {
    let mut builder = tar::Builder::new(Vec::new());
    let record = b"39 SCHILY.xattr.user.husk=hello-xattrs\n";
    let mut pax = tar::Header::new_ustar();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_path("PaxHeaders/f").unwrap();
    pax.set_size(record.len() as u64);
    pax.set_mode(0o644);
    pax.set_cksum();
    builder.append(&pax, &record[..]).unwrap();
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_path("f").unwrap();
    file.set_size(1);
    file.set_mode(0o644);
    file.set_uid(0);
    file.set_gid(0);
    file.set_mtime(0);
    file.set_cksum();
    builder.append(&file, &b"x"[..]).unwrap();
    let root = staged(&[builder.into_inner().unwrap()]).unwrap();
    let value = xattr::get(root.path().join("f"), "user.husk").unwrap();
    assert_eq!(value.as_deref(), Some(&b"hello-xattrs"[..]));
}

#[test]
fn zstd_and_gzip_layers_are_recognized_by_their_magic() {
    let layer = tar_of(&[E::File("z", "zstd"), E::File("g", "gzip")]);
    let zstd = zstd::stream::encode_all(&layer[..], 3).unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzip, &layer).unwrap();
    let gzip = gzip.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut staging = Staging::new(dir.path()).unwrap();
    staging
        .apply(decompress(&zstd[..]).unwrap(), "zstd layer")
        .unwrap();
    staging
        .apply(decompress(&gzip[..]).unwrap(), "gzip layer")
        .unwrap();
    assert_eq!(
        (read(dir.path(), "z"), read(dir.path(), "g")),
        ("zstd".into(), "gzip".into())
    );
}

#[test]
fn pax_uid_gid_and_fractional_mtime_override_the_header() {
    let mut builder = tar::Builder::new(Vec::new());
    let records = b"15 uid=3000000\n15 gid=3000001\n23 mtime=1700000000.25\n";
    let mut pax = tar::Header::new_ustar();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_path("PaxHeaders/f").unwrap();
    pax.set_size(records.len() as u64);
    pax.set_mode(0o644);
    pax.set_cksum();
    builder.append(&pax, &records[..]).unwrap();
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_path("f").unwrap();
    file.set_size(0);
    file.set_mode(0o600);
    file.set_uid(0);
    file.set_gid(0);
    file.set_mtime(0);
    file.set_cksum();
    builder.append(&file, &b""[..]).unwrap();
    let root = staged(&[builder.into_inner().unwrap()]).unwrap();
    let meta = fs::metadata(root.path().join("f")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mtime()),
        (3_000_000, 3_000_001, 1_700_000_000)
    );
}
