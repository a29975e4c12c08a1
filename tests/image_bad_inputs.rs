//! Every bad input to the image store fails with an error naming the input and what
//! is wrong, and leaves the store byte for byte as it was. Needs erofs-utils and root.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed step is a failed test"
)]

mod image_common;

use std::fs;
use std::path::Path;

use husk::image::{ImageError, ImageStore};
use image_common::*;

/// Imports `input` into a store holding one image; returns the error and whether the
/// store is unchanged.
fn failed_import(input: &Path) -> (ImageError, bool) {
    let (dir, store) = populated_store();
    let before = store_snapshot(dir.path());
    let err = store.import(input, Some("bad"), false).unwrap_err();
    (err, store_snapshot(dir.path()) == before)
}

fn rootfs_tarball(dir: &Path, entries: &[E<'_>]) -> std::path::PathBuf {
    let path = dir.join("rootfs.tar");
    fs::write(&path, tar_of(entries)).unwrap();
    path
}

#[test]
fn parent_dir_entry_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = rootfs_tarball(
        dir.path(),
        &[E::File("ok", "x"), E::RawFile("../evil", "x")],
    );
    let (err, unchanged) = failed_import(&input);
    assert!(
        matches!(&err, ImageError::UnsafeEntry { entry, .. } if entry == "../evil"),
        "{err}"
    );
    assert!(err.to_string().contains("rootfs.tar"), "{err}");
    assert!(unchanged);
}

#[test]
fn absolute_entry_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = rootfs_tarball(dir.path(), &[E::RawFile("/etc/husk-test-abs", "x")]);
    let (err, unchanged) = failed_import(&input);
    assert!(
        matches!(&err, ImageError::UnsafeEntry { entry, .. } if entry == "/etc/husk-test-abs"),
        "{err}"
    );
    assert!(unchanged);
    assert!(!Path::new("/etc/husk-test-abs").exists());
}

#[test]
fn write_through_a_symlink_to_the_host_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = rootfs_tarball(
        dir.path(),
        &[E::Symlink("a", "/"), E::File("a/tmp/husk-test-escape", "x")],
    );
    let (err, unchanged) = failed_import(&input);
    assert!(
        matches!(&err, ImageError::UnsafeEntry { entry, .. } if entry == "a/tmp/husk-test-escape"),
        "{err}"
    );
    assert!(unchanged);
    assert!(!Path::new("/tmp/husk-test-escape").exists());
}

#[test]
fn write_through_a_relative_symlink_leaving_the_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = rootfs_tarball(
        dir.path(),
        &[
            E::Dir("d"),
            E::Symlink("d/up", "../.."),
            E::File("d/up/x", "x"),
        ],
    );
    let (err, unchanged) = failed_import(&input);
    assert!(
        matches!(&err, ImageError::UnsafeEntry { entry, .. } if entry == "d/up/x"),
        "{err}"
    );
    assert!(unchanged);
}

#[test]
fn hardlink_to_outside_the_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = rootfs_tarball(dir.path(), &[E::RawHardlink("h", "../../../../etc/passwd")]);
    let (err, unchanged) = failed_import(&input);
    assert!(
        matches!(&err, ImageError::UnsafeEntry { entry, .. } if entry == "h"),
        "{err}"
    );
    assert!(unchanged);
}

#[test]
fn traversal_inside_an_oci_layer_names_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(dir.path());
    let evil = tar_of(&[E::RawFile("../evil", "x")]);
    fs::write(layer2_blob(dir.path()), evil).unwrap();
    let (err, unchanged) = failed_import(dir.path());
    assert!(err.to_string().contains("layer 1 (sha256:"), "{err}");
    assert!(unchanged);
}

#[test]
fn layer_digest_mismatch_is_refused_naming_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(dir.path());
    let blob = layer2_blob(dir.path());
    fs::write(&blob, tar_of(&[E::File("other", "content")])).unwrap();
    let (err, unchanged) = failed_import(dir.path());
    let expected = format!("sha256:{}", blob.file_name().unwrap().to_string_lossy());
    assert!(
        matches!(&err, ImageError::DigestMismatch { blob, .. } if *blob == expected),
        "{err}"
    );
    assert!(unchanged);
}

#[test]
fn truncated_gzip_tarball_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gz = gzip(&final_layer());
    let input = dir.path().join("rootfs.tar.gz");
    fs::write(&input, &gz[..gz.len() / 2]).unwrap();
    let (err, unchanged) = failed_import(&input);
    assert!(
        matches!(&err, ImageError::Entry { archive, .. } if archive.contains("rootfs.tar.gz")),
        "{err}"
    );
    assert!(unchanged);
}

#[test]
fn a_text_file_is_not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("notes.txt");
    fs::write(&input, "just some text, not an archive\n".repeat(40)).unwrap();
    let (err, unchanged) = failed_import(&input);
    assert!(
        matches!(&err, ImageError::NotAnImage { input: i, .. } if *i == input),
        "{err}"
    );
    assert!(unchanged);
}

#[test]
fn oci_layout_with_missing_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(dir.path());
    fs::remove_file(manifest_blob(dir.path())).unwrap();
    let (err, unchanged) = failed_import(dir.path());
    assert!(
        matches!(&err, ImageError::Manifest { reason, .. } if reason.contains("missing")),
        "{err}"
    );
    assert!(unchanged);
}

#[test]
fn docker_archive_without_its_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = br#"[{"Config":"nope.json","RepoTags":["x:1"],"Layers":[]}]"#;
    let input = dir.path().join("saved.tar");
    fs::write(dir.path().join("manifest.json"), manifest).unwrap();
    let mut builder = tar::Builder::new(fs::File::create(&input).unwrap());
    builder
        .append_path_with_name(dir.path().join("manifest.json"), "manifest.json")
        .unwrap();
    builder.finish().unwrap();
    let (err, unchanged) = failed_import(&input);
    assert!(
        matches!(&err, ImageError::Manifest { reason, .. } if reason.contains("nope.json")),
        "{err}"
    );
    assert!(unchanged);
}

#[test]
fn docker_archive_layer_symlinked_to_a_host_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("saved.tar");
    write_docker_blob_archive(&input, "/etc/passwd");
    let (err, unchanged) = failed_import(&input);
    assert!(
        matches!(&err, ImageError::Manifest { reason, .. } if reason.contains("bbb/layer.tar")),
        "{err}"
    );
    assert!(unchanged);
}

#[test]
fn invalid_name_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    write_expected_tree(dir.path());
    let (err, unchanged) = {
        let (store_dir, store) = populated_store();
        let before = store_snapshot(store_dir.path());
        let err = store
            .import(dir.path(), Some("../bad name"), false)
            .unwrap_err();
        (err, store_snapshot(store_dir.path()) == before)
    };
    assert!(matches!(err, ImageError::InvalidName(_)));
    assert!(unchanged);
}

#[test]
fn full_disk_fails_the_import_and_leaves_the_store_unchanged() {
    let mount = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::new(mount.path(), "512k");
    let store = ImageStore::open(Some(tmpfs.path())).unwrap();
    let small = tempfile::tempdir().unwrap();
    fs::write(small.path().join("hello"), "hello\n").unwrap();
    store.import(small.path(), Some("existing"), false).unwrap();
    let before = store_snapshot(tmpfs.path());
    let big = tempfile::tempdir().unwrap();
    fs::write(
        big.path().join("rootfs.tar"),
        tar_of(&[E::File("big", &"x".repeat(2 << 20))]),
    )
    .unwrap();
    let err = store
        .import(&big.path().join("rootfs.tar"), None, false)
        .unwrap_err();
    assert!(err.to_string().contains("big"), "{err}");
    assert_eq!(store_snapshot(tmpfs.path()), before);
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn new(dir: &'a Path, size: &str) -> Self {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs {status}");
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn unknown_store_reference_is_not_found() {
    let (_dir, store) = new_store();
    assert!(matches!(store.resolve("nothing"), Err(ImageError::NotFound(n)) if n == "nothing"));
}

#[test]
fn store_open_creates_the_images_directory() {
    let dir = tempfile::tempdir().unwrap();
    ImageStore::open(Some(dir.path())).unwrap();
    assert!(dir.path().join("images/sha256").is_dir());
}
