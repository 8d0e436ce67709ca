//! Decompressing an archive on its own thread, ahead of the reader.
//!
//! A gzip archive's layers are inflated and then hashed (and compressed, when
//! the registry lacks them) by one reader thread. Inflating ahead on a second
//! thread lets the two overlap: a re-run of one `buildLayeredImage` tarball
//! takes the time of the slower half instead of the sum.

use std::io::{self, Read};

use super::pipe::{pipe, Chunk, PipeSender};
use crate::layer::refill;

/// Size of the chunks handed over.
const CHUNK: usize = 1 << 20;
/// Chunks decoded but not yet read: bounds the memory at about
/// `(DEPTH + 2) * CHUNK`.
const DEPTH: usize = 2;

/// `inner`, read on a thread of its own, `DEPTH` chunks ahead.
pub fn read_ahead(inner: Box<dyn Read + Send>) -> io::Result<Box<dyn Read + Send>> {
    let (tx, reader) = pipe(DEPTH, "archive's reading thread");
    std::thread::Builder::new()
        .name("read-ahead".into())
        .spawn(move || fill(inner, tx))?;
    Ok(Box::new(reader))
}

/// The reading thread: sends chunks until the end, an error (after the bytes
/// before it), or the reader being dropped (a send fails).
fn fill(mut inner: Box<dyn Read + Send>, tx: PipeSender) {
    loop {
        let mut buf = tx.recycled().unwrap_or_default();
        let result = refill(&mut *inner, &mut buf, CHUNK, &mut |_| {});
        let len = buf.len();
        if len > 0 && tx.send(Chunk::Data(buf)).is_err() {
            return;
        }
        let last = match result {
            Ok(()) if len == CHUNK => continue,
            Ok(()) => Chunk::End,
            Err(e) => Chunk::Failed(e),
        };
        let _ = tx.send(last);
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A reader that hands out at most `step` bytes per call, then fails
    /// after `fail_after` bytes if set.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        fail_after: Option<usize>,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if let Some(limit) = self.fail_after {
                if self.pos >= limit {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt"));
                }
            }
            let n = out.len().min(self.step).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
            .collect()
    }

    fn trickle(data: &[u8], step: usize, fail_after: Option<usize>) -> Box<dyn Read + Send> {
        Box::new(Trickle {
            data: data.to_vec(),
            pos: 0,
            step,
            fail_after,
        })
    }

    #[test]
    fn every_byte_arrives_in_order() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 77] {
            let data = data(len);
            let mut out = Vec::new();
            read_ahead(trickle(&data, 70_000, None))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert!(out == data, "length {len}");
        }
    }

    #[test]
    fn an_error_comes_after_the_bytes_before_it() {
        let data = data(3 * CHUNK);
        let mut r = read_ahead(trickle(&data, 4096, Some(CHUNK + 10 * 4096))).unwrap();
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(out, &data[..CHUNK + 10 * 4096]);
    }

    #[test]
    fn dropping_the_reader_stops_the_thread() {
        struct Flagged(Box<dyn Read + Send>, Arc<AtomicBool>);
        impl Read for Flagged {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                self.0.read(out)
            }
        }
        impl Drop for Flagged {
            fn drop(&mut self) {
                self.1.store(true, Ordering::SeqCst);
            }
        }
        let data = data(20 * CHUNK);
        let dropped = Arc::new(AtomicBool::new(false));
        let inner = Flagged(trickle(&data, CHUNK, None), dropped.clone());
        let mut r = read_ahead(Box::new(inner)).unwrap();
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        drop(r);
        // The thread returns (dropping the inner reader) at its next send.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dropped.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the reading thread kept running"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
