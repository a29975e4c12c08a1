//! Image store end to end: builds OCI layouts and archives, `docker save` archives and
//! root filesystems with the `tar` crate, imports them, and checks the erofs image's
//! tree (mounted read-only with the kernel's erofs) and the store on disk.
//! Needs erofs-utils (mkfs.erofs, fsck.erofs) and root (ownership is kept).

mod image_common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use husk::image::ImageError;
use image_common::*;

#[test]
fn oci_layout_import_applies_whiteouts_and_opaque_dirs() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(input.path());
    let image = store.import(input.path(), Some("demo"), false).unwrap();
    let tree = Mounted::new(&image.fs_image);
    assert_eq!(tree_listing(tree.path()), expected_listing());
    assert_eq!(
        fs::read_to_string(tree.path().join("etc/hostname")).unwrap(),
        "two\n"
    );
}

#[test]
fn oci_layout_import_keeps_mode_owner_and_mtime() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(input.path());
    let image = store.import(input.path(), None, false).unwrap();
    let tree = Mounted::new(&image.fs_image);
    let tool = fs::symlink_metadata(tree.path().join("bin/tool")).unwrap();
    assert_eq!(
        (tool.mode() & 0o7777, tool.uid(), tool.gid(), tool.mtime()),
        (0o4755, 1000, 1001, TOOL_MTIME)
    );
    assert_eq!(
        fs::read_link(tree.path().join("link")).unwrap(),
        std::path::Path::new("bin/tool")
    );
}

#[test]
fn oci_layout_import_reads_the_run_config_and_ref_name() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(input.path());
    let image = store.import(input.path(), None, false).unwrap();
    assert_eq!(image.name.as_deref(), Some("example.com/demo:1"));
    assert_eq!(image.config, expected_config());
}

#[test]
fn oci_archive_import_gives_the_same_image_as_the_layout() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    let layout = input.path().join("layout");
    write_oci_layout(&layout);
    let archive = input.path().join("image.oci.tar");
    tar_dir(&layout, &archive);
    let from_layout = store.import(&layout, Some("a"), false).unwrap();
    let from_archive = store.import(&archive, Some("b"), false).unwrap();
    assert_eq!(from_archive.digest, from_layout.digest);
}

#[test]
fn docker_save_archive_import_gives_the_same_tree_and_its_tag() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    let archive = input.path().join("saved.tar");
    write_docker_archive(&archive);
    let image = store.import(&archive, None, false).unwrap();
    let tree = Mounted::new(&image.fs_image);
    assert_eq!(tree_listing(tree.path()), expected_listing());
    assert_eq!(
        (image.name.as_deref(), &image.config),
        (Some("demo:1"), &expected_config())
    );
}

#[test]
fn docker_archive_with_blob_paths_and_symlinked_layers_imports() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    let archive = input.path().join("saved.tar");
    write_docker_blob_archive(&archive, &layer2_blob_link());
    let image = store.import(&archive, None, false).unwrap();
    let tree = Mounted::new(&image.fs_image);
    assert_eq!(tree_listing(tree.path()), expected_listing());
    assert_eq!(image.name.as_deref(), Some("demo:25"));
}

#[test]
fn rootfs_directory_import_keeps_the_tree_and_gets_default_config() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_expected_tree(input.path());
    let image = store.import(input.path(), Some("rootfs"), false).unwrap();
    let tree = Mounted::new(&image.fs_image);
    assert_eq!(tree_listing(tree.path()), expected_listing());
    assert_eq!(image.config.cmd, vec!["/bin/sh".to_string()]);
}

#[test]
fn rootfs_tarball_gz_import_gives_the_same_image_as_the_oci_layout() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(&input.path().join("layout"));
    let tarball = input.path().join("rootfs.tar.gz");
    fs::write(&tarball, gzip(&final_layer())).unwrap();
    let from_layout = store
        .import(&input.path().join("layout"), None, false)
        .unwrap();
    let from_tarball = store.import(&tarball, None, false).unwrap();
    assert_eq!(from_tarball.digest, from_layout.digest);
}

#[test]
fn importing_the_same_input_twice_shares_one_file_and_digest() {
    let (dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(input.path());
    let first = store.import(input.path(), Some("one"), false).unwrap();
    let second = store.import(input.path(), Some("two"), false).unwrap();
    assert_eq!(first.digest, second.digest);
    assert_eq!(
        fs::read_dir(dir.path().join("images/sha256"))
            .unwrap()
            .count(),
        2
    );
}

#[test]
fn stored_erofs_file_is_read_only_and_named_by_its_digest() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(input.path());
    let image = store.import(input.path(), None, false).unwrap();
    let meta = fs::metadata(&image.fs_image).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    assert_eq!(
        (meta.len(), sha256_file(&image.fs_image)),
        (image.size, image.digest.clone())
    );
}

#[test]
fn erofs_image_mounts_in_the_kernel_with_hardlinks_kept() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(input.path());
    let image = store.import(input.path(), None, false).unwrap();
    let mounted = Mounted::new(&image.fs_image);
    let tool = fs::metadata(mounted.path().join("bin/tool")).unwrap();
    let hard = fs::metadata(mounted.path().join("hard")).unwrap();
    assert_eq!((tool.ino(), tool.nlink()), (hard.ino(), 2));
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(
        fs::read_to_string(mounted.path().join("opq/upper")).unwrap(),
        "upper\n"
    );
}

#[test]
fn remove_of_a_name_keeps_the_file_while_another_name_refers_to_it() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(input.path());
    let image = store.import(input.path(), Some("one"), false).unwrap();
    store.import(input.path(), Some("two"), false).unwrap();
    store.remove("one").unwrap();
    assert!(image.fs_image.is_file());
    assert_eq!(names(&store), vec!["two".to_string()]);
}

#[test]
fn remove_of_the_last_name_deletes_the_file() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(input.path());
    let image = store.import(input.path(), Some("one"), false).unwrap();
    store.remove("one").unwrap();
    assert!(!image.fs_image.exists());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn remove_of_an_unknown_name_is_an_error_naming_it() {
    let (_dir, store) = new_store();
    let err = store.remove("nosuch").unwrap_err();
    assert!(
        matches!(&err, ImageError::NotFound(name) if name == "nosuch"),
        "{err}"
    );
}

#[test]
fn remove_by_digest_drops_the_image_and_all_its_names() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(input.path());
    let image = store.import(input.path(), Some("one"), false).unwrap();
    store.import(input.path(), Some("two"), false).unwrap();
    store.remove(&image.digest).unwrap();
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn resolve_finds_an_image_by_unique_digest_prefix() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(input.path());
    let image = store.import(input.path(), Some("demo"), false).unwrap();
    let prefix = &image.digest["sha256:".len().."sha256:".len() + 6];
    assert_eq!(store.resolve(prefix).unwrap(), image);
    assert_eq!(store.resolve(&image.digest).unwrap(), image);
}

#[test]
fn resolve_refuses_a_prefix_shorter_than_six_digits() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(input.path());
    let image = store.import(input.path(), None, false).unwrap();
    let prefix = &image.digest["sha256:".len().."sha256:".len() + 5];
    assert!(matches!(
        store.resolve(prefix),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn list_shows_named_and_unnamed_images() {
    let (_dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    write_oci_layout(&input.path().join("oci"));
    write_expected_tree(&input.path().join("rootfs"));
    fs::write(input.path().join("rootfs/extra"), "x").unwrap();
    store
        .import(&input.path().join("oci"), Some("demo"), false)
        .unwrap();
    store
        .import(&input.path().join("rootfs"), None, false)
        .unwrap();
    let listed: Vec<_> = store.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(listed, vec![Some("demo".to_string()), None]);
}

#[test]
fn ensure_busybox_builds_a_shell_image_once() {
    let (_dir, store) = new_store();
    let first = store.ensure_busybox(false).unwrap();
    let second = store.ensure_busybox(false).unwrap();
    let tree = Mounted::new(&first.fs_image);
    assert_eq!(first, second);
    assert_eq!(
        fs::read_link(tree.path().join("bin/sh")).unwrap(),
        std::path::Path::new("/bin/busybox")
    );
    assert!(fs::metadata(tree.path().join("bin/busybox")).unwrap().len() > 500_000);
}
