//! `oci:DIR[:TAG]` and `oci-archive:PATH[:TAG]` inputs: an OCI image layout,
//! as a directory or packed in a tar file, as the source of an image (or of
//! every image of an index).
//!
//! The entry of `index.json` is picked by its
//! `org.opencontainers.image.ref.name` when a TAG is given, else it must be
//! the only one. Blobs are the layout's files, uploaded as they are (no
//! recompression, same digests), or the archive's members read in place: the
//! copying itself is [`super::remote::publish_existing`], shared with
//! `docker://` inputs.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::input::oci_archive::OciArchive;
use crate::input::{split_existing_prefix, InputKind, InputSpec};
use crate::oci::{self, Descriptor, ImageIndex};
use crate::progress::Reporter;

use super::destination::Destination;
use super::image::{CancelOnDrop, ImageOptions, PublishedImage};
use super::remote::{self, ImageSource};

/// Why a layout cannot be read as an input.
#[derive(Debug, thiserror::Error)]
pub enum OciInputError {
    #[error("`{}` is not an OCI image layout directory (no `index.json`)", dir.display())]
    NotALayout { dir: PathBuf },

    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{}` is not an image index", path.display())]
    BadIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("OCI layout `{}` has no entry named `{tag}`{}", dir.display(), known_names(.names))]
    NoSuchTag {
        dir: PathBuf,
        tag: String,
        names: Vec<String>,
    },

    #[error("OCI layout `{}` lists {count} different manifests{}\nhint: pick one by name, as in `{scheme}:{}:TAG`", dir.display(), known_names(.names), dir.display())]
    Ambiguous {
        dir: PathBuf,
        /// `oci` or `oci-archive`, for the hint.
        scheme: &'static str,
        count: usize,
        names: Vec<String>,
    },

    #[error("OCI layout `{}` lists no manifest", dir.display())]
    Empty { dir: PathBuf },
}

fn known_names(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(
            " (names: {})",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Splits `DIR[:TAG]` (see [`split_existing_prefix`]).
pub fn split_dir_and_tag(path: &Path) -> (PathBuf, Option<String>) {
    split_existing_prefix(path, Path::is_dir)
}

/// Splits `PATH[:TAG]` of an archive (see [`split_existing_prefix`]).
pub fn split_file_and_tag(path: &Path) -> (PathBuf, Option<String>) {
    split_existing_prefix(path, Path::is_file)
}

/// `index.json` of the layout directory `dir`: its path and bytes.
fn read_dir_index(dir: &Path) -> Result<(PathBuf, Vec<u8>), OciInputError> {
    let path = dir.join("index.json");
    match std::fs::read(&path) {
        Ok(bytes) => Ok((path, bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(OciInputError::NotALayout {
            dir: dir.to_owned(),
        }),
        Err(source) => Err(OciInputError::Read { path, source }),
    }
}

fn parse_index(bytes: &[u8], path: &Path) -> Result<ImageIndex, OciInputError> {
    serde_json::from_slice(bytes).map_err(|source| OciInputError::BadIndex {
        path: path.to_owned(),
        source,
    })
}

/// The entry of `index` (of the layout `dir`) named `tag`, or its only one.
fn choose_entry(
    index: &ImageIndex,
    dir: &Path,
    scheme: &'static str,
    tag: Option<&str>,
) -> Result<Descriptor, OciInputError> {
    let names: Vec<String> = index.manifests.iter().filter_map(ref_name).collect();
    if let Some(tag) = tag {
        return index
            .manifests
            .iter()
            .find(|d| ref_name(d).as_deref() == Some(tag))
            .cloned()
            .ok_or_else(|| OciInputError::NoSuchTag {
                dir: dir.to_owned(),
                tag: tag.to_owned(),
                names,
            });
    }
    let mut digests: Vec<_> = index.manifests.iter().map(|d| &d.digest).collect();
    digests.sort();
    digests.dedup();
    match (digests.len(), index.manifests.first()) {
        (_, None) => Err(OciInputError::Empty {
            dir: dir.to_owned(),
        }),
        (1, Some(first)) => Ok(first.clone()),
        (count, _) => Err(OciInputError::Ambiguous {
            dir: dir.to_owned(),
            scheme,
            count,
            names,
        }),
    }
}

/// An entry's `org.opencontainers.image.ref.name`, the layout's tag.
pub fn ref_name(entry: &Descriptor) -> Option<String> {
    entry.annotations.get(oci::ANNOTATION_REF_NAME).cloned()
}

/// How large an archive's `index.json` may be.
const MAX_INDEX_BYTES: u64 = 4 << 20;

/// An `oci:` or `oci-archive:` input, opened.
pub struct OpenedLayout {
    /// Where its manifests and blobs are read from.
    pub source: ImageSource,
    /// Its whole `index.json`.
    pub index: ImageIndex,
    /// The entry of `index.json` the input names.
    pub entry: Descriptor,
}

/// Opens the layout `spec` names (its kind is `oci:` or `oci-archive:`).
/// An archive is indexed on a blocking thread, a compressed one
/// decompressed into `spool_dir` first, stopped if this future is dropped.
pub async fn open_layout(spec: &InputSpec, spool_dir: &Path) -> Result<OpenedLayout> {
    if spec.kind != Some(InputKind::OciArchive) {
        let (dir, tag) = split_dir_and_tag(&spec.path);
        let (path, bytes) = read_dir_index(&dir)?;
        let index = parse_index(&bytes, &path)?;
        let entry = choose_entry(&index, &dir, "oci", tag.as_deref())?;
        return Ok(OpenedLayout {
            source: ImageSource::Layout { dir },
            index,
            entry,
        });
    }
    let (path, tag) = split_file_and_tag(&spec.path);
    let cancel = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = CancelOnDrop(cancel.clone());
    let spool_dir = spool_dir.to_owned();
    let opened = tokio::task::spawn_blocking(move || -> Result<_, crate::input::InputError> {
        let archive = OciArchive::open(&path, &spool_dir, &cancel)?;
        let index = archive.read_member("index.json", MAX_INDEX_BYTES)?;
        Ok((archive, index))
    })
    .await
    .context("the OCI archive reader stopped")?;
    let (archive, bytes) = opened?;
    let input = PathBuf::from(archive.input());
    let index = parse_index(&bytes, &input.join("index.json"))?;
    let entry = choose_entry(&index, &input, "oci-archive", tag.as_deref())?;
    Ok(OpenedLayout {
        source: ImageSource::Archive(Arc::new(archive)),
        index,
        entry,
    })
}

/// Publishes the image (or images) of the layout (directory or archive)
/// named by `spec`.
pub async fn publish_layout(
    spec: InputSpec,
    destinations: Arc<Vec<Destination>>,
    options: &ImageOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<Vec<PublishedImage>> {
    reporter.on_input_started(&spec.text);
    let layout = open_layout(&spec, &options.spool_dir).await?;
    let top = layout.source.manifest(&layout.entry).await?;
    remote::publish_existing(
        &spec,
        &layout.source,
        top,
        &destinations,
        options.format,
        &*reporter,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    /// The `index.json` entry an `oci:DIR[:TAG]` input picks.
    fn pick_entry(dir: &Path, tag: Option<&str>) -> Result<Descriptor, OciInputError> {
        let (path, bytes) = read_dir_index(dir)?;
        choose_entry(&parse_index(&bytes, &path)?, dir, "oci", tag)
    }

    fn layout(entries: &[(u8, Option<&str>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(byte, name)| {
                let mut d = serde_json::json!({
                    "mediaType": oci::MEDIA_TYPE_INDEX,
                    "digest": Digest::of(&[*byte]).to_string(),
                    "size": 1,
                });
                if let Some(n) = name {
                    d["annotations"] = serde_json::json!({ oci::ANNOTATION_REF_NAME: n });
                }
                d
            })
            .collect();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
        dir
    }

    #[test]
    fn a_tag_picks_its_entry() {
        let dir = layout(&[(1, Some("a")), (2, Some("b"))]);
        let d = pick_entry(dir.path(), Some("b")).unwrap();
        assert_eq!(d.digest, Digest::of(&[2]));
        let err = pick_entry(dir.path(), Some("c")).unwrap_err();
        assert!(
            err.to_string()
                .contains("no entry named `c` (names: `a`, `b`)"),
            "{err}"
        );
    }

    #[test]
    fn without_a_tag_the_entry_must_be_unique() {
        let one = layout(&[(1, Some("a")), (1, Some("latest"))]);
        assert_eq!(
            pick_entry(one.path(), None).unwrap().digest,
            Digest::of(&[1])
        );
        let two = layout(&[(1, Some("a")), (2, None)]);
        let err = pick_entry(two.path(), None).unwrap_err();
        assert!(
            matches!(err, OciInputError::Ambiguous { count: 2, .. }),
            "{err}"
        );
        let empty = layout(&[]);
        assert!(matches!(
            pick_entry(empty.path(), None),
            Err(OciInputError::Empty { .. })
        ));
        let none = tempfile::tempdir().unwrap();
        assert!(matches!(
            pick_entry(none.path(), None),
            Err(OciInputError::NotALayout { .. })
        ));
    }

    #[test]
    fn dir_and_tag_are_split_after_the_longest_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let with_tag = PathBuf::from(format!("{}:v1", dir.path().display()));
        assert_eq!(
            split_dir_and_tag(&with_tag),
            (dir.path().to_owned(), Some("v1".to_owned()))
        );
        // A name as podman writes it, and a directory with `:` in its name.
        let full = PathBuf::from(format!("{}:localhost/fd:1.0", dir.path().display()));
        assert_eq!(
            split_dir_and_tag(&full),
            (dir.path().to_owned(), Some("localhost/fd:1.0".to_owned()))
        );
        let colon = dir.path().join("a:b");
        std::fs::create_dir(&colon).unwrap();
        let with_tag = PathBuf::from(format!("{}:v2", colon.display()));
        assert_eq!(split_dir_and_tag(&with_tag), (colon, Some("v2".to_owned())));
        assert_eq!(split_dir_and_tag(dir.path()), (dir.path().to_owned(), None));
        let missing = PathBuf::from("/nonexistent/x:y");
        assert_eq!(split_dir_and_tag(&missing), (missing.clone(), None));
    }
}
