//! What a test script carries into its run besides husk, the kernel and the test
//! initramfs: the agent, the busybox image store, host tools with their libraries
//! (`curl`, `mkfs.ext4`), the test host kernel's modules, and the shell lines that put
//! them to use.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{repo_dir, WorkDir};

/// The agent binary cargo built beside husk (`cargo build -p husk-agent`).
pub fn agent() -> PathBuf {
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    let agent = husk.with_file_name("husk-agent");
    assert!(
        agent.is_file(),
        "{} not found: build it with `cargo build --release -p husk-agent`",
        agent.display()
    );
    agent
}

/// An image store holding the busybox image, packed as a tar for the test host.
pub fn store_tar(dir: &WorkDir) -> PathBuf {
    let root = dir.path.join("store");
    let store = husk::image::ImageStore::open(Some(&root)).expect("open a fresh store");
    store
        .ensure_busybox(false)
        .expect("build the busybox image");
    let tar_path = dir.path.join("store.tar");
    let file = std::fs::File::create(&tar_path).expect("create store.tar");
    let mut tar = tar::Builder::new(file);
    tar.append_dir_all("store", &root).expect("pack the store");
    tar.finish().expect("finish store.tar");
    tar_path
}

/// Shell lines for scripts that drive `husk vmm`'s API: the `curl` of
/// `tool_files("curl", ...)` (copied in as `curl/`) on the script's PATH, and
/// `call NAME METHOD PATH [BODY]`, which sends a request to the socket `$SOCK` and prints
/// `NAME-status` and `NAME-body`.
pub const API_CLIENT: &str = r#"
mkdir -p bin
cat > bin/curl <<WRAPPER
#!/bin/sh
exec $PWD/curl/ld.so --library-path $PWD/curl $PWD/curl/curl "\$@"
WRAPPER
chmod 755 bin/curl
export PATH=$PWD/bin:$PATH
call() {
    if [ -n "$4" ]; then
        code=$(curl -s --unix-socket "$SOCK" -X "$2" "http://localhost$3" \
            -H 'Content-Type: application/json' -d "$4" -o body.txt -w '%{http_code}')
    else
        code=$(curl -s --unix-socket "$SOCK" -X "$2" "http://localhost$3" -o body.txt \
            -w '%{http_code}')
    fi
    echo "$1-status=$code"
    echo "$1-body=$(cat body.txt)"
}
"#;

/// Shell lines that put the `mkfs.ext4` of [`mkfs_ext4_files`] on the script's PATH
/// (the test host has no e2fsprogs).
pub const MKFS_EXT4_ON_PATH: &str = r#"
mkdir -p bin
cat > bin/mkfs.ext4 <<WRAPPER
#!/bin/sh
exec $PWD/e2fs/ld.so --library-path $PWD/e2fs $PWD/e2fs/mkfs.ext4 "\$@"
WRAPPER
chmod 755 bin/mkfs.ext4
export PATH=$PWD/bin:$PATH
"#;

/// This machine's mkfs.ext4, its libraries and the dynamic loader, as `run_script`
/// files under `e2fs/` (the loader as `e2fs/ld.so`).
pub fn mkfs_ext4_files() -> Vec<(PathBuf, String)> {
    tool_files("mkfs.ext4", "e2fs", "e2fsprogs")
}

/// This machine's `tool` (found in the sbin and bin folders; from Debian package
/// `package`), its libraries and the dynamic loader, as `run_script` files under `dir/`
/// (the loader as `dir/ld.so`): run it in the test host as
/// `dir/ld.so --library-path dir dir/TOOL`.
pub fn tool_files(tool: &str, dir: &str, package: &str) -> Vec<(PathBuf, String)> {
    let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .into_iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{tool} not found: install {package}"));
    binary_files(&found, dir)
}

/// The binary at `path`, its libraries and the dynamic loader, as `run_script` files
/// under `dir/` (see [`tool_files`]).
pub fn binary_files(path: &Path, dir: &str) -> Vec<(PathBuf, String)> {
    let tool = path.file_name().expect("a file name").to_string_lossy();
    let real = path.canonicalize().expect("resolve the tool");
    let ldd = Command::new("ldd").arg(&real).output().expect("run ldd");
    assert!(ldd.status.success(), "ldd {}", real.display());
    let mut files = vec![(real, format!("{dir}/{tool}"))];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libx.so => /path (0x...)" for a library, "/path (0x...)" for the loader.
        let (path, name) = match line.split_once("=> ") {
            Some((_, rest)) => {
                let path = rest.split_whitespace().next().unwrap_or_default();
                let base = Path::new(path).file_name().unwrap_or_default();
                (path, format!("{dir}/{}", base.to_string_lossy()))
            }
            None => (
                line.split_whitespace().next().unwrap_or_default(),
                format!("{dir}/ld.so"),
            ),
        };
        if path.starts_with('/') {
            let real = Path::new(path).canonicalize().expect("resolve a library");
            files.push((real, name));
        }
    }
    files
}

/// The test host kernel's `modules` (and their dependencies), extracted by
/// `scripts/testhost-modules`, as `run_script` files under `modules/` with their
/// `modules/load-order`. Load them with [`LOAD_MODULES`].
pub fn testhost_module_files(modules: &[&str]) -> Vec<(PathBuf, String)> {
    let script = repo_dir().join("scripts/testhost-modules");
    let out = Command::new(&script)
        .args(modules)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let order = fs::read_to_string(dir.join("load-order")).expect("read load-order");
    let mut files = vec![(dir.join("load-order"), "modules/load-order".to_string())];
    for module in order.lines() {
        files.push((
            dir.join(format!("{module}.ko")),
            format!("modules/{module}.ko"),
        ));
    }
    files
}

/// Shell lines that load the modules of [`testhost_module_files`] in order (those
/// already loaded are skipped; on a machine with hardware KVM, where the files are the
/// test host kernel's, modprobe loads the machine's own).
pub const LOAD_MODULES: &str = r#"
for m in $(cat modules/load-order); do
    [ -d /sys/module/$m ] || insmod modules/$m.ko 2>/dev/null || modprobe $m \
        || echo "module-failed=$m"
done
"#;
