//! `husk pull`: an image from a registry into the store, named by its full reference
//! (`docker.io/library/busybox:latest`). The manifest is resolved first; when the name
//! already holds the image of that manifest nothing more is fetched. Otherwise the
//! config and the missing layers are fetched and checked, the layers staged as an
//! import's are, and the erofs committed; the new layers are kept for later pulls only
//! once everything succeeded.

use std::fs;
use std::path::Path;

use super::import::{self, TempDir};
use super::oci::Plan;
use super::registry::{self, auth, Client, Connection, Credentials, Reference, RegistryError};
use super::source::LayerRef;
use super::{Image, ImageError, ImageStore};

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// How to reach and authenticate to the registry.
    pub connection: Connection,
    /// Progress bars on stderr.
    pub progress: bool,
}

impl ImageStore {
    /// Pulls `reference` (docker's short names allowed) and stores it under its full
    /// name. Returns the stored image.
    pub fn pull(&self, reference: &str, options: &PullOptions) -> Result<Image, ImageError> {
        let reference = Reference::parse(reference).map_err(RegistryError::from)?;
        let client = Client::connect(&reference, &options.connection)?;
        let (top_digest, manifest) = registry::resolve(&client, &reference)?;
        let name = reference.to_string();
        let source = format!(
            "{}/{}@{top_digest}",
            reference.registry, reference.repository
        );
        if let Ok(image) = self.resolve(&name) {
            if image.source == source {
                log::info!("{name} is up to date ({top_digest})");
                return Ok(image);
            }
        }
        log::debug!("{name}: image manifest {}", manifest.digest);
        let config = registry::fetch_config(&client, &reference, &manifest)?;
        let tmp = TempDir::new(&self.images())?;
        let layer_dir = self.images().join(registry::LAYERS_DIR);
        fs::create_dir_all(&layer_dir).map_err(ImageError::io("create", &layer_dir))?;
        let fetched = registry::fetch_layers(
            &client,
            &reference,
            &manifest.layers,
            &layer_dir,
            tmp.path(),
            options.progress,
        )?;
        let count = manifest.layers.len();
        let layers = manifest
            .layers
            .iter()
            .zip(&fetched.paths)
            .enumerate()
            .map(|(i, (desc, path))| LayerRef {
                path: path.clone(),
                label: desc.digest.clone(),
                digest: Some(desc.digest.clone()),
                diff_id: config.diff_id(i, count),
            })
            .collect();
        let plan = Plan {
            layers,
            config: config.image_config(),
            name: None,
        };
        let built = import::build_plan(plan, Path::new(&name), tmp.path(), options.progress)?;
        fetched.keep();
        let layers: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
        self.commit(&built, Some(&name), &source, &layers, tmp.path())
    }
}

/// `husk login`: checks `credentials` against `registry` (its `/v2/` must accept
/// them), then stores them in the docker config file (`docker_config`, or
/// `~/.docker/config.json`).
pub fn login(
    registry: &str,
    credentials: Credentials,
    connection: &Connection,
) -> Result<std::path::PathBuf, ImageError> {
    let reference =
        Reference::parse(&format!("{registry}/login-check")).map_err(RegistryError::from)?;
    let reference = Reference {
        repository: String::new(),
        ..reference
    };
    let connection = Connection {
        credentials: Some(credentials.clone()),
        ..connection.clone()
    };
    Client::connect(&reference, &connection)?;
    let path = connection
        .docker_config
        .clone()
        .or_else(auth::docker_config_path)
        .ok_or_else(|| {
            RegistryError::Config("~/.docker/config.json".into(), "HOME is not set".into())
        })?;
    auth::store(&path, &reference.registry, &credentials)?;
    Ok(path)
}
