//! `docker save` archives: `manifest.json` names the config and the layer tars, and
//! (legacy) `repositories` the tags. Layers are checked against the config's
//! `rootfs.diff_ids`, and against their file name when stored as `blobs/sha256/<hex>`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::oci::{ConfigFile, Plan};
use super::source::{sha256_hex, LayerRef, Layout};
use super::ImageError;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Reads the `docker save` tree at `layout.root` into a plan (its first image).
pub(crate) fn plan(layout: &Layout<'_>) -> Result<Plan, ImageError> {
    let entries: Vec<Entry> = layout.read_json("manifest.json")?;
    let entry = entries
        .into_iter()
        .next()
        .ok_or_else(|| layout.bad("manifest.json lists no image"))?;
    let config: ConfigFile = match content_digest(&entry.config) {
        Some(digest) => layout.read_json_blob_at(&entry.config, &digest)?,
        None => layout.read_json(&entry.config)?,
    };
    let count = entry.layers.len();
    let layers = entry
        .layers
        .iter()
        .enumerate()
        .map(|(i, rel)| {
            Ok(LayerRef {
                path: layout.path(rel)?,
                label: rel.clone(),
                digest: content_digest(rel).filter(|_| !rel.ends_with(".json")),
                diff_id: config.diff_id(i, count),
            })
        })
        .collect::<Result<_, ImageError>>()?;
    let name = match entry.repo_tags.and_then(|tags| tags.into_iter().next()) {
        Some(tag) => Some(tag),
        None => legacy_name(layout),
    };
    Ok(Plan {
        layers,
        config: config.image_config(),
        name,
    })
}

/// The digest a file's name states: `blobs/sha256/<hex>` or `<hex>.json`.
fn content_digest(rel: &str) -> Option<String> {
    let file = rel.rsplit('/').next()?;
    let hex = file.strip_suffix(".json").unwrap_or(file);
    let digest = format!("sha256:{hex}");
    let named = rel.starts_with("blobs/sha256/") || rel.ends_with(".json");
    (named && sha256_hex(&digest).is_some()).then_some(digest)
}

/// `repo:tag` from a legacy `repositories` file (`{"repo": {"tag": "id"}}`).
fn legacy_name(layout: &Layout<'_>) -> Option<String> {
    let repos: BTreeMap<String, BTreeMap<String, String>> =
        layout.read_json("repositories").ok()?;
    let (repo, tags) = repos.into_iter().next()?;
    let tag = tags.into_keys().next()?;
    Some(format!("{repo}:{tag}"))
}

#[cfg(test)]
mod tests {
    use super::content_digest;

    #[test]
    fn blob_and_hex_json_names_state_their_digest() {
        let hex = "a".repeat(64);
        let expected = Some(format!("sha256:{hex}"));
        assert_eq!(content_digest(&format!("blobs/sha256/{hex}")), expected);
        assert_eq!(content_digest(&format!("{hex}.json")), expected);
    }

    #[test]
    fn legacy_layer_paths_state_no_digest() {
        assert_eq!(content_digest("0123abcd/layer.tar"), None);
        assert_eq!(content_digest("config.json"), None);
    }
}
