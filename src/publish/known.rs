//! The known-layer map: which uncompressed layers (by diff_id) every
//! destination already holds as a blob, and under which descriptor.
//!
//! Before reading any input, the images that the tags about to be published
//! (and `--cache-from`) point at now are read: index → manifests → configs,
//! pairing each `rootfs.diff_ids[i]` with `layers[i]`. A layer found there, in
//! the chosen compression, and present (HEAD) at every destination is reused
//! without being compressed or uploaded; the reader still hashes it to check
//! its diff_id. This is what makes a re-run from a fresh CI runner cheap:
//! compressed digests cannot be predicted from uncompressed bytes without
//! compressing them, but the registry remembers what was pushed for them.
//!
//! Everything here is an optimisation: a failure only means less is skipped.

use std::collections::{HashMap, HashSet};

use crate::digest::Digest;
use crate::layer::Compression;
use crate::oci::{self, ConfigSummary, Descriptor, ImageIndex, ImageManifest};
use crate::progress::Reporter;

use super::destination::Destination;

/// Configs larger than this are not read for the map.
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Index children followed per reference.
const MAX_CHILDREN: usize = 32;

/// diff_id → a blob every destination has.
#[derive(Debug, Default)]
pub struct KnownLayers {
    layers: HashMap<Digest, Descriptor>,
}

impl KnownLayers {
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn get(&self, diff_id: &Digest) -> Option<Descriptor> {
        self.layers.get(diff_id).cloned()
    }

    /// Reads what `references` point at in the registry destinations and keeps
    /// the layers that every destination has.
    pub async fn fetch<'a>(
        destinations: &[Destination],
        references: impl Iterator<Item = &'a String>,
        compression: Compression,
        reporter: &dyn Reporter,
    ) -> KnownLayers {
        let references: Vec<&String> = references.collect();
        let mut candidates: HashMap<Digest, Descriptor> = HashMap::new();
        for destination in destinations {
            if let Some((client, repository)) = destination.registry() {
                for reference in &references {
                    match read_reference(client, &repository.path, reference).await {
                        Ok(pairs) => {
                            for (diff_id, descriptor) in pairs {
                                if descriptor.media_type == compression.media_type() {
                                    candidates.entry(diff_id).or_insert(descriptor);
                                }
                            }
                        }
                        Err(e) => tracing::debug!(
                            "known layers: cannot read `{repository}:{reference}`: {e:#}"
                        ),
                    }
                }
            }
        }
        if candidates.is_empty() {
            return KnownLayers::default();
        }
        // Keep the candidates every destination has.
        let mut missing: HashSet<Digest> = HashSet::new();
        let checks = candidates.values().flat_map(|d| {
            destinations.iter().map(move |dest| async move {
                let present = dest.has_blob(&d.digest).await.unwrap_or(false);
                (d.digest.clone(), present)
            })
        });
        for (digest, present) in futures::future::join_all(checks).await {
            if !present {
                missing.insert(digest);
            }
        }
        candidates.retain(|_, d| !missing.contains(&d.digest));
        if !candidates.is_empty() {
            reporter.on_notice(&format!(
                "{} layer(s) already published will be reused without compressing or uploading them",
                candidates.len()
            ));
        }
        KnownLayers { layers: candidates }
    }
}

/// (diff_id, layer descriptor) pairs of every image `reference` names.
async fn read_reference(
    client: &crate::registry::RegistryClient,
    repo: &str,
    reference: &str,
) -> anyhow::Result<Vec<(Digest, Descriptor)>> {
    let Some(raw) = client.get_manifest(repo, reference).await? else {
        return Ok(Vec::new());
    };
    let mut manifests = Vec::new();
    if oci::is_index_media_type(&raw.media_type) {
        let index: ImageIndex = serde_json::from_slice(&raw.bytes)?;
        for child in index.manifests.iter().take(MAX_CHILDREN) {
            if oci::is_index_media_type(&child.media_type) {
                continue;
            }
            if let Some(m) = client.get_manifest(repo, &child.digest.to_string()).await? {
                manifests.push(m);
            }
        }
    } else {
        manifests.push(raw);
    }
    let mut pairs = Vec::new();
    for raw in manifests {
        let manifest: ImageManifest = serde_json::from_slice(&raw.bytes)?;
        if manifest.config.size > MAX_CONFIG_BYTES {
            continue;
        }
        let config = client
            .get_blob(repo, &manifest.config.digest, MAX_CONFIG_BYTES)
            .await?;
        let summary: ConfigSummary = serde_json::from_slice(&config)?;
        let diff_ids = summary.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() == manifest.layers.len() {
            pairs.extend(diff_ids.into_iter().zip(manifest.layers));
        }
    }
    Ok(pairs)
}
