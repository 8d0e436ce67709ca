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
    /// `--dry-run`: would be uploaded.
    Planned,
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
    fn on_blob_done(
        &self,
        _destination: &str,
        _digest: &Digest,
        _size: u64,
        _outcome: BlobOutcome,
    ) {
    }
    /// A manifest or index is in place at `destination` under its digest;
    /// `already` when the registry had it and nothing was sent.
    fn on_manifest_pushed(
        &self,
        _destination: &str,
        _what: &str,
        _digest: &Digest,
        _already: bool,
    ) {
    }
    /// `tag` at `destination` now points at the index.
    fn on_tag(&self, _destination: &str, _tag: &str) {}
    /// A notice for the user (already formatted, one line).
    fn on_notice(&self, _message: &str) {}
    /// Nothing more is coming: a live display clears itself, before the
    /// results go to stdout on the same terminal.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Reporter for Silent {}

/// Counts blob bytes by outcome while passing every event on.
pub struct Tally {
    inner: std::sync::Arc<dyn Reporter>,
    uploaded: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
    mounted: std::sync::atomic::AtomicU64,
    layers_reused: std::sync::atomic::AtomicU64,
}

/// Totals counted by a [`Tally`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Blob bytes sent, over all destinations.
    pub bytes_uploaded: u64,
    /// Blob bytes not sent because the destination had them or mounted them.
    pub bytes_skipped: u64,
    /// Of those, the bytes mounted from another repository.
    pub bytes_mounted: u64,
    /// Layers reused through the known-layer map without being compressed.
    pub layers_reused: u64,
}

impl Tally {
    pub fn new(inner: std::sync::Arc<dyn Reporter>) -> Tally {
        Tally {
            inner,
            uploaded: Default::default(),
            skipped: Default::default(),
            mounted: Default::default(),
            layers_reused: Default::default(),
        }
    }

    pub fn totals(&self) -> Totals {
        use std::sync::atomic::Ordering::Relaxed;
        Totals {
            bytes_uploaded: self.uploaded.load(Relaxed),
            bytes_skipped: self.skipped.load(Relaxed),
            bytes_mounted: self.mounted.load(Relaxed),
            layers_reused: self.layers_reused.load(Relaxed),
        }
    }
}

impl Reporter for Tally {
    fn on_input_started(&self, input: &str) {
        self.inner.on_input_started(input)
    }
    fn on_layer_started(&self, input: &str, member: &str, size: u64) -> usize {
        self.inner.on_layer_started(input, member, size)
    }
    fn on_layer_read(&self, id: usize, bytes: u64) {
        self.inner.on_layer_read(id, bytes)
    }
    fn on_layer_done(&self, id: usize, skipped: bool) {
        if skipped {
            self.layers_reused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.on_layer_done(id, skipped)
    }
    fn on_upload_progress(&self, destination: &str, bytes: i64) {
        self.inner.on_upload_progress(destination, bytes)
    }
    fn on_blob_done(&self, destination: &str, digest: &Digest, size: u64, outcome: BlobOutcome) {
        let counter = match outcome {
            BlobOutcome::Uploaded | BlobOutcome::Planned => &self.uploaded,
            BlobOutcome::AlreadyPresent | BlobOutcome::Mounted => &self.skipped,
        };
        counter.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        if outcome == BlobOutcome::Mounted {
            self.mounted
                .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.on_blob_done(destination, digest, size, outcome)
    }
    fn on_manifest_pushed(&self, destination: &str, what: &str, digest: &Digest, already: bool) {
        self.inner
            .on_manifest_pushed(destination, what, digest, already)
    }
    fn on_tag(&self, destination: &str, tag: &str) {
        self.inner.on_tag(destination, tag)
    }
    fn on_notice(&self, message: &str) {
        self.inner.on_notice(message)
    }
    fn finish(&self) {
        self.inner.finish()
    }
}
