//! A destination: a registry repository or an OCI layout directory, behind
//! one set of steps (blob, manifest by digest, tags) so both are published by
//! the same code path.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;

use crate::digest::Digest;
use crate::layer::Spool;
use crate::layout::Layout;
use crate::manifest::Format;
use crate::oci::RawManifest;
use crate::progress::{BlobOutcome, Reporter};
use crate::reference::Repository;
use crate::registry::{BlobBody, RegistryClient, UploadOutcome};

use super::seen::Seen;

/// What [`Destination::push_manifest`] does with a document that this
/// publish has not seen in the repository (no tag it read led there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfUnseen {
    /// Asks first (HEAD) and PUTs it only if it is missing: the registry may
    /// hold it under another tag, as it holds a promoted image's manifests.
    Ask,
    /// PUTs it: it carries this run's annotations (its `created` time, its
    /// revision), so it is new unless a tag this run read led to it, and a
    /// HEAD would cost a round trip to learn nothing. A registry that has it
    /// after all takes the same bytes again under the same digest.
    Put,
}

impl IfUnseen {
    /// [`IfUnseen::Put`] for a document of `format` built with this run's
    /// `annotations`, when it carries any.
    pub fn for_annotations(format: Format, annotations: &BTreeMap<String, String>) -> IfUnseen {
        if format.carries(annotations) {
            IfUnseen::Put
        } else {
            IfUnseen::Ask
        }
    }
}

/// Where an index is published.
#[derive(Clone)]
pub enum Destination {
    Registry {
        client: RegistryClient,
        repository: Repository,
        /// What the repository was seen to hold during this publish.
        seen: Arc<Seen>,
    },
    Layout(Arc<Layout>),
    /// `--dry-run`: reads (HEAD, tag lists) go to the destination inside,
    /// writes are only reported.
    DryRun(Box<Destination>),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Registry { repository, .. } => write!(f, "{repository}"),
            Destination::Layout(layout) => write!(f, "oci:{}", layout.dir().display()),
            Destination::DryRun(inner) => inner.fmt(f),
        }
    }
}

impl Destination {
    /// A registry repository, with nothing seen of it yet.
    pub fn registry_repository(client: RegistryClient, repository: Repository) -> Destination {
        Destination::Registry {
            client,
            repository,
            seen: Arc::default(),
        }
    }

    /// Whether the destination has the blob.
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool> {
        match self {
            Destination::Registry {
                client,
                repository,
                seen,
            } => {
                if seen.holds(digest) {
                    return Ok(true);
                }
                let present = client
                    .blob_exists(&repository.path, digest)
                    .await
                    .with_context(|| {
                        format!("cannot check for blob `{digest}` in `{repository}`")
                    })?;
                if present {
                    seen.record_document(digest);
                }
                Ok(present)
            }
            Destination::Layout(layout) => Ok(layout.has_blob(digest)),
            Destination::DryRun(inner) => Box::pin(inner.has_blob(digest)).await,
        }
    }

    /// The registry client and repository, seen through a dry run.
    pub fn registry(&self) -> Option<(&RegistryClient, &Repository)> {
        match self {
            Destination::Registry {
                client, repository, ..
            } => Some((client, repository)),
            Destination::Layout(_) => None,
            Destination::DryRun(inner) => inner.registry(),
        }
    }

    /// Whether this destination's registry has failed to answer its first
    /// `GET /v2/` so far (see `RegistryClient::is_unanswered_after_failure`):
    /// inputs then hold back the work they would do on speculation.
    pub fn is_unreached(&self) -> bool {
        self.registry()
            .is_some_and(|(client, _)| client.is_unanswered_after_failure())
    }

    /// What a registry repository was seen to hold (through a dry run too),
    /// for the reads made before the push to record.
    pub fn seen(&self) -> Option<&Seen> {
        match self {
            Destination::Registry { seen, .. } => Some(seen),
            Destination::Layout(_) => None,
            Destination::DryRun(inner) => inner.seen(),
        }
    }

    /// What a write would do in a dry run: nothing if present, else upload.
    async fn planned(
        inner: &Destination,
        digest: Digest,
        size: u64,
    ) -> Result<(Digest, u64, BlobOutcome)> {
        let outcome = if inner.has_blob(&digest).await? {
            BlobOutcome::AlreadyPresent
        } else {
            BlobOutcome::Planned
        };
        Ok((digest, size, outcome))
    }

    /// Puts a blob from bytes in memory (configs), unless the registry was
    /// seen to hold it. `missing`: the caller believes the registry lacks it
    /// (it compressed layers of this image in this run, so the config is all
    /// but certainly new too, or it has just found it missing); it is sent
    /// without a HEAD first (a config is a few kilobytes, and the registry
    /// keeps one copy per digest).
    pub async fn push_bytes(
        &self,
        bytes: Bytes,
        missing: bool,
        reporter: &dyn Reporter,
    ) -> Result<Digest> {
        let name = self.to_string();
        let (digest, size, outcome) = match self {
            Destination::Registry {
                client,
                repository,
                seen,
            } => {
                let digest = Digest::of(&bytes);
                if seen.holds(&digest) {
                    (digest, bytes.len() as u64, BlobOutcome::AlreadyPresent)
                } else {
                    let progress = |n: i64| reporter.on_upload_progress(&name, n);
                    let body = BlobBody::Bytes(bytes);
                    let outcome = if missing {
                        client
                            .upload_new_blob(&repository.path, body, &progress)
                            .await
                    } else {
                        client.upload_blob(&repository.path, body, &progress).await
                    };
                    let outcome = outcome.with_context(|| {
                        format!("cannot upload a config blob to `{repository}`")
                    })?;
                    from_upload(outcome, seen)
                }
            }
            Destination::Layout(layout) => {
                let size = bytes.len() as u64;
                let (digest, written) = layout.write_blob_bytes(&bytes).await?;
                (digest, size, written_outcome(written))
            }
            Destination::DryRun(inner) => {
                Self::planned(inner, Digest::of(&bytes), bytes.len() as u64).await?
            }
        };
        reporter.on_blob_done(&name, &digest, size, outcome);
        Ok(digest)
    }

    /// Puts a layer blob from a spool, following it while it is written.
    /// A spool holds a layer this run has just encoded because the
    /// known-layer map lacks it, so no HEAD asks first, whether or not the
    /// spool is complete by the time its upload starts (a layer encoded on
    /// speculation often is: the HEAD cost a round trip to learn nothing).
    pub async fn push_spool(&self, spool: Spool, reporter: &dyn Reporter) -> Result<Digest> {
        let name = self.to_string();
        let (digest, size, outcome) = match self {
            Destination::Registry {
                client,
                repository,
                seen,
            } => {
                let progress = |n: i64| reporter.on_upload_progress(&name, n);
                let outcome = client
                    .upload_new_blob(&repository.path, BlobBody::Spool(spool), &progress)
                    .await
                    .with_context(|| format!("cannot upload a layer to `{repository}`"))?;
                from_upload(outcome, seen)
            }
            Destination::Layout(layout) => {
                let (digest, size, written) = layout.write_blob_spool(&spool).await?;
                (digest, size, written_outcome(written))
            }
            Destination::DryRun(inner) => {
                let (digest, size) = spool.done().await.context("a layer could not be read")?;
                Self::planned(inner, digest, size).await?
            }
        };
        reporter.on_blob_done(&name, &digest, size, outcome);
        Ok(digest)
    }

    /// Puts a blob that already exists elsewhere (another registry's, or a
    /// file) and whose digest and size are known, and that the caller has
    /// just found missing here (so no HEAD first): streamed from its source
    /// into the registry or the layout's blob file, checked against the
    /// digest on the way, never held whole or spooled. A dry run only
    /// reports it.
    pub async fn push_stream(&self, body: BlobBody, reporter: &dyn Reporter) -> Result<Digest> {
        let name = self.to_string();
        let (digest, size) = match &body {
            BlobBody::Remote { digest, size, .. } | BlobBody::File { digest, size, .. } => {
                (digest.clone(), *size)
            }
            BlobBody::Bytes(_) | BlobBody::Spool(_) => {
                anyhow::bail!("push_stream takes a remote or file blob")
            }
        };
        let (digest, size, outcome) = match self {
            Destination::Registry {
                client,
                repository,
                seen,
            } => {
                let progress = |n: i64| reporter.on_upload_progress(&name, n);
                let outcome = client
                    .upload_new_blob(&repository.path, body, &progress)
                    .await
                    .with_context(|| format!("cannot copy layer `{digest}` to `{repository}`"))?;
                from_upload(outcome, seen)
            }
            Destination::Layout(layout) => {
                if layout.has_blob(&digest) {
                    (digest, size, BlobOutcome::AlreadyPresent)
                } else {
                    let stream = body
                        .open_stream()
                        .await
                        .with_context(|| format!("cannot read layer `{digest}`"))?;
                    let (size, written) = layout.write_blob_stream(&digest, stream).await?;
                    (digest, size, written_outcome(written))
                }
            }
            Destination::DryRun(inner) => Self::planned(inner, digest, size).await?,
        };
        reporter.on_blob_done(&name, &digest, size, outcome);
        Ok(digest)
    }

    /// Whether `digest` could be mounted into this destination from `from`,
    /// a repository that has it. Only a registry destination on the same
    /// registry can mount; a refusal or an error means "upload instead".
    pub async fn mount_from(&self, from: &Repository, digest: &Digest) -> bool {
        let Some((client, repository)) = self.registry() else {
            return false;
        };
        // A repository cannot mount from itself, and no registry mounts
        // from another.
        if repository.registry != from.registry || repository == from {
            return false;
        }
        // A plan counts on the registry taking the mount; nothing is sent.
        if let Destination::DryRun(_) = self {
            return true;
        }
        let mounted = client
            .mount_blob(&repository.path, digest, &from.path)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(
                    "mounting `{digest}` from `{from}` into `{repository}` failed: {e}"
                );
                false
            });
        if let (true, Some(seen)) = (mounted, self.seen()) {
            seen.record_created(digest);
        }
        mounted
    }

    /// [`Destination::mount_from`] the first of `holders` that works.
    pub async fn mount_from_any(&self, holders: &[Repository], digest: &Digest) -> bool {
        for from in holders {
            if self.mount_from(from, digest).await {
                return true;
            }
        }
        false
    }

    /// Mounts `digest` from `source` (a repository of the same registry that
    /// has it) into this destination; uploads from `spool` when the registry
    /// declines or the two are not on one registry.
    pub async fn mount_or_push(
        &self,
        source: &Destination,
        digest: &Digest,
        spool: Spool,
        reporter: &dyn Reporter,
    ) -> Result<Digest> {
        if let Some((_, repository)) = source.registry() {
            if self.mount_from(repository, digest).await {
                let size = spool.finished().map(|(_, size)| size).unwrap_or(0);
                reporter.on_blob_done(&self.to_string(), digest, size, BlobOutcome::Mounted);
                return Ok(digest.clone());
            }
        }
        self.push_spool(spool, reporter).await
    }

    /// Puts a layer at every destination: one upload per registry, following
    /// the spool as it grows; the other repositories of that registry then
    /// mount the blob instead of receiving its bytes again.
    pub async fn push_spool_everywhere(
        destinations: &[Destination],
        spool: Spool,
        reporter: &dyn Reporter,
    ) -> Result<Digest> {
        // Repositories of one registry share an upload (a dry run plans it
        // the same way); a layout stands alone.
        let registry_of = |d: &Destination| {
            d.registry()
                .map(|(_, repository)| repository.registry.to_string())
        };
        let mut groups: Vec<(Option<String>, Vec<&Destination>)> = Vec::new();
        for destination in destinations {
            let key = registry_of(destination);
            match groups.iter_mut().find(|(k, _)| key.is_some() && *k == key) {
                Some((_, group)) => group.push(destination),
                None => groups.push((key, vec![destination])),
            }
        }
        let per_group = groups.into_iter().map(|(_, group)| {
            let spool = spool.clone();
            async move {
                let first = group[0];
                let digest = first.push_spool(spool.clone(), reporter).await?;
                let mounts = group[1..]
                    .iter()
                    .map(|other| other.mount_or_push(first, &digest, spool.clone(), reporter));
                futures::future::try_join_all(mounts).await?;
                anyhow::Ok(digest)
            }
        });
        let digests = futures::future::try_join_all(per_group).await?;
        digests
            .into_iter()
            .next()
            .context("a layer needs at least one destination")
    }

    /// Puts a manifest or index under its digest, unless it is there already:
    /// seen by the reads before the push, or else asked with a HEAD, unless
    /// it names something this publish just put there (then it cannot be)
    /// or `if_unseen` says not to ask.
    pub async fn push_manifest(
        &self,
        manifest: &RawManifest,
        what: &str,
        if_unseen: IfUnseen,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let mut already = false;
        match self {
            Destination::Registry {
                client,
                repository,
                seen,
            } => {
                let reference = manifest.digest.to_string();
                // Asked only when neither the reads nor this publish's own
                // writes settle it.
                let held = seen.holds(&manifest.digest);
                let ask = !held
                    && if_unseen == IfUnseen::Ask
                    && !seen.names_created(&manifest.references());
                already = held
                    || (ask
                        && client
                            .head_manifest(&repository.path, &reference)
                            .await
                            .with_context(|| {
                                format!(
                                    "cannot check for {what} `{}` in `{repository}`",
                                    manifest.digest
                                )
                            })?
                            .is_some());
                if already {
                    seen.record_document(&manifest.digest);
                } else {
                    client
                        .put_manifest(&repository.path, &reference, manifest)
                        .await
                        .with_context(|| {
                            format!("cannot push {what} `{}` to `{repository}`", manifest.digest)
                        })?;
                    seen.record_created(&manifest.digest);
                }
            }
            Destination::Layout(layout) => {
                layout.put_manifest(manifest).await?;
            }
            // Nothing is written; the plan lists the manifest's digest.
            Destination::DryRun(_) => return Ok(()),
        }
        reporter.on_manifest_pushed(&self.to_string(), what, &manifest.digest, already);
        Ok(())
    }

    /// The tags the repository has (empty for a layout: the tag guard reads
    /// registries only).
    pub async fn list_tags(&self) -> Result<Vec<String>> {
        match self {
            Destination::Registry {
                client, repository, ..
            } => client
                .list_tags(&repository.path)
                .await
                .with_context(|| format!("cannot list the tags of `{repository}`")),
            Destination::Layout(_) => Ok(Vec::new()),
            Destination::DryRun(inner) => Box::pin(inner.list_tags()).await,
        }
    }

    /// Points every tag at `index` (phase 2). A registry tag that already
    /// points there is left alone (ECR's immutable tags refuse even an identical
    /// PUT): where it points is taken from the reads before the push, or asked
    /// with a HEAD for a tag they did not read. Returns the tags that moved or
    /// were confirmed.
    pub async fn set_tags(
        &self,
        index: &RawManifest,
        tags: &[String],
        reporter: &dyn Reporter,
    ) -> Result<Vec<String>> {
        let name = &self.to_string();
        match self {
            Destination::Registry {
                client,
                repository,
                seen,
            } => {
                let puts = tags.iter().map(|tag| async move {
                    let current = match seen.tag(tag) {
                        Some(current) => current,
                        None => client
                            .head_manifest(&repository.path, tag)
                            .await
                            .with_context(|| format!("cannot read tag `{tag}` of `{repository}`"))?
                            .map(|d| d.digest),
                    };
                    if current.as_ref() != Some(&index.digest) {
                        client
                            .put_manifest(&repository.path, tag, index)
                            .await
                            .with_context(|| format!("cannot tag `{repository}:{tag}`"))?;
                        seen.record_tag(tag, Some(&index.digest));
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
            Destination::DryRun(_) => Ok(tags.to_vec()),
        }
    }
}

/// An upload's outcome for the report, recorded in the ledger.
fn from_upload(outcome: UploadOutcome, seen: &Seen) -> (Digest, u64, BlobOutcome) {
    match outcome {
        UploadOutcome::Uploaded { digest, size } => {
            seen.record_created(&digest);
            (digest, size, BlobOutcome::Uploaded)
        }
        UploadOutcome::AlreadyPresent { digest, size } => {
            seen.record_document(&digest);
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
