//! Images that already exist as manifests: `docker://REF` inputs (an image in
//! a registry) and, through [`super::oci_input`], OCI layouts (directories
//! and archives).
//!
//! Such an image is not rebuilt: its manifest is copied byte for byte (so its
//! digest, the one the index cites, does not change) and its blobs are made
//! present at every destination as cheaply as possible. A destination that
//! is the source repository already has them (a HEAD each, nothing sent); a
//! repository of the source's registry mounts them from the source; another
//! repository of a registry that received the blob earlier in this copy
//! mounts it from there; only then are bytes copied. An index brings in each
//! of its image children with the platform it lists.
//!
//! Bytes are streamed, never held whole nor spooled: a registry's blob goes
//! GET → PUT ([`BlobBody::Remote`], GET again on each try of the upload), a
//! layout's blob from its file or archive member ([`BlobBody::File`]),
//! hashed on the way and refused when it is not its digest's. Concurrency is
//! bounded by each registry client's `--jobs` cap. Manifests of the other
//! family than the index (Docker v2s2 in an OCI index, OCI under `--format
//! docker`) are refused rather than mixed.
//!
//! Tags and the index are `publish`'s business; this module returns the
//! per-architecture images as [`PublishedImage`]s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;

use crate::digest::Digest;
use crate::input::oci_archive::{self, OciArchive};
use crate::input::{InputError, InputSpec};
use crate::manifest::Format;
use crate::oci::{
    self, ConfigSummary, Descriptor, ImageIndex, ImageManifest, Platform, RawManifest,
};
use crate::progress::{BlobOutcome, Reporter};
use crate::reference::{Reference, Repository};
use crate::registry::{BlobBody, RegistryClient};

use super::destination::{Destination, IfUnseen};
use super::image::{platform_of, PublishedImage};

/// Clients for the registries `docker://` inputs read from, by registry
/// (`Registry`'s Display: `host[:port]`).
pub type SourceClients = Arc<HashMap<String, RegistryClient>>;

/// Image configs larger than this are refused (real ones are kilobytes).
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Annotation marking an index child as an attestation, not an image.
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// Why an existing image cannot be brought in.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("`{input}` is not an image reference")]
    BadReference {
        input: String,
        #[source]
        source: crate::reference::ReferenceError,
    },

    #[error("no client for registry `{registry}` (input `{input}`)")]
    NoClient { input: String, registry: String },

    #[error("`{reference}` does not exist")]
    NotFound { reference: String },

    #[error("`{reference}` is a `{media_type}` document, which cannot go into {index}: manifold never mixes the two\nhint: {hint}")]
    MixedFormats {
        reference: String,
        media_type: String,
        index: &'static str,
        hint: &'static str,
    },

    #[error("`{reference}` has media type `{media_type}`, neither an image manifest nor an index")]
    UnknownMediaType {
        reference: String,
        media_type: String,
    },

    #[error("`{reference}` is not a valid {what}")]
    BadDocument {
        reference: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("`{reference}` lists no `{platform}` image")]
    NoSuchPlatform {
        reference: String,
        platform: Platform,
    },

    #[error("`{reference}` lists no image")]
    EmptyIndex { reference: String },

    #[error("`{reference}`: neither its index entry nor its image config names a platform")]
    NoPlatform { reference: String },

    #[error("blob `{digest}` of `{reference}` is {size} bytes, more than the {limit} bytes a config or manifest may have")]
    TooLarge {
        reference: String,
        digest: Digest,
        size: u64,
        limit: u64,
    },

    #[error("`{reference}` is {size} bytes, but its descriptor says {expected}")]
    SizeMismatch {
        reference: String,
        size: u64,
        expected: u64,
    },

    #[error("blob `{digest}` of `{reference}` hashes to `{actual}`")]
    DigestMismatch {
        reference: String,
        digest: Digest,
        actual: Digest,
    },
}

/// Where existing manifests and blobs are read from.
#[derive(Clone)]
pub enum ImageSource {
    Registry {
        client: RegistryClient,
        repository: Repository,
    },
    /// An OCI image layout directory; blobs are its files, streamed from
    /// there.
    Layout { dir: PathBuf },
    /// An OCI image layout archive; blobs are its members, read in place.
    Archive(Arc<OciArchive>),
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Registry { repository, .. } => write!(f, "{repository}"),
            ImageSource::Layout { dir } => write!(f, "oci:{}", dir.display()),
            ImageSource::Archive(archive) => write!(f, "oci-archive:{}", archive.input()),
        }
    }
}

impl ImageSource {
    fn named(&self, digest: &Digest) -> String {
        format!("{self}@{digest}")
    }

    fn blob_path(dir: &std::path::Path, digest: &Digest) -> PathBuf {
        dir.join("blobs/sha256").join(digest.hex())
    }

    /// A manifest by digest, checked against it.
    pub async fn manifest(&self, descriptor: &Descriptor) -> Result<RawManifest> {
        let name = self.named(&descriptor.digest);
        match self {
            ImageSource::Registry { client, repository } => client
                .get_manifest(&repository.path, &descriptor.digest.to_string())
                .await
                .with_context(|| format!("cannot read `{name}`"))?
                .ok_or_else(|| RemoteError::NotFound { reference: name }.into()),
            ImageSource::Layout { .. } | ImageSource::Archive(_) => {
                let bytes = self
                    .small_blob(&descriptor.digest, MAX_CONFIG_BYTES)
                    .await?;
                let media_type = if descriptor.media_type.is_empty() {
                    media_type_of(&bytes)
                } else {
                    descriptor.media_type.clone()
                };
                Ok(RawManifest {
                    digest: descriptor.digest.clone(),
                    bytes,
                    media_type,
                })
            }
        }
    }

    /// A small blob (a config or manifest), checked against its digest.
    pub async fn small_blob(&self, digest: &Digest, max: u64) -> Result<Bytes> {
        let name = self.named(digest);
        let bytes = match self {
            ImageSource::Registry { client, repository } => client
                .get_blob(&repository.path, digest, max)
                .await
                .with_context(|| format!("cannot read blob `{name}`"))?,
            ImageSource::Layout { dir } => {
                let path = Self::blob_path(dir, digest);
                let len = tokio::fs::metadata(&path)
                    .await
                    .with_context(|| format!("cannot read blob `{}`", path.display()))?
                    .len();
                if len > max {
                    return Err(RemoteError::TooLarge {
                        reference: self.to_string(),
                        digest: digest.clone(),
                        size: len,
                        limit: max,
                    }
                    .into());
                }
                Bytes::from(
                    tokio::fs::read(&path)
                        .await
                        .with_context(|| format!("cannot read blob `{}`", path.display()))?,
                )
            }
            ImageSource::Archive(archive) => {
                let archive = archive.clone();
                let member = oci_archive::blob_name(digest);
                let bytes = tokio::task::spawn_blocking(move || archive.read_member(&member, max))
                    .await
                    .context("the OCI archive reader stopped")??;
                Bytes::from(bytes)
            }
        };
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(RemoteError::DigestMismatch {
                reference: self.to_string(),
                digest: digest.clone(),
                actual,
            }
            .into());
        }
        Ok(bytes)
    }

    /// A layer's bytes for a destination that lacks it, as a body read
    /// anew on each try: a GET of the source registry, the layout's file, or
    /// the archive's member.
    fn body(&self, descriptor: &Descriptor) -> Result<BlobBody> {
        Ok(match self {
            ImageSource::Registry { client, repository } => BlobBody::Remote {
                client: client.clone(),
                repo: repository.path.clone(),
                digest: descriptor.digest.clone(),
                size: descriptor.size,
            },
            ImageSource::Layout { dir } => BlobBody::File {
                path: Self::blob_path(dir, &descriptor.digest),
                offset: 0,
                digest: descriptor.digest.clone(),
                size: descriptor.size,
            },
            ImageSource::Archive(archive) => {
                let member = oci_archive::blob_name(&descriptor.digest);
                let span = archive
                    .member(&member)
                    .ok_or_else(|| InputError::MissingMember {
                        input: archive.input().to_owned(),
                        member,
                        role: "a blob of the image",
                    })?;
                if span.size != descriptor.size {
                    return Err(RemoteError::SizeMismatch {
                        reference: self.named(&descriptor.digest),
                        size: span.size,
                        expected: descriptor.size,
                    }
                    .into());
                }
                BlobBody::File {
                    path: archive.data_path().to_owned(),
                    offset: span.offset,
                    digest: descriptor.digest.clone(),
                    size: descriptor.size,
                }
            }
        })
    }
}

/// The blob copies started by one input, by digest.
#[derive(Default)]
struct InFlight(std::sync::Mutex<HashMap<Digest, Arc<tokio::sync::OnceCell<()>>>>);

impl InFlight {
    fn cell(&self, digest: &Digest) -> Arc<tokio::sync::OnceCell<()>> {
        match self.0.lock() {
            Ok(mut cells) => cells.entry(digest.clone()).or_default().clone(),
            // A poisoned map only loses the sharing.
            Err(_) => Arc::default(),
        }
    }
}

/// The image manifest type an index of `format` may list, and the error for
/// a document of the other family.
fn wanted_manifest(format: Format) -> &'static str {
    match format {
        Format::Oci => oci::MEDIA_TYPE_MANIFEST,
        Format::Docker => oci::MEDIA_TYPE_DOCKER_MANIFEST,
    }
}

fn mixed(reference: String, media_type: String, format: Format) -> RemoteError {
    let (index, hint) = match format {
        Format::Oci => (
            "an OCI index",
            "convert the source first (`skopeo copy --all --format oci …`), or publish with `--format docker`",
        ),
        Format::Docker => (
            "a Docker manifest list",
            "publish OCI sources without `--format docker`",
        ),
    };
    RemoteError::MixedFormats {
        reference,
        media_type,
        index,
        hint,
    }
}

/// Whether `media_type` is an image manifest of either family.
fn is_image_manifest(media_type: &str) -> bool {
    media_type == oci::MEDIA_TYPE_MANIFEST || media_type == oci::MEDIA_TYPE_DOCKER_MANIFEST
}

/// The media type a manifest names for itself (empty if none).
fn media_type_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Reads `docker://REF` and brings its image (or each image of its index) to
/// every destination.
pub async fn publish_remote(
    spec: InputSpec,
    destinations: Arc<Vec<Destination>>,
    format: Format,
    sources: SourceClients,
    reporter: Arc<dyn Reporter>,
) -> Result<Vec<PublishedImage>> {
    let text = spec.path.to_string_lossy().into_owned();
    let reference = Reference::parse(&text).map_err(|source| RemoteError::BadReference {
        input: spec.text.clone(),
        source,
    })?;
    let registry = reference.repository.registry.to_string();
    let client = sources
        .get(&registry)
        .cloned()
        .ok_or_else(|| RemoteError::NoClient {
            input: spec.text.clone(),
            registry,
        })?;
    reporter.on_input_started(&spec.text);
    let top = client
        .get_manifest(&reference.repository.path, &reference.manifest_reference())
        .await
        .with_context(|| format!("cannot read `{reference}`"))?
        .ok_or_else(|| RemoteError::NotFound {
            reference: reference.to_string(),
        })?;
    let source = ImageSource::Registry {
        client,
        repository: reference.repository.clone(),
    };
    publish_existing(&spec, &source, top, &destinations, format, &*reporter).await
}

/// Brings `top` (an image manifest or an index read from `source`) to every
/// destination: one [`PublishedImage`] per image.
pub async fn publish_existing(
    spec: &InputSpec,
    source: &ImageSource,
    top: RawManifest,
    destinations: &[Destination],
    format: Format,
    reporter: &dyn Reporter,
) -> Result<Vec<PublishedImage>> {
    let name = source.named(&top.digest);
    let in_flight = InFlight::default();
    let media_type = if top.media_type.is_empty() {
        media_type_of(&top.bytes)
    } else {
        top.media_type.clone()
    };
    if is_image_manifest(&media_type) {
        if media_type != wanted_manifest(format) {
            return Err(mixed(name, media_type, format).into());
        }
        let image = copy_image(
            spec,
            source,
            top,
            PlatformFrom::Input,
            destinations,
            reporter,
            &in_flight,
        )
        .await?;
        return Ok(vec![image]);
    }
    if !oci::is_index_media_type(&media_type) {
        return Err(RemoteError::UnknownMediaType {
            reference: name,
            media_type,
        }
        .into());
    }
    let index: ImageIndex =
        serde_json::from_slice(&top.bytes).map_err(|source| RemoteError::BadDocument {
            reference: name.clone(),
            what: "image index",
            source,
        })?;
    let children = select_children(&name, &index, spec.platform.as_ref(), format)?;
    // The children copy concurrently; the index keeps the source's order.
    let in_flight = &in_flight;
    let copies = children.into_iter().map(|child| async move {
        let raw = source.manifest(&child).await?;
        if raw.media_type != wanted_manifest(format) {
            return Err(mixed(source.named(&child.digest), raw.media_type, format).into());
        }
        copy_image(
            spec,
            source,
            raw,
            PlatformFrom::Index(child.platform),
            destinations,
            reporter,
            in_flight,
        )
        .await
    });
    futures::future::try_join_all(copies).await
}

/// The index's image children (attestations left out), or only the one of
/// `platform` when the user named one. A child of the other manifest family
/// than `format` is refused.
fn select_children(
    name: &str,
    index: &ImageIndex,
    platform: Option<&Platform>,
    format: Format,
) -> Result<Vec<Descriptor>, RemoteError> {
    let mut children = Vec::new();
    for child in &index.manifests {
        if child.annotations.contains_key(REFERENCE_TYPE)
            || child
                .platform
                .as_ref()
                .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
        {
            continue;
        }
        if is_image_manifest(&child.media_type) && child.media_type != wanted_manifest(format) {
            return Err(mixed(
                format!("{name} (child `{}`)", child.digest),
                child.media_type.clone(),
                format,
            ));
        }
        if oci::is_index_media_type(&child.media_type) {
            return Err(RemoteError::UnknownMediaType {
                reference: format!("{name} (child `{}`)", child.digest),
                media_type: child.media_type.clone(),
            });
        }
        children.push(child.clone());
    }
    if let Some(wanted) = platform {
        children.retain(|c| c.platform.as_ref() == Some(wanted));
        if children.is_empty() {
            return Err(RemoteError::NoSuchPlatform {
                reference: name.to_owned(),
                platform: wanted.clone(),
            });
        }
    }
    if children.is_empty() {
        return Err(RemoteError::EmptyIndex {
            reference: name.to_owned(),
        });
    }
    Ok(children)
}

/// Where the index entry of a copied image gets its platform.
enum PlatformFrom {
    /// A lone image manifest: the input's platform prefix (a mismatch with
    /// the config is warned of, as for built images), else its config.
    Input,
    /// A child of an index: the platform the index lists, else its config.
    Index(Option<Platform>),
}

/// Copies one image manifest, byte for byte, with its config and layers.
async fn copy_image(
    spec: &InputSpec,
    source: &ImageSource,
    raw: RawManifest,
    platform: PlatformFrom,
    destinations: &[Destination],
    reporter: &dyn Reporter,
    in_flight: &InFlight,
) -> Result<PublishedImage> {
    let name = source.named(&raw.digest);
    let manifest: ImageManifest =
        serde_json::from_slice(&raw.bytes).map_err(|source| RemoteError::BadDocument {
            reference: name.clone(),
            what: "image manifest",
            source,
        })?;
    let config_bytes = source
        .small_blob(&manifest.config.digest, MAX_CONFIG_BYTES)
        .await?;
    let config: ConfigSummary =
        serde_json::from_slice(&config_bytes).map_err(|source| RemoteError::BadDocument {
            reference: format!("{name} (config)"),
            what: "image config",
            source,
        })?;
    let platform = match platform {
        PlatformFrom::Input => platform_of(spec, &config, reporter)?,
        PlatformFrom::Index(Some(p)) => p,
        PlatformFrom::Index(None) => match config.platform() {
            Some(p) => p,
            None => return Err(RemoteError::NoPlatform { reference: name }.into()),
        },
    };

    let config_descriptor = manifest.config.clone();
    let blobs = std::iter::once((config_descriptor, Some(config_bytes)))
        .chain(manifest.layers.iter().map(|l| (l.clone(), None)));
    let copies = blobs.map(|(descriptor, bytes)| async move {
        // A blob two children share (or a config) is copied once; the other
        // copy waits for it, and tries itself if that one failed.
        let cell = in_flight.cell(&descriptor.digest);
        cell.get_or_try_init(|| copy_blob(source, descriptor, bytes, destinations, reporter))
            .await?;
        anyhow::Ok(())
    });
    futures::future::try_join_all(copies)
        .await
        .with_context(|| format!("cannot copy the blobs of `{name}`"))?;

    let what = format!("the {platform} manifest");
    futures::future::try_join_all(
        destinations
            .iter()
            // Reused byte for byte, with the source's annotations: it may
            // well be there already.
            .map(|d| d.push_manifest(&raw, &what, IfUnseen::Ask, reporter)),
    )
    .await?;

    let diff_ids = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.clone())
        .unwrap_or_default();
    let layers = if diff_ids.len() == manifest.layers.len() {
        diff_ids.into_iter().zip(manifest.layers.clone()).collect()
    } else {
        Vec::new()
    };
    Ok(PublishedImage {
        input: spec.text.clone(),
        platform,
        manifest: raw,
        config,
        layers,
    })
}

/// Makes one blob present at every destination (see the module doc for the
/// order of preference). `bytes`, when given, is the blob already in memory.
async fn copy_blob(
    source: &ImageSource,
    descriptor: Descriptor,
    bytes: Option<Bytes>,
    destinations: &[Destination],
    reporter: &dyn Reporter,
) -> Result<()> {
    let digest = &descriptor.digest;
    // Repositories known to hold the blob, for mounts.
    let mut holders: Vec<Repository> = Vec::new();
    if let ImageSource::Registry { repository, .. } = source {
        holders.push(repository.clone());
    }
    for destination in destinations {
        let name = destination.to_string();
        // Seen through a dry run, so the plan mounts where a publish would.
        let repository = destination.registry().map(|(_, r)| r.clone());
        let outcome = if destination.has_blob(digest).await? {
            Some(BlobOutcome::AlreadyPresent)
        } else if destination.mount_from_any(&holders, digest).await {
            Some(BlobOutcome::Mounted)
        } else if let Destination::DryRun(_) = destination {
            Some(BlobOutcome::Planned)
        } else {
            // Bytes are needed: a config is in memory already; a layer streams
            // from the source into each destination that lacks it. The push
            // reports its own outcome.
            let pushed = match &bytes {
                // Just found missing: no second HEAD.
                Some(b) => destination.push_bytes(b.clone(), true, reporter).await?,
                None => {
                    destination
                        .push_stream(source.body(&descriptor)?, reporter)
                        .await?
                }
            };
            if &pushed != digest {
                return Err(RemoteError::DigestMismatch {
                    reference: source.to_string(),
                    digest: digest.clone(),
                    actual: pushed,
                }
                .into());
            }
            None
        };
        if let Some(outcome) = outcome {
            reporter.on_blob_done(&name, digest, descriptor.size, outcome);
        }
        // Later destinations of the same registry can mount from this one
        // (in a plan: will be able to).
        holders.extend(repository);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(media_type: &str, byte: u8, platform: Option<&str>) -> Descriptor {
        Descriptor {
            platform: platform.map(|p| p.parse().unwrap()),
            ..Descriptor::new(media_type, Digest::of(&[byte]), 1)
        }
    }

    fn index(children: Vec<Descriptor>) -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: oci::MEDIA_TYPE_INDEX.into(),
            manifests: children,
            annotations: Default::default(),
        }
    }

    #[test]
    fn children_keep_their_platforms_and_drop_attestations() {
        let mut attestation = descriptor(oci::MEDIA_TYPE_MANIFEST, 3, Some("unknown/unknown"));
        attestation
            .annotations
            .insert(REFERENCE_TYPE.into(), "attestation-manifest".into());
        let idx = index(vec![
            descriptor(oci::MEDIA_TYPE_MANIFEST, 1, Some("linux/amd64")),
            descriptor(oci::MEDIA_TYPE_MANIFEST, 2, Some("linux/arm/v7")),
            attestation,
        ]);
        let all = select_children("r", &idx, None, Format::Oci).unwrap();
        let platforms: Vec<String> = all
            .iter()
            .map(|c| c.platform.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm/v7"]);

        let arm: Platform = "linux/arm/v7".parse().unwrap();
        let one = select_children("r", &idx, Some(&arm), Format::Oci).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].digest, Digest::of(&[2]));

        let s390x: Platform = "linux/s390x".parse().unwrap();
        let err = select_children("r", &idx, Some(&s390x), Format::Oci).unwrap_err();
        assert_eq!(err.to_string(), "`r` lists no `linux/s390x` image");
    }

    #[test]
    fn a_docker_child_is_refused_not_mixed() {
        let idx = index(vec![
            descriptor(oci::MEDIA_TYPE_MANIFEST, 1, Some("linux/amd64")),
            descriptor(oci::MEDIA_TYPE_DOCKER_MANIFEST, 2, Some("linux/arm64")),
        ]);
        let err = select_children("r", &idx, None, Format::Oci).unwrap_err();
        assert!(matches!(err, RemoteError::MixedFormats { .. }), "{err}");
        assert!(
            err.to_string().contains("cannot go into an OCI index"),
            "{err}"
        );
        // With Docker media types it is the OCI child that does not fit.
        let err = select_children("r", &idx, None, Format::Docker).unwrap_err();
        assert!(
            err.to_string()
                .contains("`application/vnd.oci.image.manifest.v1+json` document, which cannot go into a Docker manifest list"),
            "{err}"
        );
    }

    #[test]
    fn an_index_of_only_attestations_is_empty() {
        let idx = index(vec![descriptor(
            oci::MEDIA_TYPE_MANIFEST,
            1,
            Some("unknown/unknown"),
        )]);
        assert!(matches!(
            select_children("r", &idx, None, Format::Oci),
            Err(RemoteError::EmptyIndex { .. })
        ));
    }
}
