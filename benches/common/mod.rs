//! What every husk benchmark needs: its settings from the environment, whether to run
//! here or inside the KVM test host, and the statistics it prints.
#![allow(dead_code, reason = "each benchmark uses its own subset")]

pub mod crun;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A `/proc/meminfo` field of this machine (`key` with its colon, e.g.
/// `"MemAvailable:"`), in KiB; 0 when it cannot be read.
pub fn meminfo_kib(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `$name`, or `default` when unset.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Whether to run on this machine's /dev/kvm (hardware KVM) rather than in the test
/// host; `HUSK_TEST_HOST=always|never|auto` decides when set.
pub fn hardware_kvm() -> bool {
    match env_or("HUSK_TEST_HOST", "auto").as_str() {
        "always" => false,
        "never" => true,
        _ => {
            Path::new("/dev/kvm").exists()
                && husk::kvm::KvmFlavor::probe() == husk::kvm::KvmFlavor::Hardware
        }
    }
}

/// Run `cmd`, fail the benchmark with its stderr if it fails, return its stdout.
pub fn run_stdout(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fresh, empty folder for this benchmark process.
pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the bench dir");
    dir
}

/// The median of the numbers that are not NaN (NaN when there are none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A bench's entry: `--inner ARGS...` runs the measuring half (in the test host or
/// here), anything else (`cargo bench` passes `--bench`) the outer half.
pub fn dispatch(outer: fn(), inner: fn(&[String])) {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--inner") {
        Some(pos) => inner(&args[pos + 1..]),
        None => outer(),
    }
}

/// Run this bench binary's inner half with `args`, where KVM is: here (hardware KVM), in
/// a fresh folder holding `files` (source, name) as symlinks; else in the KVM test host
/// (`scripts/testhost run --with-qemu`) with `files` copied in. Fails the bench named
/// `bench` if the inner half fails.
pub fn run_inner(bench: &str, files: &[(&Path, &str)], args: &[&str]) {
    let me = std::env::current_exe().expect("the bench binary knows its path");
    let status = if hardware_kvm() {
        let dir = tempdir(&format!("husk-{bench}-bench"));
        for (src, name) in files {
            std::os::unix::fs::symlink(src, dir.join(name)).expect("symlink into the bench dir");
        }
        let status = Command::new(&me)
            .arg("--inner")
            .args(args)
            .current_dir(&dir)
            .status();
        let _ = std::fs::remove_dir_all(&dir);
        status
    } else {
        println!("# /dev/kvm is missing or paravirtual: running inside the KVM test host");
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(root.join("scripts/testhost"));
        cmd.args(["run", "--with-qemu"])
            .args(["--file", &format!("{}:bench", me.display())]);
        for (src, name) in files {
            cmd.args(["--file", &format!("{}:{name}", src.display())]);
        }
        cmd.args(["--", "./bench", "--inner"]).args(args).status()
    };
    let status = status.expect("the benchmark runner starts");
    assert!(status.success(), "the {bench} benchmark failed: {status}");
}
