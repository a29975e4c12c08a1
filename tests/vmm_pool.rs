//! The VMM pool without a VM: it keeps its size of `husk vmm` processes spawned and
//! listening, each in a runtime folder of its own, and nothing of them is left once it
//! is dropped. Needs no KVM (a VMM listens before it has a VM).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk::sandbox::VmmPool;

/// This process's children that run `husk vmm`.
fn vmm_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("list /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let parent = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1));
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if parent == Some(me.as_str()) && cmdline.windows(5).any(|w| w == b"\0vmm\0") {
            pids.push(pid);
        }
    }
    pids
}

fn pool_folders(parent: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(parent)
        .expect("list the pool's parent folder")
        .flatten()
        .map(|e| e.path())
        .collect()
}

#[test]
fn a_pool_keeps_its_vmms_listening_and_leaves_nothing_when_dropped() {
    std::env::set_var("HUSK_BIN", env!("CARGO_BIN_EXE_husk"));
    let parent = tempfile::tempdir().unwrap();
    let pool = VmmPool::new(3, Some(parent.path().to_path_buf())).unwrap();
    assert!(pool.wait_ready(3, Duration::from_secs(60)), "{pool:?}");
    assert_eq!(pool.ready(), 3);
    let folders = pool_folders(parent.path());
    assert_eq!(folders.len(), 3, "{folders:?}");
    for folder in &folders {
        assert!(folder.join("api.sock").exists(), "{}", folder.display());
    }
    assert_eq!(vmm_children().len(), 3);
    drop(pool);
    // The VMMs see their lifelines close and exit; their folders are removed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !vmm_children().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(vmm_children(), Vec::<u32>::new());
    assert_eq!(pool_folders(parent.path()), Vec::<PathBuf>::new());
}
