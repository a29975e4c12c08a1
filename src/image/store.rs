//! The store on disk: choosing its directory, committing a built image (renames, name
//! index replaced atomically, rolled back on failure), listing, resolving and removing.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::import::{self, Built, TempDir};
use super::source::sha256_hex;
use super::{Image, ImageConfig, ImageError};

/// Shortest digest prefix `resolve` accepts.
const MIN_PREFIX: usize = 6;
const NAMES: &str = "names.json";

/// Content-addressed store of read-only erofs images with a name index.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// What `sha256/<hex>.json` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    digest: String,
    config: ImageConfig,
    size: u64,
    created: u64,
    source: String,
    /// The registry layers it was pulled from (kept in `images/layers/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    layers: Vec<String>,
}

/// `names.json`: name to digest.
type Names = BTreeMap<String, String>;

impl ImageStore {
    /// Opens (creating it if needed) the store under `root`, or the default data
    /// directory: `$HUSK_DATA_DIR`, else `/var/lib/husk` for root, else
    /// `$XDG_DATA_HOME/husk` or `~/.local/share/husk`. Images live in `<root>/images`.
    pub fn open(root: Option<&Path>) -> Result<Self, ImageError> {
        let root = match root {
            Some(root) => root.to_path_buf(),
            None => default_root()?,
        };
        let store = ImageStore { root };
        let blobs = store.blobs();
        fs::create_dir_all(&blobs).map_err(ImageError::io("create", &blobs))?;
        import::remove_stale_temp_dirs(&store.images());
        Ok(store)
    }

    /// The data directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports `src` (OCI layout or archive, `docker save` archive, root filesystem
    /// directory or tarball, told apart by content) under `name`, else the name the
    /// input carries, if any (an existing name moves to the new image; the old one
    /// stays, unnamed, until removed by digest). With `progress`, bars on stderr show
    /// each layer's bytes read and the mkfs step. On any error the store is left as
    /// it was.
    pub fn import(
        &self,
        src: &Path,
        name: Option<&str>,
        progress: bool,
    ) -> Result<Image, ImageError> {
        if let Some(name) = name {
            validate_name(name)?;
        }
        let tmp = TempDir::new(&self.images())?;
        let built = import::build(src, tmp.path(), progress)?;
        let carried = built.name.clone().filter(|carried| {
            let valid = validate_name(carried).is_ok();
            if !valid {
                log::warn!("{}: ignoring invalid image name {carried:?}", src.display());
            }
            valid
        });
        let name = name.map(str::to_string).or(carried);
        self.commit(
            &built,
            name.as_deref(),
            &src.display().to_string(),
            &[],
            tmp.path(),
        )
    }

    /// Every image, once per name, then the unnamed ones, sorted by name.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let names = self.read_names()?;
        let mut images = Vec::new();
        for (name, digest) in &names {
            images.push(self.load(digest, Some(name.clone()))?);
        }
        for digest in self.digests()? {
            if !names.values().any(|d| *d == digest) {
                images.push(self.load(&digest, None)?);
            }
        }
        Ok(images)
    }

    /// Finds an image by name, full digest (`sha256:<hex>` or `<hex>`) or a unique
    /// prefix of at least 6 hex digits.
    pub fn resolve(&self, name_or_digest: &str) -> Result<Image, ImageError> {
        let names = self.read_names()?;
        if let Some(digest) = names.get(name_or_digest) {
            return self.load(digest, Some(name_or_digest.to_string()));
        }
        let digest = self.find_digest(name_or_digest)?;
        let name = names
            .iter()
            .find(|(_, d)| **d == digest)
            .map(|(n, _)| n.clone());
        self.load(&digest, name)
    }

    /// Removes a name, and the image when no other name refers to it; given a digest,
    /// removes the image and every name of it.
    pub fn remove(&self, name_or_digest: &str) -> Result<(), ImageError> {
        let mut names = self.read_names()?;
        let digest = match names.remove(name_or_digest) {
            Some(digest) => digest,
            None => {
                let digest = self.find_digest(name_or_digest)?;
                names.retain(|_, d| *d != digest);
                digest
            }
        };
        let tmp = TempDir::new(&self.images())?;
        self.write_names(&names, tmp.path())?;
        if !names.values().any(|d| *d == digest) {
            let (erofs, meta) = self.files(&digest);
            fs::remove_file(&meta).map_err(ImageError::io("remove", &meta))?;
            fs::remove_file(&erofs).map_err(ImageError::io("remove", &erofs))?;
            self.prune_layers();
        }
        Ok(())
    }

    /// Removes the kept registry layers no stored image was pulled from (best effort:
    /// they only spare a later pull its downloads).
    fn prune_layers(&self) {
        let dir = self.images().join(super::registry::LAYERS_DIR);
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        let mut used = std::collections::HashSet::new();
        for digest in self.digests().unwrap_or_default() {
            match self.metadata(&digest) {
                Ok(meta) => used.extend(meta.layers),
                // An unreadable record might need any layer: keep them all.
                Err(_) => return,
            }
        }
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !used.contains(&format!("sha256:{name}")) {
                if let Err(e) = fs::remove_file(entry.path()) {
                    log::warn!("cannot remove layer {}: {e}", entry.path().display());
                }
            }
        }
    }

    /// The default `busybox` image, built from Debian's busybox-static on first use.
    pub fn ensure_busybox(&self, progress: bool) -> Result<Image, ImageError> {
        if let Ok(image) = self.resolve(super::busybox::NAME) {
            return Ok(image);
        }
        let tmp = TempDir::new(&self.images())?;
        let rootfs = super::busybox::build_rootfs(tmp.path())?;
        let built = import::build(&rootfs, tmp.path(), progress)?;
        let built = Built {
            config: super::busybox::config(),
            ..built
        };
        self.commit(
            &built,
            Some(super::busybox::NAME),
            "busybox-static",
            &[],
            tmp.path(),
        )
    }

    pub(super) fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    fn blobs(&self) -> PathBuf {
        self.images().join("sha256")
    }

    /// The erofs and metadata files of `digest`.
    fn files(&self, digest: &str) -> (PathBuf, PathBuf) {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let blobs = self.blobs();
        (
            blobs.join(format!("{hex}.erofs")),
            blobs.join(format!("{hex}.json")),
        )
    }

    /// Publishes a built image: metadata and erofs renamed into place (unless the same
    /// content is there already), then the name index; undone if the index fails.
    /// `layers` are the registry layers it came from.
    pub(super) fn commit(
        &self,
        built: &Built,
        name: Option<&str>,
        source: &str,
        layers: &[String],
        tmp: &Path,
    ) -> Result<Image, ImageError> {
        let (erofs, meta_path) = self.files(&built.digest);
        let mut published = Vec::new();
        if !(erofs.is_file() && meta_path.is_file()) {
            let size = fs::metadata(&built.file)
                .map_err(ImageError::io("stat", &built.file))?
                .len();
            let meta = Metadata {
                digest: built.digest.clone(),
                config: built.config.clone(),
                size,
                created: now(),
                source: source.to_string(),
                layers: layers.to_vec(),
            };
            let staged_meta = tmp.join("meta.json");
            write_json(&staged_meta, &meta)?;
            fs::set_permissions(&built.file, fs::Permissions::from_mode(0o444))
                .map_err(ImageError::io("chmod", &built.file))?;
            let renamed = rename(&built.file, &erofs)
                .inspect(|_| published.push(erofs.clone()))
                .and_then(|_| rename(&staged_meta, &meta_path))
                .inspect(|_| published.push(meta_path.clone()));
            renamed.inspect_err(|_| unpublish(&published))?;
        }
        if let Some(name) = name {
            let mut names = self.read_names()?;
            names.insert(name.to_string(), built.digest.clone());
            self.write_names(&names, tmp)
                .inspect_err(|_| unpublish(&published))?;
        }
        self.load(&built.digest, name.map(str::to_string))
    }

    /// The one stored digest that `value` (hex, maybe `sha256:`-prefixed) starts.
    fn find_digest(&self, value: &str) -> Result<String, ImageError> {
        let prefix = value.strip_prefix("sha256:").unwrap_or(value);
        let is_hex = prefix.bytes().all(|b| b.is_ascii_hexdigit());
        if prefix.len() < MIN_PREFIX || !is_hex {
            return Err(ImageError::NotFound(value.to_string()));
        }
        let prefix = prefix.to_ascii_lowercase();
        let matches: Vec<String> = self
            .digests()?
            .into_iter()
            .filter(|d| d["sha256:".len()..].starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ImageError::NotFound(value.to_string())),
            _ => Err(ImageError::Ambiguous(value.to_string())),
        }
    }

    /// Every stored digest (those with a metadata file), sorted.
    fn digests(&self) -> Result<Vec<String>, ImageError> {
        let blobs = self.blobs();
        let mut digests = Vec::new();
        for entry in fs::read_dir(&blobs).map_err(ImageError::io("read", &blobs))? {
            let entry = entry.map_err(ImageError::io("read", &blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = name
                .strip_suffix(".json")
                .map(|hex| format!("sha256:{hex}"));
            digests.extend(digest.filter(|d| sha256_hex(d).is_some()));
        }
        digests.sort();
        Ok(digests)
    }

    fn metadata(&self, digest: &str) -> Result<Metadata, ImageError> {
        let meta_path = self.files(digest).1;
        let bytes = fs::read(&meta_path).map_err(ImageError::io("read", &meta_path))?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Metadata {
            path: meta_path.clone(),
            source,
        })
    }

    fn load(&self, digest: &str, name: Option<String>) -> Result<Image, ImageError> {
        let erofs = self.files(digest).0;
        let meta = self.metadata(digest)?;
        Ok(Image {
            name,
            digest: meta.digest,
            fs_image: erofs,
            config: meta.config,
            size: meta.size,
            created: meta.created,
            source: meta.source,
        })
    }

    fn read_names(&self) -> Result<Names, ImageError> {
        let path = self.images().join(NAMES);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| ImageError::Metadata { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Names::new()),
            Err(e) => Err(ImageError::io("read", &path)(e)),
        }
    }

    /// Replaces `names.json` atomically (written in `tmp`, then renamed).
    fn write_names(&self, names: &Names, tmp: &Path) -> Result<(), ImageError> {
        let staged = tmp.join(NAMES);
        write_json(&staged, names)?;
        rename(&staged, &self.images().join(NAMES))
    }
}

fn default_root() -> Result<PathBuf, ImageError> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HUSK_DATA_DIR") {
        return Ok(dir);
    }
    // The owner of /proc/self is the effective uid (proc(5)); no unsafe geteuid().
    if fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return Ok(PathBuf::from("/var/lib/husk"));
    }
    let data_home = var("XDG_DATA_HOME").or_else(|| var("HOME").map(|h| h.join(".local/share")));
    data_home
        .map(|d| d.join("husk"))
        .ok_or(ImageError::NoDataDir)
}

/// Names: 1 to 255 of `[A-Za-z0-9._:/@-]`, starting with a letter or digit.
fn validate_name(name: &str) -> Result<(), ImageError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._:/@-".contains(c);
    let starts_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if name.len() > 255 || !starts_ok || !name.chars().all(allowed) {
        return Err(ImageError::InvalidName(name.to_string()));
    }
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ImageError> {
    let bytes = serde_json::to_vec_pretty(value).expect("store metadata always serializes");
    fs::write(path, bytes).map_err(ImageError::io("write", path))
}

fn rename(from: &Path, to: &Path) -> Result<(), ImageError> {
    fs::rename(from, to).map_err(ImageError::io("rename", from))
}

/// Best-effort removal of files published by a commit that then failed.
fn unpublish(paths: &[PathBuf]) {
    for path in paths {
        if let Err(e) = fs::remove_file(path) {
            log::warn!("cannot roll back {}: {e}", path.display());
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding metadata for `digests` (no erofs files: enough to resolve).
    fn store_with(digests: &[&str]) -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(Some(dir.path())).unwrap();
        for digest in digests {
            let meta = Metadata {
                digest: digest.to_string(),
                config: ImageConfig::default(),
                size: 1,
                created: 2,
                source: "test".to_string(),
                layers: Vec::new(),
            };
            write_json(&store.files(digest).1, &meta).unwrap();
        }
        (dir, store)
    }

    fn digest(prefix: &str) -> String {
        format!("sha256:{prefix}{}", "0".repeat(64 - prefix.len()))
    }

    #[test]
    fn shared_digest_prefix_is_ambiguous() {
        let (_dir, store) = store_with(&[&digest("abcdef1"), &digest("abcdef2")]);
        assert!(matches!(store.resolve("abcdef"), Err(ImageError::Ambiguous(p)) if p == "abcdef"));
    }

    #[test]
    fn longer_prefix_picks_one_image_and_upper_case_hex_matches() {
        let (_dir, store) = store_with(&[&digest("abcdef1"), &digest("abcdef2")]);
        assert_eq!(
            store.resolve("sha256:ABCDEF2").unwrap().digest,
            digest("abcdef2")
        );
    }

    #[test]
    fn names_with_spaces_or_dotdot_start_are_invalid() {
        assert!(validate_name("docker.io/library/alpine:3.19").is_ok());
        assert!(matches!(
            validate_name("a b"),
            Err(ImageError::InvalidName(_))
        ));
        assert!(matches!(
            validate_name("../x"),
            Err(ImageError::InvalidName(_))
        ));
        assert!(matches!(validate_name(""), Err(ImageError::InvalidName(_))));
    }

    #[test]
    fn corrupt_names_index_is_reported_with_its_path() {
        let (dir, store) = store_with(&[]);
        fs::write(dir.path().join("images/names.json"), "{not json").unwrap();
        let err = store.list().unwrap_err();
        assert!(matches!(err, ImageError::Metadata { path, .. } if path.ends_with("names.json")));
    }

    #[test]
    fn stale_temp_dir_of_a_dead_process_is_removed_on_open() {
        let (dir, _store) = store_with(&[]);
        let stale = dir.path().join("images/.tmp-999999999-1-0");
        fs::create_dir(&stale).unwrap();
        ImageStore::open(Some(dir.path())).unwrap();
        assert!(!stale.exists());
    }
}
