//! Arbitrary bytes as a docker-archive: `read_docker_archive` must return an
//! image or an error, never panic. Input that starts like gzip or zstd is
//! decoded first, as `open_archive` does, so compressed seeds reach the tar
//! reader too; decoded output is capped so a small bomb cannot fill the disk.
#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use manifold::input::{read_docker_archive, ArchiveCompression, ReadOptions};
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
        // What the reader returned must hold together.
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
        ArchiveCompression::None => read(data),
    }
});
