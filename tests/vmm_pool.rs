//! The VMM pool without a VM: it keeps its size of `husk vmm` processes spawned and
//! listening (jailed when the test runs as root), each in a runtime folder of its own,
//! and nothing of them (processes, runtime and jail folders) is left once it is
//! dropped. Needs no KVM (a VMM listens before it has a VM).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk::sandbox::VmmPool;
use husk::{Sandbox, SandboxImage};

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

/// The uid of the one child of supervisor `pid` (0 when it has none).
fn jailed_uid(pid: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .expect("the supervisor's children");
    let child = children.split_whitespace().next().unwrap_or("0");
    let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The pool's runtime folders in `parent` (jails live elsewhere).
fn pool_folders(parent: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(parent)
        .expect("list the pool's parent folder")
        .flatten()
        .map(|e| e.path())
        .collect()
}

#[test]
fn a_pool_keeps_its_vmms_listening_and_leaves_nothing_when_dropped() {
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    let (cache, parent) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::env::set_var("HUSK_BIN", &husk);
    std::env::set_var("HUSK_CACHE_DIR", cache.path());
    // No VM starts: any files do for the kernel, the image and the agent.
    let image = SandboxImage {
        fs_image: husk.clone(),
        ..SandboxImage::default()
    };
    let prototype = Sandbox::builder(image, husk.clone())
        .agent(husk.clone())
        .runtime_parent(parent.path().to_path_buf());
    let pool = VmmPool::new(3, prototype.config()).unwrap();
    assert!(pool.wait_ready(3, Duration::from_secs(60)), "{pool:?}");
    assert_eq!(pool.ready(), 3);
    let folders = pool_folders(parent.path());
    let runtimes: Vec<&PathBuf> = folders
        .iter()
        .filter(|f| f.to_string_lossy().contains("husk-pool-"))
        .collect();
    assert_eq!(runtimes.len(), 3, "{folders:?}");
    for folder in &runtimes {
        assert!(folder.join("api.sock").exists(), "{}", folder.display());
    }
    let vmms = vmm_children();
    assert_eq!(vmms.len(), 3);
    let mut jails = Vec::new();
    if husk::jail::running_as_root() {
        // Jailed: each is a supervisor whose one child runs as a uid of husk's range.
        for vmm in vmms {
            let uid = jailed_uid(vmm);
            assert!(
                uid > husk::jail::ids::DEFAULT_BASE,
                "VMM {vmm} runs as uid {uid}"
            );
            let jail = husk::jail::jails_root().join(uid.to_string());
            assert!(jail.is_dir(), "{} while the VMM runs", jail.display());
            jails.push(jail);
        }
    }
    drop(pool);
    // The VMMs see their lifelines close and exit; their folders are removed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !vmm_children().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(vmm_children(), Vec::<u32>::new());
    assert_eq!(pool_folders(parent.path()), Vec::<PathBuf>::new());
    // And their jails' folders.
    for jail in jails {
        assert!(!jail.exists(), "{} left behind", jail.display());
    }
}
