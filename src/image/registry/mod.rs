//! Pulling images from an OCI distribution registry (distribution spec v1.1, the pull
//! side): a reference's tag or digest to a manifest, through an index or a Docker
//! manifest list to the linux/amd64 manifest (OCI and Docker schema 2 media types), its
//! config and layers, each checked against its digest. Layers are fetched a few at a
//! time with a progress bar each, kept by digest in `<store>/images/layers/sha256/`
//! (shared by every image that uses them, fetched once), and staged as an import's
//! layers are.
//!
//! `reference` parses names as docker does, `auth` reads `~/.docker/config.json` and
//! answers the registry's challenges, `client` speaks HTTP, `fetch` downloads blobs.

pub mod auth;
mod client;
mod fetch;
pub mod reference;

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use auth::Credentials;
pub use client::{Client, Connection};
pub(crate) use fetch::fetch_layers;
pub use fetch::LAYERS_DIR;
pub use reference::{Reference, ReferenceError};

use super::oci::{pick, ConfigFile, Descriptor, Document};

/// The manifest media types a pull accepts, best first.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// Nested indexes followed before giving up.
const MAX_INDEX_DEPTH: usize = 4;

/// Errors of talking to a registry. Messages name the registry (`host:port`), the
/// reference or the blob.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// No connection (refused, host unknown, TLS failure, timeout), after retries.
    #[error("cannot reach registry {endpoint}: {reason}")]
    Unreachable {
        /// `host:port`.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The registry refused the credentials, or wants some and there are none.
    #[error("{}", unauthorized_text(.registry, .repository, .detail, *.with_credentials))]
    Unauthorized {
        /// `host:port`.
        registry: String,
        /// The repository.
        repository: String,
        /// The registry's answer.
        detail: String,
        /// Whether credentials were sent.
        with_credentials: bool,
    },
    /// The tag, digest or repository does not exist.
    #[error("{reference}: not found in the registry ({message})")]
    NotFound {
        /// The reference as pulled.
        reference: String,
        /// The registry's message.
        message: String,
    },
    /// Any other unsuccessful answer.
    #[error("GET {url}: status {status} {message}")]
    Status {
        /// The request.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's message, if any.
        message: String,
    },
    /// A manifest, blob or config does not hash to its digest.
    #[error("{reference}: {blob} has digest {actual}: refused")]
    DigestMismatch {
        /// The reference as pulled.
        reference: String,
        /// What was fetched and the digest it should have.
        blob: String,
        /// The digest of what came.
        actual: String,
    },
    /// A manifest that cannot be used.
    #[error("{reference}: {reason}")]
    Manifest {
        /// The reference as pulled.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// An answer could not be read.
    #[error("reading the registry's answer: {0}")]
    Read(String),
    /// The docker config file is unreadable.
    #[error("docker config {0}: {1}")]
    Config(std::path::PathBuf, String),
    /// A CA certificate could not be read.
    #[error("certificates {0}: {1}")]
    Certificates(std::path::PathBuf, String),
}

fn unauthorized_text(
    registry: &str,
    repository: &str,
    detail: &str,
    with_credentials: bool,
) -> String {
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    };
    if with_credentials {
        format!("{registry}: authentication failed for {repository}{detail}: wrong user name or password?")
    } else {
        format!("{registry}: {repository} needs authentication{detail}: log in with `husk login`")
    }
}

/// A manifest as fetched: its bytes' digest and what it says.
pub(crate) struct Manifest {
    /// `sha256:<hex>` of the bytes the registry sent.
    pub digest: String,
    /// The config descriptor.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// The media type or schema of a manifest document, for refusing schema 1.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
}

/// Resolves `reference` to its linux/amd64 image manifest; returns it with the digest
/// of the document the reference names (an index's, for a multi-platform image).
pub(crate) fn resolve(
    client: &Client,
    reference: &Reference,
) -> Result<(String, Manifest), RegistryError> {
    let (top_digest, mut doc) = fetch_document(client, reference, reference.manifest_ref())?;
    let mut digest = top_digest.clone();
    for _ in 0..MAX_INDEX_DEPTH {
        let Some(mut manifests) = doc.manifests.take() else {
            let bad = |reason: &str| RegistryError::Manifest {
                reference: reference.to_string(),
                reason: reason.to_string(),
            };
            let config = doc
                .config
                .ok_or_else(|| bad("the manifest has no config"))?;
            let layers = doc.layers.unwrap_or_default();
            if let Some(foreign) = layers.iter().find(|l| {
                l.media_type
                    .as_deref()
                    .is_some_and(|m| m.contains("foreign") || m.contains("nondistributable"))
            }) {
                return Err(bad(&format!(
                    "layer {} is a foreign layer, which husk cannot fetch",
                    foreign.digest
                )));
            }
            return Ok((
                top_digest,
                Manifest {
                    digest,
                    config,
                    layers,
                },
            ));
        };
        let chosen = pick(&mut manifests).ok_or_else(|| RegistryError::Manifest {
            reference: reference.to_string(),
            reason: format!("index {digest} has no linux/amd64 image"),
        })?;
        (digest, doc) = fetch_document(client, reference, &chosen.digest)?;
        if digest != chosen.digest {
            return Err(RegistryError::DigestMismatch {
                reference: reference.to_string(),
                blob: format!("manifest {}", chosen.digest),
                actual: digest,
            });
        }
    }
    Err(RegistryError::Manifest {
        reference: reference.to_string(),
        reason: "indexes nested too deep".into(),
    })
}

/// One manifest or index by tag or digest: its digest and content, checked against the
/// digest when it is one.
fn fetch_document(
    client: &Client,
    reference: &Reference,
    tag_or_digest: &str,
) -> Result<(String, Document), RegistryError> {
    let path = format!("/v2/{}/manifests/{tag_or_digest}", reference.repository);
    let response = client.get(&path, Some(ACCEPT))?;
    let status = response.status().as_u16();
    if status == 404 {
        let message = client::read_limited(response.into_body())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| "404".into());
        return Err(RegistryError::NotFound {
            reference: reference.to_string(),
            message: format!("{message} at {}", client.endpoint()),
        });
    }
    if !(200..300).contains(&status) {
        return Err(client.status_error(response, &path));
    }
    let bytes = client::read_limited(response.into_body())?;
    let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
    if tag_or_digest.starts_with("sha256:") && digest != tag_or_digest {
        return Err(RegistryError::DigestMismatch {
            reference: reference.to_string(),
            blob: format!("manifest {tag_or_digest}"),
            actual: digest,
        });
    }
    let bad = |reason: String| RegistryError::Manifest {
        reference: reference.to_string(),
        reason,
    };
    let header: Header =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest {digest}: {e}")))?;
    let schema1 = header.schema_version == Some(1)
        || header
            .media_type
            .as_deref()
            .is_some_and(|m| m.contains("distribution.manifest.v1"));
    if schema1 {
        return Err(bad(
            "a Docker schema 1 manifest: husk reads schema 2 and OCI images only".into(),
        ));
    }
    let doc = serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest {digest}: {e}")))?;
    Ok((digest, doc))
}

/// The image config blob of `manifest`, checked against its digest.
pub(crate) fn fetch_config(
    client: &Client,
    reference: &Reference,
    manifest: &Manifest,
) -> Result<ConfigFile, RegistryError> {
    let desc = &manifest.config;
    let path = format!("/v2/{}/blobs/{}", reference.repository, desc.digest);
    let response = client.get(&path, None)?;
    if !(200..300).contains(&response.status().as_u16()) {
        return Err(client.status_error(response, &path));
    }
    let bytes = client::read_limited(response.into_body())?;
    let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
    if actual != desc.digest {
        return Err(RegistryError::DigestMismatch {
            reference: reference.to_string(),
            blob: format!("config {}", desc.digest),
            actual,
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Manifest {
        reference: reference.to_string(),
        reason: format!("config {}: {e}", desc.digest),
    })
}
