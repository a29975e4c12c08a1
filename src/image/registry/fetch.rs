//! Layer blobs: the ones not yet kept are downloaded a few at a time, each into the
//! pull's private folder with a progress bar, hashed as it arrives and refused unless
//! it has its digest and size. Only once the whole image is built are they moved into
//! the layer folder, so a failed pull leaves the store as it was.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use super::{Client, Reference, RegistryError};
use crate::image::oci::Descriptor;
use crate::image::source::sha256_hex;
use crate::image::ImageError;

/// Where layer blobs are kept, under the store's `images` folder.
pub const LAYERS_DIR: &str = "layers/sha256";
/// Layers downloaded at once.
const PARALLEL: usize = 3;
/// Tries of one blob whose transfer broke off.
const ATTEMPTS: u32 = 3;

/// Where each layer of a pull is: kept already, or downloaded into the pull's folder.
pub(crate) struct Fetched {
    /// The layer files, bottom first.
    pub paths: Vec<PathBuf>,
    /// Downloaded ones and where they belong once the pull succeeds.
    pub new: Vec<(PathBuf, PathBuf)>,
}

impl Fetched {
    /// Moves the downloaded layers into the layer folder (a layer another pull put
    /// there meanwhile is the same bytes).
    pub fn keep(&self) {
        for (from, to) in &self.new {
            if let Err(e) = fs::rename(from, to) {
                log::warn!("cannot keep layer {}: {e}", to.display());
            }
        }
    }
}

/// Gets every layer of `layers` into `layer_dir` (kept) or `tmp` (new), checked.
pub(crate) fn fetch_layers(
    client: &Client,
    reference: &Reference,
    layers: &[Descriptor],
    layer_dir: &Path,
    tmp: &Path,
    progress: bool,
) -> Result<Fetched, ImageError> {
    let mut paths = Vec::new();
    let mut missing = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let hex =
            sha256_hex(&layer.digest).ok_or_else(|| manifest_error(reference, &layer.digest))?;
        let kept = layer_dir.join(hex);
        if kept.is_file() {
            log::debug!("layer {} is kept already", layer.digest);
            paths.push(kept);
        } else {
            let downloaded = tmp.join(format!("layer-{hex}"));
            paths.push(downloaded.clone());
            missing.push((index, downloaded, kept));
        }
    }
    let bars = MultiProgress::with_draw_target(if progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL.min(missing.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((index, path, _)) = missing.get(i) else {
                    break;
                };
                if failed.load(Ordering::SeqCst) {
                    break;
                }
                let layer = &layers[*index];
                let bar = bars.add(layer_bar(layer, *index, layers.len()));
                let result = download(client, reference, layer, path, &bar, &failed);
                bar.finish_and_clear();
                if let Err(e) = result {
                    failed.store(true, Ordering::SeqCst);
                    first_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                    break;
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let new = missing
        .into_iter()
        .map(|(_, from, to)| (from, to))
        .collect();
    Ok(Fetched { paths, new })
}

fn manifest_error(reference: &Reference, digest: &str) -> ImageError {
    RegistryError::Manifest {
        reference: reference.to_string(),
        reason: format!("unsupported layer digest {digest:?}"),
    }
    .into()
}

/// One blob into `dest`, retried from the start when its transfer breaks off; a blob
/// that arrives whole but with the wrong digest or size is refused at once.
fn download(
    client: &Client,
    reference: &Reference,
    layer: &Descriptor,
    dest: &Path,
    bar: &ProgressBar,
    cancelled: &AtomicBool,
) -> Result<(), ImageError> {
    let path = format!("/v2/{}/blobs/{}", reference.repository, layer.digest);
    let mut attempt = 1;
    loop {
        bar.set_position(0);
        let response = client.get(&path, None)?;
        if !(200..300).contains(&response.status().as_u16()) {
            return Err(client.status_error(response, &path).into());
        }
        let mut reader = response.into_body().into_reader();
        match copy_hashing(&mut reader, dest, bar, cancelled) {
            Ok((size, digest)) => return check(reference, layer, size, digest),
            Err(TransferError::Write(e)) => return Err(ImageError::io("write", dest)(e)),
            Err(TransferError::Read(e))
                if attempt < ATTEMPTS && !cancelled.load(Ordering::SeqCst) =>
            {
                log::debug!("layer {}: transfer broke off ({e}); again", layer.digest);
                attempt += 1;
            }
            Err(TransferError::Read(e)) => {
                return Err(RegistryError::Read(format!("layer {}: {e}", layer.digest)).into())
            }
        }
    }
}

fn check(
    reference: &Reference,
    layer: &Descriptor,
    size: u64,
    digest: String,
) -> Result<(), ImageError> {
    let size_ok = layer.size.is_none_or(|s| s == size);
    if digest != layer.digest || !size_ok {
        return Err(RegistryError::DigestMismatch {
            reference: reference.to_string(),
            blob: format!("layer {} ({size} bytes)", layer.digest),
            actual: digest,
        }
        .into());
    }
    Ok(())
}

enum TransferError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `reader` into a new `dest`, returning the size and digest of what passed.
fn copy_hashing(
    reader: &mut impl Read,
    dest: &Path,
    bar: &ProgressBar,
    cancelled: &AtomicBool,
) -> Result<(u64, String), TransferError> {
    let mut file = File::create(dest).map_err(TransferError::Write)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        if cancelled.load(Ordering::SeqCst) {
            return Err(TransferError::Read(io::Error::other(
                "another layer failed",
            )));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(TransferError::Read(e)),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(TransferError::Write)?;
        size += n as u64;
        bar.inc(n as u64);
    }
    file.sync_all().map_err(TransferError::Write)?;
    Ok((size, format!("sha256:{:x}", hasher.finalize())))
}

fn layer_bar(layer: &Descriptor, index: usize, count: usize) -> ProgressBar {
    let bar = ProgressBar::new(layer.size.unwrap_or(0));
    let style =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    let short = layer.digest.get(7..19).unwrap_or(&layer.digest);
    bar.set_message(format!("layer {}/{count} {short}", index + 1));
    bar
}
