//! Progress events, spoken in manifold's words.
//!
//! The library reports through a [`Reporter`] it is handed; it never draws.
//! `cli::progress` turns the events into indicatif bars on a terminal and into
//! plain lines in CI, and tests can record them.

use crate::digest::Digest;

/// What happened to one blob at one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobOutcome {
    /// Its bytes were sent.
    Uploaded,
    /// The destination already had it (HEAD, or the known-layer map).
    AlreadyPresent,
    /// Mounted from another repository of the same registry.
    Mounted,
}

/// Receives progress events. Every method has a no-op default.
pub trait Reporter: Send + Sync {
    /// An input started (a stream script ran, an archive opened).
    fn on_input_started(&self, _input: &str) {}
    /// A layer of `input` started to be read; `size` is its uncompressed size
    /// when the archive header says it. Returns an id for the calls below.
    fn on_layer_started(&self, _input: &str, _member: &str, _size: u64) -> usize {
        0
    }
    /// `bytes` more uncompressed bytes of layer `id` were read.
    fn on_layer_read(&self, _id: usize, _bytes: u64) {}
    /// Layer `id` is read, compressed and hashed (or only hashed, if `skipped`).
    fn on_layer_done(&self, _id: usize, _skipped: bool) {}
    /// `bytes` more bytes of a blob were sent to `destination`; negative when a
    /// failed try gives its bytes back.
    fn on_upload_progress(&self, _destination: &str, _bytes: i64) {}
    /// A blob is in place at `destination`.
    fn on_blob_done(&self, _destination: &str, _digest: &Digest, _size: u64, _outcome: BlobOutcome) {
    }
    /// A manifest or index is in place at `destination` under its digest.
    fn on_manifest_pushed(&self, _destination: &str, _what: &str, _digest: &Digest) {}
    /// `tag` at `destination` now points at the index.
    fn on_tag(&self, _destination: &str, _tag: &str) {}
    /// A notice for the user (already formatted, one line).
    fn on_notice(&self, _message: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Reporter for Silent {}
