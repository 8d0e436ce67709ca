//! `manifold inspect REF`: what a reference points at, read from the
//! registry or from an OCI layout, `oci:DIR[:TAG]` or `oci-archive:PATH[:TAG]`
//! (platforms, digests, sizes, annotations), and which of the given tags
//! point at the same document.

use std::io::Write;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::env::Env;
use crate::input::{InputKind, InputSpec};
use crate::oci::{self, ImageIndex, ImageManifest};
use crate::publish::oci_input;
use crate::publish::remote::{ImageSource, RemoteError};
use crate::reference::Reference;

use super::args::InspectArgs;
use super::UsageError;

#[derive(Serialize)]
struct Inspection {
    reference: String,
    digest: String,
    media_type: String,
    size: u64,
    annotations: std::collections::BTreeMap<String, String>,
    images: Vec<ImageSummary>,
    tags: Vec<TagState>,
}

#[derive(Serialize)]
struct ImageSummary {
    platform: Option<String>,
    digest: String,
    media_type: String,
    /// Config plus layers, compressed, as stored.
    size: u64,
    layers: usize,
}

#[derive(Serialize)]
struct TagState {
    tag: String,
    points_here: bool,
}

pub async fn run(args: InspectArgs, env: &Env) -> Result<()> {
    let layout: Option<InputSpec> = args.reference.parse().ok().filter(|spec: &InputSpec| {
        matches!(
            spec.kind,
            Some(InputKind::OciLayout | InputKind::OciArchive)
        )
    });
    let inspection = match layout {
        Some(spec) => inspect_layout(&spec, &args.tags).await?,
        None => inspect_registry(&args, env).await?,
    };
    print(&inspection, args.json)
}

/// A registry reference: the top document by tag or digest, its children
/// by digest, each `--tag` by a HEAD.
async fn inspect_registry(args: &InspectArgs, env: &Env) -> Result<Inspection> {
    let reference: Reference = Reference::parse(&args.reference)
        .map_err(|e| UsageError(format!("`{}`: {e}", args.reference)))?;
    let repository = reference.repository.clone();
    let clients = super::registry_clients(&[&repository], &args.registry, env).await?;
    let client = clients[&repository.registry.to_string()].clone();
    let Some(raw) = client
        .get_manifest(&repository.path, &reference.manifest_reference())
        .await
        .with_context(|| format!("cannot read `{}`", args.reference))?
    else {
        bail!("`{}` does not exist", args.reference);
    };
    let mut tags = Vec::new();
    for tag in &args.tags {
        let here = client
            .head_manifest(&repository.path, tag)
            .await?
            .is_some_and(|d| d.digest == raw.digest);
        tags.push(TagState {
            tag: tag.clone(),
            points_here: here,
        });
    }
    let source = ImageSource::Registry { client, repository };
    inspect_document(&source, raw, tags).await
}

/// An `oci:DIR[:TAG]` or `oci-archive:PATH[:TAG]` layout: the entry of its
/// `index.json`, and whether each `--tag` (a `ref.name` there) is the same.
async fn inspect_layout(spec: &InputSpec, wanted_tags: &[String]) -> Result<Inspection> {
    let layout = oci_input::open_layout(spec, &std::env::temp_dir()).await?;
    let raw = layout.source.manifest(&layout.entry).await?;
    let tags =
        wanted_tags
            .iter()
            .map(|tag| TagState {
                tag: tag.clone(),
                points_here: layout.index.manifests.iter().any(|d| {
                    oci_input::ref_name(d).as_deref() == Some(tag) && d.digest == raw.digest
                }),
            })
            .collect();
    inspect_document(&layout.source, raw, tags).await
}

/// What the manifest or index `raw` of `source` holds.
async fn inspect_document(
    source: &ImageSource,
    raw: oci::RawManifest,
    tags: Vec<TagState>,
) -> Result<Inspection> {
    let mut inspection = Inspection {
        reference: format!("{source}@{}", raw.digest),
        digest: raw.digest.to_string(),
        media_type: raw.media_type.clone(),
        size: raw.bytes.len() as u64,
        annotations: Default::default(),
        images: Vec::new(),
        tags,
    };
    let summarize = |platform: Option<String>, raw: &oci::RawManifest| -> Result<ImageSummary> {
        let m: ImageManifest = serde_json::from_slice(&raw.bytes)
            .with_context(|| format!("`{}` is not an image manifest", raw.digest))?;
        Ok(ImageSummary {
            platform,
            digest: raw.digest.to_string(),
            media_type: raw.media_type.clone(),
            size: m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>(),
            layers: m.layers.len(),
        })
    };
    if !oci::is_index_media_type(&raw.media_type) {
        let m: ImageManifest = serde_json::from_slice(&raw.bytes)
            .with_context(|| format!("`{}` is not an image manifest", inspection.reference))?;
        inspection.annotations = m.annotations.clone();
        inspection.images.push(summarize(None, &raw)?);
        return Ok(inspection);
    }
    let index: ImageIndex = serde_json::from_slice(&raw.bytes)
        .with_context(|| format!("`{}` is not an image index", inspection.reference))?;
    inspection.annotations = index.annotations.clone();
    for child in &index.manifests {
        let platform = child.platform.as_ref().map(|p| p.to_string());
        let child_raw = match source.manifest(child).await {
            Ok(raw) => Some(raw),
            // A child the source lacks is listed from its descriptor.
            Err(e) if matches!(e.downcast_ref(), Some(RemoteError::NotFound { .. })) => None,
            Err(e) => return Err(e),
        };
        match child_raw {
            Some(child_raw) if !oci::is_index_media_type(&child_raw.media_type) => {
                inspection.images.push(summarize(platform, &child_raw)?)
            }
            _ => inspection.images.push(ImageSummary {
                platform,
                digest: child.digest.to_string(),
                media_type: child.media_type.clone(),
                size: child.size,
                layers: 0,
            }),
        }
    }
    Ok(inspection)
}

fn print(inspection: &Inspection, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, inspection)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", inspection.reference)?;
        writeln!(
            out,
            "  type {}  {} bytes",
            inspection.media_type, inspection.size
        )?;
        for image in &inspection.images {
            writeln!(
                out,
                "  {:<16} {}  {} layers, {} bytes",
                image.platform.as_deref().unwrap_or("-"),
                image.digest,
                image.layers,
                image.size
            )?;
        }
        for (k, v) in &inspection.annotations {
            writeln!(out, "  {k}={v}")?;
        }
        for t in &inspection.tags {
            let state = if t.points_here {
                "points here"
            } else {
                "points elsewhere"
            };
            writeln!(out, "  tag {} {state}", t.tag)?;
        }
    }
    out.flush()?;
    Ok(())
}
