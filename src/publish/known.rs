//! The known-layer map: which uncompressed layers (by diff_id) every
//! destination already holds as a blob, and under which descriptor.
//!
//! Before any layer is looked up here (see `super::gate`: the inputs start
//! meanwhile), the images that the tags about to be published
//! (and `--cache-from`) point at now are read: index → manifests → configs,
//! pairing each `rootfs.diff_ids[i]` with `layers[i]`. A layer found there, in
//! the chosen compression, and present at every destination (named by a
//! manifest read there, or else asked with a HEAD) is reused without being
//! compressed or uploaded; the reader still hashes it to check its diff_id.
//! This is what makes a re-run from a fresh CI runner cheap:
//! compressed digests cannot be predicted from uncompressed bytes without
//! compressing them, but the registry remembers what was pushed for them.
//!
//! A local cache (`$XDG_CACHE_HOME/manifold/layers.json`) remembers the same
//! pairs from earlier runs on this machine, for tags that do not exist yet,
//! with the repositories each blob was published to. A cached pair is used
//! only once every destination has the blob: by a HEAD, or by mounting it
//! from one of those repositories on the destination's registry, as skopeo
//! mounts from the locations its blob-info cache remembers (publishing to
//! `acme/app` after `acme/app-dev` compresses and uploads nothing).
//!
//! `--cache-from` adds images to read: a tag or digest is looked up in every
//! destination repository, a full reference (`host/repo:tag`) in its own
//! repository; layers found in another repository of a destination's
//! registry are mounted from it (`POST …?mount=&from=`) when a reader meets
//! them, as `docker buildx --cache-from` reuses a base image's layers.
//!
//! Everything here is an optimisation: a failure only means less is skipped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::layer::Compression;
use crate::oci::{self, ConfigSummary, Descriptor, ImageIndex, ImageManifest, RawManifest};
use crate::progress::Reporter;
use crate::reference::{self, Reference, Repository};
use crate::registry::RegistryClient;

use super::destination::Destination;
use super::mounted::{mount_where_missing, Mounted};
use super::seen::Seen;

/// Configs larger than this are not read for the map.
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Index children followed per reference.
const MAX_CHILDREN: usize = 32;

/// A `--cache-from` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheFrom {
    /// A tag or digest, read in every registry destination.
    InDestinations(String),
    /// An image by full reference, read in its own repository.
    Image(Reference),
}

impl FromStr for CacheFrom {
    type Err = String;

    /// `TAG`, `sha256:…` (or `@sha256:…`), or `host/repo[:tag][@digest]`.
    /// A value with no `/` or `:` is a tag, as `--tag` takes it.
    fn from_str(text: &str) -> Result<CacheFrom, String> {
        let bare = text.strip_prefix('@').unwrap_or(text);
        if bare.parse::<Digest>().is_ok() || reference::is_valid_tag(text) {
            return Ok(CacheFrom::InDestinations(bare.to_owned()));
        }
        Reference::parse(text).map(CacheFrom::Image).map_err(|e| {
            format!(
                "`--cache-from {text}` is not a tag, a digest or an image reference: {e}\n\
                 hint: write a tag of the destinations (`main`), a digest (`sha256:…`) \
                 or an image (`ghcr.io/acme/base:1.0`)"
            )
        })
    }
}

/// diff_id → a blob every destination has.
#[derive(Default)]
pub struct KnownLayers {
    layers: HashMap<Digest, Descriptor>,
    /// Blobs some destinations lack, with the repository of their registry
    /// they were found in (a `--cache-from` image's, or another
    /// destination's): mounted from it when asked for.
    mountable: HashMap<Digest, (Descriptor, Repository)>,
    /// Pairs from the local cache, checked (HEAD) only when asked for.
    cached: HashMap<Digest, CachedBlob>,
    media_type: String,
    destinations: Vec<Destination>,
    /// Where a lookup mounted a blob, for the report.
    mounted: Arc<Mounted>,
    runtime: Option<tokio::runtime::Handle>,
}

impl KnownLayers {
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty() && self.mountable.is_empty() && self.cached.is_empty()
    }

    /// The descriptor for `diff_id` if every destination has its blob. Called
    /// from the blocking reader threads: a cached pair is checked with a HEAD
    /// on the runtime.
    pub fn get(&self, diff_id: &Digest) -> Option<Descriptor> {
        if let Some(d) = self.layers.get(diff_id) {
            return Some(d.clone());
        }
        let runtime = self.runtime.as_ref()?;
        // A mount is idempotent: two inputs sharing the layer may both ask.
        if let Some((descriptor, from)) = self.mountable.get(diff_id) {
            let in_place = runtime.block_on(mount_where_missing(
                &self.destinations,
                &descriptor.digest,
                std::slice::from_ref(from),
                &self.mounted,
            ));
            return in_place.then(|| descriptor.clone());
        }
        let cached = self.cached.get(diff_id)?;
        let in_place = runtime.block_on(mount_where_missing(
            &self.destinations,
            &cached.digest,
            &cached.holders(),
            &self.mounted,
        ));
        in_place
            .then(|| Descriptor::new(self.media_type.clone(), cached.digest.clone(), cached.size))
    }

    /// Adds the local cache's pairs for this compression.
    pub fn with_cache(mut self, cache: &LayerCache) -> KnownLayers {
        self.cached = cache.load(&self.media_type);
        self
    }

    /// Records in `mounted` the blobs lookups mount.
    pub fn recording_mounts_in(mut self, mounted: Arc<Mounted>) -> KnownLayers {
        self.mounted = mounted;
        self
    }

    /// Reads what `tags` point at in the registry destinations, and what
    /// `cache_from` names, and keeps the layers that every destination has
    /// or can mount from where they were found.
    pub async fn fetch(
        destinations: &[Destination],
        tags: &[String],
        cache_from: &[CacheFrom],
        compression: Compression,
        reporter: &dyn Reporter,
    ) -> KnownLayers {
        let reads = plan_reads(destinations, tags, cache_from, reporter);
        // What the reads find in a destination, its push steps need not ask again.
        let seen: HashMap<&Repository, &Seen> = destinations
            .iter()
            .filter_map(|d| Some((d.registry()?.1, d.seen()?)))
            .collect();
        let results = read_images(&reads, &seen).await;
        let mut candidates: HashMap<Digest, (Descriptor, &Repository)> = HashMap::new();
        // In the order given: the first pair for a diff_id wins.
        for (read, pairs) in reads.iter().zip(results) {
            let source = &read.image;
            match (pairs, read.named) {
                (Ok(pairs), named) => {
                    if pairs.is_empty() && named {
                        reporter.on_notice(&format!(
                            "`--cache-from`: `{source}` was not found or has no usable layers"
                        ));
                    }
                    for (diff_id, mut descriptor) in pairs {
                        // A Docker manifest cites the same gzip blob under another name.
                        if descriptor.media_type == oci::MEDIA_TYPE_DOCKER_LAYER_GZIP {
                            descriptor.media_type = oci::MEDIA_TYPE_LAYER_GZIP.to_owned();
                        }
                        if descriptor.media_type == compression.media_type() {
                            candidates
                                .entry(diff_id)
                                .or_insert((descriptor, &read.image.repository));
                        }
                    }
                }
                (Err(e), true) => {
                    reporter.on_notice(&format!("`--cache-from`: cannot read `{source}`: {e:#}"))
                }
                (Err(e), false) => {
                    tracing::debug!("known layers: cannot read `{source}`: {e:#}")
                }
            }
        }

        // Which destinations lack each candidate (HEAD), all at once.
        let checks = candidates.values().flat_map(|(d, _)| {
            destinations
                .iter()
                .enumerate()
                .map(move |(i, dest)| async move {
                    let present = dest.has_blob(&d.digest).await.unwrap_or(false);
                    (d.digest.clone(), i, present)
                })
        });
        let mut lacking: HashMap<Digest, Vec<usize>> = HashMap::new();
        for (digest, i, present) in futures::future::join_all(checks).await {
            if !present {
                lacking.entry(digest).or_default().push(i);
            }
        }
        let mut layers = HashMap::new();
        let mut mountable = HashMap::new();
        for (diff_id, (descriptor, source)) in candidates {
            match lacking.get(&descriptor.digest) {
                None => {
                    layers.insert(diff_id, descriptor);
                }
                // Mountable only where the source's registry is the destination's.
                Some(missing)
                    if missing.iter().all(|&i| {
                        destinations[i]
                            .registry()
                            .is_some_and(|(_, r)| r.registry == source.registry)
                    }) =>
                {
                    mountable.insert(diff_id, (descriptor, source.clone()));
                }
                Some(_) => {}
            }
        }
        if !layers.is_empty() {
            reporter.on_notice(&format!(
                "{} layer(s) already published will be reused without compressing or uploading them",
                layers.len()
            ));
        }
        if !mountable.is_empty() {
            reporter.on_notice(&format!(
                "{} more layer(s) found in other repositories will be mounted from there, \
                 not compressed or uploaded, if the inputs have them",
                mountable.len()
            ));
        }
        KnownLayers {
            layers,
            mountable,
            media_type: compression.media_type().to_owned(),
            cached: HashMap::new(),
            destinations: destinations.to_vec(),
            mounted: Arc::default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

/// One image to read for the map.
struct Read<'a> {
    client: &'a RegistryClient,
    image: Reference,
    /// Named by `--cache-from`: worth a notice when it cannot be read (a
    /// tag being published often does not exist yet).
    named: bool,
}

/// The tags and `--cache-from` tags in every registry destination, and each
/// `--cache-from` image in its own repository through a client of its
/// registry (one of a destination's: layers cannot be mounted across
/// registries, so an image elsewhere is of no use).
fn plan_reads<'a>(
    destinations: &'a [Destination],
    tags: &[String],
    cache_from: &[CacheFrom],
    reporter: &dyn Reporter,
) -> Vec<Read<'a>> {
    let registries: Vec<_> = destinations
        .iter()
        .filter_map(Destination::registry)
        .collect();
    let mut reads = Vec::new();
    for (client, repository) in &registries {
        let named = cache_from.iter().filter_map(|c| match c {
            CacheFrom::InDestinations(reference) => Some(reference),
            CacheFrom::Image(_) => None,
        });
        for (reference, named) in tags
            .iter()
            .map(|t| (t, false))
            .chain(named.map(|r| (r, true)))
        {
            let image = match reference.parse::<Digest>() {
                Ok(digest) => repository.digest(&digest),
                Err(_) => repository.tag(reference),
            };
            reads.push(Read {
                client,
                image,
                named,
            });
        }
    }
    for image in cache_from.iter().filter_map(|c| match c {
        CacheFrom::Image(image) => Some(image),
        CacheFrom::InDestinations(_) => None,
    }) {
        let registry = &image.repository.registry;
        match registries.iter().find(|(_, r)| &r.registry == registry) {
            Some((client, _)) => reads.push(Read {
                client,
                image: image.clone(),
                named: true,
            }),
            None => reporter.on_notice(&format!(
                "`--cache-from {image}` is not read: no destination is on `{registry}`, \
                 and layers cannot be mounted across registries"
            )),
        }
    }
    reads
}

/// The local record of which blob was pushed for which diff_id.
pub struct LayerCache {
    path: PathBuf,
    /// A dry run reads the record, to plan as the publish would, but
    /// pushed nothing to add to it.
    read_only: bool,
}

/// At most this many pairs are kept per media type.
const MAX_CACHED: usize = 20_000;
/// At most this many repositories are remembered per blob, newest first.
const MAX_HOLDERS: usize = 8;

/// media type → diff_id → blob.
type CacheFile = BTreeMap<String, BTreeMap<String, CacheEntry>>;

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CacheEntry {
    Blob(CachedBlob),
    /// As written before repositories were remembered: `[digest, size]`.
    Pair(Digest, u64),
}

impl CacheEntry {
    fn into_blob(self) -> CachedBlob {
        match self {
            CacheEntry::Blob(blob) => blob,
            CacheEntry::Pair(digest, size) => CachedBlob {
                digest,
                size,
                repositories: Vec::new(),
            },
        }
    }
}

/// The blob pushed for a diff_id, and where.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CachedBlob {
    digest: Digest,
    size: u64,
    /// `host/path` of the repositories it was published to, newest first.
    #[serde(default)]
    repositories: Vec<String>,
}

impl CachedBlob {
    /// The repositories that hold the blob, to mount it from.
    fn holders(&self) -> Vec<Repository> {
        self.repositories
            .iter()
            .filter_map(|r| Repository::parse(r).ok())
            .collect()
    }
}

impl LayerCache {
    /// The cache in `dir` (`$XDG_CACHE_HOME/manifold`).
    pub fn in_dir(dir: &Path) -> LayerCache {
        LayerCache {
            path: dir.join("layers.json"),
            read_only: false,
        }
    }

    /// The same cache, read but never written.
    pub fn read_only(self) -> LayerCache {
        LayerCache {
            read_only: true,
            ..self
        }
    }

    fn read(&self) -> CacheFile {
        std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// diff_id → blob for one media type.
    fn load(&self, media_type: &str) -> HashMap<Digest, CachedBlob> {
        self.read()
            .remove(media_type)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(diff_id, entry)| Some((diff_id.parse().ok()?, entry.into_blob())))
            .collect()
    }

    /// Records pairs that were just published to `repositories`; errors
    /// are only logged.
    pub fn record(&self, pairs: &[(Digest, Descriptor)], repositories: &[&Repository]) {
        if self.read_only {
            return;
        }
        let mut file = self.read();
        for (diff_id, descriptor) in pairs {
            if descriptor.media_type == oci::MEDIA_TYPE_LAYER {
                continue; // the digest is the diff_id: nothing to remember
            }
            let map = file.entry(descriptor.media_type.clone()).or_default();
            if map.len() >= MAX_CACHED {
                map.clear();
            }
            // The repositories already known for this very blob stay, after
            // the ones just published to.
            let earlier = map
                .remove(&diff_id.to_string())
                .map(CacheEntry::into_blob)
                .filter(|blob| blob.digest == descriptor.digest)
                .map(|blob| blob.repositories)
                .unwrap_or_default();
            let mut holders: Vec<String> = repositories.iter().map(|r| r.to_string()).collect();
            for repository in earlier {
                if !holders.contains(&repository) {
                    holders.push(repository);
                }
            }
            holders.truncate(MAX_HOLDERS);
            map.insert(
                diff_id.to_string(),
                CacheEntry::Blob(CachedBlob {
                    digest: descriptor.digest.clone(),
                    size: descriptor.size,
                    repositories: holders,
                }),
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

/// A manifest or config of one repository, by digest.
type BlobKey = (Repository, Digest);

/// The (diff_id, layer descriptor) pairs of every image each read names, in
/// the order of `reads`: index → manifests → configs, every read at once,
/// so three round trips deep whatever the number of tags and platforms.
/// The tags of a publish mostly point at one index: each child manifest and
/// config is fetched once per repository, however many tags lead to it
/// (Docker Hub counts manifest GETs as pulls). A read fails as a whole when
/// any of its documents cannot be fetched or parsed. What is found in a
/// repository of `seen` (tags, manifests and the layers they name, configs)
/// is recorded there.
async fn read_images(
    reads: &[Read<'_>],
    seen: &HashMap<&Repository, &Seen>,
) -> Vec<anyhow::Result<Vec<(Digest, Descriptor)>>> {
    use futures::future::join_all;
    // The clients of each repository (the first read's serves them all).
    let mut clients: HashMap<&Repository, &RegistryClient> = HashMap::new();
    for read in reads {
        clients.entry(&read.image.repository).or_insert(read.client);
    }

    let tops = join_all(reads.iter().map(|read| {
        let reference = read.image.manifest_reference();
        async move {
            read.client
                .get_manifest(&read.image.repository.path, &reference)
                .await
                .map_err(message)
        }
    }))
    .await;

    // What each read names: its manifests (an index's children, or itself),
    // parsed as they arrive.
    let parse = |raw: RawManifest| {
        serde_json::from_slice::<ImageManifest>(&raw.bytes)
            .map_err(|e| format!("{}: {e}", raw.digest))
    };
    let mut named: Vec<Result<Vec<BlobKey>, String>> = Vec::new();
    let mut manifests: HashMap<BlobKey, Result<Option<ImageManifest>, String>> = HashMap::new();
    for (read, top) in reads.iter().zip(tops) {
        let repository = &read.image.repository;
        if let (Ok(raw), Some(seen)) = (&top, seen.get(repository)) {
            let found = raw.as_ref().map(|raw| &raw.digest);
            match (&read.image.digest, found) {
                (None, _) => seen.record_tag(&read.image.manifest_reference(), found),
                (Some(_), Some(digest)) => seen.record_document(digest),
                (Some(_), None) => {}
            }
        }
        named.push(top.and_then(|raw| {
            let Some(raw) = raw else {
                return Ok(Vec::new());
            };
            if !oci::is_index_media_type(&raw.media_type) {
                let key = (repository.clone(), raw.digest.clone());
                manifests.insert(key.clone(), parse(raw).map(Some));
                return Ok(vec![key]);
            }
            let index: ImageIndex =
                serde_json::from_slice(&raw.bytes).map_err(|e| format!("{}: {e}", raw.digest))?;
            Ok(index
                .manifests
                .iter()
                .take(MAX_CHILDREN)
                .filter(|child| !oci::is_index_media_type(&child.media_type))
                .map(|child| (repository.clone(), child.digest.clone()))
                .collect())
        }));
    }
    let clients = &clients;
    let missing = unique(
        named
            .iter()
            .flatten()
            .flatten()
            .filter(|key| !manifests.contains_key(*key))
            .cloned(),
    );
    let fetched = join_all(missing.iter().map(|(repository, digest)| async move {
        clients[repository]
            .get_manifest(&repository.path, &digest.to_string())
            .await
            .map_err(message)
    }))
    .await;
    manifests.extend(
        missing
            .into_iter()
            .zip(fetched.into_iter().map(|raw| raw?.map(parse).transpose())),
    );

    // A manifest read in a destination is there, and so is every blob it
    // names (a registry takes a manifest only once it holds them): its
    // layers need no HEAD. Not foreign or non-distributable layers, which
    // live elsewhere.
    for ((repository, digest), manifest) in &manifests {
        if let (Ok(Some(manifest)), Some(seen)) = (manifest, seen.get(repository)) {
            seen.record_document(digest);
            manifest
                .layers
                .iter()
                .filter(|layer| !oci::is_foreign_layer(&layer.media_type))
                .for_each(|layer| seen.record_document(&layer.digest));
        }
    }

    // Their configs, once each.
    let config_keys = unique(manifests.iter().filter_map(|((repository, _), m)| match m {
        Ok(Some(m)) if m.config.size <= MAX_CONFIG_BYTES => {
            Some((repository.clone(), m.config.digest.clone()))
        }
        _ => None,
    }));
    let config_bytes = join_all(config_keys.iter().map(|(repository, digest)| async move {
        clients[repository]
            .get_blob(&repository.path, digest, MAX_CONFIG_BYTES)
            .await
            .map_err(message)
            .and_then(|bytes| {
                serde_json::from_slice::<ConfigSummary>(&bytes)
                    .map_err(|e| format!("{digest}: {e}"))
            })
    }))
    .await;
    for ((repository, digest), config) in config_keys.iter().zip(&config_bytes) {
        if let (Ok(_), Some(seen)) = (config, seen.get(repository)) {
            seen.record_document(digest);
        }
    }
    let configs: HashMap<BlobKey, Result<ConfigSummary, String>> =
        config_keys.into_iter().zip(config_bytes).collect();

    let pairs = named
        .into_iter()
        .map(|keys| {
            let mut pairs = Vec::new();
            for key in keys.map_err(anyhow::Error::msg)? {
                let Some(Ok(manifest)) = manifests.get(&key) else {
                    anyhow::bail!("{}", fetch_error(manifests.get(&key), &key));
                };
                let Some(manifest) = manifest.clone() else {
                    continue; // a child the registry does not have
                };
                if manifest.config.size > MAX_CONFIG_BYTES {
                    continue;
                }
                let config_key = (key.0, manifest.config.digest.clone());
                let config = match configs.get(&config_key) {
                    Some(Ok(config)) => config,
                    other => anyhow::bail!("{}", fetch_error(other, &config_key)),
                };
                let diff_ids = config
                    .rootfs
                    .as_ref()
                    .map(|r| r.diff_ids.clone())
                    .unwrap_or_default();
                if diff_ids.len() == manifest.layers.len() {
                    pairs.extend(diff_ids.into_iter().zip(manifest.layers));
                }
            }
            Ok(pairs)
        })
        .collect();
    pairs
}

/// The keys once each.
fn unique(keys: impl Iterator<Item = BlobKey>) -> Vec<BlobKey> {
    keys.collect::<std::collections::HashSet<_>>()
        .into_iter()
        .collect()
}

/// A registry error as text, causes included: one fetch's error may fail
/// several reads.
fn message(e: crate::registry::RegistryError) -> String {
    format!("{:#}", anyhow::Error::from(e))
}

/// Why a document of [`read_images`] is not there to use.
fn fetch_error<T>(result: Option<&Result<T, String>>, (repository, digest): &BlobKey) -> String {
    match result {
        Some(Err(e)) => e.clone(),
        _ => format!("`{digest}` of `{repository}` was not fetched"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_from_takes_tags_digests_and_images() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let in_destinations = |s: &str| CacheFrom::InDestinations(s.to_owned());
        assert_eq!("main".parse(), Ok(in_destinations("main")));
        assert_eq!("v1.2.3".parse(), Ok(in_destinations("v1.2.3")));
        assert_eq!(digest.parse(), Ok(in_destinations(&digest)));
        assert_eq!(format!("@{digest}").parse(), Ok(in_destinations(&digest)));
        let image: CacheFrom = "ghcr.io/acme/base:1.0".parse().unwrap();
        let CacheFrom::Image(reference) = &image else {
            panic!("{image:?}")
        };
        assert_eq!(reference.repository.to_string(), "ghcr.io/acme/base");
        assert_eq!(reference.manifest_reference(), "1.0");
        // Docker Hub names as `docker pull` reads them.
        let CacheFrom::Image(hub) = "fd:1.0".parse().unwrap() else {
            panic!("a name with a tag is an image")
        };
        assert_eq!(hub.repository.to_string(), "docker.io/library/fd");
    }

    fn descriptor(digest: &Digest) -> Descriptor {
        Descriptor::new(oci::MEDIA_TYPE_LAYER_GZIP.to_owned(), digest.clone(), 42)
    }

    fn repository(path: &str) -> Repository {
        Repository::parse(&format!("127.0.0.1:5000/{path}")).unwrap()
    }

    #[test]
    fn the_cache_remembers_where_each_blob_went_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::in_dir(dir.path());
        let (diff_id, blob) = (Digest::of(b"raw"), Digest::of(b"gz"));
        let pairs = [(diff_id.clone(), descriptor(&blob))];
        let (dev, prod) = (repository("acme/dev"), repository("acme/prod"));
        cache.record(&pairs, &[&dev]);
        cache.record(&pairs, &[&prod, &dev]);
        let loaded = cache.load(oci::MEDIA_TYPE_LAYER_GZIP);
        assert_eq!(loaded[&diff_id].digest, blob);
        assert_eq!(loaded[&diff_id].holders(), vec![prod.clone(), dev.clone()]);

        // At most MAX_HOLDERS, the newest kept.
        for i in 0..MAX_HOLDERS + 3 {
            cache.record(&pairs, &[&repository(&format!("acme/r{i}"))]);
        }
        let holders = cache.load(oci::MEDIA_TYPE_LAYER_GZIP)[&diff_id].holders();
        assert_eq!(holders.len(), MAX_HOLDERS);
        assert_eq!(
            holders[0],
            repository(&format!("acme/r{}", MAX_HOLDERS + 2))
        );

        // Another blob for the same layer (a new encoder) starts afresh.
        let other = Digest::of(b"gz2");
        cache.record(&[(diff_id.clone(), descriptor(&other))], &[&dev]);
        let loaded = cache.load(oci::MEDIA_TYPE_LAYER_GZIP);
        assert_eq!(loaded[&diff_id].digest, other);
        assert_eq!(loaded[&diff_id].holders(), vec![dev]);
    }

    #[test]
    fn a_cache_written_before_repositories_were_kept_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (diff_id, blob) = (Digest::of(b"raw"), Digest::of(b"gz"));
        let old = serde_json::json!({
            (oci::MEDIA_TYPE_LAYER_GZIP): { (diff_id.to_string()): [blob.to_string(), 42] }
        });
        std::fs::write(dir.path().join("layers.json"), old.to_string()).unwrap();
        let cache = LayerCache::in_dir(dir.path());
        let loaded = cache.load(oci::MEDIA_TYPE_LAYER_GZIP);
        assert_eq!(loaded[&diff_id].digest, blob);
        assert_eq!(loaded[&diff_id].size, 42);
        assert!(loaded[&diff_id].holders().is_empty());
        // Recording over it keeps the pair and adds where it went.
        cache.record(
            &[(diff_id.clone(), descriptor(&blob))],
            &[&repository("acme/app")],
        );
        let loaded = cache.load(oci::MEDIA_TYPE_LAYER_GZIP);
        assert_eq!(loaded[&diff_id].holders(), vec![repository("acme/app")]);
    }

    #[test]
    fn cache_from_refuses_what_is_neither() {
        for bad in ["garbage::ref", "", "UPPER/case:1", "-x", "a b"] {
            let err = bad.parse::<CacheFrom>().unwrap_err();
            assert!(err.contains(&format!("`--cache-from {bad}`")), "{err}");
            assert!(err.contains("\nhint: "), "{err}");
        }
    }
}
