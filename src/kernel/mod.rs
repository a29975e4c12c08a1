//! The guest kernel: built from Debian's `linux-source-6.1` plus the fragment
//! `kernels/husk.config`, and cached by a key derived from the fragment, so
//! `husk kernel build` compiles once and `husk kernel path` finds the result.
//!
//! Build steps, in order (each one a progress stage):
//! 1. install the Debian packages the build needs (`apt-get`, only those missing);
//! 2. extract the kernel source into `<cache>/kernels/build/` (kept between builds, so a
//!    fragment change rebuilds incrementally; re-extracted when the package version changes);
//! 3. `make tinyconfig`, merge the fragment, `make olddefconfig`;
//! 4. verify that every option of the fragment survived;
//! 5. `make vmlinux`;
//! 6. copy the artifacts into a staging directory and rename it to `<cache>/kernels/<key>/`.
//!
//! See `kernels/README.md` for what the fragment holds and how the cache works.

mod cache;
mod fragment;
mod progress;
mod steps;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use cache::Layout;
use progress::Progress;

pub use cache::{cache_key, cache_root};

/// The kernel series the guest is built from: Debian package `linux-source-<SERIES>`.
pub const SERIES: &str = "6.1";

/// The Debian package holding the kernel source.
const SOURCE_PACKAGE: &str = "linux-source-6.1";

/// Part of the cache key: bump it whenever the build steps change the result, so kernels
/// built by an older recipe are not reused.
const RECIPE_VERSION: &str = "husk-kernel-recipe-1";

/// The config fragment merged over `tinyconfig`.
pub const FRAGMENT: &str = include_str!("../../kernels/husk.config");

/// Lines of `build.log` printed when a step fails.
const FAILURE_TAIL_LINES: usize = 30;

/// How to build the kernel.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Parallel `make` jobs; `None` uses the number of available CPUs (0 counts as 1).
    pub jobs: Option<usize>,
    /// Cache root; `None` uses [`cache_root`].
    pub cache_dir: Option<PathBuf>,
    /// Draw progress stages and the compile counter on stderr.
    pub progress: bool,
}

/// A built kernel in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArtifacts {
    /// The uncompressed ELF kernel, booted through its PVH entry.
    pub vmlinux: PathBuf,
    /// The symbol map, for the guest profiler.
    pub system_map: PathBuf,
    /// The full `.config` the kernel was built with.
    pub config: PathBuf,
    /// The exact Debian version of the source package, e.g. `6.1.192-3`.
    pub version: String,
}

/// A step of the kernel build, named in errors and progress output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Checking and installing the Debian packages.
    Packages,
    /// Extracting the kernel source tarball.
    Extract,
    /// `make tinyconfig`.
    Tinyconfig,
    /// `merge_config.sh` with the fragment.
    MergeFragment,
    /// `make olddefconfig`.
    Olddefconfig,
    /// Checking the generated `.config` against the fragment.
    Verify,
    /// `make vmlinux`.
    Compile,
    /// Copying the artifacts into the cache.
    Install,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Step::Packages => "install packages",
            Step::Extract => "extract source",
            Step::Tinyconfig => "make tinyconfig",
            Step::MergeFragment => "merge fragment",
            Step::Olddefconfig => "make olddefconfig",
            Step::Verify => "verify config",
            Step::Compile => "make vmlinux",
            Step::Install => "install artifacts",
        };
        f.write_str(name)
    }
}

/// Errors of the kernel build and cache.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No finished kernel for the current fragment is in the cache.
    #[error("no kernel built in {}: run `husk kernel build`", dir.display())]
    NotBuilt {
        /// The artifact directory that was looked up.
        dir: PathBuf,
    },
    /// A file or directory operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done (`create`, `read`, `copy to`...).
        op: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A build tool could not be started.
    #[error("step `{step}`: cannot start `{program}`")]
    Spawn {
        /// The step that ran the tool.
        step: Step,
        /// The program name.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A build tool ran and failed.
    #[error("step `{step}` failed ({status}); see {}", log.display())]
    StepFailed {
        /// The failed step.
        step: Step,
        /// The tool's exit status.
        status: ExitStatus,
        /// The build log holding the tool's output.
        log: PathBuf,
    },
    /// `dpkg-query` gave no version for the source package.
    #[error("cannot read the installed version of `{package}`")]
    SourceVersion {
        /// The package queried.
        package: String,
    },
    /// An option of the fragment did not survive `olddefconfig`.
    #[error("{option}: the fragment wants {wanted}, the generated .config has {found}")]
    ConfigMismatch {
        /// The option, e.g. `CONFIG_PVH`.
        option: String,
        /// What the fragment asks for (`=y`, `=32`, `not set`).
        wanted: String,
        /// What `.config` holds.
        found: String,
    },
}

impl KernelError {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| KernelError::Io { op, path, source }
    }
}

/// The kernel for the current fragment in the cache under `cache_dir` (default
/// [`cache_root`]): what `husk kernel path` prints. Fails with
/// [`KernelError::NotBuilt`] if it was never built or its build did not finish.
pub fn cached(cache_dir: Option<&Path>) -> Result<KernelArtifacts, KernelError> {
    let root = cache_dir.map_or_else(cache_root, Path::to_path_buf);
    Layout::new(&root, &cache_key(FRAGMENT)).cached()
}

/// Build the kernel for the current fragment, or return the cached one at once.
/// Tool output goes to `<cache>/kernels/build/build.log`, whose path is printed first; when
/// a tool fails, the log's last lines are printed and the error names the step.
pub fn build(opts: &BuildOptions) -> Result<KernelArtifacts, KernelError> {
    let root = opts.cache_dir.clone().unwrap_or_else(cache_root);
    let layout = Layout::new(&root, &cache_key(FRAGMENT));
    match layout.cached() {
        Err(KernelError::NotBuilt { .. }) => {}
        found => return found,
    }
    let mut progress = Progress::new(opts.progress);
    let log = layout.open_log()?;
    progress.note(&format!("kernel build log: {}", layout.log().display()));
    let jobs = opts
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let mut run = steps::Run::new(&layout, log, &mut progress);
    let result = run
        .all(jobs)
        .and_then(|version| run.stage(Step::Install, |_| layout.install(&version)));
    if let Err(KernelError::StepFailed { .. }) = result {
        progress.note(&format!(
            "last lines of {}:\n{}",
            layout.log().display(),
            cache::tail(layout.log(), FAILURE_TAIL_LINES)
        ));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn cached_in_an_empty_cache_dir_is_not_built_with_the_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let err = cached(Some(tmp.path())).unwrap_err();
        assert!(matches!(err, KernelError::NotBuilt { .. }));
        assert!(err.to_string().ends_with("run `husk kernel build`"));
    }

    #[test]
    fn build_returns_a_cached_kernel_without_running_any_step() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir = root.join("kernels").join(cache_key(FRAGMENT));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["vmlinux", "System.map", "config"] {
            std::fs::write(dir.join(name), name).unwrap();
        }
        std::fs::write(dir.join("version"), "6.1.0-test\n").unwrap();
        let opts = BuildOptions {
            cache_dir: Some(root.to_path_buf()),
            ..BuildOptions::default()
        };
        let built = build(&opts).unwrap();
        assert_eq!(built.vmlinux, dir.join("vmlinux"));
        assert_eq!(built.version, "6.1.0-test");
        assert!(!root.join("kernels/build/build.log").exists());
    }

    #[test]
    fn embedded_fragment_keeps_the_pvh_entry() {
        assert!(FRAGMENT.lines().any(|line| line == "CONFIG_PVH=y"));
    }

    /// The real build, in the cache root from the environment (`HUSK_CACHE_DIR`). Run with
    /// `cargo test --lib -- --ignored --nocapture build_then_cached`.
    #[test]
    #[ignore = "runs the real kernel build: minutes of CPU, may call apt-get"]
    fn build_then_cached_returns_the_same_kernel_at_once() {
        let opts = BuildOptions {
            progress: true,
            ..BuildOptions::default()
        };
        let started = Instant::now();
        let built = build(&opts).unwrap();
        eprintln!("build: {:.1}s", started.elapsed().as_secs_f64());
        let started = Instant::now();
        let again = build(&opts).unwrap();
        eprintln!("second build (cached): {:?}", started.elapsed());
        assert_eq!(built, again);
        assert_eq!(cached(None).unwrap(), built);
        let symbols = crate::profile::SymbolTable::from_system_map(&built.system_map).unwrap();
        let map = std::fs::read_to_string(&built.system_map).unwrap();
        let line = map
            .lines()
            .find(|l| l.ends_with(" T start_kernel"))
            .unwrap();
        let addr = u64::from_str_radix(&line[..16], 16).unwrap();
        assert_eq!(symbols.resolve(addr + 1), Some(("start_kernel", 1)));
    }
}
