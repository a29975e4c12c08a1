//! Recognizes an import's input by its content, gives checked access to the files of an
//! image layout (no path leaves it), and streams layers through digest checks into a
//! [`Staging`] tree.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::layer::{decompress, Staging};
use super::ImageError;

/// What an input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A directory with `oci-layout` / `index.json`.
    OciLayout,
    /// A directory with a `docker save` `manifest.json`.
    DockerDir,
    /// Any other directory: a root filesystem.
    RootfsDir,
    /// A tar (maybe compressed) of an OCI layout.
    OciArchive,
    /// A `docker save` tar (maybe compressed).
    DockerArchive,
    /// Any other tar: a root filesystem.
    RootfsTar,
}

/// Deepest entry of an OCI or `docker save` archive (`blobs/sha256/<hex>`).
const MAX_IMAGE_ARCHIVE_DEPTH: usize = 3;

/// Tells what `input` is from its content.
pub(crate) fn detect(input: &Path) -> Result<Kind, ImageError> {
    let meta = fs::metadata(input).map_err(ImageError::io("stat", input))?;
    if meta.is_dir() {
        return Ok(if input.join("index.json").is_file() {
            Kind::OciLayout
        } else if input.join("manifest.json").is_file() {
            Kind::DockerDir
        } else {
            Kind::RootfsDir
        });
    }
    let not_image = |reason: String| ImageError::NotAnImage {
        input: input.to_path_buf(),
        reason,
    };
    let file = File::open(input).map_err(ImageError::io("open", input))?;
    let reader = decompress(file).map_err(|e| not_image(e.to_string()))?;
    let mut tar = tar::Archive::new(reader);
    let (mut count, mut oci, mut docker) = (0usize, false, false);
    let entries = tar.entries().map_err(|e| not_image(e.to_string()))?;
    for entry in entries {
        // A failure after the first entry is left for the import itself to report
        // precisely (entry and layer); before it, this is no tar at all.
        let Ok(entry) = entry else { break };
        count += 1;
        let Ok(path) = entry.path() else { break };
        let parts: Vec<_> = path
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        match parts.as_slice() {
            [Component::Normal(name)] if *name == "index.json" => oci = true,
            [Component::Normal(name)] if *name == "manifest.json" => docker = true,
            // Image archives nest at most `blobs/sha256/<hex>`: deeper, it is a rootfs
            // (which spares a second full pass over a large compressed tarball).
            deep if deep.len() > MAX_IMAGE_ARCHIVE_DEPTH && !oci && !docker => break,
            _ => {}
        }
        if oci {
            break;
        }
    }
    match (count, oci, docker) {
        (0, _, _) => Err(not_image("empty or not a tar archive".to_string())),
        (_, true, _) => Ok(Kind::OciArchive),
        (_, false, true) => Ok(Kind::DockerArchive),
        _ => Ok(Kind::RootfsTar),
    }
}

/// An image layout directory (given, or an archive unpacked into staging), whose files
/// are opened only when they resolve inside it.
pub(crate) struct Layout<'a> {
    /// The directory.
    pub root: PathBuf,
    /// The input given to `import`, for errors.
    pub input: &'a Path,
}

impl Layout<'_> {
    /// A [`ImageError::Manifest`] about this input.
    pub fn bad(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Manifest {
            input: self.input.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The path of `rel` (a path from a manifest) inside the layout, refusing any that
    /// leaves it, through `..` or a symlink.
    pub fn path(&self, rel: &str) -> Result<PathBuf, ImageError> {
        let escapes = Path::new(rel)
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            return Err(self.bad(format!("path {rel:?} leaves the image")));
        }
        let path = self.root.join(rel);
        let real = fs::canonicalize(&path).map_err(|_| self.bad(format!("{rel} is missing")))?;
        let root = fs::canonicalize(&self.root).map_err(ImageError::io("resolve", &self.root))?;
        if !real.starts_with(&root) {
            return Err(self.bad(format!("{rel} points outside the image")));
        }
        Ok(real)
    }

    /// The path of the blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex =
            sha256_hex(digest).ok_or_else(|| self.bad(format!("unsupported digest {digest:?}")))?;
        self.path(&format!("blobs/sha256/{hex}"))
            .map_err(|_| self.bad(format!("blob {digest} is missing")))
    }

    /// Reads and parses the JSON file `rel`.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, rel: &str) -> Result<T, ImageError> {
        let path = self.path(rel)?;
        let bytes = fs::read(&path).map_err(ImageError::io("read", &path))?;
        self.parse(&bytes, rel)
    }

    /// Reads blob `digest`, checks its digest (and size when given), parses it as JSON.
    pub fn read_json_blob<T: serde::de::DeserializeOwned>(
        &self,
        digest: &str,
        size: Option<u64>,
    ) -> Result<T, ImageError> {
        let path = self.blob_path(digest)?;
        self.read_checked(&path, digest, size, digest)
    }

    /// Reads the JSON file `rel`, which must hash to `digest`.
    pub fn read_json_blob_at<T: serde::de::DeserializeOwned>(
        &self,
        rel: &str,
        digest: &str,
    ) -> Result<T, ImageError> {
        let path = self.path(rel)?;
        self.read_checked(&path, digest, None, rel)
    }

    fn read_checked<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        digest: &str,
        size: Option<u64>,
        file: &str,
    ) -> Result<T, ImageError> {
        let bytes = fs::read(path).map_err(ImageError::io("read", path))?;
        let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
        let size_ok = size.is_none_or(|size| size == bytes.len() as u64);
        if actual != digest || !size_ok {
            return Err(ImageError::DigestMismatch {
                input: self.input.to_path_buf(),
                blob: digest.to_string(),
                actual,
            });
        }
        self.parse(&bytes, file)
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
        file: &str,
    ) -> Result<T, ImageError> {
        serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
            input: self.input.to_path_buf(),
            file: file.to_string(),
            source,
        })
    }
}

/// The hex part of a well-formed `sha256:<64 lowercase hex>` digest.
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    let well_formed =
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    well_formed.then_some(hex)
}

/// One layer to apply, with what it must hash to.
#[derive(Debug, Clone)]
pub(crate) struct LayerRef {
    /// The file holding it.
    pub path: PathBuf,
    /// How errors name it (blob digest or path in the image).
    pub label: String,
    /// Digest of the file as stored (OCI descriptors).
    pub digest: Option<String>,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Option<String>,
}

/// A reader that hashes what passes through it and advances a progress bar.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bar: Option<ProgressBar>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }
}

/// A shared, clonable handle on a [`Hashing`] reader, so the digest can be read after
/// the decompressor that owns the reader is done.
struct Shared<R>(std::rc::Rc<std::cell::RefCell<Hashing<R>>>);

impl<R: Read> Read for Shared<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

/// Applies `layers` in order onto `staging`, checking each one's digests.
pub(crate) fn apply_layers(
    staging: &mut Staging,
    layers: &[LayerRef],
    input: &Path,
    progress: bool,
) -> Result<(), ImageError> {
    for (index, layer) in layers.iter().enumerate() {
        let archive = format!("{} layer {index} ({})", input.display(), layer.label);
        let file = File::open(&layer.path).map_err(ImageError::io("open", &layer.path))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bar = progress.then(|| layer_bar(size, index, layers.len()));
        let stored = std::rc::Rc::new(std::cell::RefCell::new(Hashing {
            inner: file,
            hasher: Sha256::new(),
            bar: bar.clone(),
        }));
        let tar_stream =
            decompress(Shared(stored.clone())).map_err(|source| ImageError::Entry {
                archive: archive.clone(),
                entry: "<header>".to_string(),
                source,
            })?;
        let mut plain = Hashing {
            inner: tar_stream,
            hasher: Sha256::new(),
            bar: None,
        };
        staging.apply(&mut plain, &archive)?;
        // The decompressor may stop before the stored file's end (trailing padding).
        io::copy(&mut Shared(stored.clone()), &mut io::sink())
            .map_err(ImageError::io("read", &layer.path))?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let stored_digest = format!("sha256:{:x}", stored.borrow().hasher.clone().finalize());
        let plain_digest = format!("sha256:{:x}", plain.hasher.finalize());
        check(input, layer.digest.as_deref(), &stored_digest, &layer.label)?;
        check(input, layer.diff_id.as_deref(), &plain_digest, &layer.label)?;
    }
    Ok(())
}

fn check(
    input: &Path,
    expected: Option<&str>,
    actual: &str,
    label: &str,
) -> Result<(), ImageError> {
    match expected {
        Some(expected) if expected != actual => Err(ImageError::DigestMismatch {
            input: input.to_path_buf(),
            blob: if expected == label {
                expected.to_string()
            } else {
                format!("{label} (expected {expected})")
            },
            actual: actual.to_string(),
        }),
        _ => Ok(()),
    }
}

fn layer_bar(size: u64, index: usize, count: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(size), indicatif::ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("layer {msg} [{bar:30}] {bytes}/{total_bytes}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(format!("{}/{count}", index + 1));
    bar
}
