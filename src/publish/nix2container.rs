//! One nix2container `image.json` → one per-architecture image at every
//! destination (formats.md §2–§3).
//!
//! Unlike a docker-archive, the image is described before it is read, so a
//! layer can be decided before any of it is read: one a destination already
//! holds is then never synthesised, its store paths never even opened. With
//! `--compression none` (and for ready blobs kept as they are) the blob
//! digest is image.json's, so a HEAD at every destination decides; for
//! compressed layers the known-layer map (diff_id → descriptor, read from the
//! registry as the run starts) decides. When the map takes longer than a
//! registry nearby would ([`SPECULATE_AFTER`]), those layers are built on
//! speculation meanwhile, top layer first, and dropped if the map then names
//! them; a re-run against a registry nearby opens no store path. The missing
//! layers are built on blocking threads, at most [`MAX_BUILDS`] at once: the
//! Go-compatible tar writer (`crate::input::nix2container`) runs on its own
//! thread and feeds a bounded in-process pipe that
//! `crate::layer::encode_layer` reads, so a layer is never held in memory
//! and only the blob pushed (compressed, or the plain tar with
//! `--compression none`) is spooled for the uploads.
//! The tar is hashed as it passes (by the encoder, for its diff_id); a
//! digest that differs from image.json's fails the spool, so no upload of
//! that layer completes and the publish stops before any tag moves. A layer
//! another input of the same publish is building right now (an
//! architecture-independent store path, say) is waited for and cited, not
//! built twice (`super::in_flight`, as the archive readers do).
//!
//! The config is ours (canonical JSON, OCI media type): `config_json` from
//! the input module, with the platform the image is published as. The index
//! and the tags are left to `publish`.

use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::digest::Digest;
use crate::input::nix2container::{
    config_json, parse_image_json, verify_digest_error, write_layer_tar, ImageJson, N2cError,
    N2cLayer,
};
use crate::input::pipe::{pipe, Chunk, PipeSender};
use crate::input::{Cancellable, InputSpec};
use crate::layer::slots::{Slot, Slots};
use crate::layer::spool::Spool;
use crate::layer::{encode_layer, spool, Compression, DiffIdMismatch, EncodedLayer};
use crate::manifest;
use crate::oci::{self, ConfigSummary, Descriptor, Platform};
use crate::progress::Reporter;

use super::destination::{Destination, IfUnseen};
use super::image::{CancelOnDrop, ImageOptions, PublishedImage};
use super::in_flight::{Claim, Claimed, InFlight};
use super::mounted::Mounted;

/// Layers synthesised at once (each takes a tar thread and an encoder
/// thread; the machine's cores are shared with the uploads).
pub const MAX_BUILDS: usize = 2;

/// How long the registry reads may take before the layers they decide are
/// built on speculation (see `publish_image`).
const SPECULATE_AFTER: Duration = Duration::from_millis(50);

/// image.json files larger than this are refused (real ones are kilobytes).
const MAX_IMAGE_JSON: u64 = 64 << 20;

/// Chunks in flight between the tar writer and the encoder.
const PIPE_CHUNKS: usize = 4;

/// The largest chunk: the tar writer's buffer. A larger write (file data
/// bypasses that buffer) is taken a chunk at a time, so the pipe holds at
/// most about 1.5 MiB per layer.
const MAX_CHUNK: usize = 256 << 10;

/// Where a layer's bytes come from.
#[derive(Clone, Debug)]
enum Source {
    /// Synthesised from store paths (possibly none: an empty tar).
    Paths,
    /// A ready blob file (`layer-path`).
    File(PathBuf),
}

/// What to do with one layer.
#[derive(Clone, Debug)]
enum Plan {
    /// Every destination has it: cite it, read nothing.
    Reuse(Descriptor),
    /// Build it and upload it.
    Build {
        source: Source,
        /// The digest the raw bytes must hash to.
        expected: Digest,
        /// `None` pushes the raw bytes as they are under `media_type`.
        compression: Compression,
        media_type: String,
        /// Keyed like the archive readers' claims (the diff_id, built in
        /// the publish's compression): an input building it right now is
        /// waited for (`super::in_flight`).
        shared: bool,
    },
    /// Only the known-layer map can decide, and it is not in yet: build it
    /// (in the publish's compression) while the registry reads go on, and
    /// upload it only if the map lacks it.
    Speculate { source: Source, diff_id: Digest },
}

/// Reads the nix2container `image.json` named by `spec` and publishes its
/// image to every destination; the same contract as
/// [`super::image::publish_image`].
pub async fn publish_image(
    spec: InputSpec,
    destinations: Arc<Vec<Destination>>,
    options: ImageOptions,
    in_flight: Arc<InFlight>,
    reporter: Arc<dyn Reporter>,
) -> Result<PublishedImage> {
    let name = spec.text.clone();
    reporter.on_input_started(&name);
    let image = read_image_json(&spec).await?;
    let platform = platform_of(&spec, &image, &*reporter);

    // A registry on this machine or next to it answers the reads within
    // the grace period, and a re-run then opens no store path at all. A far
    // one takes round trips longer: its wait is spent building on
    // speculation the layers only the known-layer map can decide.
    // Nor when a registry has not answered at all yet: the run may end with
    // its error.
    let speculate = match tokio::time::timeout(SPECULATE_AFTER, options.gate.wait()).await {
        Ok(opened) => {
            opened?;
            false
        }
        Err(_) if destinations.iter().any(Destination::is_unreached) => {
            options.gate.wait().await?;
            false
        }
        Err(_) => true,
    };

    // Stops the tar writers and encoders if this future is dropped or fails.
    let cancel = Arc::new(AtomicBool::new(false));
    let _stop_builds_on_drop = CancelOnDrop(cancel.clone());
    let builds = Arc::new(Semaphore::new(MAX_BUILDS));
    let image = Arc::new(image);
    let options = Arc::new(options);
    // Builds start in the order the tasks ask for permits. On speculation
    // the top layer goes first: it is the one a new commit most often
    // changes (nix2container puts the least shared store paths, the app
    // itself, on top), so a re-publish over a changed app gains the wait
    // too, not only a first push.
    let order: Vec<usize> = if speculate {
        (0..image.layers.len()).rev().collect()
    } else {
        (0..image.layers.len()).collect()
    };
    let layer_tasks = order.iter().map(|&index| {
        let context = LayerContext {
            input: name.clone(),
            image: image.clone(),
            index,
            destinations: destinations.clone(),
            spool_dir: options.spool_dir.clone(),
            reporter: reporter.clone(),
            mounted: options.mounted.clone(),
            cancel: cancel.clone(),
        };
        let (builds, in_flight, options) = (builds.clone(), in_flight.clone(), options.clone());
        async move {
            let layer = &context.image.layers[index];
            let plan = plan_layer(layer, &context.destinations, &options, speculate).await?;
            context.carry_out(plan, &builds, &in_flight, &options).await
        }
    });
    let mut outcomes = futures::future::try_join_all(layer_tasks)
        .await
        .with_context(|| format!("cannot publish the layers of `{name}`"))?;
    if speculate {
        outcomes.reverse();
    }
    let missing_config = outcomes.iter().any(|(_, built)| *built);
    let descriptors: Vec<Descriptor> = outcomes.into_iter().map(|(d, _)| d).collect();
    // Every layer may have been reused without a request: nothing goes up
    // before the gate.
    options.gate.wait().await?;

    let diff_ids: Vec<Digest> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
    let config_bytes = Bytes::from(oci::canonical_json(&image_config(
        &image, &diff_ids, &platform,
    )));
    let summary: ConfigSummary = serde_json::from_slice(&config_bytes)
        .context("the generated image config does not read back")?;
    futures::future::try_join_all(
        destinations
            .iter()
            .map(|d| d.push_bytes(config_bytes.clone(), missing_config, &*reporter)),
    )
    .await?;
    let config = manifest::config_descriptor(&config_bytes);
    let image_manifest = manifest::image_manifest(
        options.format,
        config,
        descriptors.clone(),
        options.manifest_annotations.clone(),
    )?;
    let what = format!("the {platform} manifest");
    let if_unseen = IfUnseen::for_annotations(options.format, &options.manifest_annotations);
    futures::future::try_join_all(
        destinations
            .iter()
            .map(|d| d.push_manifest(&image_manifest, &what, if_unseen, &*reporter)),
    )
    .await?;

    Ok(PublishedImage {
        input: name,
        platform,
        manifest: image_manifest,
        config: summary,
        layers: diff_ids.into_iter().zip(descriptors).collect(),
    })
}

/// Reads and parses the image.json (small: read whole, size-checked).
async fn read_image_json(spec: &InputSpec) -> Result<ImageJson, N2cError> {
    let io_err = |source| N2cError::Io {
        path: spec.path.clone(),
        source,
    };
    let len = tokio::fs::metadata(&spec.path).await.map_err(io_err)?.len();
    if len > MAX_IMAGE_JSON {
        return Err(N2cError::Field {
            input: spec.text.clone(),
            key: "(top level)".into(),
            problem: format!("the file is {len} bytes, more than the {MAX_IMAGE_JSON} allowed"),
        });
    }
    let bytes = tokio::fs::read(&spec.path).await.map_err(io_err)?;
    parse_image_json(&spec.text, &bytes)
}

/// The platform to publish as: the input's prefix, else image.json's `arch`
/// (amd64 for files that predate it), os linux.
fn platform_of(spec: &InputSpec, image: &ImageJson, reporter: &dyn Reporter) -> Platform {
    let arch = image.arch.clone().unwrap_or_else(|| "amd64".to_owned());
    match &spec.platform {
        Some(given) => {
            if given.architecture != arch || given.os != "linux" {
                reporter.on_notice(&format!(
                    "warning: `{}` says its architecture is `{arch}`; publishing it as `{given}` as asked",
                    spec.text
                ));
            }
            given.clone()
        }
        None => Platform {
            architecture: arch,
            os: "linux".to_owned(),
            variant: None,
        },
    }
}

/// The config (formats.md §2.2), describing the platform published: the
/// config is ours, so it agrees with the index entry.
fn image_config(image: &ImageJson, diff_ids: &[Digest], platform: &Platform) -> serde_json::Value {
    let mut config = config_json(image, diff_ids, None);
    if let Some(object) = config.as_object_mut() {
        object.insert("architecture".into(), platform.architecture.clone().into());
        object.insert("os".into(), platform.os.clone().into());
        if let Some(variant) = platform.variant.as_ref().filter(|v| !v.is_empty()) {
            object.insert("variant".into(), variant.clone().into());
        }
    }
    config
}

/// Claims `diff_id` for this input, or waits (on a blocking thread) for
/// the input of this publish that is building it (see `in_flight`).
async fn claim_or_wait(in_flight: &Arc<InFlight>, diff_id: &Digest) -> Result<Claimed> {
    let (in_flight, diff_id) = (in_flight.clone(), diff_id.clone());
    tokio::task::spawn_blocking(move || in_flight.claim_or_wait(&diff_id))
        .await
        .context("a wait for a layer another input builds panicked")
}

/// Decides a layer without reading it: reuse what every destination has,
/// build the rest.
async fn plan_layer(
    layer: &N2cLayer,
    destinations: &[Destination],
    options: &ImageOptions,
    speculate: bool,
) -> Result<Plan> {
    let source = match &layer.layer_path {
        Some(path) if layer.paths.is_empty() => Source::File(path.clone()),
        _ => Source::Paths,
    };
    let plain = match &source {
        Source::Paths => true,
        Source::File(_) => layer.media_type == oci::MEDIA_TYPE_LAYER,
    };
    if plain && options.compression != Compression::None {
        // Compressed digests cannot be predicted: only the registry's memory
        // of what was pushed for this diff_id can spare the build.
        if speculate && !options.gate.is_settled() {
            return Ok(Plan::Speculate {
                source,
                diff_id: layer.diff_id.clone(),
            });
        }
        return decide(source, &layer.diff_id, options).await;
    }
    // Pushed as they are: the digest is image.json's, and a HEAD at every
    // destination decides (after the gate, as every request of an input).
    options.gate.wait().await?;
    let (digest, media_type) = match &source {
        Source::Paths => (layer.diff_id.clone(), oci::MEDIA_TYPE_LAYER.to_owned()),
        Source::File(_) => (layer.digest.clone(), layer.media_type.clone()),
    };
    let size = match (&source, layer.size) {
        (_, size) if size > 0 => Some(size),
        (Source::File(path), _) => Some(
            tokio::fs::metadata(path)
                .await
                .map_err(|source| N2cError::Io {
                    path: path.clone(),
                    source,
                })?
                .len(),
        ),
        // Without a size the descriptor cannot be written: build it.
        (Source::Paths, _) => None,
    };
    let build = Plan::Build {
        source,
        expected: digest.clone(),
        compression: Compression::None,
        media_type: media_type.clone(),
        shared: options.compression == Compression::None && digest == layer.diff_id,
    };
    let Some(size) = size else {
        return Ok(build);
    };
    if everywhere(destinations, &digest).await {
        Ok(Plan::Reuse(Descriptor::new(media_type, digest, size)))
    } else {
        Ok(build)
    }
}

/// The known-layer map's answer for `diff_id`, once the gate has opened.
/// The lookup may block (a HEAD for a locally cached pair, a mount in a
/// batch), so it runs on a blocking thread.
async fn lookup(options: &ImageOptions, diff_id: &Digest) -> Result<Option<Descriptor>> {
    options.gate.wait().await?;
    let (known, diff_id) = (options.known.clone(), diff_id.clone());
    tokio::task::spawn_blocking(move || known(&diff_id))
        .await
        .context("a known-layer lookup panicked")
}

/// The plan for a layer only the known-layer map can decide, once it is
/// in: reuse what it names, or build the layer in the publish's
/// compression.
async fn decide(source: Source, diff_id: &Digest, options: &ImageOptions) -> Result<Plan> {
    Ok(match lookup(options, diff_id).await? {
        Some(descriptor) => Plan::Reuse(descriptor),
        None => Plan::Build {
            source,
            expected: diff_id.clone(),
            compression: options.compression,
            media_type: options.compression.media_type().to_owned(),
            shared: true,
        },
    })
}

/// Whether every destination has the blob (a failed check counts as no: the
/// upload that follows checks again and reports the real problem).
async fn everywhere(destinations: &[Destination], digest: &Digest) -> bool {
    let checks = destinations.iter().map(|d| d.has_blob(digest));
    futures::future::join_all(checks)
        .await
        .into_iter()
        .all(|present| present.unwrap_or(false))
}

/// What building one layer needs.
struct LayerContext {
    input: String,
    image: Arc<ImageJson>,
    index: usize,
    destinations: Arc<Vec<Destination>>,
    spool_dir: PathBuf,
    reporter: Arc<dyn Reporter>,
    mounted: Arc<Mounted>,
    cancel: Arc<AtomicBool>,
}

impl LayerContext {
    fn member(&self) -> String {
        format!("layers[{}]", self.index)
    }

    fn report_reused(&self, descriptor: &Descriptor) {
        let id = self
            .reporter
            .on_layer_started(&self.input, &self.member(), 0);
        self.report_reused_as(id, descriptor);
    }

    fn report_reused_as(&self, id: usize, descriptor: &Descriptor) {
        for destination in self.destinations.iter() {
            self.reporter.on_blob_done(
                &destination.to_string(),
                &descriptor.digest,
                descriptor.size,
                self.mounted.outcome(destination, &descriptor.digest),
            );
        }
        self.reporter.on_layer_done(id, true);
    }

    /// Carries out `plan`: the layer's descriptor, and whether this input
    /// built and uploaded it.
    async fn carry_out(
        self,
        plan: Plan,
        builds: &Semaphore,
        in_flight: &Arc<InFlight>,
        options: &ImageOptions,
    ) -> Result<(Descriptor, bool)> {
        let plan = match plan {
            Plan::Reuse(descriptor) => {
                self.report_reused(&descriptor);
                return Ok((descriptor, false));
            }
            plan => plan,
        };
        let _permit = builds
            .acquire()
            .await
            .context("the layer builds were stopped")?;
        let plan = match plan {
            // The map came in while this layer waited for its turn.
            Plan::Speculate { source, diff_id } if options.gate.is_settled() => {
                decide(source, &diff_id, options).await?
            }
            plan => plan,
        };
        match plan {
            Plan::Reuse(descriptor) => {
                self.report_reused(&descriptor);
                Ok((descriptor, false))
            }
            Plan::Build {
                source,
                expected,
                compression,
                media_type,
                shared,
            } => {
                self.build_claimed(source, expected, compression, media_type, shared, in_flight)
                    .await
            }
            Plan::Speculate { source, diff_id } => {
                self.speculate(source, diff_id, in_flight, options).await
            }
        }
    }

    /// Builds and uploads a layer decided missing, unless another input of
    /// the publish is building it (`shared`): then waits for that one.
    async fn build_claimed(
        self,
        source: Source,
        expected: Digest,
        compression: Compression,
        media_type: String,
        shared: bool,
        in_flight: &Arc<InFlight>,
    ) -> Result<(Descriptor, bool)> {
        // The claim is taken with a build permit and an encoding slot in
        // hand: a claimed layer then needs nothing from any other input to
        // finish, so waiting for one cannot deadlock (see `layer::slots`).
        // The slot comes before the tar writer starts, so a layer waiting
        // for its turn holds no buffers.
        let slot = take_slot().await?;
        let claim = if shared {
            match claim_or_wait(in_flight, &expected).await? {
                Claimed::Published(descriptor) => {
                    drop(slot);
                    self.report_reused(&descriptor);
                    return Ok((descriptor, false));
                }
                Claimed::Mine(claim) => Some(claim),
                Claimed::Abandoned => None,
            }
        } else {
            None
        };
        let build = self.start_build(source, expected, compression, slot)?;
        self.upload(build, media_type, claim).await
    }

    /// Builds the layer while the known-layer map is read, then uploads it
    /// if the map lacks it, or stops the build if it has it.
    async fn speculate(
        self,
        source: Source,
        diff_id: Digest,
        in_flight: &Arc<InFlight>,
        options: &ImageOptions,
    ) -> Result<(Descriptor, bool)> {
        tracing::debug!(
            input = %self.input,
            layer = self.index,
            "building on speculation: the registry reads are still out"
        );
        let slot = take_slot().await?;
        let build = self.start_build(source, diff_id.clone(), options.compression, slot)?;
        let known = match lookup(options, &diff_id).await {
            Ok(known) => known,
            Err(e) => {
                build.stop();
                return Err(e);
            }
        };
        // Claimed only now, the build running (its slot taken) or done: who
        // waits for the claim waits for a layer being encoded or uploading
        // (see `layer::slots`).
        let claimed = match known {
            Some(descriptor) => Claimed::Published(descriptor),
            None => claim_or_wait(in_flight, &diff_id).await?,
        };
        let claim = match claimed {
            Claimed::Published(descriptor) => {
                self.report_reused_as(build.stop(), &descriptor);
                return Ok((descriptor, false));
            }
            Claimed::Mine(claim) => Some(claim),
            Claimed::Abandoned => None,
        };
        let media_type = options.compression.media_type().to_owned();
        self.upload(build, media_type, claim).await
    }

    /// Starts building the layer into a spool, on a blocking thread.
    fn start_build(
        &self,
        source: Source,
        expected: Digest,
        compression: Compression,
        slot: Slot<'static>,
    ) -> Result<Build> {
        let layer = self
            .image
            .layers
            .get(self.index)
            .cloned()
            .expect("a plan per layer");
        let id = self
            .reporter
            .on_layer_started(&self.input, &self.member(), layer.size);
        let (writer, spool) = spool::create(&self.spool_dir).with_context(|| {
            format!(
                "cannot create a spool file in `{}`",
                self.spool_dir.display()
            )
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (reporter, cancel, stop, index) = (
                self.reporter.clone(),
                self.cancel.clone(),
                stop.clone(),
                self.index,
            );
            tokio::task::spawn_blocking(move || {
                let mut on_read = |n: u64| reporter.on_layer_read(id, n);
                build_layer(
                    index,
                    &layer,
                    &source,
                    &expected,
                    compression,
                    writer,
                    slot,
                    [&cancel, &stop],
                    &mut on_read,
                )
            })
        };
        Ok(Build {
            id,
            spool,
            task,
            stop,
        })
    }

    /// Uploads what `build` writes, to every destination as it grows, and
    /// resolves this input's `claim` on the layer with the result (dropped
    /// unresolved on an error: abandoned).
    async fn upload(
        &self,
        build: Build,
        media_type: String,
        claim: Option<Claim>,
    ) -> Result<(Descriptor, bool)> {
        // Dropping the set (on any error below) aborts the uploads.
        let mut uploads: JoinSet<Result<Digest>> = JoinSet::new();
        {
            let (destinations, spool, reporter) = (
                self.destinations.clone(),
                build.spool.clone(),
                self.reporter.clone(),
            );
            uploads.spawn(async move {
                Destination::push_spool_everywhere(&destinations, spool, &*reporter).await
            });
        }
        // The build's error says more than the uploads it broke.
        let encoded = build.task.await.context("a layer builder panicked")??;
        while let Some(done) = uploads.join_next().await {
            done.context("an upload task panicked")??;
        }
        self.reporter.on_layer_done(build.id, false);
        let descriptor = Descriptor::new(media_type, encoded.digest, encoded.size);
        if let Some(claim) = claim {
            claim.resolve(descriptor.clone());
        }
        Ok((descriptor, true))
    }
}

/// A layer being built on a blocking thread.
struct Build {
    /// The reporter's id for the layer.
    id: usize,
    spool: Spool,
    task: JoinHandle<Result<EncodedLayer>>,
    /// Stops this build alone at its next read.
    stop: Arc<AtomicBool>,
}

impl Build {
    /// Stops the build, not needed after all: its thread ends at its next
    /// read, giving back the slot and dropping the spool. Not waited for,
    /// as a lookup that finds the layer is on the publish's critical path
    /// (the thread takes some milliseconds to wind down). Returns the
    /// reporter's id for the layer.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.id
    }
}

/// An encoding slot, waited for on a blocking thread.
async fn take_slot() -> Result<Slot<'static>> {
    tokio::task::spawn_blocking(|| Slots::global().take())
        .await
        .context("a wait for an encoding slot panicked")
}

/// The blocking half: streams the layer's raw bytes (a synthesised tar, or
/// a ready blob) through the digest check into the encoder and the spool.
#[allow(clippy::too_many_arguments)]
fn build_layer(
    index: usize,
    layer: &N2cLayer,
    source: &Source,
    expected: &Digest,
    compression: Compression,
    writer: spool::SpoolWriter,
    slot: Slot<'_>,
    [cancel, stop]: [&AtomicBool; 2],
    on_read: &mut dyn FnMut(u64),
) -> Result<EncodedLayer> {
    let encode_err =
        |e: io::Error| anyhow::Error::new(e).context(format!("cannot encode layer {index}"));
    match source {
        Source::File(path) => {
            let file = std::fs::File::open(path).map_err(|source| N2cError::Io {
                path: path.clone(),
                source,
            })?;
            let file = Cancellable::new(BufReader::with_capacity(1 << 20, file), cancel);
            let mut raw = Cancellable::new(file, stop);
            encode_layer(&mut raw, compression, writer, slot, Some(expected), on_read).map_err(
                |e| match DiffIdMismatch::of(&e) {
                    Some(mismatch) => N2cError::BlobMismatch {
                        index,
                        path: path.clone(),
                        expected: expected.clone(),
                        actual: mismatch.actual.clone(),
                    }
                    .into(),
                    None => anyhow::Error::new(N2cError::Io {
                        path: path.clone(),
                        source: e,
                    }),
                },
            )
        }
        Source::Paths => {
            let (tx, tar_output) = pipe(PIPE_CHUNKS, "tar writer");
            std::thread::scope(|scope| {
                let tar = scope.spawn(move || {
                    let mut pipe = PipeWriter {
                        tx: Some(tx),
                        cancel,
                        closed: false,
                    };
                    let result = write_layer_tar(layer, &mut pipe);
                    pipe.end(result.as_ref().err().map(|e| e.to_string()));
                    (result, pipe.closed)
                });
                let mut raw = Cancellable::new(Cancellable::new(tar_output, cancel), stop);
                let encoded =
                    encode_layer(&mut raw, compression, writer, slot, Some(expected), on_read);
                // Unblocks the tar writer if the encoder stopped first.
                drop(raw);
                let (written, closed) = match tar.join() {
                    Ok(outcome) => outcome,
                    Err(_) => anyhow::bail!("the tar writer of layer {index} panicked"),
                };
                match (written, encoded) {
                    // The tar writer's own failure (not a closed pipe) is the cause.
                    (Err(e), _) if !closed => Err(e.into()),
                    (_, Err(e)) => match DiffIdMismatch::of(&e) {
                        Some(m) => Err(verify_digest_error(index, layer, m.actual.clone()).into()),
                        None => Err(encode_err(e)),
                    },
                    (Err(e), Ok(_)) => Err(e.into()),
                    (Ok(()), Ok(encoded)) => Ok(encoded),
                }
            })
        }
    }
}

/// The tar writer's end of the pipe.
struct PipeWriter<'a> {
    tx: Option<PipeSender>,
    cancel: &'a AtomicBool,
    /// The reader went away (the encoder stopped first).
    closed: bool,
}

impl PipeWriter<'_> {
    /// Ends the stream: cleanly, or as a failure the reader reports.
    fn end(&mut self, failure: Option<String>) {
        if let Some(tx) = self.tx.take() {
            let last = match failure {
                None => Chunk::End,
                Some(why) => Chunk::Failed(io::Error::other(why)),
            };
            // A reader gone already has its own error.
            let _ = tx.send(last);
        }
    }
}

impl Write for PipeWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("publish cancelled"));
        }
        let Some(tx) = &self.tx else {
            return Err(io::Error::other("the layer pipe is closed"));
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let buf = &buf[..buf.len().min(MAX_CHUNK)];
        let mut chunk = tx.recycled().unwrap_or_default();
        chunk.clear();
        chunk.extend_from_slice(buf);
        if tx.send(Chunk::Data(chunk)).is_err() {
            self.closed = true;
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the layer encoder stopped",
            ));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `spec` is a nix2container input: its kind says so, or its
/// content does (a small read; an unreadable file is left to the
/// docker-archive path, which reports it).
pub fn is_nix2container(spec: &InputSpec) -> bool {
    match spec.kind {
        Some(kind) => kind == crate::input::InputKind::Nix2Container,
        None => matches!(
            crate::input::detect(Path::new(&spec.path)),
            Ok(crate::input::Detected::Nix2Container)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::HashingWriter;
    use crate::input::nix2container::{PathOptions, Rewrite, StorePath};
    use std::io::Read;

    /// A small store: one path with a file a few pipe chunks long.
    fn store() -> (tempfile::TempDir, N2cLayer) {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("pkg");
        std::fs::create_dir(&pkg).unwrap();
        let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(pkg.join("big"), &big).unwrap();
        std::fs::write(pkg.join("small"), b"hello\n").unwrap();
        let layer = N2cLayer {
            digest: Digest::of(b""),
            size: 0,
            diff_id: Digest::of(b""),
            paths: vec![StorePath {
                path: pkg.clone(),
                options: Some(PathOptions {
                    rewrite: Rewrite {
                        regex: format!("^{}", regex::escape(dir.path().to_str().unwrap())),
                        repl: String::new(),
                    },
                    perms: Vec::new(),
                }),
            }],
            media_type: oci::MEDIA_TYPE_LAYER.into(),
            layer_path: None,
            history: None,
        };
        (dir, layer)
    }

    /// The tar written directly, without the pipe.
    fn direct_tar(layer: &N2cLayer) -> Vec<u8> {
        let mut out = HashingWriter::new(Vec::new());
        write_layer_tar(layer, &mut out).unwrap();
        out.finish().0
    }

    fn build(
        layer: &N2cLayer,
        source: &Source,
        expected: &Digest,
        compression: Compression,
        [cancel, stop]: [bool; 2],
    ) -> (Result<EncodedLayer>, io::Result<Vec<u8>>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let (writer, spool) = spool::create(dir.path()).unwrap();
        let (cancel, stop) = (AtomicBool::new(cancel), AtomicBool::new(stop));
        let mut read = 0;
        let result = build_layer(
            3,
            layer,
            source,
            expected,
            compression,
            writer,
            Slots::global().take(),
            [&cancel, &stop],
            &mut |n| read += n,
        );
        let content = futures::executor::block_on(spool.done()).map(|_| {
            let mut out = Vec::new();
            spool.copy_to(&mut out).unwrap();
            out
        });
        (result, content, read)
    }

    #[test]
    fn the_pipe_carries_the_tar_byte_for_byte() {
        let (_dir, layer) = store();
        let tar = direct_tar(&layer);
        assert!(tar.len() > 1_500_000);
        let (result, content, read) = build(
            &layer,
            &Source::Paths,
            &Digest::of(&tar),
            Compression::None,
            [false, false],
        );
        let encoded = result.unwrap();
        assert_eq!(content.unwrap(), tar);
        assert_eq!(read, tar.len() as u64);
        assert_eq!(
            (encoded.diff_id, encoded.digest),
            (Digest::of(&tar), Digest::of(&tar))
        );
    }

    #[test]
    fn a_large_write_goes_through_the_pipe_a_chunk_at_a_time() {
        // Room for every chunk and the end: nothing reads until the end.
        let (tx, mut rx) = pipe(8, "test writer");
        let cancel = AtomicBool::new(false);
        let mut w = PipeWriter {
            tx: Some(tx),
            cancel: &cancel,
            closed: false,
        };
        let data: Vec<u8> = (0..3 * MAX_CHUNK as u32 + 5).map(|i| i as u8).collect();
        assert_eq!(w.write(&data).unwrap(), MAX_CHUNK);
        w.write_all(&data[MAX_CHUNK..]).unwrap();
        w.end(None);
        let mut back = Vec::new();
        rx.read_to_end(&mut back).unwrap();
        assert!(back == data);
    }

    #[test]
    fn compressed_layers_decompress_to_the_tar() {
        let (_dir, layer) = store();
        let tar = direct_tar(&layer);
        let (result, content, _) = build(
            &layer,
            &Source::Paths,
            &Digest::of(&tar),
            Compression::Gzip { level: 1 },
            [false, false],
        );
        let encoded = result.unwrap();
        let gz = content.unwrap();
        assert_eq!(encoded.digest, Digest::of(&gz));
        assert_eq!(encoded.media_type, oci::MEDIA_TYPE_LAYER_GZIP);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, tar);
    }

    #[test]
    fn a_wrong_digest_fails_the_spool_and_names_the_layer() {
        let (_dir, layer) = store();
        let tar = direct_tar(&layer);
        let wrong = Digest::of(b"not this layer");
        let (result, content, _) = build(
            &layer,
            &Source::Paths,
            &wrong,
            Compression::None,
            [false, false],
        );
        let err = result.unwrap_err();
        match err.downcast_ref::<N2cError>() {
            Some(N2cError::DigestMismatch {
                index,
                expected,
                actual,
                paths,
            }) => {
                assert_eq!(*index, 3);
                assert_eq!((expected, actual), (&layer.diff_id, &Digest::of(&tar)));
                assert_eq!(paths, &vec![layer.paths[0].path.clone()]);
            }
            _ => panic!("not a digest mismatch: {err:#}"),
        }
        assert!(
            content.is_err(),
            "the spool must fail, so no upload completes"
        );
    }

    #[test]
    fn a_missing_store_path_is_the_error_not_the_pipe() {
        let (dir, mut layer) = store();
        layer.paths[0].path = dir.path().join("gone");
        let (result, content, _) = build(
            &layer,
            &Source::Paths,
            &Digest::of(b""),
            Compression::None,
            [false, false],
        );
        let text = format!("{:#}", result.unwrap_err());
        assert!(text.contains("gone"), "{text}");
        assert!(content.is_err());
    }

    #[test]
    fn ready_blobs_are_checked_against_image_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"some compressed bytes").unwrap();
        let (_store, layer) = store();
        let source = Source::File(path.clone());
        let good = Digest::of(b"some compressed bytes");
        let (result, content, _) = build(&layer, &source, &good, Compression::None, [false, false]);
        assert_eq!(result.unwrap().digest, good);
        assert_eq!(content.unwrap(), b"some compressed bytes");

        let wrong = Digest::of(b"other");
        let (result, content, _) =
            build(&layer, &source, &wrong, Compression::None, [false, false]);
        let err = result.unwrap_err();
        assert!(
            matches!(err.downcast_ref::<N2cError>(), Some(N2cError::BlobMismatch { path: p, actual, .. }) if *p == path && *actual == good),
            "{err:#}"
        );
        assert!(content.is_err());
    }

    #[test]
    fn a_cancelled_publish_or_a_stopped_layer_stops_the_build() {
        let (_dir, layer) = store();
        let tar = direct_tar(&layer);
        for stops in [[true, false], [false, true]] {
            let (result, content, _) = build(
                &layer,
                &Source::Paths,
                &Digest::of(&tar),
                Compression::Gzip { level: 1 },
                stops,
            );
            assert!(result.is_err(), "{stops:?}");
            assert!(content.is_err(), "{stops:?}");
        }
    }

    #[test]
    fn the_config_describes_the_published_platform() {
        let image = parse_image_json(
            "i.json",
            format!(
                r#"{{"version": 1, "image-config": {{}}, "arch": "arm",
                    "layers": [{{"digest": "{}"}}]}}"#,
                Digest::of(b"l")
            )
            .as_bytes(),
        )
        .unwrap();
        let spec: InputSpec = "linux/arm/v7=nix2container:i.json".parse().unwrap();
        let platform = platform_of(&spec, &image, &crate::progress::Silent);
        assert_eq!(platform.to_string(), "linux/arm/v7");
        let config = image_config(&image, &[Digest::of(b"l")], &platform);
        assert_eq!(
            (&config["architecture"], &config["variant"], &config["os"]),
            (&"arm".into(), &"v7".into(), &"linux".into())
        );
        let spec: InputSpec = "i.json".parse().unwrap();
        assert_eq!(
            platform_of(&spec, &image, &crate::progress::Silent).to_string(),
            "linux/arm"
        );
    }
}
