//! A destination: a registry repository or an OCI layout directory, behind
//! one set of steps (blob, manifest by digest, tags) so both are published by
//! the same code path.

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;

use crate::digest::Digest;
use crate::layer::Spool;
use crate::layout::Layout;
use crate::oci::RawManifest;
use crate::progress::{BlobOutcome, Reporter};
use crate::reference::Repository;
use crate::registry::{BlobBody, RegistryClient, UploadOutcome};

/// Where an index is published.
#[derive(Clone)]
pub enum Destination {
    Registry {
        client: RegistryClient,
        repository: Repository,
    },
    Layout(Arc<Layout>),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Registry { repository, .. } => write!(f, "{repository}"),
            Destination::Layout(layout) => write!(f, "oci:{}", layout.dir().display()),
        }
    }
}

impl Destination {
    /// Whether the destination has the blob.
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool> {
        match self {
            Destination::Registry { client, repository } => client
                .blob_exists(&repository.path, digest)
                .await
                .with_context(|| format!("cannot check for blob `{digest}` in `{repository}`")),
            Destination::Layout(layout) => Ok(layout.has_blob(digest)),
        }
    }

    /// Puts a blob from bytes in memory (configs).
    pub async fn push_bytes(&self, bytes: Bytes, reporter: &dyn Reporter) -> Result<Digest> {
        let name = self.to_string();
        let (digest, size, outcome) = match self {
            Destination::Registry { client, repository } => {
                let progress = |n: i64| reporter.on_upload_progress(&name, n);
                let outcome = client
                    .upload_blob(&repository.path, BlobBody::Bytes(bytes), &progress)
                    .await
                    .with_context(|| format!("cannot upload a config blob to `{repository}`"))?;
                from_upload(outcome)
            }
            Destination::Layout(layout) => {
                let size = bytes.len() as u64;
                let (digest, written) = layout.write_blob_bytes(&bytes).await?;
                (digest, size, written_outcome(written))
            }
        };
        reporter.on_blob_done(&name, &digest, size, outcome);
        Ok(digest)
    }

    /// Puts a layer blob from a spool, following it while it is written.
    pub async fn push_spool(&self, spool: Spool, reporter: &dyn Reporter) -> Result<Digest> {
        let name = self.to_string();
        let (digest, size, outcome) = match self {
            Destination::Registry { client, repository } => {
                let progress = |n: i64| reporter.on_upload_progress(&name, n);
                let outcome = client
                    .upload_blob(&repository.path, BlobBody::Spool(spool), &progress)
                    .await
                    .with_context(|| format!("cannot upload a layer to `{repository}`"))?;
                from_upload(outcome)
            }
            Destination::Layout(layout) => {
                let (digest, size, written) = layout.write_blob_spool(&spool).await?;
                (digest, size, written_outcome(written))
            }
        };
        reporter.on_blob_done(&name, &digest, size, outcome);
        Ok(digest)
    }

    /// Puts a manifest or index under its digest, unless it is there already.
    pub async fn push_manifest(
        &self,
        manifest: &RawManifest,
        what: &str,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        match self {
            Destination::Registry { client, repository } => {
                let reference = manifest.digest.to_string();
                let present = client
                    .head_manifest(&repository.path, &reference)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot check for {what} `{}` in `{repository}`",
                            manifest.digest
                        )
                    })?
                    .is_some();
                if !present {
                    client
                        .put_manifest(&repository.path, &reference, manifest)
                        .await
                        .with_context(|| {
                            format!("cannot push {what} `{}` to `{repository}`", manifest.digest)
                        })?;
                }
            }
            Destination::Layout(layout) => {
                layout.put_manifest(manifest).await?;
            }
        }
        reporter.on_manifest_pushed(&self.to_string(), what, &manifest.digest);
        Ok(())
    }

    /// The tags the repository has (empty for a layout: the tag guard reads
    /// registries only).
    pub async fn list_tags(&self) -> Result<Vec<String>> {
        match self {
            Destination::Registry { client, repository } => client
                .list_tags(&repository.path)
                .await
                .with_context(|| format!("cannot list the tags of `{repository}`")),
            Destination::Layout(_) => Ok(Vec::new()),
        }
    }

    /// Points every tag at `index` (phase 2). A registry tag that already
    /// points there is left alone (ECR's immutable tags refuse even an identical
    /// PUT). Returns the tags that moved or were confirmed.
    pub async fn set_tags(
        &self,
        index: &RawManifest,
        tags: &[String],
        reporter: &dyn Reporter,
    ) -> Result<Vec<String>> {
        let name = &self.to_string();
        match self {
            Destination::Registry { client, repository } => {
                let puts = tags.iter().map(|tag| async move {
                    let current = client
                        .head_manifest(&repository.path, tag)
                        .await
                        .with_context(|| format!("cannot read tag `{tag}` of `{repository}`"))?;
                    if current.map(|d| d.digest) != Some(index.digest.clone()) {
                        client
                            .put_manifest(&repository.path, tag, index)
                            .await
                            .with_context(|| format!("cannot tag `{repository}:{tag}`"))?;
                    }
                    reporter.on_tag(name, tag);
                    anyhow::Ok(tag.clone())
                });
                futures::future::try_join_all(puts).await
            }
            Destination::Layout(layout) => {
                layout.set_tags(index, tags).await?;
                for tag in tags {
                    reporter.on_tag(name, tag);
                }
                Ok(tags.to_vec())
            }
        }
    }
}

fn from_upload(outcome: UploadOutcome) -> (Digest, u64, BlobOutcome) {
    match outcome {
        UploadOutcome::Uploaded { digest, size } => (digest, size, BlobOutcome::Uploaded),
        UploadOutcome::AlreadyPresent { digest, size } => {
            (digest, size, BlobOutcome::AlreadyPresent)
        }
    }
}

fn written_outcome(written: bool) -> BlobOutcome {
    if written {
        BlobOutcome::Uploaded
    } else {
        BlobOutcome::AlreadyPresent
    }
}
