//! One pass over a layer's uncompressed tar: hash it (the diff_id), compress
//! it, and write the result into a spool that hashes it again (the digest).
//!
//! Compression is deterministic: a pinned library and level, and a gzip header
//! with no name, no mtime and a fixed OS byte, so the same layer always gives
//! the same blob and a re-run finds it already in the registry. Changing the
//! encoder changes digests and forces one re-upload: say so in the changelog.
//!
//! What is pinned for gzip (see [`super::gzip`]): Intel ISA-L 2.x `igzip` at
//! level [`Compression::DEFAULT_GZIP_LEVEL`] (2), raw deflate in 1 MiB
//! blocks each primed with the previous 32 KiB, joined by sync flushes into
//! one gzip member (mtime 0, XFL 0, OS 255). Level 2 because on real binaries
//! it costs little more than level 1 per core (~260–290 MB/s with both
//! hashes, against ~140 MB/s for the old single-threaded flate2 level 1) and
//! is 1.5 % smaller; level 3 is another 1.3 % smaller for 25 % more CPU.
//! Levels 4–9 go through flate2's miniz_oxide in the same blocks. The block cut depends on
//! the input alone, so thread count and read sizes never change a byte; the
//! library version, the level or the block size do (one re-upload).
//!
//! Gzip work runs on a process-wide pool of one thread per core, shared by
//! every layer in flight; the calling thread reads, hashes the raw bytes and
//! writes finished blocks to the spool in order.

use std::io::{self, Read, Write};

use crate::digest::{Digest, Hasher};
use crate::oci;

use super::gzip;
use super::slots::Slot;
use super::spool::SpoolWriter;

/// How layers are compressed for the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Pushed as plain tar: the blob digest is the diff_id.
    None,
    Gzip {
        level: u32,
    },
    Zstd {
        level: i32,
    },
}

impl Compression {
    /// The ISA-L level: see the module doc before changing it.
    pub const DEFAULT_GZIP_LEVEL: u32 = 2;
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

    /// The OCI layer media type of a blob compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => oci::MEDIA_TYPE_LAYER,
            Compression::Gzip { .. } => oci::MEDIA_TYPE_LAYER_GZIP,
            Compression::Zstd { .. } => oci::MEDIA_TYPE_LAYER_ZSTD,
        }
    }
}

/// What one pass learned about a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedLayer {
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    pub digest: Digest,
    pub size: u64,
    pub media_type: &'static str,
}

/// How much is read from the input at a time.
const READ_CHUNK: usize = 1 << 20;

/// The raw bytes did not hash to the diff_id the caller expected. It travels
/// inside the `io::Error` [`encode_layer`] returns: see [`DiffIdMismatch::of`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the layer's content is {actual}, not the expected {expected}")]
pub struct DiffIdMismatch {
    pub expected: Digest,
    pub actual: Digest,
}

impl DiffIdMismatch {
    /// The mismatch `e` carries, if that is what it is.
    pub fn of(e: &io::Error) -> Option<&DiffIdMismatch> {
        e.get_ref()?.downcast_ref()
    }
}

/// Reads `raw` to its end, compressing into `spool`. `on_read` is called with
/// the number of raw bytes consumed after each chunk (for progress bars).
/// On error the spool is failed, so its readers stop too; that includes raw
/// bytes that do not hash to `expected_diff_id` (when given), so no upload
/// of a wrong layer completes. `_slot`, one of the process-wide encoding
/// slots ([`super::slots`]), is the caller's to take: before anything else
/// the layer needs memory for (nix2container's tar writer); it is given
/// back when this returns.
pub fn encode_layer(
    raw: &mut dyn Read,
    compression: Compression,
    spool: SpoolWriter,
    _slot: Slot<'_>,
    expected_diff_id: Option<&Digest>,
    on_read: &mut dyn FnMut(u64),
) -> io::Result<EncodedLayer> {
    let mut hasher = Hasher::new();
    let (spool, raw_len) = compress_into(raw, compression, &mut hasher, spool, on_read)?;
    let (diff_id, uncompressed_size) = hasher.finish();
    debug_assert_eq!(raw_len, uncompressed_size);
    if let Some(expected) = expected_diff_id.filter(|e| **e != diff_id) {
        let mismatch = DiffIdMismatch {
            expected: expected.clone(),
            actual: diff_id,
        };
        spool.fail(mismatch.to_string());
        return Err(io::Error::new(io::ErrorKind::InvalidData, mismatch));
    }
    let (digest, size) = spool.finish();
    Ok(EncodedLayer {
        diff_id,
        uncompressed_size,
        digest,
        size,
        media_type: compression.media_type(),
    })
}

/// What [`encode_layer_unless`] came to.
#[derive(Debug)]
pub enum Speculation<T> {
    /// Compressed to the end, as [`encode_layer`] gives it.
    Encoded(EncodedLayer),
    /// The blob was not needed after all: from the moment `skip` gave
    /// `reason`, the layer was only hashed, and its spool was dropped
    /// unfinished.
    Skipped {
        diff_id: Digest,
        uncompressed_size: u64,
        reason: T,
    },
}

/// [`encode_layer`] for a layer whose blob may turn out not to be needed
/// (the registry reads that tell are still out). `skip` is asked before
/// every read until it gives a reason to stop; then compression stops (the
/// blocks already queued are finished and thrown away), the slot is given
/// back, and the rest is only hashed, as [`hash_only`] does.
pub fn encode_layer_unless<T>(
    raw: &mut dyn Read,
    compression: Compression,
    spool: SpoolWriter,
    slot: Slot<'_>,
    on_read: &mut dyn FnMut(u64),
    skip: &mut dyn FnMut() -> Option<T>,
) -> io::Result<Speculation<T>> {
    let mut hasher = Hasher::new();
    let mut cut = Cutoff {
        raw: &mut *raw,
        skip,
        reason: None,
    };
    let (spool, _) = compress_into(&mut cut, compression, &mut hasher, spool, on_read)?;
    if let Some(reason) = cut.reason {
        spool.fail("the layer was not needed");
        drop(slot);
        copy_hashing(raw, &mut hasher, &mut io::sink(), on_read)?;
        let (diff_id, uncompressed_size) = hasher.finish();
        return Ok(Speculation::Skipped {
            diff_id,
            uncompressed_size,
            reason,
        });
    }
    let (diff_id, uncompressed_size) = hasher.finish();
    let (digest, size) = spool.finish();
    Ok(Speculation::Encoded(EncodedLayer {
        diff_id,
        uncompressed_size,
        digest,
        size,
        media_type: compression.media_type(),
    }))
}

/// A reader that ends early, for good, once `skip` gives a reason.
struct Cutoff<'a, T> {
    raw: &'a mut dyn Read,
    skip: &'a mut dyn FnMut() -> Option<T>,
    reason: Option<T>,
}

impl<T> Read for Cutoff<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reason.is_none() {
            self.reason = (self.skip)();
        }
        if self.reason.is_some() {
            return Ok(0);
        }
        self.raw.read(buf)
    }
}

/// Hashes `raw` into `hasher` and writes it to `spool` compressed; on error
/// the spool is failed. Returns the spool and the number of raw bytes.
fn compress_into(
    raw: &mut dyn Read,
    compression: Compression,
    hasher: &mut Hasher,
    spool: SpoolWriter,
    on_read: &mut dyn FnMut(u64),
) -> io::Result<(SpoolWriter, u64)> {
    match compression {
        Compression::None => pump(raw, hasher, spool, on_read, |w| w),
        Compression::Gzip { level } => gzip(raw, level, hasher, spool, on_read),
        Compression::Zstd { level } => {
            let mk = |w: SpoolWriter| {
                let mut e = zstd::stream::write::Encoder::new(w, level).expect("zstd level");
                // Deterministic frames: no checksum variations, size unknown upfront.
                e.include_checksum(false).expect("zstd option");
                e
            };
            pump_with(raw, hasher, spool, on_read, mk, |e| e.finish())
        }
    }
}

fn pump(
    raw: &mut dyn Read,
    hasher: &mut Hasher,
    mut spool: SpoolWriter,
    on_read: &mut dyn FnMut(u64),
    _identity: fn(SpoolWriter) -> SpoolWriter,
) -> io::Result<(SpoolWriter, u64)> {
    match copy_hashing(raw, hasher, &mut spool, on_read) {
        Ok(n) => Ok((spool, n)),
        Err(e) => {
            spool.fail(e.to_string());
            Err(e)
        }
    }
}

fn gzip(
    raw: &mut dyn Read,
    level: u32,
    hasher: &mut Hasher,
    mut spool: SpoolWriter,
    on_read: &mut dyn FnMut(u64),
) -> io::Result<(SpoolWriter, u64)> {
    let result = gzip::Pool::global().and_then(|pool| {
        gzip::compress(pool, raw, level, &mut spool, &mut |b| {
            hasher.update(b);
            on_read(b.len() as u64);
        })
    });
    match result {
        Ok(n) => Ok((spool, n)),
        Err(e) => {
            spool.fail(e.to_string());
            Err(e)
        }
    }
}

fn pump_with<E: Write>(
    raw: &mut dyn Read,
    hasher: &mut Hasher,
    spool: SpoolWriter,
    on_read: &mut dyn FnMut(u64),
    make: impl FnOnce(SpoolWriter) -> E,
    finish: impl FnOnce(E) -> io::Result<SpoolWriter>,
) -> io::Result<(SpoolWriter, u64)> {
    let mut encoder = make(spool);
    // On error the encoder (and with it the spool writer) is dropped, which
    // fails the spool's readers.
    let n = copy_hashing(raw, hasher, &mut encoder, on_read)?;
    Ok((finish(encoder)?, n))
}

fn copy_hashing(
    raw: &mut dyn Read,
    hasher: &mut Hasher,
    out: &mut dyn Write,
    on_read: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match raw.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
        on_read(n as u64);
    }
}

/// Reads `raw` to its end only to hash it: for layers the destination already
/// has, whose bytes must still be checked against their diff_id.
pub fn hash_only(raw: &mut dyn Read, on_read: &mut dyn FnMut(u64)) -> io::Result<(Digest, u64)> {
    let mut hasher = Hasher::new();
    copy_hashing(raw, &mut hasher, &mut io::sink(), on_read)?;
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::slots::Slots;
    use crate::layer::spool;

    fn slot() -> Slot<'static> {
        Slots::global().take()
    }

    fn sample() -> Vec<u8> {
        (0..2_500_000u32)
            .map(|i| (i % 97) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    fn encode(data: &[u8], c: Compression) -> (EncodedLayer, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (w, s) = spool::create(dir.path()).unwrap();
        let mut read = 0;
        let layer = encode_layer(&mut &data[..], c, w, slot(), None, &mut |n| read += n).unwrap();
        assert_eq!(read, data.len() as u64);
        let mut out = Vec::new();
        s.copy_to(&mut out).unwrap();
        (layer, out)
    }

    #[test]
    fn every_compression_round_trips_and_hashes_both_sides() {
        let data = sample();
        for c in [
            Compression::None,
            Compression::Gzip { level: 1 },
            Compression::Zstd { level: 3 },
        ] {
            let (layer, blob) = encode(&data, c);
            assert_eq!(layer.diff_id, Digest::of(&data));
            assert_eq!(layer.digest, Digest::of(&blob));
            assert_eq!(layer.size, blob.len() as u64);
            let back = match c {
                Compression::None => blob.clone(),
                Compression::Gzip { .. } => {
                    let mut v = Vec::new();
                    flate2::read::GzDecoder::new(&blob[..])
                        .read_to_end(&mut v)
                        .unwrap();
                    v
                }
                Compression::Zstd { .. } => zstd::decode_all(&blob[..]).unwrap(),
            };
            assert_eq!(back, data, "{c:?}");
        }
    }

    #[test]
    fn compression_is_deterministic() {
        let data = sample();
        let c = Compression::Gzip { level: 1 };
        assert_eq!(encode(&data, c), encode(&data, c));
    }

    /// `encode_layer_unless` with `skip` saying yes from its `n`th question
    /// on (never with `usize::MAX`): what it came to, and the raw bytes it
    /// reported.
    fn speculate(data: &[u8], n: usize) -> (Speculation<usize>, u64, spool::Spool) {
        let dir = tempfile::tempdir().unwrap();
        let (w, s) = spool::create(dir.path()).unwrap();
        let (mut read, mut asked) = (0, 0);
        let outcome = encode_layer_unless(
            &mut &data[..],
            Compression::Gzip { level: 1 },
            w,
            slot(),
            &mut |k| read += k,
            &mut || {
                asked += 1;
                (asked >= n).then_some(asked)
            },
        )
        .unwrap();
        (outcome, read, s)
    }

    #[test]
    fn a_speculative_encode_stops_compressing_when_told_and_still_hashes_it_all() {
        let data = sample();
        let c = Compression::Gzip { level: 1 };
        // Never told: the same layer and blob as `encode_layer`.
        let (outcome, read, s) = speculate(&data, usize::MAX);
        let (layer, blob) = encode(&data, c);
        match outcome {
            Speculation::Encoded(encoded) => assert_eq!(encoded, layer),
            other => panic!("{other:?}"),
        }
        assert_eq!(read, data.len() as u64);
        let mut spooled = Vec::new();
        s.copy_to(&mut spooled).unwrap();
        assert_eq!(spooled, blob);
        // Told at once, or after the first block: every byte is still read
        // and hashed, and the spool is failed, so no upload can use it.
        for n in [1, 3] {
            let (outcome, read, s) = speculate(&data, n);
            match outcome {
                Speculation::Skipped {
                    diff_id,
                    uncompressed_size,
                    reason,
                } => {
                    assert_eq!(diff_id, Digest::of(&data), "told at {n}");
                    assert_eq!(uncompressed_size, data.len() as u64);
                    assert_eq!(reason, n, "asked again after it said stop");
                }
                other => panic!("told at {n}: {other:?}"),
            }
            assert_eq!(read, data.len() as u64);
            assert!(s.finished().is_none());
        }
    }

    #[test]
    fn a_failing_reader_fails_the_spool() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("boom"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (w, s) = spool::create(dir.path()).unwrap();
        let err = encode_layer(
            &mut Broken,
            Compression::Gzip { level: 1 },
            w,
            slot(),
            None,
            &mut |_| {},
        );
        assert!(err.is_err());
        assert!(s.finished().is_none());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(s.done()).is_err());
    }

    #[test]
    fn gzip_matches_a_one_thread_pool_at_every_edge_size() {
        use crate::layer::gzip::{self, BLOCK_SIZE};
        let data = sample();
        let one = gzip::Pool::new(1).unwrap();
        let c = Compression::Gzip {
            level: Compression::DEFAULT_GZIP_LEVEL,
        };
        for len in [0, 1, BLOCK_SIZE, BLOCK_SIZE + 1, data.len()] {
            let (layer, blob) = encode(&data[..len], c);
            let mut alone = Vec::new();
            gzip::compress(
                &one,
                &mut &data[..len],
                Compression::DEFAULT_GZIP_LEVEL,
                &mut alone,
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(blob, alone, "len {len}");
            assert_eq!(layer.uncompressed_size, len as u64);
            assert_eq!(layer.diff_id, Digest::of(&data[..len]));
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&blob[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, &data[..len]);
        }
    }

    #[test]
    fn an_unexpected_diff_id_fails_the_spool_and_says_both() {
        let data = sample();
        let right = Digest::of(&data);
        let wrong = Digest::of(b"another layer");
        for c in [
            Compression::None,
            Compression::Gzip { level: 2 },
            Compression::Zstd { level: 3 },
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (w, s) = spool::create(dir.path()).unwrap();
            let err =
                encode_layer(&mut &data[..], c, w, slot(), Some(&wrong), &mut |_| {}).unwrap_err();
            let mismatch = DiffIdMismatch::of(&err).expect("a diff_id mismatch");
            assert_eq!((&mismatch.expected, &mismatch.actual), (&wrong, &right));
            assert!(s.finished().is_none(), "{c:?}: the spool must fail");
            // The digest it was told is accepted.
            let (w, _s) = spool::create(dir.path()).unwrap();
            let layer =
                encode_layer(&mut &data[..], c, w, slot(), Some(&right), &mut |_| {}).unwrap();
            assert_eq!(layer.diff_id, right);
        }
    }

    #[test]
    fn a_reader_failing_midway_fails_the_spool() {
        // Fails after several blocks are already with the workers.
        struct Dies(usize);
        impl Read for Dies {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(b'x');
                self.0 -= n;
                Ok(n)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (w, s) = spool::create(dir.path()).unwrap();
        let mut read = 0;
        let c = Compression::Gzip { level: 2 };
        let err =
            encode_layer(&mut Dies(5 << 19), c, w, slot(), None, &mut |n| read += n).unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(read, 5 << 19);
        assert!(s.finished().is_none());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let spool_err = rt.block_on(s.done()).unwrap_err();
        assert!(
            spool_err.to_string().contains("disk on fire"),
            "{spool_err}"
        );
    }

    #[test]
    fn the_pinned_gzip_encoder_gives_the_pinned_digest() {
        // If this fails, the library, level or block size changed: every
        // gzip layer gets a new digest and is uploaded once more. Say so in
        // the changelog, then update the digest here.
        let data = sample();
        let (layer, _) = encode(
            &data,
            Compression::Gzip {
                level: Compression::DEFAULT_GZIP_LEVEL,
            },
        );
        assert_eq!(
            layer.digest.to_string(),
            "sha256:5a6ecd8e41adf1994c45305b420ab03b79f0151174894ef8d2558e1c73e05772"
        );
    }
}
