//! Decompressing an archive on its own thread, ahead of the reader.
//!
//! A gzip archive's layers are inflated and then hashed (and compressed, when
//! the registry lacks them) by one reader thread. Inflating ahead on a second
//! thread lets the two overlap: a re-run of one `buildLayeredImage` tarball
//! takes the time of the slower half instead of the sum.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Size of the chunks handed over.
const CHUNK: usize = 1 << 20;
/// Chunks decoded but not yet read: bounds the memory at about
/// `(DEPTH + 2) * CHUNK`.
const DEPTH: usize = 2;

/// `inner`, read on a thread of its own, `DEPTH` chunks ahead.
pub fn read_ahead(inner: Box<dyn Read + Send>) -> io::Result<Box<dyn Read + Send>> {
    let (filled_tx, filled) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
    let (spare_tx, spare) = sync_channel::<Vec<u8>>(DEPTH + 2);
    std::thread::Builder::new()
        .name("read-ahead".into())
        .spawn(move || fill(inner, filled_tx, spare))?;
    Ok(Box::new(ReadAhead {
        filled,
        spare: spare_tx,
        current: Vec::new(),
        pos: 0,
        done: false,
    }))
}

/// The reading thread: fills chunks until the end (then sends an empty
/// one), an error (sent after the bytes before it), or the reader being
/// dropped (a send fails).
fn fill(
    mut inner: Box<dyn Read + Send>,
    filled: SyncSender<io::Result<Vec<u8>>>,
    spare: Receiver<Vec<u8>>,
) {
    loop {
        let mut buf = spare.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let mut len = 0;
        let result = loop {
            match inner.read(&mut buf[len..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    len += n;
                    if len == CHUNK {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(len);
        if len > 0 && filled.send(Ok(buf)).is_err() {
            return;
        }
        match result {
            Ok(()) if len == CHUNK => {}
            Ok(()) => {
                let _ = filled.send(Ok(Vec::new()));
                return;
            }
            Err(e) => {
                let _ = filled.send(Err(e));
                return;
            }
        }
    }
}

struct ReadAhead {
    filled: Receiver<io::Result<Vec<u8>>>,
    spare: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            let next = match self.filled.recv() {
                Ok(chunk) => chunk?,
                Err(_) => {
                    return Err(io::Error::other("the archive's reading thread stopped"));
                }
            };
            if next.is_empty() {
                self.done = true;
                return Ok(0);
            }
            let used = std::mem::replace(&mut self.current, next);
            let _ = self.spare.try_send(used);
            self.pos = 0;
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
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
