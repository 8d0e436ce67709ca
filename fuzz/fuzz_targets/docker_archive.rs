//! Arbitrary bytes as a docker-archive: `read_docker_archive` must return an
//! image or an error, never panic. Input that starts like gzip or zstd is
//! decoded first, as `open_archive` does, so compressed seeds reach the tar
//! reader too; decoded output is capped so a small bomb cannot fill the disk.
//! Plain input is also written to a file and read as an `archive:` input
//! is, with each kind of image choice: looked into first
//! (`Selection::prepare`), then read with that selection.
#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use manifold::input::{
    read_docker_archive, read_selected, ArchiveCompression, ArchiveImage, ImageChoice,
    ReadOptions, Selection,
};
use manifold::layer::Compression;

/// Decoded bytes read at most from a compressed input.
const DECODED_LIMIT: u64 = 8 << 20;

fn spool_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
}

fn read(mut reader: impl Read) {
    let opts = ReadOptions::new(Compression::None, spool_dir().path());
    let mut events = 0u64;
    if let Ok(image) = read_docker_archive("fuzz", &mut reader, &opts, &mut |_| events += 1) {
        check(&image);
    }
}

/// The plain archive `data` as a file input, choosing its only image, the
/// first, the second, or `x:1`.
fn read_as_file(data: &[u8]) {
    let mut file = tempfile::NamedTempFile::new_in(spool_dir().path()).expect("a temp file");
    std::io::Write::write_all(&mut file, data).expect("written");
    let opts = ReadOptions::new(Compression::None, spool_dir().path());
    for choice in [
        ImageChoice::Only,
        ImageChoice::Index(0),
        ImageChoice::Index(1),
        ImageChoice::parse("x:1"),
    ] {
        let Ok(selection) = Selection::prepare("fuzz", file.path(), choice) else {
            continue;
        };
        if let Ok(image) = read_selected("fuzz", &mut &data[..], &opts, &selection, &mut |_| {})
        {
            check(&image);
        }
    }
}

/// What the reader returned must hold together.
fn check(image: &ArchiveImage) {
    let diff_ids = image
        .summary
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.clone())
        .unwrap_or_default();
    assert_eq!(diff_ids.len(), image.layers.len());
    for (layer, diff_id) in image.layers.iter().zip(&diff_ids) {
        assert_eq!(&layer.diff_id, diff_id);
    }
    assert_eq!(
        manifold::digest::Digest::of(&image.config),
        image.config_digest
    );
}

fuzz_target!(|data: &[u8]| {
    match ArchiveCompression::sniff(data) {
        ArchiveCompression::Gzip => {
            read(manifold::layer::gunzip::decoder(data).take(DECODED_LIMIT));
        }
        ArchiveCompression::Zstd => {
            if let Ok(decoder) = zstd::Decoder::new(data) {
                read(decoder.take(DECODED_LIMIT));
            }
        }
        ArchiveCompression::None => {
            read(data);
            read_as_file(data);
        }
    }
});
