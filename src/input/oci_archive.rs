//! An OCI image layout packed in a tar file (`oci-archive:PATH[:TAG]`, as
//! `skopeo copy … oci-archive:`, `podman save --format oci-archive` and
//! `buildah push … oci-archive:` write it).
//!
//! The tar is never unpacked: one pass over its headers, seeking past the
//! data, maps each member name to where its bytes lie, and blobs are read
//! from there by range, as often as uploads need. A gzip or zstd archive
//! cannot be read by range, so it is first decompressed into a temp file
//! (removed when the archive is dropped), as skopeo unpacks one.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::detect::ArchiveCompression;
use super::InputError;

/// Where a member's bytes lie in the (plain) tar file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug)]
enum Member {
    Data(Span),
    /// A hard or symbolic link, by the archive-relative name it points at.
    Link(String),
}

/// How many links a name may go through before it is given up on.
const MAX_LINKS: usize = 16;

/// An OCI layout archive, indexed.
#[derive(Debug)]
pub struct OciArchive {
    /// The input's path as given, for messages.
    input: String,
    /// The plain tar the spans point into: the input, or its decompressed copy.
    data: PathBuf,
    members: HashMap<String, Member>,
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
        let mut file = File::open(path).map_err(open_err)?;
        let mut head = [0u8; 4];
        let n = read_up_to(&mut file, &mut head).map_err(open_err)?;
        file.rewind().map_err(open_err)?;
        let (data, decompressed) = match ArchiveCompression::sniff(&head[..n]) {
            ArchiveCompression::None => (path.to_owned(), None),
            compression => {
                let copy = decompress(&input, file, compression, spool_dir, cancel)?;
                (copy.to_path_buf(), Some(copy))
            }
        };
        let file = File::open(&data).map_err(open_err)?;
        let members = scan(&input, file)?;
        let archive = OciArchive {
            input,
            data,
            members,
            _decompressed: decompressed,
        };
        for required in ["oci-layout", "index.json"] {
            if archive.member(required).is_none() {
                return Err(InputError::NotAnOciArchive {
                    input: archive.input,
                    missing: required,
                });
            }
        }
        Ok(archive)
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
        let mut name = name.to_owned();
        for _ in 0..=MAX_LINKS {
            match self.members.get(&name)? {
                Member::Data(span) => return Some(*span),
                Member::Link(to) => name = to.clone(),
            }
        }
        None
    }

    /// The whole of a small member, refused past `max` bytes.
    pub fn read_member(&self, name: &str, max: u64) -> Result<Vec<u8>, InputError> {
        let span = self.member(name).ok_or_else(|| InputError::MissingMember {
            input: self.input.clone(),
            member: name.to_owned(),
            role: "a file of the OCI layout",
        })?;
        if span.size > max {
            return Err(InputError::MemberTooLarge {
                input: self.input.clone(),
                member: name.to_owned(),
                size: span.size,
                limit: max,
            });
        }
        let member_err = |source| InputError::Member {
            input: self.input.clone(),
            member: name.to_owned(),
            source,
        };
        let mut file = File::open(&self.data).map_err(member_err)?;
        file.seek(SeekFrom::Start(span.offset))
            .map_err(member_err)?;
        let mut bytes = Vec::with_capacity(span.size as usize);
        file.take(span.size)
            .read_to_end(&mut bytes)
            .map_err(member_err)?;
        Ok(bytes)
    }
}

/// Whether the plain tar at `path` is an OCI layout archive: it has
/// `oci-layout` and `index.json` but no `manifest.json` (an archive with
/// both, as `docker save` ≥ 25 writes, is read as a docker-archive).
pub fn is_oci_archive(path: &Path) -> bool {
    let Ok(members) = File::open(path)
        .map_err(|_| ())
        .and_then(|f| scan(&path.display().to_string(), f).map_err(|_| ()))
    else {
        return false;
    };
    members.contains_key("oci-layout")
        && members.contains_key("index.json")
        && !members.contains_key("manifest.json")
}

/// The member name of a blob.
pub fn blob_name(digest: &crate::digest::Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Decompresses `file` into a temp file in `spool_dir`.
fn decompress(
    input: &str,
    file: File,
    compression: ArchiveCompression,
    spool_dir: &Path,
    cancel: &AtomicBool,
) -> Result<tempfile::TempPath, InputError> {
    let spool_err = |source| InputError::Spool {
        dir: spool_dir.to_owned(),
        source,
    };
    let read_err = |source| InputError::Tar {
        input: input.to_owned(),
        source,
    };
    let buffered = BufReader::with_capacity(1 << 20, file);
    let decoder: Box<dyn Read> = match compression {
        ArchiveCompression::Gzip => Box::new(crate::layer::gunzip::decoder(buffered)),
        _ => Box::new(zstd::Decoder::with_buffer(buffered).map_err(read_err)?),
    };
    let mut copy = tempfile::Builder::new()
        .prefix(".manifold-oci-archive-")
        .tempfile_in(spool_dir)
        .map_err(spool_err)?;
    let mut reader = Cancellable {
        inner: decoder,
        cancel,
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        io::Write::write_all(copy.as_file_mut(), &buf[..n]).map_err(spool_err)?;
    }
    Ok(copy.into_temp_path())
}

struct Cancellable<'a> {
    inner: Box<dyn Read + 'a>,
    cancel: &'a AtomicBool,
}

impl Read for Cancellable<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("publish cancelled"));
        }
        self.inner.read(buf)
    }
}

/// One pass over the headers of a plain tar, seeking past member data.
fn scan(input: &str, file: File) -> Result<HashMap<String, Member>, InputError> {
    let tar_err = |source| InputError::Tar {
        input: input.to_owned(),
        source,
    };
    let len = file.metadata().map_err(tar_err)?.len();
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek().map_err(tar_err)? {
        let entry = entry.map_err(tar_err)?;
        let path = entry.path().map_err(tar_err)?;
        let Some(name) = normalize(Path::new(""), &path) else {
            continue;
        };
        let kind = entry.header().entry_type();
        let member = if kind.is_file() || kind.is_contiguous() {
            let span = Span {
                offset: entry.raw_file_position(),
                size: entry.size(),
            };
            if span.offset.saturating_add(span.size) > len {
                return Err(InputError::Truncated {
                    input: input.to_owned(),
                });
            }
            Member::Data(span)
        } else if kind.is_hard_link() || kind.is_symlink() {
            let Some(target) = entry.link_name().map_err(tar_err)? else {
                continue;
            };
            // A hard link names its target from the archive's root, a
            // symlink from its own directory.
            let base = if kind.is_symlink() {
                Path::new(&name).parent().unwrap_or(Path::new(""))
            } else {
                Path::new("")
            };
            match normalize(base, &target) {
                Some(to) => Member::Link(to),
                None => continue,
            }
        } else {
            continue;
        };
        members.insert(name, member);
    }
    Ok(members)
}

/// `path` under `base` as an archive-relative name (`./` and `/` dropped),
/// or `None` for the root itself or a name that climbs out of it.
fn normalize(base: &Path, path: &Path) -> Option<String> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    if !path.has_root() {
        parts.extend(base.components().map(Component::as_os_str));
    }
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    if parts.is_empty() {
        return None;
    }
    let joined: PathBuf = parts.iter().collect();
    joined.to_str().map(str::to_owned)
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

    #[test]
    fn names_are_normalized_and_kept_inside_the_archive() {
        let n = |base: &str, p: &str| normalize(Path::new(base), Path::new(p));
        assert_eq!(n("", "./a/./b"), Some("a/b".into()));
        assert_eq!(n("", "/index.json"), Some("index.json".into()));
        assert_eq!(n("blobs/sha256", "../x"), Some("blobs/x".into()));
        assert_eq!(n("blobs/sha256", "/x"), Some("x".into()));
        assert_eq!(n("", "../x"), None);
        assert_eq!(n("", "./"), None);
    }
}
