//! Publishing: every input to every destination, then the index, then tags.
//!
//! First the reads that decide what is uploaded (the tag guard's tag lists,
//! the known-layer map), with the inputs starting behind a gate (`gate`).
//! Phase 1, per destination: blobs, per-architecture manifests by digest,
//! then the index by digest. Phase 2, only if phase 1 succeeded everywhere:
//! the tags. A failure in phase 1 moves no tag anywhere.

pub mod batch;
pub mod destination;
pub mod gate;
pub mod image;
pub mod in_flight;
pub mod known;
pub mod mounted;
pub mod nix2container;
pub mod oci_input;
pub mod outputs;
pub mod remote;
pub mod seen;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};

use crate::digest::Digest;
use crate::input::{InputKind, InputSpec};
use crate::manifest;
use crate::oci::{Platform, RawManifest};
use crate::progress::Reporter;

pub use destination::Destination;
use destination::IfUnseen;
pub use image::{ImageOptions, PublishedImage};

/// Decides which floating tags may move, given the tags a repository has:
/// returns the tags to push and the withheld ones with a reason.
pub type TagGuard = Arc<dyn Fn(&[String]) -> TagDecision + Send + Sync>;

/// The tags to push, and the withheld ones with the reason.
pub type TagDecision = (Vec<String>, Vec<(String, String)>);

/// Completes the index annotations once every image config has been read.
pub type AnnotationFiller =
    Arc<dyn Fn(&mut BTreeMap<String, String>, &[PublishedImage]) + Send + Sync>;

/// Runs once every blob, manifest and the index are in place, before any
/// tag moves; an error stops the publish untagged. A batch records there
/// what the image pushed, for the images after it, and holds the tags until
/// every image of the batch got that far.
pub type BeforeTags =
    Arc<dyn Fn(&[PublishedImage]) -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync>;

/// The tags to push, and the never-backwards guard (None: push them all).
#[derive(Clone, Default)]
pub struct TagSet {
    pub tags: Vec<String>,
    pub guard: Option<TagGuard>,
}

/// A publish request, resolved and validated by the caller.
pub struct Request {
    pub inputs: Vec<InputSpec>,
    pub destinations: Vec<Destination>,
    pub image: ImageOptions,
    pub index_annotations: BTreeMap<String, String>,
    /// Fills annotations the caller could not know before the configs were
    /// read (labels of every per-architecture config).
    pub complete_annotations: Option<AnnotationFiller>,
    pub tags: TagSet,
    /// Images whose layers may be reused (`--cache-from`), besides the tags'.
    pub cache_from: Vec<known::CacheFrom>,
    /// The local layer cache (`None` with `--no-cache`).
    pub cache: Option<known::LayerCache>,
    /// Clients for the registries `docker://` inputs are read from.
    pub sources: remote::SourceClients,
    /// Also tag each per-architecture manifest `<tag>-<arch><variant>`
    /// (`--arch-tags`), in phase 2 with the other tags.
    pub arch_tags: bool,
    pub before_tags: Option<BeforeTags>,
    /// Also keeps the gate shut until it completes: in a batch, the images
    /// before this one on a shared registry, whose layers then answer this
    /// image's lookups. The inputs read meanwhile (archives compress on
    /// speculation), and no one waits for it with an encoding slot in hand
    /// (the gate's waiters never do), so earlier images always get slots.
    pub gate_also_waits_for: Option<futures::future::BoxFuture<'static, ()>>,
}

/// What happened at one destination.
#[derive(Clone, Debug)]
pub struct DestinationReport {
    pub destination: String,
    pub tags: Vec<String>,
    pub withheld: Vec<(String, String)>,
}

/// The outcome of a publish.
#[derive(Clone, Debug)]
pub struct Report {
    pub images: Vec<PublishedImage>,
    pub index: RawManifest,
    pub destinations: Vec<DestinationReport>,
}

impl Report {
    pub fn digest(&self) -> &Digest {
        &self.index.digest
    }
}

/// Publishes `request`; see the module doc for the order of steps.
pub async fn publish(request: Request, reporter: Arc<dyn Reporter>) -> Result<Report> {
    let destinations = Arc::new(request.destinations);
    check_distinct_platforms(
        request
            .inputs
            .iter()
            .filter_map(|i| i.platform.as_ref().map(|p| (p.clone(), i.text.clone()))),
    )?;

    // First the reads that decide what is uploaded (see `read_registries`),
    // in a task of their own; the inputs start meanwhile behind a gate:
    // their uploads and layer lookups wait for these reads.
    let mut image_options = request.image.clone();
    let cache = request.cache.map(Arc::new);
    let mut reads = AbortOnDrop(tokio::spawn(read_registries(
        destinations.clone(),
        request.tags.clone(),
        request.cache_from.clone(),
        cache.clone(),
        image_options.compression,
        image_options.mounted.clone(),
        reporter.clone(),
    )));
    let (opener, gate) = gate::Gate::new();
    let found: Arc<OnceLock<crate::input::KnownLayers>> = Arc::default();
    let lookups = {
        let found = found.clone();
        let also = request.gate_also_waits_for;
        async move {
            let reads = (&mut reads.0)
                .await
                .context("the registry reads panicked")??;
            if let Some(known) = reads.known {
                let _ = found.set(known);
            }
            if let Some(also) = also {
                also.await;
            }
            opener.open();
            anyhow::Ok(reads.tag_lists)
        }
    };
    // A map given by the caller (a batch's run-wide one) still answers what
    // the registries' tags do not.
    let outer = image_options.known.clone();
    image_options.known = {
        let (gate, found) = (gate.clone(), found.clone());
        Arc::new(move |diff_id: &Digest| {
            if !gate.wait_blocking() {
                return None;
            }
            found
                .get()
                .and_then(|known| known(diff_id))
                .or_else(|| outer(diff_id))
        })
    };
    image_options.gate = gate;

    let in_flight = Arc::new(in_flight::InFlight::default());
    let inputs = futures::future::try_join_all(request.inputs.into_iter().map(|spec| {
        publish_input(
            spec,
            destinations.clone(),
            image_options.clone(),
            in_flight.clone(),
            request.sources.clone(),
            reporter.clone(),
        )
    }));
    let (first_tag_lists, per_input) = futures::try_join!(lookups, inputs)?;
    let images: Vec<PublishedImage> = per_input.into_iter().flatten().collect();
    check_distinct_platforms(images.iter().map(|i| (i.platform.clone(), i.input.clone())))?;

    let mut annotations = request.index_annotations.clone();
    if let Some(complete) = &request.complete_annotations {
        complete(&mut annotations, &images);
    }
    let entries: Vec<(RawManifest, Platform)> = images
        .iter()
        .map(|i| (i.manifest.clone(), i.platform.clone()))
        .collect();
    // An index with this run's `created` time is new unless a tag read led
    // to it: PUT without asking first (a new commit, unchanged layers).
    let if_unseen = IfUnseen::for_annotations(image_options.format, &annotations);
    let index = manifest::image_index(image_options.format, &entries, annotations);
    let push_index = futures::future::try_join_all(
        destinations
            .iter()
            .map(|d| d.push_manifest(&index, "the index", if_unseen, &*reporter)),
    );
    // The guard decides on the tags as they are now: its lists are read
    // while the index goes out, or, in a batch that holds the tags until its
    // other images are in place, after that wait.
    // Per-arch tags (`--arch-tags`) were not read before, so they may move:
    // with them the lists are always read again.
    let first_lists = if request.arch_tags {
        None
    } else {
        first_tag_lists.as_deref()
    };
    let decide = decide_tags(&destinations, &request.tags, &index.digest, first_lists);
    let decisions = match &request.before_tags {
        None => {
            let (pushed, decisions) = futures::join!(push_index, decide);
            pushed?;
            decisions?
        }
        Some(before_tags) => {
            push_index.await?;
            before_tags(&images).await?;
            decide.await?
        }
    };

    // Phase 2: tags, only now that everything they point at is in place;
    // every destination at once.
    let reports = destinations.iter().zip(decisions).map(|(destination, (tags, withheld))| {
        let (images, index, reporter) = (&images, &index, &reporter);
        async move {
            for (tag, why) in &withheld {
                reporter.on_notice(&format!("{destination}: not moving `{tag}`: {why}"));
            }
            if request.arch_tags {
                futures::future::try_join_all(images.iter().map(|image| async {
                    let arch_tags = arch_tags(&tags, &image.platform);
                    destination
                        .set_tags(&image.manifest, &arch_tags, &**reporter)
                        .await
                        .with_context(|| {
                            format!(
                                "tagging the {} manifest in `{destination}` failed after the index `{}` was pushed",
                                image.platform, index.digest
                            )
                        })
                }))
                .await?;
            }
            let tags = destination
                .set_tags(index, &tags, &**reporter)
                .await
                .with_context(|| {
                    format!(
                        "tagging `{destination}` failed after its index `{}` was pushed",
                        index.digest
                    )
                })?;
            anyhow::Ok(DestinationReport {
                destination: destination.to_string(),
                tags,
                withheld,
            })
        }
    });
    let reports = futures::future::try_join_all(reports).await?;
    if let Some(cache) = &cache {
        let pairs: Vec<_> = images
            .iter()
            .flat_map(|i| i.layers.iter().cloned())
            .collect();
        let repositories: Vec<_> = destinations
            .iter()
            .filter_map(|d| d.registry().map(|(_, r)| r))
            .collect();
        cache.record(&pairs, &repositories);
    }
    Ok(Report {
        images,
        index,
        destinations: reports,
    })
}

/// What [`read_registries`] found.
struct RegistryReads {
    /// Which layers the registries already hold; `None` when none.
    known: Option<crate::input::KnownLayers>,
    /// Each destination's tags, when the guard needs them.
    tag_lists: Option<Vec<Vec<String>>>,
}

/// The reads a publish makes before it uploads anything, together: the
/// guard's tag lists (a registry that won't list its tags fails the run
/// before any upload) and the known-layer map. Against a remote registry,
/// reading them together saves a round trip.
async fn read_registries(
    destinations: Arc<Vec<Destination>>,
    tags: TagSet,
    cache_from: Vec<known::CacheFrom>,
    cache: Option<Arc<known::LayerCache>>,
    compression: crate::layer::Compression,
    mounted: Arc<mounted::Mounted>,
    reporter: Arc<dyn Reporter>,
) -> Result<RegistryReads> {
    let guard_check = async {
        if tags.guard.is_none() {
            return Ok(None);
        }
        futures::future::try_join_all(destinations.iter().map(|destination| async move {
            destination.list_tags().await.map_err(|e| {
                // Not signed in at all: the registry error's own hint (check
                // the credentials) is the one that helps.
                let unauthenticated = e.chain().any(|c| {
                    c.downcast_ref::<crate::registry::RegistryError>()
                        .and_then(|r| r.status())
                        == Some(reqwest::StatusCode::UNAUTHORIZED)
                });
                let hint = if unauthenticated {
                    ""
                } else {
                    "\nhint: allow listing tags (ECR: `ecr:ListImages`), or pass `--tag-guard off`"
                };
                e.context(format!(
                    "the tag guard needs the tag list of `{destination}`{hint}"
                ))
            })
        }))
        .await
        .map(Some)
    };
    let (guard_checked, known) = futures::join!(
        guard_check,
        known::KnownLayers::fetch(
            &destinations,
            &tags.tags,
            &cache_from,
            compression,
            &*reporter,
        )
    );
    let tag_lists = guard_checked?;
    let known = match &cache {
        Some(cache) => known.with_cache(cache),
        None => known,
    };
    let known = known.recording_mounts_in(mounted);
    Ok(RegistryReads {
        known: (!known.is_empty()).then(|| {
            let known = Arc::new(known);
            Arc::new(move |diff_id: &Digest| known.get(diff_id)) as crate::input::KnownLayers
        }),
        tag_lists,
    })
}

/// What each destination may tag: every tag, or what the guard allows
/// given the tags the destination has now.
///
/// The lists are read again, as they are now, so that a tag another
/// publisher moved meanwhile is not moved back; except in a destination
/// whose tags all pointed at `index` already (a re-run of one commit), where
/// no tag will be PUT, so nothing can move back: there the first lists
/// (`first_lists`, by destination) decide what is reported, and a round trip
/// is saved.
async fn decide_tags(
    destinations: &[Destination],
    tags: &TagSet,
    index: &Digest,
    first_lists: Option<&[Vec<String>]>,
) -> Result<Vec<TagDecision>> {
    futures::future::try_join_all(destinations.iter().enumerate().map(
        |(i, destination)| async move {
            let Some(guard) = &tags.guard else {
                return Ok((tags.tags.clone(), Vec::new()));
            };
            let in_place = destination
                .seen()
                .is_some_and(|seen| seen.tags_point_at(&tags.tags, index));
            match first_lists.and_then(|lists| lists.get(i)) {
                Some(first) if in_place => Ok(guard(first)),
                _ => Ok(guard(&destination.list_tags().await?)),
            }
        },
    ))
    .await
}

/// Aborts a spawned task when dropped (a publish that fails early).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One input → its images: one, or for an index (`docker://`, `oci:`,
/// `oci-archive:`) each of its images.
async fn publish_input(
    mut spec: InputSpec,
    destinations: Arc<Vec<Destination>>,
    options: ImageOptions,
    in_flight: Arc<in_flight::InFlight>,
    sources: remote::SourceClients,
    reporter: Arc<dyn Reporter>,
) -> Result<Vec<PublishedImage>> {
    if spec.kind.is_none() {
        // Detected once, here; the readers take the kind from the spec. An
        // input that cannot be detected is left for its reader to name.
        spec.kind = crate::input::detect(&spec.path).ok().map(InputKind::from);
    }
    match spec.kind {
        // Copies: nothing runs ahead of the gate (see `publish`).
        Some(InputKind::Remote) => {
            options.gate.wait().await?;
            remote::publish_remote(spec, destinations, options.format, sources, reporter).await
        }
        Some(InputKind::OciLayout | InputKind::OciArchive) => {
            options.gate.wait().await?;
            oci_input::publish_layout(spec, destinations, &options, reporter).await
        }
        _ => Ok(vec![
            image::publish_image(spec, destinations, options, in_flight, reporter).await?,
        ]),
    }
}

/// `<tag>-<arch><variant>` for each tag (`1.0-amd64`, `1.0-armv7`); tags
/// that would be invalid (too long) are left out.
pub fn arch_tags(tags: &[String], platform: &Platform) -> Vec<String> {
    let suffix = format!(
        "{}{}",
        platform.architecture,
        platform.variant.as_deref().unwrap_or("")
    );
    tags.iter()
        .map(|t| format!("{t}-{suffix}"))
        .filter(|t| crate::reference::is_valid_tag(t))
        .collect()
}

/// Two inputs of one platform cannot share an index.
fn check_distinct_platforms(items: impl Iterator<Item = (Platform, String)>) -> Result<()> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (platform, input) in items {
        if let Some(first) = seen.insert(platform.to_string(), input.clone()) {
            bail!(crate::publish::DuplicatePlatform {
                platform,
                first,
                second: input
            });
        }
    }
    Ok(())
}

/// Two inputs claim one platform (a usage error: exit 2).
#[derive(Debug, thiserror::Error)]
#[error("`{first}` and `{second}` are both `{platform}` images; an index holds one image per platform\nhint: give each input its platform, as in `linux/arm/v7=./result`")]
pub struct DuplicatePlatform {
    pub platform: Platform,
    pub first: String,
    pub second: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_tags_append_the_architecture_and_variant() {
        let tags = vec!["1.0".to_owned(), "latest".to_owned(), "x".repeat(125)];
        let amd64: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(arch_tags(&tags, &amd64), ["1.0-amd64", "latest-amd64"]);
        let armv7: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(arch_tags(&tags[..1], &armv7), ["1.0-armv7"]);
    }
}
