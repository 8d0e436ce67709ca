//! `manifold inspect REF`: what a reference points at, read from the
//! registry (platforms, digests, sizes, annotations) and which of the given
//! tags point at the same document.

use std::io::Write;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::env::Env;
use crate::oci::{self, ImageIndex, ImageManifest};
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
    let reference: Reference = Reference::parse(&args.reference)
        .map_err(|e| UsageError(format!("`{}`: {e}", args.reference)))?;
    let repository = reference.repository.clone();
    let clients = super::registry_clients(&[&repository], &args.registry, env).await?;
    let client = &clients[&repository.registry.to_string()];
    let wanted = reference.manifest_reference();
    let Some(raw) = client
        .get_manifest(&repository.path, &wanted)
        .await
        .with_context(|| format!("cannot read `{}`", args.reference))?
    else {
        bail!("`{}` does not exist", args.reference);
    };

    let mut inspection = Inspection {
        reference: format!("{repository}@{}", raw.digest),
        digest: raw.digest.to_string(),
        media_type: raw.media_type.clone(),
        size: raw.bytes.len() as u64,
        annotations: Default::default(),
        images: Vec::new(),
        tags: Vec::new(),
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
    if oci::is_index_media_type(&raw.media_type) {
        let index: ImageIndex = serde_json::from_slice(&raw.bytes)
            .with_context(|| format!("`{}` is not an image index", args.reference))?;
        inspection.annotations = index.annotations.clone();
        for child in &index.manifests {
            let platform = child.platform.as_ref().map(|p| p.to_string());
            match client
                .get_manifest(&repository.path, &child.digest.to_string())
                .await?
            {
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
    } else {
        let m: ImageManifest = serde_json::from_slice(&raw.bytes)
            .with_context(|| format!("`{}` is not an image manifest", args.reference))?;
        inspection.annotations = m.annotations.clone();
        inspection.images.push(summarize(None, &raw)?);
    }
    for tag in &args.tags {
        let here = client
            .head_manifest(&repository.path, tag)
            .await?
            .is_some_and(|d| d.digest == raw.digest);
        inspection.tags.push(TagState {
            tag: tag.clone(),
            points_here: here,
        });
    }

    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &inspection)?;
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
