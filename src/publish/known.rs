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
//! A local cache (`$XDG_CACHE_HOME/manifold/layers.json`) remembers the same
//! pairs from earlier runs on this machine, for tags that do not exist yet;
//! a cached pair is used only after a HEAD shows every destination has it.
//!
//! Everything here is an optimisation: a failure only means less is skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

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
#[derive(Default)]
pub struct KnownLayers {
    layers: HashMap<Digest, Descriptor>,
    /// Pairs from the local cache, checked (HEAD) only when asked for.
    cached: HashMap<Digest, (Digest, u64)>,
    media_type: String,
    destinations: Vec<Destination>,
    runtime: Option<tokio::runtime::Handle>,
}

impl KnownLayers {
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty() && self.cached.is_empty()
    }

    /// The descriptor for `diff_id` if every destination has its blob. Called
    /// from the blocking reader threads: a cached pair is checked with a HEAD
    /// on the runtime.
    pub fn get(&self, diff_id: &Digest) -> Option<Descriptor> {
        if let Some(d) = self.layers.get(diff_id) {
            return Some(d.clone());
        }
        let (digest, size) = self.cached.get(diff_id)?;
        let runtime = self.runtime.as_ref()?;
        let present = runtime.block_on(async {
            for destination in &self.destinations {
                if !destination.has_blob(digest).await.unwrap_or(false) {
                    return false;
                }
            }
            true
        });
        present.then(|| Descriptor::new(self.media_type.clone(), digest.clone(), *size))
    }

    /// Adds the local cache's pairs for this compression.
    pub fn with_cache(mut self, cache: &LayerCache, destinations: &[Destination]) -> KnownLayers {
        self.cached = cache.load(&self.media_type);
        self.destinations = destinations.to_vec();
        self.runtime = tokio::runtime::Handle::try_current().ok();
        self
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
        // Every (destination, reference) at once: against a remote registry
        // each read is a few round trips, and a publish names several tags.
        let reads = destinations
            .iter()
            .filter_map(|destination| destination.registry())
            .flat_map(|(client, repository)| {
                references.iter().map(move |reference| async move {
                    let pairs = read_reference(client, &repository.path, reference).await;
                    (repository, reference, pairs)
                })
            });
        let mut candidates: HashMap<Digest, Descriptor> = HashMap::new();
        // In the order given: the first pair for a diff_id wins, as before.
        for (repository, reference, pairs) in futures::future::join_all(reads).await {
            match pairs {
                Ok(pairs) => {
                    for (diff_id, mut descriptor) in pairs {
                        // A Docker manifest cites the same gzip blob under another name.
                        if descriptor.media_type == oci::MEDIA_TYPE_DOCKER_LAYER_GZIP {
                            descriptor.media_type = oci::MEDIA_TYPE_LAYER_GZIP.to_owned();
                        }
                        if descriptor.media_type == compression.media_type() {
                            candidates.entry(diff_id).or_insert(descriptor);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("known layers: cannot read `{repository}:{reference}`: {e:#}")
                }
            }
        }
        let media_type = compression.media_type().to_owned();
        if candidates.is_empty() {
            return KnownLayers {
                media_type,
                ..KnownLayers::default()
            };
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
        KnownLayers {
            layers: candidates,
            media_type,
            ..KnownLayers::default()
        }
    }
}

/// The local record of which blob was pushed for which diff_id.
pub struct LayerCache {
    path: PathBuf,
}

/// At most this many pairs are kept per media type.
const MAX_CACHED: usize = 20_000;

type CacheFile = BTreeMap<String, BTreeMap<String, (Digest, u64)>>;

impl LayerCache {
    /// The cache in `dir` (`$XDG_CACHE_HOME/manifold`).
    pub fn in_dir(dir: &Path) -> LayerCache {
        LayerCache {
            path: dir.join("layers.json"),
        }
    }

    fn read(&self) -> CacheFile {
        std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// diff_id → (digest, size) for one media type.
    pub fn load(&self, media_type: &str) -> HashMap<Digest, (Digest, u64)> {
        self.read()
            .remove(media_type)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(diff_id, blob)| Some((diff_id.parse().ok()?, blob)))
            .collect()
    }

    /// Records pairs that were just published; errors are only logged.
    pub fn record(&self, pairs: &[(Digest, Descriptor)]) {
        let mut file = self.read();
        for (diff_id, descriptor) in pairs {
            if descriptor.media_type == oci::MEDIA_TYPE_LAYER {
                continue; // the digest is the diff_id: nothing to remember
            }
            let map = file.entry(descriptor.media_type.clone()).or_default();
            if map.len() >= MAX_CACHED {
                map.clear();
            }
            map.insert(
                diff_id.to_string(),
                (descriptor.digest.clone(), descriptor.size),
            );
        }
        let write = || -> std::io::Result<()> {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            std::io::Write::write_all(&mut tmp, &serde_json::to_vec(&file)?)?;
            tmp.persist(&self.path).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::debug!(
                "cannot write the layer cache `{}`: {e}",
                self.path.display()
            );
        }
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
    // The children of an index, and then their configs, are read at once:
    // two round trips deep whatever the number of platforms.
    let manifests = if oci::is_index_media_type(&raw.media_type) {
        let index: ImageIndex = serde_json::from_slice(&raw.bytes)?;
        let children: Vec<String> = index
            .manifests
            .iter()
            .take(MAX_CHILDREN)
            .filter(|child| !oci::is_index_media_type(&child.media_type))
            .map(|child| child.digest.to_string())
            .collect();
        futures::future::try_join_all(children.iter().map(|d| client.get_manifest(repo, d)))
            .await?
            .into_iter()
            .flatten()
            .collect()
    } else {
        vec![raw]
    };
    let per_manifest = futures::future::try_join_all(manifests.into_iter().map(|raw| async move {
        let manifest: ImageManifest = serde_json::from_slice(&raw.bytes)?;
        if manifest.config.size > MAX_CONFIG_BYTES {
            return anyhow::Ok(Vec::new());
        }
        let config = client
            .get_blob(repo, &manifest.config.digest, MAX_CONFIG_BYTES)
            .await?;
        let summary: ConfigSummary = serde_json::from_slice(&config)?;
        let diff_ids = summary.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        Ok(if diff_ids.len() == manifest.layers.len() {
            diff_ids.into_iter().zip(manifest.layers).collect()
        } else {
            Vec::new()
        })
    }))
    .await?;
    Ok(per_manifest.into_iter().flatten().collect())
}
