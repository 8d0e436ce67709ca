//! A spool: an unlinked temp file that one writer fills while any number of
//! readers follow it.
//!
//! A layer is compressed once, into a spool. Uploads read the spool as it
//! grows (so the network overlaps with compression), several destinations
//! read it at their own pace, and a failed upload reads it again from the
//! start: nothing is compressed twice and no blob is held in memory. The file
//! is unlinked at creation, so it disappears with its last handle, even when
//! the process is killed.
//!
//! The last few MiB written are also kept in memory: an upload that keeps up
//! with the writer (the usual case) takes them from there, without reading
//! the file back or copying them again. Retries and slow readers read the
//! file.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::watch;

use crate::digest::{Digest, Hasher};

/// How far the writer has got.
#[derive(Clone, Debug)]
enum State {
    Writing { written: u64 },
    Done { written: u64, digest: Digest },
    Failed { written: u64, reason: String },
}

impl State {
    fn written(&self) -> u64 {
        match self {
            State::Writing { written }
            | State::Done { written, .. }
            | State::Failed { written, .. } => *written,
        }
    }
}

/// How many of the last bytes written stay in memory for readers.
const RECENT_LIMIT: usize = 2 << 20;

/// The newest writes, oldest first: at most [`RECENT_LIMIT`] bytes, or the
/// last write alone when it is larger.
#[derive(Default)]
struct Recent {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, offset: u64, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push_back((offset, chunk));
        while self.bytes > RECENT_LIMIT && self.chunks.len() > 1 {
            if let Some((_, old)) = self.chunks.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// Up to `max` bytes from `offset` on, if they are still here.
    fn get(&self, offset: u64, max: usize) -> Option<Bytes> {
        let (start, chunk) = self
            .chunks
            .iter()
            .find(|(start, chunk)| *start <= offset && offset < start + chunk.len() as u64)?;
        let from = (offset - start) as usize;
        Some(chunk.slice(from..chunk.len().min(from + max)))
    }
}

/// The writing half. Dropping it without [`SpoolWriter::finish`] fails every
/// reader.
pub struct SpoolWriter {
    file: Arc<File>,
    recent: Arc<Mutex<Recent>>,
    state: watch::Sender<State>,
    hasher: Option<Hasher>,
    written: u64,
}

/// The reading half: cheap to clone, each clone reads from wherever it likes.
#[derive(Clone)]
pub struct Spool {
    file: Arc<File>,
    recent: Arc<Mutex<Recent>>,
    state: watch::Receiver<State>,
}

/// Creates an empty spool in `dir`.
pub fn create(dir: &Path) -> io::Result<(SpoolWriter, Spool)> {
    let file = Arc::new(tempfile::tempfile_in(dir)?);
    let recent = Arc::new(Mutex::new(Recent::default()));
    let (tx, rx) = watch::channel(State::Writing { written: 0 });
    Ok((
        SpoolWriter {
            file: file.clone(),
            recent: recent.clone(),
            state: tx,
            hasher: Some(Hasher::new()),
            written: 0,
        },
        Spool {
            file,
            recent,
            state: rx,
        },
    ))
}

impl SpoolWriter {
    /// Marks the spool complete; returns the digest and size of its bytes.
    pub fn finish(mut self) -> (Digest, u64) {
        let (digest, written) = self.hasher.take().expect("finish once").finish();
        // A finished spool may wait long for its uploads (or retries): its
        // memory goes now, the file has every byte.
        self.forget_recent();
        self.state.send_replace(State::Done {
            written,
            digest: digest.clone(),
        });
        (digest, written)
    }

    fn forget_recent(&self) {
        *self.recent.lock().unwrap_or_else(|e| e.into_inner()) = Recent::default();
    }

    /// Marks the spool failed; readers get `reason` as an error.
    pub fn fail(mut self, reason: impl Into<String>) {
        self.hasher = None;
        self.forget_recent();
        self.state.send_replace(State::Failed {
            written: self.written,
            reason: reason.into(),
        });
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        self.forget_recent();
        if self.hasher.is_some() {
            self.state.send_replace(State::Failed {
                written: self.written,
                reason: "the layer was abandoned before it was complete".into(),
            });
        }
    }
}

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all_at(buf, self.written)?;
        if let Some(h) = &mut self.hasher {
            h.update(buf);
        }
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.written, Bytes::copy_from_slice(buf));
        self.written += buf.len() as u64;
        let written = self.written;
        self.state.send_replace(State::Writing { written });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How much one read takes from the spool.
const READ_CHUNK: u64 = 1 << 20;

impl Spool {
    /// Waits for the writer to finish; the digest and size of the bytes.
    pub async fn done(&self) -> io::Result<(Digest, u64)> {
        self.wait_for(u64::MAX).await;
        match &*self.state.borrow() {
            State::Done { written, digest } => Ok((digest.clone(), *written)),
            State::Failed { reason, .. } => Err(io::Error::other(reason.clone())),
            State::Writing { .. } => Err(io::Error::other("spool writer vanished")),
        }
    }

    /// The digest and size if the writer has finished.
    pub fn finished(&self) -> Option<(Digest, u64)> {
        match &*self.state.borrow() {
            State::Done { written, digest } => Some((digest.clone(), *written)),
            _ => None,
        }
    }

    /// Waits until at least `bytes` are written, or the writer has finished
    /// or failed, whichever comes first.
    pub async fn wait_for(&self, bytes: u64) {
        let mut rx = self.state.clone();
        // An error means the writer is gone: its last state is final too.
        let _ = rx
            .wait_for(|s| !matches!(s, State::Writing { written } if *written < bytes))
            .await;
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.state.borrow().written()
    }

    /// The whole content from the start, following the writer until it
    /// finishes. Ends with an error if the writer fails.
    pub fn stream(&self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let spool = self.clone();
        futures::stream::try_unfold((spool, 0u64), |(mut spool, offset)| async move {
            loop {
                let state = spool.state.borrow_and_update().clone();
                let written = state.written();
                if offset < written {
                    let len = (written - offset).min(READ_CHUNK) as usize;
                    let recent = spool
                        .recent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(offset, len);
                    if let Some(chunk) = recent {
                        let next = offset + chunk.len() as u64;
                        return Ok(Some((chunk, (spool, next))));
                    }
                    let file = spool.file.clone();
                    let buf = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; len];
                        file.read_exact_at(&mut buf, offset).map(|_| buf)
                    })
                    .await
                    .map_err(io::Error::other)??;
                    return Ok(Some((Bytes::from(buf), (spool, offset + len as u64))));
                }
                match state {
                    State::Done { .. } => return Ok(None),
                    State::Failed { reason, .. } => return Err(io::Error::other(reason)),
                    State::Writing { .. } => {
                        if spool.state.changed().await.is_err() {
                            // Writer dropped: loop once more to read its final state.
                            let last = spool.state.borrow().clone();
                            if let State::Writing { .. } = last {
                                return Err(io::Error::other("spool writer vanished"));
                            }
                        }
                    }
                }
            }
        })
    }

    /// Copies the finished content into `out` (used by the OCI layout
    /// destination). Call after [`Spool::done`].
    pub fn copy_to(&self, out: &mut impl Write) -> io::Result<u64> {
        let total = self.written();
        let mut offset = 0;
        let mut buf = vec![0u8; READ_CHUNK as usize];
        while offset < total {
            let len = (total - offset).min(READ_CHUNK) as usize;
            self.file.read_exact_at(&mut buf[..len], offset)?;
            out.write_all(&buf[..len])?;
            offset += len as u64;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    async fn read_all(s: &Spool) -> io::Result<Vec<u8>> {
        s.stream()
            .try_fold(Vec::new(), |mut acc, b| async move {
                acc.extend_from_slice(&b);
                Ok(acc)
            })
            .await
    }

    #[tokio::test]
    async fn readers_follow_the_writer_and_see_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, spool) = create(dir.path()).unwrap();
        let reader = tokio::spawn({
            let s = spool.clone();
            async move { read_all(&s).await.unwrap() }
        });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn(move || {
            for chunk in data.chunks(70_000) {
                w.write_all(chunk).unwrap();
            }
            w.finish()
        });
        let (digest, size) = writer.join().unwrap();
        let got = reader.await.unwrap();
        assert_eq!(size, 3_000_000);
        assert_eq!(Digest::of(&got), digest);
        assert_eq!(spool.done().await.unwrap(), (digest.clone(), size));
        // A second reader (a retry) sees the same bytes.
        let again = read_all(&spool).await.unwrap();
        assert_eq!(Digest::of(&again), digest);
    }

    #[test]
    fn recent_keeps_the_newest_writes_within_its_limit() {
        let mut recent = Recent::default();
        let chunk = |n: u8| Bytes::from(vec![n; 1 << 20]);
        for i in 0..6u8 {
            recent.push(u64::from(i) << 20, chunk(i));
        }
        // The limit in whole writes is kept; the writes before are gone.
        let kept = RECENT_LIMIT >> 20;
        assert!((1..6).contains(&kept));
        let first = 6 - kept as u64;
        assert_eq!(recent.bytes, RECENT_LIMIT);
        assert!(recent.get(0, 10).is_none());
        assert!(recent.get((first << 20) - 1, 10).is_none());
        let got = recent.get((first << 20) + 5, 100).unwrap();
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|b| u64::from(*b) == first));
        // A read stops at the end of the write it starts in.
        assert_eq!(recent.get((6 << 20) - 3, 100).unwrap().len(), 3);
        assert!(recent.get(6 << 20, 1).is_none());
    }

    #[tokio::test]
    async fn a_reader_behind_the_memory_window_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, spool) = create(dir.path()).unwrap();
        let data: Vec<u8> = (0..(3 * RECENT_LIMIT as u32))
            .map(|i| (i % 253) as u8)
            .collect();
        let (head, tail) = data.split_at(2 * RECENT_LIMIT);
        for chunk in head.chunks(300_000) {
            w.write_all(chunk).unwrap();
        }
        // Starts 8 MiB behind: the start is only in the file, the rest
        // follows the writer.
        let reader = tokio::spawn({
            let s = spool.clone();
            async move { read_all(&s).await.unwrap() }
        });
        let tail = tail.to_vec();
        let writer = std::thread::spawn(move || {
            for chunk in tail.chunks(300_000) {
                w.write_all(chunk).unwrap();
            }
            w.finish()
        });
        let (digest, _) = writer.join().unwrap();
        assert_eq!(reader.await.unwrap(), data);
        assert_eq!(Digest::of(&data), digest);
    }

    #[tokio::test]
    async fn a_dropped_writer_fails_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, spool) = create(dir.path()).unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert!(spool.done().await.is_err());
        assert!(read_all(&spool).await.is_err());
    }

    #[test]
    fn the_file_leaves_no_trace_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _spool) = create(dir.path()).unwrap();
        w.finish();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
