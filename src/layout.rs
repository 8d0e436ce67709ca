//! An OCI image layout directory (`oci:DIR`) as a destination.
//!
//! The registry-free destination: blobs land in `blobs/sha256/<hex>` (written
//! to a temp name, then renamed, so a crash never leaves a torn blob), and tags
//! become `org.opencontainers.image.ref.name` entries of `index.json`, which is
//! replaced atomically and only in the tagging phase. Publishing walks the same
//! steps as for a registry: blobs, manifests by digest, index, then tags.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter};
use crate::layer::Spool;
use crate::oci::{self, ImageIndex, RawManifest};

/// Errors writing an OCI image layout; each names the directory.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot write OCI layout `{dir}`: {action}")]
    Io {
        dir: PathBuf,
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("`{dir}` is not an OCI image layout: {reason}")]
    NotALayout { dir: PathBuf, reason: String },
    #[error("blob `{expected}` written to `{dir}` hashed to `{actual}`")]
    DigestMismatch {
        dir: PathBuf,
        expected: Digest,
        actual: Digest,
    },
}

/// An OCI image layout directory.
#[derive(Debug)]
pub struct Layout {
    dir: PathBuf,
    /// Serialises `index.json` updates within this process.
    index_lock: tokio::sync::Mutex<()>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutMarker {
    image_layout_version: String,
}

impl Layout {
    /// Opens `dir`, creating an empty layout there if it does not exist or is
    /// an empty directory.
    pub fn open_or_create(dir: &Path) -> Result<Layout, LayoutError> {
        let io_err = |action: &str| {
            let dir = dir.to_owned();
            let action = action.to_owned();
            move |source| LayoutError::Io {
                dir,
                action,
                source,
            }
        };
        fs::create_dir_all(dir.join("blobs/sha256")).map_err(io_err("create blobs/sha256"))?;
        let marker = dir.join("oci-layout");
        match fs::read(&marker) {
            Ok(bytes) => {
                let m: LayoutMarker =
                    serde_json::from_slice(&bytes).map_err(|e| LayoutError::NotALayout {
                        dir: dir.to_owned(),
                        reason: format!("`oci-layout` is not valid: {e}"),
                    })?;
                if !m.image_layout_version.starts_with("1.") {
                    return Err(LayoutError::NotALayout {
                        dir: dir.to_owned(),
                        reason: format!(
                            "unsupported imageLayoutVersion `{}`",
                            m.image_layout_version
                        ),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
                    .map_err(io_err("write oci-layout"))?;
            }
            Err(e) => return Err(io_err("read oci-layout")(e)),
        }
        let layout = Layout {
            dir: dir.to_owned(),
            index_lock: tokio::sync::Mutex::new(()),
        };
        if !layout.dir.join("index.json").exists() {
            layout.write_index(&empty_index())?;
        }
        layout.read_index()?;
        Ok(layout)
    }

    /// A layout at `dir` that is not opened: for `--dry-run`, which only asks
    /// which blobs exist and never writes.
    pub fn unopened(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_owned(),
            index_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    fn io_err(&self, action: impl Into<String>) -> impl FnOnce(io::Error) -> LayoutError {
        let dir = self.dir.clone();
        let action = action.into();
        move |source| LayoutError::Io {
            dir,
            action,
            source,
        }
    }

    /// Whether the blob is already in the layout.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Writes bytes as a blob; returns false if it was already there.
    pub async fn write_blob_bytes(&self, bytes: &[u8]) -> Result<(Digest, bool), LayoutError> {
        let digest = Digest::of(bytes);
        if self.has_blob(&digest) {
            return Ok((digest, false));
        }
        let path = self.blob_path(&digest);
        write_atomic(&path, bytes).map_err(self.io_err(format!("write blob `{digest}`")))?;
        Ok((digest, true))
    }

    /// Copies a finished spool into the layout; returns false if the blob was
    /// already there.
    pub async fn write_blob_spool(
        &self,
        spool: &Spool,
    ) -> Result<(Digest, u64, bool), LayoutError> {
        let (digest, size) = spool
            .done()
            .await
            .map_err(self.io_err("read the layer spool"))?;
        if self.has_blob(&digest) {
            return Ok((digest, size, false));
        }
        let path = self.blob_path(&digest);
        let spool = spool.clone();
        let dir = self.dir.clone();
        let expected = digest.clone();
        tokio::task::spawn_blocking(move || -> Result<(), LayoutError> {
            let io_err = |source| LayoutError::Io {
                dir: dir.clone(),
                action: format!("write blob `{expected}`"),
                source,
            };
            let mut tmp = temp_beside(&path).map_err(io_err)?;
            let mut w = HashingWriter::new(io::BufWriter::new(tmp.as_file_mut()));
            spool.copy_to(&mut w).map_err(io_err)?;
            let (mut inner, actual, _) = w.finish();
            inner.flush().map_err(io_err)?;
            drop(inner);
            if actual != expected {
                return Err(LayoutError::DigestMismatch {
                    dir: dir.clone(),
                    expected,
                    actual,
                });
            }
            tmp.persist(&path).map_err(|e| io_err(e.error))?;
            Ok(())
        })
        .await
        .map_err(|e| self.io_err("write a blob")(io::Error::other(e)))??;
        Ok((digest, size, true))
    }

    /// Streams a blob whose digest is known into the layout (to a temp
    /// name, renamed once the bytes hash to `expected`); returns its size
    /// and false if it was already there. The stream is read chunk by
    /// chunk, never held whole.
    pub async fn write_blob_stream<S>(
        &self,
        expected: &Digest,
        stream: S,
    ) -> Result<(u64, bool), LayoutError>
    where
        S: futures::Stream<Item = io::Result<bytes::Bytes>> + Send,
    {
        use futures::TryStreamExt as _;
        use tokio::io::AsyncWriteExt as _;
        if self.has_blob(expected) {
            let size = fs::metadata(self.blob_path(expected))
                .map_err(self.io_err(format!("read blob `{expected}`")))?
                .len();
            return Ok((size, false));
        }
        let path = self.blob_path(expected);
        let io_err = || self.io_err(format!("write blob `{expected}`"));
        let tmp = temp_beside(&path).map_err(io_err())?;
        let file = tmp.as_file().try_clone().map_err(io_err())?;
        let mut out = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
        let mut hasher = crate::digest::Hasher::new();
        futures::pin_mut!(stream);
        while let Some(chunk) = stream.try_next().await.map_err(io_err())? {
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(io_err())?;
        }
        out.flush().await.map_err(io_err())?;
        drop(out);
        let (actual, size) = hasher.finish();
        if &actual != expected {
            return Err(LayoutError::DigestMismatch {
                dir: self.dir.clone(),
                expected: expected.clone(),
                actual,
            });
        }
        tmp.persist(&path).map_err(|e| io_err()(e.error))?;
        Ok((size, true))
    }

    /// Writes a manifest or index as a blob (by digest; no tag).
    pub async fn put_manifest(&self, manifest: &RawManifest) -> Result<bool, LayoutError> {
        self.write_blob_bytes(&manifest.bytes)
            .await
            .map(|(_, written)| written)
    }

    /// Points each of `tags` at `manifest` in `index.json` (replacing earlier
    /// entries of the same names). With no tags, the manifest gets an untagged
    /// entry unless one already cites it, so the layout still lists it.
    pub async fn set_tags(
        &self,
        manifest: &RawManifest,
        tags: &[String],
    ) -> Result<(), LayoutError> {
        let _guard = self.index_lock.lock().await;
        let mut index = self.read_index()?;
        index.manifests.retain(|d| {
            d.annotations
                .get(oci::ANNOTATION_REF_NAME)
                .is_none_or(|name| !tags.contains(name))
        });
        if tags.is_empty() && !index.manifests.iter().any(|d| d.digest == manifest.digest) {
            index.manifests.push(manifest.descriptor());
        }
        for tag in tags {
            let mut d = manifest.descriptor();
            d.annotations = BTreeMap::from([(oci::ANNOTATION_REF_NAME.to_owned(), tag.clone())]);
            index.manifests.push(d);
        }
        self.write_index(&index)
    }

    /// The layout's `index.json`.
    pub fn read_index(&self) -> Result<ImageIndex, LayoutError> {
        let path = self.dir.join("index.json");
        let bytes = fs::read(&path).map_err(self.io_err("read index.json"))?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::NotALayout {
            dir: self.dir.clone(),
            reason: format!("`index.json` is not an image index: {e}"),
        })
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), LayoutError> {
        let bytes = oci::canonical_json(index);
        write_atomic(&self.dir.join("index.json"), &bytes).map_err(self.io_err("write index.json"))
    }
}

fn empty_index() -> ImageIndex {
    ImageIndex {
        schema_version: 2,
        media_type: oci::MEDIA_TYPE_INDEX.to_owned(),
        manifests: Vec::new(),
        annotations: BTreeMap::new(),
    }
}

/// A temp file in `path`'s directory, to be renamed over `path`. Created
/// with mode 0666 less the umask (0644 as a rule), as skopeo and crane
/// create layout files: a temp file's usual 0600 would, once renamed, lock
/// other users (a web server, a build sandbox) out of the layout.
fn temp_beside(path: &Path) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let parent = path.parent().unwrap_or(Path::new("."));
    tempfile::Builder::new()
        .prefix(".tmp")
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(parent)
}

/// Writes `bytes` to a temp file beside `path`, then renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::spool;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn blobs_manifests_and_tags_land_where_the_spec_says() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        let layout = Layout::open_or_create(&root).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );

        let (w, s) = spool::create(dir.path()).unwrap();
        let mut w = w;
        w.write_all(b"layer bytes").unwrap();
        let (digest, _) = w.finish();
        let (d, size, written) = layout.write_blob_spool(&s).await.unwrap();
        assert_eq!((d.clone(), size, written), (digest.clone(), 11, true));
        assert_eq!(
            fs::read(root.join("blobs/sha256").join(d.hex())).unwrap(),
            b"layer bytes"
        );
        assert!(
            !layout.write_blob_spool(&s).await.unwrap().2,
            "second write skipped"
        );

        let index = RawManifest::canonical(&empty_index(), oci::MEDIA_TYPE_INDEX);
        layout.put_manifest(&index).await.unwrap();
        layout
            .set_tags(&index, &["1.0".into(), "latest".into()])
            .await
            .unwrap();
        layout.set_tags(&index, &["latest".into()]).await.unwrap();
        let listed = layout.read_index().unwrap();
        let names: Vec<_> = listed
            .manifests
            .iter()
            .map(|d| d.annotations[oci::ANNOTATION_REF_NAME].as_str())
            .collect();
        assert_eq!(
            names,
            ["1.0", "latest"],
            "retagging replaces, never duplicates"
        );

        // Reopening keeps what is there.
        let again = Layout::open_or_create(&root).unwrap();
        assert_eq!(again.read_index().unwrap().manifests.len(), 2);
        assert!(again.has_blob(&digest));

        // Files get 0666 less the umask, as with skopeo, not a temp file's 0600.
        let umask = umask_of_this_process();
        for file in [
            root.join("index.json"),
            root.join("blobs/sha256").join(d.hex()),
            root.join("blobs/sha256").join(index.digest.hex()),
        ] {
            let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o666 & !umask, "{}", file.display());
        }
    }

    /// The umask, from /proc (reading it with umask(2) would change it for
    /// every thread meanwhile).
    fn umask_of_this_process() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }

    #[test]
    fn a_foreign_oci_layout_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("oci-layout"), "nonsense").unwrap();
        let err = Layout::open_or_create(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("is not an OCI image layout"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn streamed_blobs_are_checked_before_they_land() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open_or_create(dir.path()).unwrap();
        let chunks = || {
            futures::stream::iter(
                [&b"streamed "[..], &b"layer"[..]].map(|c| Ok(bytes::Bytes::from_static(c))),
            )
        };
        let digest = Digest::of(b"streamed layer");
        assert_eq!(
            layout.write_blob_stream(&digest, chunks()).await.unwrap(),
            (14, true)
        );
        assert_eq!(
            fs::read(dir.path().join("blobs/sha256").join(digest.hex())).unwrap(),
            b"streamed layer"
        );
        assert_eq!(
            layout.write_blob_stream(&digest, chunks()).await.unwrap(),
            (14, false),
            "second write skipped"
        );

        // Another digest: refused, and nothing is left behind.
        let other = Digest::of(b"another layer");
        let err = layout
            .write_blob_stream(&other, chunks())
            .await
            .unwrap_err();
        assert!(matches!(err, LayoutError::DigestMismatch { .. }), "{err}");
        // A failing stream: the same.
        let failing = futures::stream::iter([
            Ok(bytes::Bytes::from_static(b"part")),
            Err(io::Error::other("the source broke off")),
        ]);
        let err = layout.write_blob_stream(&other, failing).await.unwrap_err();
        assert!(matches!(err, LayoutError::Io { .. }), "{err}");
        let names: Vec<_> = fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(digest.hex())]);
    }
}
