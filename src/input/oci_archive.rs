//! An OCI image layout packed in a tar file (`oci-archive:PATH[:TAG]`, as
//! `skopeo copy … oci-archive:`, `podman save --format oci-archive` and
//! `buildah push … oci-archive:` write it).
//!
//! The tar is never unpacked: one pass over its headers, seeking past the
//! data, maps each member name to where its bytes lie, and blobs are read
//! from there by range, as often as uploads need. A gzip or zstd archive
//! cannot be read by range, so it is first decompressed into a temp file
//! (removed when the archive is dropped), as skopeo unpacks one.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::detect::ArchiveCompression;
use super::tar_index::{Span, TarIndex};
use super::{Cancellable, InputError};

/// An OCI layout archive, indexed.
#[derive(Debug)]
pub struct OciArchive {
    /// The input's path as given, for messages.
    input: String,
    /// The plain tar the spans point into: the input, or its decompressed copy.
    data: PathBuf,
    members: TarIndex,
    /// The decompressed copy, deleted on drop.
    _decompressed: Option<tempfile::TempPath>,
}

impl OciArchive {
    /// Indexes the archive at `path`. A compressed one is decompressed into
    /// `spool_dir` first; setting `cancel` stops that copy.
    pub fn open(path: &Path, spool_dir: &Path, cancel: &AtomicBool) -> Result<Self, InputError> {
        let input = path.display().to_string();
        let open_err = |source| InputError::Open {
            input: input.clone(),
            source,
        };
        let compression = ArchiveCompression::of_file(path).map_err(open_err)?;
        let (data, decompressed) = match compression {
            ArchiveCompression::None => (path.to_owned(), None),
            _ => {
                let copy = decompress(path, spool_dir, cancel)?;
                (copy.to_path_buf(), Some(copy))
            }
        };
        let file = File::open(&data).map_err(open_err)?;
        let members = TarIndex::scan(&input, file)?;
        for required in ["oci-layout", "index.json"] {
            if members.span(required).is_none() {
                return Err(InputError::NotAnOciArchive {
                    input,
                    missing: required,
                });
            }
        }
        Ok(OciArchive {
            input,
            data,
            members,
            _decompressed: decompressed,
        })
    }

    /// The input's path as given.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The plain tar file that [`member`](Self::member) spans point into.
    pub fn data_path(&self) -> &Path {
        &self.data
    }

    /// Where the member `name` (links followed) lies, if the archive has it.
    pub fn member(&self, name: &str) -> Option<Span> {
        self.members.span(name)
    }

    /// The whole of a small member, refused past `max` bytes.
    pub fn read_member(&self, name: &str, max: u64) -> Result<Vec<u8>, InputError> {
        self.members.read(
            &self.input,
            &self.data,
            name,
            max,
            "a file of the OCI layout",
        )
    }
}

/// Whether the plain tar at `path` is an OCI layout archive: it has
/// `oci-layout` and `index.json` but no `manifest.json` (an archive with
/// both, as `docker save` ≥ 25 writes, is read as a docker-archive).
pub fn is_oci_archive(path: &Path) -> bool {
    let Some(members) = File::open(path)
        .ok()
        .and_then(|f| TarIndex::scan(&path.display().to_string(), f).ok())
    else {
        return false;
    };
    members.contains("oci-layout")
        && members.contains("index.json")
        && !members.contains("manifest.json")
}

/// The member name of a blob.
pub fn blob_name(digest: &crate::digest::Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Decompresses the archive at `path` into a temp file in `spool_dir`,
/// with the decoders (and read-ahead) of docker-archive files.
fn decompress(
    path: &Path,
    spool_dir: &Path,
    cancel: &AtomicBool,
) -> Result<tempfile::TempPath, InputError> {
    let spool_err = |source| InputError::Spool {
        dir: spool_dir.to_owned(),
        source,
    };
    let mut copy = tempfile::Builder::new()
        .prefix(".manifold-oci-archive-")
        .tempfile_in(spool_dir)
        .map_err(spool_err)?;
    let mut reader = Cancellable::new(super::open_archive(path)?, cancel);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(InputError::Tar {
                    input: path.display().to_string(),
                    source,
                })
            }
        };
        copy.as_file_mut().write_all(&buf[..n]).map_err(spool_err)?;
    }
    Ok(copy.into_temp_path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    /// A layout archive: `./`-prefixed names as `tar -C dir .` writes them,
    /// a hard-linked blob and a symlinked one.
    fn layout_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut h = header(tar::EntryType::Regular, bytes.len() as u64);
            b.append_data(&mut h, name, bytes).unwrap();
        };
        add("./oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("./index.json", br#"{"schemaVersion":2,"manifests":[]}"#);
        add("./blobs/sha256/aa", b"blob a");
        let mut h = header(tar::EntryType::Link, 0);
        b.append_link(&mut h, "blobs/sha256/bb", "blobs/sha256/aa")
            .unwrap();
        let mut h = header(tar::EntryType::Symlink, 0);
        b.append_link(&mut h, "blobs/sha256/cc", "../sha256/aa")
            .unwrap();
        let mut h = header(tar::EntryType::Symlink, 0);
        b.append_link(&mut h, "blobs/sha256/loop", "loop").unwrap();
        b.into_inner().unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn open(path: &Path) -> Result<OciArchive, InputError> {
        OciArchive::open(path, path.parent().unwrap(), &AtomicBool::new(false))
    }

    #[test]
    fn members_are_read_by_range_and_links_followed() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.tar", &layout_tar());
        let archive = open(&p).unwrap();
        assert_eq!(archive.data_path(), p);
        for name in ["blobs/sha256/aa", "blobs/sha256/bb", "blobs/sha256/cc"] {
            assert_eq!(archive.read_member(name, 100).unwrap(), b"blob a", "{name}");
        }
        assert!(archive.member("blobs/sha256/loop").is_none());
        let err = archive.read_member("blobs/sha256/dd", 100).unwrap_err();
        assert!(
            err.to_string().contains("no member `blobs/sha256/dd`"),
            "{err}"
        );
        let err = archive.read_member("blobs/sha256/aa", 3).unwrap_err();
        assert!(
            matches!(err, InputError::MemberTooLarge { size: 6, .. }),
            "{err}"
        );
        assert!(is_oci_archive(&p));
    }

    #[test]
    fn compressed_archives_are_read_from_a_temp_copy_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&layout_tar()).unwrap();
        let zst = zstd::encode_all(&layout_tar()[..], 1).unwrap();
        for (name, bytes) in [("a.tar.gz", gz.finish().unwrap()), ("a.tar.zst", zst)] {
            let spool = tempfile::tempdir().unwrap();
            let p = write(dir.path(), name, &bytes);
            let archive = OciArchive::open(&p, spool.path(), &AtomicBool::new(false)).unwrap();
            assert!(archive.data_path().starts_with(spool.path()));
            assert_eq!(
                archive.read_member("blobs/sha256/cc", 100).unwrap(),
                b"blob a"
            );
            drop(archive);
            assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
            // A cancelled copy stops, leaving nothing behind.
            let err = OciArchive::open(&p, spool.path(), &AtomicBool::new(true)).unwrap_err();
            assert!(err.to_string().contains("not a valid tar"), "{err}");
            assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn other_archives_are_refused_naming_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let docker = crate::input::tests::testdata("fd-amd64.tar");
        assert!(!is_oci_archive(&docker));
        let err = open(&docker).unwrap_err();
        assert!(err.to_string().contains("no `oci-layout`"), "{err}");
        // docker save ≥ 25 writes both layouts: it is a docker-archive.
        let mut b = tar::Builder::new(Vec::new());
        for name in ["oci-layout", "index.json", "manifest.json"] {
            let mut h = header(tar::EntryType::Regular, 2);
            b.append_data(&mut h, name, &b"{}"[..]).unwrap();
        }
        let both = write(dir.path(), "both.tar", &b.into_inner().unwrap());
        assert!(!is_oci_archive(&both));
        // A blob cut short (headers at 0, 1024 and 2048, its data at 2560)
        // is truncation.
        let tar = layout_tar();
        let cut = write(dir.path(), "cut.tar", &tar[..2560 + 3]);
        assert!(!is_oci_archive(&cut));
        let err = open(&cut).unwrap_err();
        assert!(matches!(err, InputError::Truncated { .. }), "{err}");
    }
}
