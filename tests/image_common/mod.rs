//! Builders of image inputs (layers, OCI layouts and archives, `docker save` archives,
//! root filesystems) and inspectors of results (erofs mounts, store
//! listings) shared by the image store tests.
#![allow(
    dead_code,
    reason = "each image test crate uses its own subset of the helpers"
)]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed step is a failed test"
)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use husk::image::{ImageConfig, ImageStore};
use serde_json::json;
use sha2::{Digest, Sha256};

/// mtime of `bin/tool`; every other archive entry has [`MTIME`].
pub const TOOL_MTIME: i64 = 1_000_000_000;
pub const MTIME: u64 = 1_600_000_000;

/// A store in a fresh temporary directory.
pub fn new_store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(Some(dir.path())).unwrap();
    (dir, store)
}

/// One archive entry to build.
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    /// Path, content, mode, uid, gid, mtime.
    FileMeta(&'a str, &'a str, u32, u64, u64, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDev(&'a str),
    /// Path bytes written as is (no validation by the tar crate), a regular file.
    RawFile(&'a str, &'a str),
    /// Raw path and raw link target of a hardlink.
    RawHardlink(&'a str, &'a str),
}

/// A plain tar of `entries`.
pub fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        append(&mut builder, entry);
    }
    builder.into_inner().unwrap()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append(builder: &mut tar::Builder<Vec<u8>>, entry: &E<'_>) {
    use tar::EntryType as T;
    match *entry {
        E::Dir(path) => builder
            .append_data(&mut header(T::Directory, 0o755, 0), path, &[][..])
            .unwrap(),
        E::File(path, data) => {
            let mut h = header(T::Regular, 0o644, data.len() as u64);
            builder.append_data(&mut h, path, data.as_bytes()).unwrap()
        }
        E::FileMeta(path, data, mode, uid, gid, mtime) => {
            let mut h = header(T::Regular, mode, data.len() as u64);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mtime(mtime);
            builder.append_data(&mut h, path, data.as_bytes()).unwrap()
        }
        E::Symlink(path, target) => builder
            .append_link(&mut header(T::Symlink, 0o777, 0), path, target)
            .unwrap(),
        E::Hardlink(path, target) => builder
            .append_link(&mut header(T::Link, 0o644, 0), path, target)
            .unwrap(),
        E::CharDev(path) => builder
            .append_data(&mut header(T::Char, 0o666, 0), path, &[][..])
            .unwrap(),
        E::RawFile(path, data) => {
            let mut h = header(T::Regular, 0o644, data.len() as u64);
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            builder.append(&h, data.as_bytes()).unwrap()
        }
        E::RawHardlink(path, target) => {
            let mut h = header(T::Link, 0o644, 0);
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            h.set_cksum();
            builder.append(&h, &[][..]).unwrap()
        }
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

pub fn sha256_file(path: &Path) -> String {
    sha256(&fs::read(path).unwrap())
}

/// The lower layer: files, a file and a directory tree to be hidden, links, a device.
pub fn layer1() -> Vec<u8> {
    tar_of(&[
        E::Dir("etc"),
        E::File("etc/hostname", "one\n"),
        E::File("etc/removed", "gone\n"),
        E::Dir("opq"),
        E::File("opq/lower", "lower\n"),
        E::Dir("opq/sub"),
        E::File("opq/sub/deep", "deep\n"),
        E::Dir("bin"),
        E::FileMeta("bin/tool", "tool\n", 0o4755, 1000, 1001, TOOL_MTIME as u64),
        E::Symlink("link", "bin/tool"),
        E::Hardlink("hard", "bin/tool"),
        E::CharDev("dev/null"),
    ])
}

/// The upper layer: a whiteout, an opaque directory (marker after this layer's own
/// entry, which must survive), a replaced file.
pub fn layer2() -> Vec<u8> {
    tar_of(&[
        E::File("etc/.wh.removed", ""),
        E::Dir("opq"),
        E::File("opq/upper", "upper\n"),
        E::File("opq/.wh..wh..opq", ""),
        E::File("etc/hostname", "two\n"),
    ])
}

/// One layer holding exactly what layer1 + layer2 give (dev/ is implicit there).
pub fn final_layer() -> Vec<u8> {
    let mut dev = header(tar::EntryType::Directory, 0o755, 0);
    dev.set_mtime(0);
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_data(&mut dev, "dev", &[][..]).unwrap();
    for entry in [
        E::Dir("etc"),
        E::File("etc/hostname", "two\n"),
        E::Dir("opq"),
        E::File("opq/upper", "upper\n"),
        E::Dir("bin"),
        E::FileMeta("bin/tool", "tool\n", 0o4755, 1000, 1001, TOOL_MTIME as u64),
        E::Symlink("link", "bin/tool"),
        E::Hardlink("hard", "bin/tool"),
    ] {
        append(&mut builder, &entry);
    }
    builder.into_inner().unwrap()
}

/// `final_layer` unpacked into `dir` (a root filesystem directory).
pub fn write_expected_tree(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let layer = final_layer();
    let mut archive = tar::Archive::new(&layer[..]);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.unpack(dir).unwrap();
}

/// The tree layer1 + layer2 give, one line per entry (mtimes checked elsewhere).
pub fn expected_listing() -> Vec<String> {
    [
        "bin dir 755 0:0",
        "bin/tool file 4755 1000:1001 tool",
        "dev dir 755 0:0",
        "etc dir 755 0:0",
        "etc/hostname file 644 0:0 two",
        "hard file 4755 1000:1001 tool",
        "link symlink bin/tool",
        "opq dir 755 0:0",
        "opq/upper file 644 0:0 upper",
    ]
    .map(String::from)
    .to_vec()
}

/// One line per entry under `root`: path, type, mode, owner, content or target.
pub fn tree_listing(root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .display()
            .to_string();
        let meta = entry.path().symlink_metadata().unwrap();
        let owner = format!("{:o} {}:{}", meta.mode() & 0o7777, meta.uid(), meta.gid());
        lines.push(if meta.is_dir() {
            format!("{rel} dir {owner}")
        } else if meta.is_symlink() {
            format!(
                "{rel} symlink {}",
                fs::read_link(entry.path()).unwrap().display()
            )
        } else {
            let content = fs::read_to_string(entry.path()).unwrap();
            format!("{rel} file {owner} {}", content.trim_end())
        });
    }
    lines
}

pub fn expected_config() -> ImageConfig {
    ImageConfig {
        env: vec!["PATH=/bin".into(), "A=1".into()],
        entrypoint: vec!["/bin/tool".into()],
        cmd: vec!["--help".into()],
        working_dir: Some("/etc".into()),
        user: Some("1000:1001".into()),
    }
}

pub fn config_json(diff_ids: &[String]) -> Vec<u8> {
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "A=1"],
            "Entrypoint": ["/bin/tool"],
            "Cmd": ["--help"],
            "WorkingDir": "/etc",
            "User": "1000:1001"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    serde_json::to_vec(&config).unwrap()
}

pub fn put_blob(dir: &Path, data: &[u8]) -> serde_json::Value {
    let digest = sha256(data);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(&digest["sha256:".len()..]), data).unwrap();
    json!({"digest": digest, "size": data.len()})
}

pub fn with(mut desc: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    let map = desc.as_object_mut().unwrap();
    map.extend(extra.as_object().unwrap().clone());
    desc
}

/// An OCI layout of the two layers (the first gzip, the second plain) behind a nested
/// index whose first entry is an arm64 manifest that must be skipped.
pub fn write_oci_layout(dir: &Path) {
    let (l1, l2) = (layer1(), layer2());
    let diff_ids = [sha256(&l1), sha256(&l2)];
    let layer1 = with(
        put_blob(dir, &gzip(&l1)),
        json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}),
    );
    let layer2 = with(
        put_blob(dir, &l2),
        json!({"mediaType": "application/vnd.oci.image.layer.v1.tar"}),
    );
    let config = with(
        put_blob(dir, &config_json(&diff_ids)),
        json!({"mediaType": "application/vnd.oci.image.config.v1+json"}),
    );
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer1, layer2]});
    let manifest = put_blob(dir, &serde_json::to_vec(&manifest).unwrap());
    let arm = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "0".repeat(64)), "size": 1, "platform": {"architecture": "arm64", "os": "linux"}});
    let amd = with(
        manifest,
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "platform": {"architecture": "amd64", "os": "linux"}}),
    );
    let nested = json!({"schemaVersion": 2, "manifests": [arm, amd]});
    let nested = with(
        put_blob(dir, &serde_json::to_vec(&nested).unwrap()),
        json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "annotations": {"org.opencontainers.image.ref.name": "example.com/demo:1"}}),
    );
    let index = json!({"schemaVersion": 2, "manifests": [nested]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// The blob path (in an OCI layout) of the second layer, to corrupt it.
pub fn layer2_blob(dir: &Path) -> PathBuf {
    dir.join("blobs/sha256")
        .join(&sha256(&layer2())["sha256:".len()..])
}

/// The blob path of the image manifest, to remove it.
pub fn manifest_blob(dir: &Path) -> PathBuf {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let nested = index["manifests"][0]["digest"].as_str().unwrap();
    let nested: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(&nested[7..])).unwrap())
            .unwrap();
    dir.join("blobs/sha256")
        .join(&nested["manifests"][1]["digest"].as_str().unwrap()[7..])
}

/// A tar of `dir`'s content at `out`.
pub fn tar_dir(dir: &Path, out: &Path) {
    let mut builder = tar::Builder::new(fs::File::create(out).unwrap());
    builder.append_dir_all(".", dir).unwrap();
    builder.finish().unwrap();
}

/// A classic `docker save` archive: `<id>/layer.tar`, `<hex>.json`, `manifest.json`,
/// `repositories`.
pub fn write_docker_archive(out: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2) = (layer1(), layer2());
    let config = config_json(&[sha256(&l1), sha256(&l2)]);
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    fs::write(dir.path().join(&config_name), &config).unwrap();
    fs::create_dir_all(dir.path().join("aaa")).unwrap();
    fs::create_dir_all(dir.path().join("bbb")).unwrap();
    fs::write(dir.path().join("aaa/layer.tar"), &l1).unwrap();
    fs::write(dir.path().join("bbb/layer.tar"), &l2).unwrap();
    let manifest = json!([{"Config": config_name, "RepoTags": ["demo:1"], "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]);
    fs::write(
        dir.path().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    fs::write(dir.path().join("repositories"), br#"{"demo":{"1":"bbb"}}"#).unwrap();
    tar_dir(dir.path(), out);
}

/// An erofs file mounted read-only on a loop device, unmounted when dropped: the
/// tree as the guest kernel will see it (`fsck.erofs --extract` drops set-id bits).
pub struct Mounted(tempfile::TempDir);

impl Mounted {
    pub fn new(image: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(image)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount {status}");
        Mounted(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// Every file and directory under the store with its content and mode, to show that a
/// failed import changed nothing.
pub fn store_snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut snapshot = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        let content = if meta.is_file() {
            fs::read(entry.path()).unwrap()
        } else {
            Vec::new()
        };
        snapshot.insert(
            entry.path().to_path_buf(),
            (meta.permissions().mode(), content),
        );
    }
    snapshot
}

/// A store already holding one small named image.
pub fn populated_store() -> (tempfile::TempDir, ImageStore) {
    let (dir, store) = new_store();
    let input = tempfile::tempdir().unwrap();
    fs::write(input.path().join("hello"), "hello\n").unwrap();
    store.import(input.path(), Some("existing"), false).unwrap();
    (dir, store)
}

/// The names in the store, in order.
pub fn names(store: &ImageStore) -> Vec<String> {
    store
        .list()
        .unwrap()
        .into_iter()
        .filter_map(|i| i.name)
        .collect()
}

/// A Docker 25 style `docker save` tree: layers stored as `blobs/sha256/<hex>`, the
/// legacy `<id>/layer.tar` paths being symlinks to them; `layer_target` is where the
/// second layer's symlink points.
pub fn write_docker_blob_archive(out: &Path, layer_target: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2) = (layer1(), layer2());
    let config = config_json(&[sha256(&l1), sha256(&l2)]);
    let config_desc = put_blob(dir.path(), &config);
    put_blob(dir.path(), &l1);
    put_blob(dir.path(), &l2);
    fs::create_dir_all(dir.path().join("bbb")).unwrap();
    std::os::unix::fs::symlink(layer_target, dir.path().join("bbb/layer.tar")).unwrap();
    let manifest = json!([{
        "Config": format!("blobs/sha256/{}", &config_desc["digest"].as_str().unwrap()[7..]),
        "RepoTags": ["demo:25"],
        "Layers": [format!("blobs/sha256/{}", &sha256(&l1)[7..]), "bbb/layer.tar"]
    }]);
    fs::write(
        dir.path().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let mut builder = tar::Builder::new(fs::File::create(out).unwrap());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir.path()).unwrap();
    builder.finish().unwrap();
}

/// The relative symlink target, from `bbb/`, of the second layer's blob.
pub fn layer2_blob_link() -> String {
    format!("../blobs/sha256/{}", &sha256(&layer2())[7..])
}
