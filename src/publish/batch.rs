//! Batch publishing (`publish --config FILE`): several images in one run,
//! each an ordinary [`super::publish`] of its own, sharing what they can.
//!
//! The file is TOML, one `[[image]]` table per image:
//!
//! ```toml
//! [[image]]
//! repo = ["ghcr.io/acme/app", "quay.io/acme/app"]   # or one string
//! inputs = ["./result-amd64", "linux/arm64=./app-arm64.tar.gz"]
//! tags = ["1.0.0"]                                     # optional
//! annotations = { "org.opencontainers.image.title" = "app" }
//! platforms = ["linux/amd64", "linux/arm64"]           # optional, per input
//! ```
//!
//! Paths are relative to the file. Parsing ([`parse_config`]) is pure; the
//! command line resolves destinations and tags and calls [`publish_batch`].
//!
//! Shared layers: a run-wide map (diff_id → descriptor and the repositories
//! that completed it) answers each image's known-layer lookups; a layer
//! another image already pushed to a repository of the same registry is
//! mounted from there, not uploaded again. To make that deterministic an
//! image's gate (what its uploads and layer lookups wait for, see `gate`)
//! opens only once the images before it in the file that share one of its
//! registries are done (an earlier image never waits for a later one, so
//! there is no cycle); its inputs read meanwhile, and images on other
//! registries publish concurrently. The wait is the gate's, not a layer
//! lookup's: archive readers look layers up holding an encoding slot, and
//! the images waited for need slots (`layer::slots`).
//!
//! Tags move for the whole batch or not at all: each image, once its blobs,
//! manifests and index are in place, waits there until every image of the
//! batch got that far, and an image that fails first holds every tag back.
//! (A registry refusing a tag once tagging has begun is the one failure that
//! can still leave some images tagged.)

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde::Deserialize;
use tokio::sync::watch;

use crate::digest::Digest;
use crate::input::{InputKind, InputSpec};
use crate::oci::{Descriptor, Platform};
use crate::progress::Reporter;
use crate::reference::Repository;

use super::destination::Destination;
use super::mounted::mount_where_missing;
use super::{publish, PublishedImage, Report, Request};

/// A batch file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("cannot read the batch file `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the batch file `{}` is not valid", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error("the batch file `{}` lists no `[[image]]`", path.display())]
    NoImages { path: PathBuf },

    #[error("image {number} of `{}`: {problem}", path.display())]
    Image {
        path: PathBuf,
        number: usize,
        problem: String,
    },

    #[error("image {number} of `{}`: input `{input}` is not valid", path.display())]
    Input {
        path: PathBuf,
        number: usize,
        input: String,
        #[source]
        source: Box<crate::input::InputError>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    image: Vec<RawImage>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    repo: OneOrMany,
    inputs: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platforms: Vec<String>,
}

/// One image of a batch file, paths resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchImage {
    pub repos: Vec<String>,
    pub inputs: Vec<InputSpec>,
    pub tags: Vec<String>,
    pub annotations: BTreeMap<String, String>,
}

/// Reads and checks a batch file.
pub fn read_config(path: &Path) -> Result<Vec<BatchImage>, BatchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BatchError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_config(path, &text, base)
}

/// Parses batch file `text`; relative input paths are taken from `base`.
pub fn parse_config(path: &Path, text: &str, base: &Path) -> Result<Vec<BatchImage>, BatchError> {
    let file: File = toml::from_str(text).map_err(|source| BatchError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if file.image.is_empty() {
        return Err(BatchError::NoImages {
            path: path.to_owned(),
        });
    }
    file.image
        .into_iter()
        .enumerate()
        .map(|(i, raw)| resolve_image(path, i + 1, raw, base))
        .collect()
}

fn resolve_image(
    path: &Path,
    number: usize,
    raw: RawImage,
    base: &Path,
) -> Result<BatchImage, BatchError> {
    let problem = |problem: String| BatchError::Image {
        path: path.to_owned(),
        number,
        problem,
    };
    let repos = match raw.repo {
        OneOrMany::One(r) => vec![r],
        OneOrMany::Many(r) => r,
    };
    if repos.is_empty() {
        return Err(problem("`repo` names no repository".into()));
    }
    if raw.inputs.is_empty() {
        return Err(problem("`inputs` is empty".into()));
    }
    if !raw.platforms.is_empty() && raw.platforms.len() != raw.inputs.len() {
        return Err(problem(format!(
            "`platforms` lists {} platforms for {} inputs; give one per input, in order",
            raw.platforms.len(),
            raw.inputs.len()
        )));
    }
    let mut inputs = Vec::new();
    for (i, text) in raw.inputs.iter().enumerate() {
        let mut spec: InputSpec = text.parse().map_err(|source| BatchError::Input {
            path: path.to_owned(),
            number,
            input: text.clone(),
            source: Box::new(source),
        })?;
        if let Some(p) = raw.platforms.get(i) {
            let platform: Platform = p
                .parse()
                .map_err(|e| problem(format!("platform `{p}` is not valid: {e}")))?;
            match &spec.platform {
                Some(given) if given != &platform => {
                    return Err(problem(format!(
                        "input `{text}` says `{given}` but `platforms` says `{platform}`"
                    )))
                }
                _ => spec.platform = Some(platform),
            }
        }
        if spec.kind != Some(InputKind::Remote) && spec.path.is_relative() {
            spec.path = base.join(&spec.path);
        }
        inputs.push(spec);
    }
    Ok(BatchImage {
        repos,
        inputs,
        tags: raw.tags,
        annotations: raw.annotations,
    })
}

/// What the run-wide map knows of one layer.
struct Held {
    descriptor: Descriptor,
    repositories: Vec<Repository>,
}

/// The run-wide state the images share.
#[derive(Default)]
struct Shared {
    layers: Mutex<HashMap<Digest, Held>>,
}

impl Shared {
    fn record(&self, images: &[PublishedImage], destinations: &[Destination]) {
        let repositories: Vec<Repository> = destinations
            .iter()
            .filter_map(|d| match d {
                Destination::Registry { repository, .. } => Some(repository.clone()),
                _ => None,
            })
            .collect();
        let Ok(mut layers) = self.layers.lock() else {
            return;
        };
        for image in images {
            for (diff_id, descriptor) in &image.layers {
                let held = layers.entry(diff_id.clone()).or_insert_with(|| Held {
                    descriptor: descriptor.clone(),
                    repositories: Vec::new(),
                });
                if held.descriptor.digest == descriptor.digest {
                    held.repositories.extend(repositories.iter().cloned());
                }
            }
        }
    }

    fn lookup(&self, diff_id: &Digest) -> Option<(Descriptor, Vec<Repository>)> {
        let layers = self.layers.lock().ok()?;
        let held = layers.get(diff_id)?;
        Some((held.descriptor.clone(), held.repositories.clone()))
    }
}

fn registries(request: &Request) -> Vec<String> {
    request
        .destinations
        .iter()
        .filter_map(|d| d.registry().map(|(_, r)| r.registry.to_string()))
        .collect()
}

/// Publishes every request (one per image of the batch); see the module doc
/// for how layers are shared. Returns the reports in order; the first error
/// fails the batch (the other images still finish or fail on their own).
pub async fn publish_batch(
    requests: Vec<Request>,
    reporter: Arc<dyn Reporter>,
) -> Result<Vec<Report>> {
    let shared = Arc::new(Shared::default());
    let count = requests.len();
    let (barrier, _) = watch::channel(Barrier::default());
    let barrier = Arc::new(barrier);
    let handle = tokio::runtime::Handle::current();
    let mut done_senders = Vec::new();
    let mut done_receivers: Vec<watch::Receiver<bool>> = Vec::new();
    for _ in &requests {
        let (tx, rx) = watch::channel(false);
        done_senders.push(tx);
        done_receivers.push(rx);
    }
    let all_registries: Vec<Vec<String>> = requests.iter().map(registries).collect();

    let runs =
        requests
            .into_iter()
            .zip(done_senders)
            .enumerate()
            .map(|(i, (mut request, done))| {
                // The images before this one on a shared registry.
                let before: Vec<watch::Receiver<bool>> = (0..i)
                    .filter(|&j| {
                        all_registries[j]
                            .iter()
                            .any(|r| all_registries[i].contains(r))
                    })
                    .map(|j| done_receivers[j].clone())
                    .collect();
                let destinations = Arc::new(request.destinations.clone());
                let (shared, handle, reporter) = (shared.clone(), handle.clone(), reporter.clone());
                let outer = request.image.known.clone();
                let lookup_mounted = request.image.mounted.clone();
                let lookup_destinations = destinations.clone();
                let lookup_shared = shared.clone();
                request.image.known = Arc::new(move |diff_id: &Digest| {
                    if let Some(found) = outer(diff_id) {
                        return Some(found);
                    }
                    // Blocking needs a multi-thread runtime (the binary's); on
                    // another, images share only what the registry shows.
                    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
                        return None;
                    }
                    // Asked once the gate is open, so the images before
                    // this one are done and the run-wide map has their layers.
                    let (descriptor, holders) = lookup_shared.lookup(diff_id)?;
                    let mount = mount_where_missing(
                        &lookup_destinations,
                        &descriptor.digest,
                        &holders,
                        &lookup_mounted,
                    );
                    // Called from reader threads and from async planning code
                    // alike: leave the worker (if on one) before blocking.
                    tokio::task::block_in_place(|| handle.block_on(mount)).then_some(descriptor)
                });
                request.gate_also_waits_for = Some(Box::pin(async move {
                    for mut rx in before {
                        // An error means the sender is gone: that image ended.
                        let _ = rx.wait_for(|finished| *finished).await;
                    }
                }));
                // Everything of this image is in place: the images after it
                // may mount its layers; its tags wait for the whole batch.
                let done = Arc::new(done);
                let (gate_done, gate_barrier) = (done.clone(), barrier.clone());
                request.before_tags = Some(Arc::new(move |images: &[PublishedImage]| {
                    shared.record(images, &destinations);
                    let _ = gate_done.send(true);
                    gate_barrier.send_modify(|b| b.ready += 1);
                    let mut rx = gate_barrier.subscribe();
                    Box::pin(async move {
                        let settled = rx
                            .wait_for(|b| b.ready == count || b.failed.is_some())
                            .await
                            .map(|b| b.failed)
                            .map_err(|_| anyhow::anyhow!("the batch ended early"))?;
                        match settled {
                            Some(failed) => Err(HeldBack(failed).into()),
                            None => Ok(()),
                        }
                    })
                }));
                let barrier = barrier.clone();
                async move {
                    let result = publish(request, reporter).await;
                    if result.is_err() {
                        barrier.send_modify(|b| {
                            b.failed.get_or_insert(i + 1);
                        });
                    }
                    let _ = done.send(true);
                    result
                }
            });
    let results = futures::future::join_all(runs).await;
    batch_outcome(results)
}

/// How far the images of a batch got before their tags.
#[derive(Default)]
struct Barrier {
    /// Images with every blob, manifest and index in place.
    ready: usize,
    /// The first image (from 1) that failed.
    failed: Option<usize>,
}

/// An image whose tags were held back because another image failed.
#[derive(Debug, thiserror::Error)]
#[error("not tagged: image {0} of the batch failed")]
struct HeldBack(usize);

/// The reports, or the error of the image that failed (not of those held
/// back because of it), naming which images were left untagged.
fn batch_outcome(results: Vec<Result<Report>>) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    let mut failed = None;
    let mut held = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(report) => reports.push(report),
            Err(e) if e.is::<HeldBack>() => held.push((i + 1).to_string()),
            Err(e) => {
                failed.get_or_insert((i + 1, e));
            }
        }
    }
    let Some((image, error)) = failed else {
        return Ok(reports);
    };
    let held = match held.len() {
        0 => String::new(),
        1 => format!("; image {} was held back untagged", held[0]),
        _ => format!("; images {} were held back untagged", held.join(", ")),
    };
    Err(error.context(format!("image {image} of the batch failed{held}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<BatchImage>, BatchError> {
        parse_config(Path::new("batch.toml"), text, Path::new("/base"))
    }

    #[test]
    fn images_repos_inputs_and_platforms_are_read() {
        let images = parse(
            r#"
            [[image]]
            repo = "localhost:5000/a"
            inputs = ["./a.tar", "/abs/b.tar", "docker://localhost:5000/x@sha256:0000000000000000000000000000000000000000000000000000000000000000"]
            tags = ["1.0"]
            annotations = { "org.opencontainers.image.title" = "a" }

            [[image]]
            repo = ["localhost:5000/b", "oci:out"]
            inputs = ["a.tar", "linux/arm64=b.tar"]
            platforms = ["linux/amd64", "linux/arm64"]
            "#,
        )
        .unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].repos, ["localhost:5000/a"]);
        assert_eq!(images[0].inputs[0].path, Path::new("/base/./a.tar"));
        assert_eq!(images[0].inputs[1].path, Path::new("/abs/b.tar"));
        assert_eq!(images[0].inputs[2].kind, Some(InputKind::Remote));
        assert!(images[0].inputs[2]
            .path
            .to_string_lossy()
            .starts_with("localhost:5000/x@"));
        assert_eq!(images[0].tags, ["1.0"]);
        assert_eq!(images[0].annotations["org.opencontainers.image.title"], "a");
        assert_eq!(images[1].repos, ["localhost:5000/b", "oci:out"]);
        let platforms: Vec<String> = images[1]
            .inputs
            .iter()
            .map(|i| i.platform.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
        assert_eq!(images[1].inputs[1].path, Path::new("/base/b.tar"));
    }

    #[test]
    fn mistakes_name_the_image_and_the_problem() {
        let err = parse(
            "[[image]]\nrepo = \"r\"\ninputs = [\"a\", \"b\"]\nplatforms = [\"linux/amd64\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "image 1 of `batch.toml`: `platforms` lists 1 platforms for 2 inputs; give one per input, in order"
        );
        let err = parse(
            "[[image]]\nrepo = \"r\"\ninputs = [\"linux/arm64=a\"]\nplatforms = [\"linux/amd64\"]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("says `linux/arm64` but"), "{err}");
        assert!(matches!(parse(""), Err(BatchError::NoImages { .. })));
        assert!(matches!(
            parse("[[image]]\nrepo = \"r\"\ninputs = [\"a\"]\ncolour = 1\n"),
            Err(BatchError::Parse { .. })
        ));
        let err = parse("[[image]]\nrepo = []\ninputs = [\"a\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("`repo` names no repository"),
            "{err}"
        );
    }
}
