//! A bounded pipe of byte chunks from one thread to another: the producer
//! sends [`Chunk`]s, the consumer reads them through [`PipeReader`] as an
//! `io::Read`. It ends with an explicit `End`, so a producer that vanishes
//! midway (a panic) reads as an error, never as a clean end of data.
//!
//! Used to decode a compressed archive ahead of its reader
//! (`input::read_ahead`) and to tar nix2container layers while they are
//! compressed (`publish::nix2container`).

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// One message through the pipe.
pub enum Chunk {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// A pipe holding at most `depth` chunks in flight; `producer` names the
/// sending side in the error a vanished producer gives.
pub fn pipe(depth: usize, producer: &'static str) -> (SyncSender<Chunk>, PipeReader) {
    let (tx, rx) = sync_channel(depth);
    let reader = PipeReader {
        rx,
        producer,
        current: Vec::new(),
        pos: 0,
        ended: false,
    };
    (tx, reader)
}

/// The consuming end.
pub struct PipeReader {
    rx: Receiver<Chunk>,
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
                    self.current = data;
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
    fn a_producer_gone_without_end_is_an_error() {
        let (tx, rx) = pipe(4, "test writer");
        tx.send(Chunk::Data(b"ab".to_vec())).unwrap();
        drop(tx);
        let err = read_all(rx).unwrap_err();
        assert!(err.to_string().contains("the test writer stopped"), "{err}");
    }
}
