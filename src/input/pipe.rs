//! A bounded pipe of byte chunks from one thread to another: the producer
//! sends [`Chunk`]s, the consumer reads them through [`PipeReader`] as an
//! `io::Read`. It ends with an explicit `End`, so a producer that vanishes
//! midway (a panic) reads as an error, never as a clean end of data.
//!
//! The reader hands each buffer it has finished back to the producer
//! ([`PipeSender::recycled`]): a few buffers go round and round instead of
//! a fresh allocation per chunk (fresh memory is page-faulted and zeroed,
//! about 3 % of a tarball re-run's CPU).
//!
//! Used to decode a compressed archive ahead of its reader
//! (`input::read_ahead`) and to tar nix2container layers while they are
//! compressed (`publish::nix2container`).

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SendError, SyncSender};

/// One message through the pipe.
pub enum Chunk {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// A pipe holding at most `depth` chunks in flight; `producer` names the
/// sending side in the error a vanished producer gives.
pub fn pipe(depth: usize, producer: &'static str) -> (PipeSender, PipeReader) {
    let (tx, rx) = sync_channel(depth);
    // Room for every buffer that can be in flight, so returning never blocks.
    let (give_back, returned) = sync_channel(depth + 2);
    let reader = PipeReader {
        rx,
        give_back,
        producer,
        current: Vec::new(),
        pos: 0,
        ended: false,
    };
    (PipeSender { tx, returned }, reader)
}

/// The producing end.
pub struct PipeSender {
    tx: SyncSender<Chunk>,
    returned: Receiver<Vec<u8>>,
}

impl PipeSender {
    /// Sends a chunk, waiting while `depth` are in flight; fails once the
    /// reader is gone.
    pub fn send(&self, chunk: Chunk) -> Result<(), SendError<Chunk>> {
        self.tx.send(chunk)
    }

    /// A buffer the reader has finished with, if one is back: its contents
    /// are stale, its capacity (and, up to its length, its initialised
    /// memory) is reused.
    pub fn recycled(&self) -> Option<Vec<u8>> {
        self.returned.try_recv().ok()
    }
}

/// The consuming end.
pub struct PipeReader {
    rx: Receiver<Chunk>,
    give_back: SyncSender<Vec<u8>>,
    producer: &'static str,
    current: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(data)) => {
                    let done = std::mem::replace(&mut self.current, data);
                    if done.capacity() > 0 {
                        // Full (or the producer gone): it is simply freed.
                        let _ = self.give_back.try_send(done);
                    }
                    self.pos = 0;
                }
                Ok(Chunk::End) => self.ended = true,
                Ok(Chunk::Failed(e)) => return Err(e),
                // Without `End`, the producer stopped midway.
                Err(_) => {
                    return Err(io::Error::other(format!("the {} stopped", self.producer)));
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut r: PipeReader) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn chunks_read_back_in_order_until_end() {
        let (tx, rx) = pipe(2, "test writer");
        let writer = std::thread::spawn(move || {
            for part in [&b"ab"[..], b"", b"cde"] {
                tx.send(Chunk::Data(part.to_vec())).unwrap();
            }
            tx.send(Chunk::End).unwrap();
        });
        assert_eq!(read_all(rx).unwrap(), b"abcde");
        writer.join().unwrap();
    }

    #[test]
    fn a_failure_keeps_its_kind_after_the_data_before_it() {
        let (tx, mut rx) = pipe(4, "test writer");
        tx.send(Chunk::Data(b"ab".to_vec())).unwrap();
        tx.send(Chunk::Failed(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "cut",
        )))
        .unwrap();
        let mut out = Vec::new();
        let err = rx.read_to_end(&mut out).unwrap_err();
        assert_eq!(
            (out.as_slice(), err.kind()),
            (&b"ab"[..], io::ErrorKind::UnexpectedEof)
        );
    }

    #[test]
    fn finished_buffers_go_back_to_the_producer() {
        let (tx, mut rx) = pipe(4, "test writer");
        assert!(tx.recycled().is_none());
        let mut first = Vec::with_capacity(1000);
        first.extend_from_slice(b"abc");
        let ptr = first.as_ptr();
        tx.send(Chunk::Data(first)).unwrap();
        tx.send(Chunk::Data(b"de".to_vec())).unwrap();
        tx.send(Chunk::End).unwrap();
        let mut out = [0u8; 3];
        rx.read_exact(&mut out).unwrap();
        // Still reading from the first buffer's end: nothing back yet.
        assert!(tx.recycled().is_none());
        assert_eq!(read_all(rx).unwrap(), b"de");
        let back = tx.recycled().expect("the first buffer came back");
        assert_eq!((back.as_ptr(), back.capacity()), (ptr, 1000));
    }

    #[test]
    fn a_producer_gone_without_end_is_an_error() {
        let (tx, rx) = pipe(4, "test writer");
        tx.send(Chunk::Data(b"ab".to_vec())).unwrap();
        drop(tx);
        let err = read_all(rx).unwrap_err();
        assert!(err.to_string().contains("the test writer stopped"), "{err}");
    }
}
