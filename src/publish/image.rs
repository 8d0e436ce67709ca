//! One input → one per-architecture image at every destination.
//!
//! The input is read in one pass on a blocking thread (the tar reader and the
//! compressors are synchronous and CPU-bound). Each layer is encoded into a
//! spool, and as soon as a layer starts, one upload per destination starts
//! following its spool, so the network overlaps with compression and the
//! archive's manifest, which a stream writes last, is needed only at the end.
//! The config goes out while the last layers upload, then the image manifest
//! (by digest).
//!
//! A layer that another input of the same publish is already publishing
//! (see `in_flight`) is waited for and then only hashed, like a known layer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::digest::Digest;
use crate::input::{
    self, ArchiveImage, InputSpec, KnownLayers, LayerBlob, MapReadiness, OpenedInput, ReadEvent,
    ReadOptions,
};
use crate::layer::{Compression, EncodedLayer};
use crate::manifest;
use crate::oci::{ConfigSummary, Descriptor, Platform, RawManifest};
use crate::progress::Reporter;

use super::destination::{Destination, IfUnseen};
use super::gate::Gate;
use super::in_flight::{Claim, Claimed, InFlight};
use super::mounted::Mounted;

/// What reading an input needs besides the input itself.
#[derive(Clone)]
pub struct ImageOptions {
    pub compression: Compression,
    pub spool_dir: PathBuf,
    /// Annotations for the per-architecture manifest (`--annotation-level`).
    pub manifest_annotations: BTreeMap<String, String>,
    /// OCI (default) or Docker media types.
    pub format: manifest::Format,
    /// The known-layer map: diff_id → a blob every destination already has.
    pub known: KnownLayers,
    /// What the known-layer lookups mounted where, for the report.
    pub mounted: Arc<Mounted>,
    /// Kill a stream script running longer than this (`--stream-timeout`).
    pub stream_timeout: Option<std::time::Duration>,
    /// What uploads wait for (see `super::gate`).
    pub gate: Gate,
}

/// A per-architecture image in place at every destination.
#[derive(Clone, Debug)]
pub struct PublishedImage {
    /// The input as the user wrote it.
    pub input: String,
    pub platform: Platform,
    pub manifest: RawManifest,
    pub config: ConfigSummary,
    /// Each layer's diff_id with the descriptor pushed for it (for the
    /// known-layer cache).
    pub layers: Vec<(Digest, Descriptor)>,
}

/// Reads `spec` and publishes its image to every destination.
pub async fn publish_image(
    spec: InputSpec,
    destinations: Arc<Vec<Destination>>,
    options: ImageOptions,
    in_flight: Arc<InFlight>,
    reporter: Arc<dyn Reporter>,
) -> Result<PublishedImage> {
    if super::nix2container::is_nix2container(&spec) {
        return super::nix2container::publish_image(
            spec,
            destinations,
            options,
            in_flight,
            reporter,
        )
        .await;
    }
    let name = spec.text.clone();
    reporter.on_input_started(&name);
    let cancel = Arc::new(AtomicBool::new(false));
    // Stops the reader (and so the stream process) if this future is dropped.
    let _stop_reader_on_drop = CancelOnDrop(cancel.clone());

    // Layers this input publishes for every input of the publish; whatever
    // is still unresolved when this future ends is abandoned.
    let claims = Claims::default();
    let _abandon_on_drop = AbandonOnDrop(claims.clone());

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut reader = {
        let spec = spec.clone();
        let read_options = ReadOptions {
            compression: options.compression,
            spool_dir: options.spool_dir.clone(),
            known: claims.sharing(options.known.clone(), in_flight),
            readiness: Arc::new(GateReadiness {
                gate: options.gate.clone(),
                destinations: destinations.clone(),
            }),
        };
        let timeout = options.stream_timeout;
        let reporter = reporter.clone();
        tokio::task::spawn_blocking(move || {
            read_input(&spec, &read_options, timeout, cancel, events_tx, reporter)
        })
    };

    // Uploads start as layers start; a failed upload stops the run early.
    let mut uploads: JoinSet<Result<Digest>> = JoinSet::new();
    let mut started: HashMap<String, usize> = HashMap::new();
    let mut read_so_far: HashMap<String, u64> = HashMap::new();
    // A claim is resolved once its layer is both encoded and uploaded,
    // whichever is heard of first.
    let mut encoded_layers: HashMap<Digest, EncodedLayer> = HashMap::new();
    let mut uploaded: HashSet<Digest> = HashSet::new();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                None => break,
                Some(ReadEvent::LayerStarted { member, size, spool }) => {
                    let id = reporter.on_layer_started(&name, &member, size);
                    started.insert(member, id);
                    uploads.spawn(upload(&options.gate, &destinations, spool, &reporter));
                }
                Some(ReadEvent::LayerProgress { member, bytes }) => {
                    // `bytes` counts from the member's start; the reporter wants increments.
                    if let Some(id) = started.get(&member) {
                        let seen = read_so_far.entry(member).or_insert(0);
                        reporter.on_layer_read(*id, bytes.saturating_sub(*seen));
                        *seen = bytes;
                    }
                }
                Some(ReadEvent::LayerFinished { member, encoded }) => {
                    if let Some(id) = started.get(&member) {
                        reporter.on_layer_done(*id, false);
                    }
                    if uploaded.remove(&encoded.digest) {
                        claims.resolve(&encoded);
                    } else {
                        encoded_layers.insert(encoded.digest.clone(), encoded);
                    }
                }
                Some(ReadEvent::LayerSkipped { member, .. }) => {
                    let id = *started.entry(member.clone()).or_insert_with(|| reporter.on_layer_started(&name, &member, 0));
                    reporter.on_layer_done(id, true);
                }
            },
            Some(done) = uploads.join_next(), if !uploads.is_empty() => {
                match flatten(done) {
                    Ok(digest) => match encoded_layers.remove(&digest) {
                        Some(encoded) => claims.resolve(&encoded),
                        None => {
                            uploaded.insert(digest);
                        }
                    },
                    Err(upload_error) => {
                        // When the reader fails, its spools fail their uploads
                        // too, and the reader's error says more: give it a moment.
                        let waited = tokio::time::timeout(std::time::Duration::from_secs(1), &mut reader).await;
                        if let Ok(Ok(Err(read_error))) = waited {
                            return Err(read_error);
                        }
                        return Err(upload_error);
                    }
                }
            }
        }
    }
    let image = reader.await.context("the input reader panicked")??;

    // A layer that never announced itself (resolved at the end of the archive)
    // is uploaded now.
    for layer in &image.layers {
        if let LayerBlob::Spooled { spool, .. } = &layer.blob {
            if !started.contains_key(&layer.member) {
                started.insert(layer.member.clone(), usize::MAX);
                uploads.spawn(upload(
                    &options.gate,
                    &destinations,
                    spool.clone(),
                    &reporter,
                ));
            }
        }
    }
    // The config goes out while the last layers finish uploading.
    let platform = platform_of(&spec, &image.summary, &*reporter)?;
    let missing_config = image
        .layers
        .iter()
        .any(|layer| matches!(layer.blob, LayerBlob::Spooled { .. }));
    let push_config = async {
        options.gate.wait().await?;
        futures::future::try_join_all(
            destinations
                .iter()
                .map(|d| d.push_bytes(image.config.clone(), missing_config, &*reporter)),
        )
        .await
    };
    let finish_layers = async {
        while let Some(done) = uploads.join_next().await {
            let digest =
                flatten(done).with_context(|| format!("cannot publish the layers of `{name}`"))?;
            if let Some(encoded) = encoded_layers.remove(&digest) {
                claims.resolve(&encoded);
            }
        }
        anyhow::Ok(())
    };
    futures::try_join!(finish_layers, push_config)?;

    // Layers reused through the known-layer map are in place everywhere.
    for layer in &image.layers {
        if let LayerBlob::Known { descriptor } = &layer.blob {
            for destination in destinations.iter() {
                reporter.on_blob_done(
                    &destination.to_string(),
                    &descriptor.digest,
                    descriptor.size,
                    options.mounted.outcome(destination, &descriptor.digest),
                );
            }
        }
    }

    let config = manifest::config_descriptor(&image.config);
    let layers: Vec<(Digest, Descriptor)> = image
        .layers
        .iter()
        .map(|layer| {
            let descriptor = match &layer.blob {
                LayerBlob::Spooled { encoded, .. } => {
                    Descriptor::new(encoded.media_type, encoded.digest.clone(), encoded.size)
                }
                LayerBlob::Known { descriptor } => descriptor.clone(),
            };
            (layer.diff_id.clone(), descriptor)
        })
        .collect();
    let image_manifest = manifest::image_manifest(
        options.format,
        config,
        layers.iter().map(|(_, d)| d.clone()).collect(),
        options.manifest_annotations.clone(),
    )?;
    let what = format!("the {platform} manifest");
    let if_unseen = IfUnseen::for_annotations(options.format, &options.manifest_annotations);
    let pushes = destinations
        .iter()
        .map(|d| d.push_manifest(&image_manifest, &what, if_unseen, &*reporter));
    futures::future::try_join_all(pushes).await?;

    Ok(PublishedImage {
        input: name,
        platform,
        manifest: image_manifest,
        config: image.summary,
        layers,
    })
}

/// Uploads a layer from its spool to every destination, once the gate opens.
fn upload(
    gate: &Gate,
    destinations: &Arc<Vec<Destination>>,
    spool: crate::layer::Spool,
    reporter: &Arc<dyn Reporter>,
) -> impl std::future::Future<Output = Result<Digest>> + Send + 'static {
    let (gate, destinations, reporter) = (gate.clone(), destinations.clone(), reporter.clone());
    async move {
        gate.wait().await?;
        Destination::push_spool_everywhere(&destinations, spool, &*reporter).await
    }
}

/// The layers this input has claimed (see `in_flight`); clones share one
/// list.
#[derive(Clone, Default)]
struct Claims(Arc<Mutex<Vec<Claim>>>);

impl Claims {
    /// `known`, then the layers other inputs of the publish are publishing:
    /// such a layer is waited for; one nobody has is claimed for this input.
    fn sharing(&self, known: KnownLayers, in_flight: Arc<InFlight>) -> KnownLayers {
        let claims = self.clone();
        Arc::new(move |diff_id: &Digest| {
            if let Some(descriptor) = known(diff_id) {
                return Some(descriptor);
            }
            match in_flight.claim_or_wait(diff_id) {
                Claimed::Mine(claim) => {
                    claims.lock().push(claim);
                    None
                }
                Claimed::Published(descriptor) => Some(descriptor),
                Claimed::Abandoned => None,
            }
        })
    }

    /// `encoded` is in place at every destination: resolves its claim, if
    /// this input claimed it under its real diff_id.
    fn resolve(&self, encoded: &EncodedLayer) {
        let mut claims = self.lock();
        if let Some(i) = claims.iter().position(|c| c.diff_id() == &encoded.diff_id) {
            claims.swap_remove(i).resolve(Descriptor::new(
                encoded.media_type,
                encoded.digest.clone(),
                encoded.size,
            ));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Claim>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Abandons the claims left unresolved when the publish of this input ends
/// (or is dropped). The reader's copy of the list may outlive it (a blocking
/// thread stops only at its next read): the other inputs must not wait for
/// that.
struct AbandonOnDrop(Claims);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.lock().clear();
    }
}

fn flatten(joined: Result<Result<Digest>, tokio::task::JoinError>) -> Result<Digest> {
    joined.context("an upload task panicked")?
}

/// The blocking half: open the input, read it in one pass, check its exit.
fn read_input(
    spec: &InputSpec,
    options: &ReadOptions,
    timeout: Option<std::time::Duration>,
    cancel: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<ReadEvent>,
    reporter: Arc<dyn Reporter>,
) -> Result<ArchiveImage> {
    // A stream script's stderr is the user's build log: shown like our own
    // notices (above the progress bars), prefixed with the input.
    let name = spec.text.clone();
    let stream = input::StreamOptions {
        timeout,
        on_stderr: Some(Box::new(move |line: &str| {
            reporter.on_notice(&format!("{name}: {line}"))
        })),
    };
    match input::open_with(spec, stream)? {
        OpenedInput::DockerArchive(mut source) => {
            source.cancel_on(cancel);
            Ok(source.read(options, &mut |event| {
                // The receiver is gone only when the publish is being torn down.
                let _ = events.send(event);
            })?)
        }
        OpenedInput::Nix2Container { .. } => bail!(crate::input::InputError::Unsupported {
            input: spec.text.clone(),
            kind: "nix2container",
        }),
    }
}

/// The platform for the index entry: the user's (prefix of the input), else
/// the config's. A docker-archive config is never rewritten (its digest is
/// fixed), so a correction goes only into the index.
pub(super) fn platform_of(
    spec: &InputSpec,
    config: &ConfigSummary,
    reporter: &dyn Reporter,
) -> Result<Platform> {
    match (&spec.platform, config.platform()) {
        (Some(given), Some(found)) => {
            if given.architecture != found.architecture || given.os != found.os {
                reporter.on_notice(&format!(
                    "warning: `{}` says its platform is `{found}`; publishing it as `{given}` as asked",
                    spec.text
                ));
            }
            Ok(given.clone())
        }
        (Some(given), None) => Ok(given.clone()),
        (None, Some(found)) => Ok(found),
        (None, None) => bail!(
            "`{}`: the image config names no architecture\nhint: give the platform before the input, as in `linux/amd64={}`",
            spec.text,
            spec.text
        ),
    }
}

/// The known-layer map is ready once the gate has opened (or failed); while
/// a destination's registry has not answered at all, readers do not
/// speculate.
struct GateReadiness {
    gate: Gate,
    destinations: Arc<Vec<Destination>>,
}

impl MapReadiness for GateReadiness {
    fn is_ready(&self) -> bool {
        self.gate.is_settled()
    }

    fn wait(&self) -> bool {
        self.gate.wait_blocking()
    }

    fn may_speculate(&self) -> bool {
        !self.destinations.iter().any(Destination::is_unreached)
    }
}

/// Sets its flag when dropped: a publish future that is dropped (an error
/// elsewhere, an interrupt) stops the blocking reader or builders it started.
pub(super) struct CancelOnDrop(pub(super) Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
