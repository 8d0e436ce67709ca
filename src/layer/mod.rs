//! Layers between input and registry: one pass that hashes, compresses and
//! spools ([`encode`]), the spool that uploads and retries replay
//! ([`spool`]), the process-wide limit on layers encoded at once
//! ([`slots`]), and the gzip decoder compressed archives are read with
//! ([`gunzip`]).

pub mod encode;
pub mod gunzip;
pub mod gzip;
mod isal;
pub mod slots;
pub mod spool;

pub use encode::{encode_layer, hash_only, Compression, EncodedLayer};
pub use spool::{Spool, SpoolWriter};

use std::io::{self, Read};

/// Refills `buf` with up to `size` bytes of `r`: fewer only at its end or at
/// an error, after which `buf` holds the bytes before it. A recycled `buf`
/// keeps its initialised memory, so only new memory is zeroed. `on_piece`
/// sees each read's bytes as they come. (Compression blocks and the archive
/// read-ahead's chunks are filled this way.)
pub fn refill(
    r: &mut dyn Read,
    buf: &mut Vec<u8>,
    size: usize,
    on_piece: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    buf.resize(size, 0);
    let mut len = 0;
    let result = loop {
        if len == size {
            break Ok(());
        }
        match r.read(&mut buf[len..]) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                on_piece(&buf[len..len + n]);
                len += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    buf.truncate(len);
    result
}

#[cfg(test)]
mod test_data {
    /// Xorshift32 from `seed`: a pseudo-random word per call, the same
    /// sequence on every run (deterministic data for the codec tests).
    pub fn xorshift(seed: u32) -> impl FnMut() -> u32 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        }
    }
}
