//! Layers between input and registry: one pass that hashes, compresses and
//! spools ([`encode`]), the spool that uploads and retries replay
//! ([`spool`]), the process-wide limit on layers encoded at once
//! ([`slots`]), and the gzip decoder compressed archives are read with
//! ([`gunzip`]).

pub mod encode;
pub mod gunzip;
pub mod gzip;
mod isal;
mod refill;
pub mod slots;
pub mod spool;

pub use encode::{
    encode_layer, encode_layer_unless, hash_only, Compression, DiffIdMismatch, EncodedLayer,
    Speculation,
};
pub use refill::refill;
pub use spool::{Spool, SpoolWriter};

#[cfg(test)]
pub(crate) mod test_data {
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
