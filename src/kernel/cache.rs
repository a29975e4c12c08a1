//! Where kernels live on disk: the cache root, the cache key, the persistent build tree
//! and the artifact directories.
//!
//! ```text
//! <root>/kernels/build/linux-source-6.1/   source tree, kept for incremental builds
//! <root>/kernels/build/source-version      Debian version the tree was extracted from
//! <root>/kernels/build/build.log           output of the latest build
//! <root>/kernels/6.1-<hash>/               finished: vmlinux System.map config build.log version
//! <root>/kernels/6.1-<hash>.tmp/           staging, renamed to the above when complete
//! ```
//! A directory named by the key only ever appears through the final rename, so an
//! interrupted build never leaves a half kernel that [`Layout::cached`] would return.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{KernelArtifacts, KernelError, RECIPE_VERSION, SERIES};

/// Hex characters of the fragment hash kept in the key.
const KEY_HASH_CHARS: usize = 12;

const VMLINUX: &str = "vmlinux";
const SYSTEM_MAP: &str = "System.map";
const CONFIG: &str = "config";
const BUILD_LOG: &str = "build.log";
const VERSION: &str = "version";

/// The husk cache root: `$HUSK_CACHE_DIR`, else `$XDG_CACHE_HOME/husk`, else
/// `$HOME/.cache/husk` (empty variables are ignored).
pub fn cache_root() -> PathBuf {
    cache_root_from(|name| std::env::var_os(name))
}

/// [`cache_root`] over any environment lookup, so the precedence is testable without
/// touching the process environment.
fn cache_root_from(env: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let var = |name: &str| env(name).filter(|value| !value.is_empty());
    if let Some(dir) = var("HUSK_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("husk");
    }
    match var("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("husk"),
        None => std::env::temp_dir().join("husk-cache"),
    }
}

/// The cache key of a kernel built from `fragment`: the series plus the first 12 hex
/// characters of sha256(fragment + recipe version), e.g. `6.1-0123456789ab`.
pub fn cache_key(fragment: &str) -> String {
    let digest = Sha256::new()
        .chain_update(fragment.as_bytes())
        .chain_update(RECIPE_VERSION.as_bytes())
        .finalize();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{SERIES}-{}", &hex[..KEY_HASH_CHARS])
}

/// The paths of one cache root for one cache key.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    build: PathBuf,
    artifacts: PathBuf,
    staging: PathBuf,
    log: PathBuf,
}

impl Layout {
    pub(super) fn new(root: &Path, key: &str) -> Self {
        let kernels = root.join("kernels");
        let build = kernels.join("build");
        Layout {
            log: build.join(BUILD_LOG),
            artifacts: kernels.join(key),
            staging: kernels.join(format!("{key}.tmp")),
            build,
        }
    }

    /// The persistent build directory holding the source tree.
    pub(super) fn build_dir(&self) -> &Path {
        &self.build
    }

    /// The source tree inside the build directory.
    pub(super) fn tree(&self) -> PathBuf {
        self.build.join(format!("linux-source-{SERIES}"))
    }

    /// The log of the current (or latest) build.
    pub(super) fn log(&self) -> &Path {
        &self.log
    }

    /// The finished kernel, if its artifact directory is complete.
    pub(super) fn cached(&self) -> Result<KernelArtifacts, KernelError> {
        let not_built = || KernelError::NotBuilt {
            dir: self.artifacts.clone(),
        };
        let artifacts = KernelArtifacts {
            vmlinux: self.artifacts.join(VMLINUX),
            system_map: self.artifacts.join(SYSTEM_MAP),
            config: self.artifacts.join(CONFIG),
            version: String::new(),
        };
        let complete = [&artifacts.vmlinux, &artifacts.system_map, &artifacts.config]
            .iter()
            .all(|path| path.is_file());
        let version_path = self.artifacts.join(VERSION);
        if !complete || !version_path.is_file() {
            return Err(not_built());
        }
        let version =
            fs::read_to_string(&version_path).map_err(KernelError::io("read", &version_path))?;
        Ok(KernelArtifacts {
            version: version.trim().to_owned(),
            ..artifacts
        })
    }

    /// Create the build directory and start a fresh build log.
    pub(super) fn open_log(&self) -> Result<File, KernelError> {
        fs::create_dir_all(&self.build).map_err(KernelError::io("create", &self.build))?;
        File::create(&self.log).map_err(KernelError::io("create", &self.log))
    }

    /// Copy the built kernel into a staging directory, then rename it to the artifact
    /// directory: the rename is what makes the kernel visible to [`Layout::cached`].
    pub(super) fn install(&self, version: &str) -> Result<KernelArtifacts, KernelError> {
        let tree = self.tree();
        remove_path(&self.staging)?;
        fs::create_dir_all(&self.staging).map_err(KernelError::io("create", &self.staging))?;
        let copies = [
            (tree.join(VMLINUX), VMLINUX),
            (tree.join(SYSTEM_MAP), SYSTEM_MAP),
            (tree.join(".config"), CONFIG),
            (self.log.clone(), BUILD_LOG),
        ];
        for (from, name) in copies {
            let to = self.staging.join(name);
            fs::copy(&from, &to).map_err(KernelError::io("copy", &from))?;
        }
        let version_path = self.staging.join(VERSION);
        fs::write(&version_path, format!("{version}\n"))
            .map_err(KernelError::io("write", &version_path))?;
        // A directory left by an interrupted older layout is incomplete (else `cached`
        // would have returned it); rename cannot replace a non-empty directory.
        remove_path(&self.artifacts)?;
        fs::rename(&self.staging, &self.artifacts).map_err(KernelError::io(
            "rename staging directory to",
            &self.artifacts,
        ))?;
        self.cached()
    }
}

/// Remove a file or a directory tree; a path that does not exist is fine.
pub(super) fn remove_path(path: &Path) -> Result<(), KernelError> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) => Err(err),
    };
    match removed {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(KernelError::io("remove", path)(err))
        }
        _ => Ok(()),
    }
}

/// The last `lines` lines of the file at `path` (lossy UTF-8), or a note saying why
/// there are none.
pub(super) fn tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return format!("(cannot open {})", path.display());
    };
    let mut last: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
        if last.len() == lines {
            last.pop_front();
        }
        last.push_back(String::from_utf8_lossy(&buf).trim_end().to_owned());
        buf.clear();
    }
    Vec::from(last).join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    #[test]
    fn cache_key_is_series_and_twelve_hex_chars() {
        let key = cache_key("CONFIG_A=y\n");
        assert_eq!(key.len(), "6.1-".len() + 12);
        assert!(key.starts_with("6.1-"));
        assert!(key[4..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn cache_key_is_stable_for_the_same_fragment() {
        assert_eq!(cache_key("CONFIG_A=y\n"), cache_key("CONFIG_A=y\n"));
    }

    #[test]
    fn cache_key_changes_when_the_fragment_changes() {
        assert_ne!(
            cache_key("CONFIG_A=y\n"),
            cache_key("CONFIG_A=y\nCONFIG_B=y\n")
        );
    }

    #[test]
    fn cache_root_prefers_husk_cache_dir() {
        let vars = [
            ("HUSK_CACHE_DIR", "/h"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(cache_root_from(env(&vars)), PathBuf::from("/h"));
    }

    #[test]
    fn cache_root_uses_xdg_cache_home_without_husk_cache_dir() {
        let vars = [("XDG_CACHE_HOME", "/x"), ("HOME", "/home/u")];
        assert_eq!(cache_root_from(env(&vars)), PathBuf::from("/x/husk"));
    }

    #[test]
    fn cache_root_falls_back_to_home_cache() {
        let vars = [("HUSK_CACHE_DIR", ""), ("HOME", "/home/u")];
        assert_eq!(
            cache_root_from(env(&vars)),
            PathBuf::from("/home/u/.cache/husk")
        );
    }

    #[test]
    fn cached_on_an_empty_root_is_not_built_with_the_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let err = Layout::new(root, "6.1-abc").cached().unwrap_err();
        assert!(matches!(err, KernelError::NotBuilt { .. }));
        assert!(err.to_string().contains("run `husk kernel build`"));
    }

    #[test]
    fn cached_ignores_artifacts_without_the_version_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir = root.join("kernels/6.1-abc");
        fs::create_dir_all(&dir).unwrap();
        for name in [VMLINUX, SYSTEM_MAP, CONFIG] {
            fs::write(dir.join(name), "x").unwrap();
        }
        let err = Layout::new(root, "6.1-abc").cached().unwrap_err();
        assert!(matches!(err, KernelError::NotBuilt { .. }));
    }

    #[test]
    fn cached_ignores_a_staging_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir = root.join("kernels/6.1-abc.tmp");
        fs::create_dir_all(&dir).unwrap();
        for name in [VMLINUX, SYSTEM_MAP, CONFIG, VERSION] {
            fs::write(dir.join(name), "x").unwrap();
        }
        let err = Layout::new(root, "6.1-abc").cached().unwrap_err();
        assert!(matches!(err, KernelError::NotBuilt { .. }));
    }

    #[test]
    fn install_makes_the_kernel_visible_to_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let layout = Layout::new(root, "6.1-abc");
        let tree = layout.tree();
        fs::create_dir_all(&tree).unwrap();
        for name in [VMLINUX, SYSTEM_MAP, ".config"] {
            fs::write(tree.join(name), name).unwrap();
        }
        layout.open_log().unwrap();
        let installed = layout.install("6.1.192-3").unwrap();
        assert_eq!(installed, layout.cached().unwrap());
        assert_eq!(installed.version, "6.1.192-3");
        assert_eq!(fs::read_to_string(&installed.config).unwrap(), ".config");
        assert!(!root.join("kernels/6.1-abc.tmp").exists());
    }

    #[test]
    fn tail_keeps_only_the_last_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let log = root.join("build.log");
        fs::write(&log, "one\ntwo\nthree\n").unwrap();
        assert_eq!(tail(&log, 2), "two\nthree");
    }
}
