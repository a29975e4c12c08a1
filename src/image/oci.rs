//! OCI image layouts (image spec image-layout.md): `index.json` to a manifest (the
//! linux/amd64 one of an index), then its config and layers, every blob checked
//! against its descriptor. Also the image config format shared with `docker save`.

use std::collections::HashMap;

use serde::Deserialize;

use super::source::{LayerRef, Layout};
use super::{ImageConfig, ImageError};

/// Nested indexes followed before giving up (an index naming itself would loop).
const MAX_INDEX_DEPTH: usize = 4;

/// An image ready to stage: its layers in order, how to run it, and a name if the
/// input carries one.
#[derive(Debug)]
pub(crate) struct Plan {
    pub layers: Vec<LayerRef>,
    pub config: ImageConfig,
    pub name: Option<String>,
}

/// A content descriptor (image spec descriptor.md).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: Option<u64>,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

/// An index or a manifest: which one it is shows in the fields present.
#[derive(Debug, Deserialize)]
pub(crate) struct Document {
    pub manifests: Option<Vec<Descriptor>>,
    pub config: Option<Descriptor>,
    pub layers: Option<Vec<Descriptor>>,
}

/// The image config (image spec config.md), the parts husk uses.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ConfigFile {
    /// The run configuration; empty strings count as absent.
    pub fn image_config(&self) -> ImageConfig {
        let run = self.config.as_ref();
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        ImageConfig {
            env: run.and_then(|r| r.env.clone()).unwrap_or_default(),
            entrypoint: run.and_then(|r| r.entrypoint.clone()).unwrap_or_default(),
            cmd: run.and_then(|r| r.cmd.clone()).unwrap_or_default(),
            working_dir: run.and_then(|r| non_empty(&r.working_dir)),
            user: run.and_then(|r| non_empty(&r.user)),
        }
    }

    /// The uncompressed digest of layer `index`, when the config lists one per layer.
    pub fn diff_id(&self, index: usize, layers: usize) -> Option<String> {
        let ids = &self.rootfs.as_ref()?.diff_ids;
        (ids.len() == layers).then(|| ids[index].clone())
    }
}

/// Reads the OCI layout at `layout.root` into a plan.
pub(crate) fn plan(layout: &Layout<'_>) -> Result<Plan, ImageError> {
    let index: Document = layout.read_json("index.json")?;
    let mut manifests = index
        .manifests
        .ok_or_else(|| layout.bad("index.json lists no manifests"))?;
    let chosen =
        pick(&mut manifests).ok_or_else(|| layout.bad("index.json has no linux/amd64 manifest"))?;
    let name = chosen
        .annotations
        .get("io.containerd.image.name")
        .or_else(|| chosen.annotations.get("org.opencontainers.image.ref.name"))
        .cloned();
    let manifest = resolve_manifest(layout, chosen, 0)?;
    let config_desc = manifest
        .config
        .ok_or_else(|| layout.bad("manifest has no config"))?;
    let config: ConfigFile = layout.read_json_blob(&config_desc.digest, config_desc.size)?;
    let descriptors = manifest.layers.unwrap_or_default();
    let layers = descriptors
        .iter()
        .enumerate()
        .map(|(i, desc)| {
            Ok(LayerRef {
                path: layout.blob_path(&desc.digest)?,
                label: desc.digest.clone(),
                digest: Some(desc.digest.clone()),
                diff_id: config.diff_id(i, descriptors.len()),
            })
        })
        .collect::<Result<_, ImageError>>()?;
    Ok(Plan {
        layers,
        config: config.image_config(),
        name,
    })
}

/// Follows `desc` through nested indexes down to an image manifest.
fn resolve_manifest(
    layout: &Layout<'_>,
    desc: Descriptor,
    depth: usize,
) -> Result<Document, ImageError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(layout.bad("indexes nested too deep"));
    }
    let doc: Document = layout.read_json_blob(&desc.digest, desc.size)?;
    match doc.manifests {
        Some(mut manifests) => {
            let chosen = pick(&mut manifests).ok_or_else(|| {
                layout.bad(format!("index {} has no linux/amd64 manifest", desc.digest))
            })?;
            resolve_manifest(layout, chosen, depth + 1)
        }
        None => Ok(doc),
    }
}

/// The linux/amd64 entry of an index, else its first entry without a platform.
pub(crate) fn pick(manifests: &mut Vec<Descriptor>) -> Option<Descriptor> {
    let amd64 = manifests.iter().position(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    });
    let index = amd64.or_else(|| manifests.iter().position(|d| d.platform.is_none()))?;
    let chosen = manifests.swap_remove(index);
    log::debug!("chose manifest {} ({:?})", chosen.digest, chosen.media_type);
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptors(json: &str) -> Vec<Descriptor> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn amd64_linux_entry_is_picked_over_earlier_ones() {
        let mut list = descriptors(
            r#"[{"digest":"sha256:a","platform":{"architecture":"arm64","os":"linux"}},
                {"digest":"sha256:b","platform":{"architecture":"unknown","os":"unknown"}},
                {"digest":"sha256:c","platform":{"architecture":"amd64","os":"linux"}}]"#,
        );
        assert_eq!(pick(&mut list).unwrap().digest, "sha256:c");
    }

    #[test]
    fn entry_without_platform_is_picked_when_no_amd64_is_listed() {
        let mut list = descriptors(
            r#"[{"digest":"sha256:a","platform":{"architecture":"arm64","os":"linux"}},
                {"digest":"sha256:b"}]"#,
        );
        assert_eq!(pick(&mut list).unwrap().digest, "sha256:b");
    }

    #[test]
    fn index_of_other_architectures_only_gives_nothing() {
        let mut list = descriptors(
            r#"[{"digest":"sha256:a","platform":{"architecture":"arm64","os":"linux"}}]"#,
        );
        assert!(pick(&mut list).is_none());
    }

    #[test]
    fn empty_working_dir_and_user_count_as_absent() {
        let config: ConfigFile =
            serde_json::from_str(r#"{"config":{"WorkingDir":"","User":"","Cmd":["sh"]}}"#).unwrap();
        let expected = ImageConfig {
            cmd: vec!["sh".to_string()],
            ..ImageConfig::default()
        };
        assert_eq!(config.image_config(), expected);
    }

    #[test]
    fn diff_ids_are_used_only_when_one_per_layer() {
        let config: ConfigFile =
            serde_json::from_str(r#"{"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#)
                .unwrap();
        assert_eq!(config.diff_id(0, 1).as_deref(), Some("sha256:x"));
        assert_eq!(config.diff_id(0, 2), None);
    }
}
