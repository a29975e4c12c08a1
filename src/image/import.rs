//! One import, from input to a built erofs file inside the import's private temporary
//! directory: detect the input, unpack an outer archive, plan the layers, stage them
//! and run mkfs. Nothing here touches the store's published files.

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};

use super::layer::{decompress, Staging};
use super::oci::{self, Plan};
use super::source::{apply_layers, detect, Kind, LayerRef, Layout};
use super::{docker, fsimage, ImageConfig, ImageError};

/// A private directory under the store, removed with everything in it when dropped
/// (on success and on every error path alike).
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<parent>/.tmp-<pid>-<nanos>-<n>`, mode 0700.
    pub(crate) fn new(parent: &Path) -> Result<Self, ImageError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!(".tmp-{}-{nanos}-{n}", std::process::id()));
        // 0700: the staged tree holds set-id files of arbitrary owners that other
        // local users must not reach while the import runs.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(ImageError::io("create", &path))?;
        Ok(TempDir(path))
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

/// Removes the temporary directories of imports whose process is gone (killed before
/// its cleanup ran). Best effort: a failure is only logged.
pub(crate) fn remove_stale_temp_dirs(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(".tmp-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        let alive = Path::new("/proc").join(pid).exists();
        if !alive {
            log::info!("removing stale import directory {}", entry.path().display());
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                log::warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            log::warn!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// An erofs file built in a [`TempDir`], not yet in the store.
#[derive(Debug)]
pub(crate) struct Built {
    /// The erofs file (inside the temporary directory).
    pub file: PathBuf,
    /// Its digest, `sha256:<hex>`.
    pub digest: String,
    /// The run configuration.
    pub config: ImageConfig,
    /// The name the input carries, if any.
    pub name: Option<String>,
}

/// Turns `input` into an erofs file inside `tmp`.
pub(crate) fn build(input: &Path, tmp: &Path, progress: bool) -> Result<Built, ImageError> {
    let kind = detect(input)?;
    log::info!("importing {} as {kind:?}", input.display());
    let out = tmp.join("image.erofs");
    if kind == Kind::RootfsDir {
        let digest = mkfs(input, &out, progress)?;
        return Ok(Built {
            file: out,
            digest,
            config: ImageConfig::rootfs_default(),
            name: None,
        });
    }
    let plan = plan(input, kind, tmp)?;
    build_plan(plan, input, tmp, progress)
}

/// Stages `plan`'s layers (errors name `input`) and builds the erofs file inside `tmp`.
pub(crate) fn build_plan(
    plan: Plan,
    input: &Path,
    tmp: &Path,
    progress: bool,
) -> Result<Built, ImageError> {
    let out = tmp.join("image.erofs");
    let rootfs = tmp.join("rootfs");
    fs::create_dir(&rootfs).map_err(ImageError::io("create", &rootfs))?;
    let started = Instant::now();
    let mut staging = Staging::new(&rootfs)?;
    apply_layers(&mut staging, &plan.layers, input, progress)?;
    staging.finish()?;
    let staged = started.elapsed();
    let digest = mkfs(&rootfs, &out, progress)?;
    log::info!(
        "{}: {} layers staged in {staged:.2?}, erofs built and hashed in {:.2?}",
        input.display(),
        plan.layers.len(),
        started.elapsed() - staged
    );
    Ok(Built {
        file: out,
        digest,
        config: plan.config,
        name: plan.name,
    })
}

/// The layers and config of any input but a root filesystem directory.
fn plan(input: &Path, kind: Kind, tmp: &Path) -> Result<Plan, ImageError> {
    let layout_root = match kind {
        Kind::RootfsTar => {
            let label = input.display().to_string();
            return Ok(Plan {
                layers: vec![LayerRef {
                    path: input.to_path_buf(),
                    label,
                    digest: None,
                    diff_id: None,
                }],
                config: ImageConfig::rootfs_default(),
                name: None,
            });
        }
        Kind::OciArchive | Kind::DockerArchive => unpack_archive(input, tmp)?,
        Kind::OciLayout | Kind::DockerDir | Kind::RootfsDir => input.to_path_buf(),
    };
    let layout = Layout {
        root: layout_root,
        input,
    };
    match kind {
        Kind::OciLayout | Kind::OciArchive => oci::plan(&layout),
        _ => docker::plan(&layout),
    }
}

/// Unpacks an OCI or `docker save` archive into `<tmp>/archive`, with the same checks
/// as a layer (the archive is as untrusted as its layers).
fn unpack_archive(input: &Path, tmp: &Path) -> Result<PathBuf, ImageError> {
    let dir = tmp.join("archive");
    fs::create_dir(&dir).map_err(ImageError::io("create", &dir))?;
    let file = File::open(input).map_err(ImageError::io("open", input))?;
    let archive = input.display().to_string();
    let reader = decompress(file).map_err(|source| ImageError::Entry {
        archive: archive.clone(),
        entry: "<header>".to_string(),
        source,
    })?;
    Staging::new(&dir)?.apply(reader, &archive)?;
    Ok(dir)
}

/// Runs mkfs with a spinner when asked to.
fn mkfs(dir: &Path, out: &Path, progress: bool) -> Result<String, ImageError> {
    let spinner = progress.then(|| {
        let bar = ProgressBar::new_spinner();
        let style = ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_message("building erofs image");
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let result = fsimage::build(dir, out);
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    result
}
