//! Arbitrary bytes as an `oci-archive:` file: `OciArchive::open` must index
//! it or refuse it, never panic, and what it indexes must read back within
//! the file. Input that starts like gzip or zstd goes through the
//! decompressed temp copy, as a compressed archive does.
#![no_main]

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use manifold::input::oci_archive::{is_oci_archive, OciArchive};

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
}

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::NamedTempFile::new_in(dir().path()).expect("a temp file");
    file.write_all(data).expect("written");
    let path = file.path();
    let detected = is_oci_archive(path);
    let Ok(archive) = OciArchive::open(path, dir().path(), &AtomicBool::new(false)) else {
        return;
    };
    let len = std::fs::metadata(archive.data_path()).expect("the data file").len();
    for name in ["oci-layout", "index.json", "blobs/sha256/a", "./index.json"] {
        if let Some(span) = archive.member(name) {
            assert!(span.offset + span.size <= len, "`{name}` past the end");
            let bytes = archive.read_member(name, 1 << 20);
            if span.size <= 1 << 20 {
                assert_eq!(bytes.expect("a member in range reads").len() as u64, span.size);
            }
        }
    }
    // Detection looks through plain tars only.
    if detected {
        assert!(archive.data_path() == path);
    }
    drop(archive);
    // Only the input itself is left: a decompressed copy is gone.
    assert_eq!(std::fs::read_dir(dir().path()).expect("listed").count(), 1);
});
