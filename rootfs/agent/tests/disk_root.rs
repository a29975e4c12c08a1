//! The scratch-disk writable layer driven on this host, as root: an ext4 image on a loop
//! device (made with `mkfs.ext4` and `losetup`, as the host side of `husk run --disk`
//! formats it) shared by two containers at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Harness;
use husk_protocol::WritableLayer;

/// A loop device over a fresh ext4 image, detached when dropped.
struct LoopDisk {
    device: PathBuf,
    _dir: tempfile::TempDir,
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl LoopDisk {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("scratch.ext4");
        let image = image.to_str().expect("utf-8 path");
        run("truncate", &["-s", "32M", image]);
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-O",
                "^has_journal",
                "-E",
                "lazy_itable_init=1",
                image,
            ],
        );
        let device = PathBuf::from(run("losetup", &["--find", "--show", image]));
        Self { device, _dir: dir }
    }

    /// The top-level entries of the disk, from a mount of its own.
    fn top_level(&self) -> Vec<String> {
        let mnt = tempfile::tempdir().expect("tempdir");
        let target = mnt.path().to_str().expect("utf-8 path");
        run("mount", &["-t", "ext4", dev(&self.device), target]);
        let mut names: Vec<String> = std::fs::read_dir(mnt.path())
            .expect("read the disk")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        run("umount", &[target]);
        names
    }
}

fn dev(path: &Path) -> &str {
    path.to_str().expect("utf-8 device path")
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .args(["-d", dev(&self.device)])
            .status();
    }
}

#[test]
fn root_containers_on_one_scratch_disk_have_separate_layers_removed_at_teardown() {
    let disk = LoopDisk::new();
    let mut h = Harness::new();
    let layer = WritableLayer::Disk {
        device: dev(&disk.device).to_string(),
    };
    let mut first = h.request("d1", &["sh", "-c", "echo one > /mine; echo ready; cat"]);
    first.writable = layer.clone();
    let first = h.run(first);
    h.wait_for_output(first, "ready");
    let mut second = h.request(
        "d2",
        &["sh", "-c", "ls /mine 2>&1; echo two > /mine; cat /mine"],
    );
    second.writable = layer;
    let second = h.run(second);
    let second_out = h.wait(second).stdout_text();
    h.agent.close_stdin(first);
    h.wait(first);
    assert!(second_out.contains("No such file"), "{second_out}");
    assert!(second_out.ends_with("two\n"), "{second_out}");
    // The agent reports an exit before it tears the container down: wait for that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while disk.top_level() != ["lost+found"] && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(disk.top_level(), ["lost+found"]);
}
