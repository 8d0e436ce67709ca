//! Detection of an input's kind by its content (formats.md §1.5).
//!
//! Symlinks are resolved first (Nix's `result` links). The first bytes decide,
//! never the name and never the execute bit alone: store files are 0444 or
//! 0555 whatever they hold. Compressed files are looked into, so a `.tar.gz`
//! that is not a tar is refused here rather than halfway through a push.
//! Opening and reading the input is left to [`super::open`].

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::InputError;

/// How a docker-archive file is compressed as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveCompression {
    None,
    Gzip,
    Zstd,
}

impl ArchiveCompression {
    /// The compression named by a file's first bytes.
    pub fn sniff(head: &[u8]) -> ArchiveCompression {
        if head.starts_with(&[0x1f, 0x8b]) {
            ArchiveCompression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            ArchiveCompression::Zstd
        } else {
            ArchiveCompression::None
        }
    }

    /// The compression of the file at `path`, by its first bytes.
    pub fn of_file(path: &Path) -> io::Result<ArchiveCompression> {
        Ok(ArchiveCompression::sniff(&read_head(
            &mut File::open(path)?,
            4,
        )?))
    }
}

/// What an input turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Archive {
        compression: ArchiveCompression,
    },
    Stream,
    Nix2Container,
    OciLayout,
    /// A plain tar holding an OCI image layout (and no `manifest.json`).
    OciArchive,
}

/// How much of a file is looked at: a tar header is 512 bytes.
const HEAD: usize = 512;

/// How large a JSON file may be to be parsed while detecting.
const JSON_LIMIT: u64 = 64 << 20;

/// Whether a 512-byte block is a POSIX (ustar, pax) or GNU tar header.
pub(crate) fn is_tar_header(block: &[u8]) -> bool {
    block.len() >= 262 && &block[257..262] == b"ustar"
}

/// Detects the kind of the input at `path`.
pub fn detect(path: &Path) -> Result<Detected, InputError> {
    let input = path.display().to_string();
    let open_err = |source| InputError::Open {
        input: input.clone(),
        source,
    };
    let unrecognized = |found: &str| InputError::Unrecognized {
        input: input.clone(),
        found: found.to_owned(),
    };
    let resolved = path.canonicalize().map_err(open_err)?;
    let meta = resolved.metadata().map_err(open_err)?;
    if meta.is_dir() {
        return if resolved.join("oci-layout").is_file() && resolved.join("index.json").is_file() {
            Ok(Detected::OciLayout)
        } else {
            Err(unrecognized(
                "a directory without `oci-layout` and `index.json`",
            ))
        };
    }
    if !meta.is_file() {
        return Err(unrecognized("neither a regular file nor a directory"));
    }
    let mut file = File::open(&resolved).map_err(open_err)?;
    let head = read_head(&mut file, HEAD).map_err(open_err)?;
    if head.is_empty() {
        return Err(unrecognized("an empty file"));
    }
    let compression = ArchiveCompression::sniff(&head);
    if compression != ArchiveCompression::None {
        let file = File::open(&resolved).map_err(open_err)?;
        let inner = match compression {
            ArchiveCompression::Gzip => {
                read_head(&mut flate2::read::MultiGzDecoder::new(file), HEAD)
            }
            _ => zstd::Decoder::new(file).and_then(|mut d| read_head(&mut d, HEAD)),
        };
        let name = if compression == ArchiveCompression::Gzip {
            "gzip"
        } else {
            "zstd"
        };
        return match inner {
            Ok(block) if is_tar_header(&block) => Ok(Detected::Archive { compression }),
            Ok(_) => Err(unrecognized(&format!(
                "{name}-compressed data that is not a tar archive"
            ))),
            Err(e) => Err(unrecognized(&format!(
                "{name}-compressed data that cannot be decompressed ({e})"
            ))),
        };
    }
    if is_tar_header(&head) {
        // Only a plain tar is looked through: its headers are read by seeking
        // past the data. A compressed OCI archive is named by the docker-archive
        // reader, which finds no `manifest.json`.
        return Ok(if super::oci_archive::is_oci_archive(&resolved) {
            Detected::OciArchive
        } else {
            Detected::Archive { compression }
        });
    }
    if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return if meta.len() <= JSON_LIMIT && is_nix2container(&resolved) {
            Ok(Detected::Nix2Container)
        } else {
            Err(unrecognized(
                "a JSON file that is not a nix2container image (it needs `version`, `image-config` and `layers`)",
            ))
        };
    }
    if head.starts_with(b"#!") {
        return if meta.permissions().mode() & 0o111 != 0 {
            Ok(Detected::Stream)
        } else {
            Err(unrecognized(
                "a script without execute permission; if it is a stream, `chmod +x` it",
            ))
        };
    }
    Err(unrecognized(
        "not a tar archive, gzip, zstd, JSON or `#!` script",
    ))
}

/// Up to `n` bytes from the start of `r`.
fn read_head(r: &mut dyn Read, n: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

fn is_nix2container(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let Ok(serde_json::Value::Object(doc)) =
        serde_json::from_reader::<_, serde_json::Value>(io::BufReader::new(file))
    else {
        return false;
    };
    ["version", "image-config", "layers"]
        .iter()
        .all(|k| doc.contains_key(*k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::tests::testdata;
    use std::fs;
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn found(r: Result<Detected, InputError>) -> String {
        match r {
            Err(InputError::Unrecognized { found, .. }) => found,
            other => panic!("expected unrecognized, got {other:?}"),
        }
    }

    #[test]
    fn fixtures_are_detected_by_content() {
        let d = |n: &str| detect(&testdata(n)).unwrap();
        let archive = |compression| Detected::Archive { compression };
        assert_eq!(d("fd-amd64.tar"), archive(ArchiveCompression::None));
        assert_eq!(d("fd-amd64.tar.gz"), archive(ArchiveCompression::Gzip));
        assert_eq!(d("fd-arm64.tar.zst"), archive(ArchiveCompression::Zstd));
        assert_eq!(
            d("hello-buildimage.tar.gz"),
            archive(ArchiveCompression::Gzip)
        );
        assert_eq!(d("stream-amd64"), Detected::Stream);
    }

    #[test]
    fn names_and_exec_bits_do_not_decide() {
        let dir = tempfile::tempdir().unwrap();
        let tar = fs::read(testdata("fd-amd64.tar")).unwrap();
        // An executable tar with a script-like name is still a tar.
        let p = write(dir.path(), "stream.sh", &tar[..4096], 0o555);
        assert_eq!(
            detect(&p).unwrap(),
            Detected::Archive {
                compression: ArchiveCompression::None
            }
        );
        // A symlink (a `result` link) is resolved.
        let link = dir.path().join("result");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(detect(&link).unwrap(), Detected::Archive { .. }));
        let s = write(dir.path(), "script", b"#!/bin/sh\necho\n", 0o444);
        assert!(found(detect(&s)).contains("chmod +x"));
    }

    #[test]
    fn json_is_nix2container_only_with_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let n2c = br#"
	{"version": 1, "image-config": {}, "layers": [], "arch": "arm64"}"#;
        let p = write(dir.path(), "image.json", n2c, 0o444);
        assert_eq!(detect(&p).unwrap(), Detected::Nix2Container);
        let p = write(dir.path(), "index.json", br#"{"schemaVersion": 2}"#, 0o444);
        assert!(found(detect(&p)).contains("not a nix2container"));
    }

    #[test]
    fn oci_layout_directories_and_others() {
        let dir = tempfile::tempdir().unwrap();
        assert!(found(detect(dir.path())).contains("directory"));
        write(
            dir.path(),
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            0o444,
        );
        write(dir.path(), "index.json", br#"{}"#, 0o444);
        assert_eq!(detect(dir.path()).unwrap(), Detected::OciLayout);
    }

    #[test]
    fn a_plain_tar_of_an_oci_layout_is_an_oci_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for name in ["oci-layout", "index.json"] {
            let mut h = tar::Header::new_ustar();
            h.set_size(2);
            b.append_data(&mut h, name, &b"{}"[..]).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let p = write(dir.path(), "layout.tar", &tar, 0o444);
        assert_eq!(detect(&p).unwrap(), Detected::OciArchive);
        // Compressed, it is not looked through.
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        let p = write(dir.path(), "layout.tar.zst", &zst, 0o444);
        assert_eq!(
            detect(&p).unwrap(),
            Detected::Archive {
                compression: ArchiveCompression::Zstd
            }
        );
    }

    #[test]
    fn garbage_is_refused_naming_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "empty", b"", 0o444);
        assert!(found(detect(&p)).contains("empty"));
        let p = write(dir.path(), "elf", b"\x7fELF\x02\x01\x01garbage", 0o555);
        let err = detect(&p).unwrap_err();
        assert!(err.to_string().contains("elf`"), "{err}");
        // gzip of something that is not a tar.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[b'x'; 2000]).unwrap();
        let p = write(dir.path(), "x.tar.gz", &gz.finish().unwrap(), 0o444);
        assert!(found(detect(&p)).contains("gzip-compressed data that is not a tar"));
        // A cut gzip header.
        let p = write(dir.path(), "cut.gz", &[0x1f, 0x8b, 8], 0o444);
        assert!(found(detect(&p)).contains("cannot be decompressed"));
        let missing = dir.path().join("missing");
        assert!(matches!(detect(&missing), Err(InputError::Open { .. })));
    }
}
