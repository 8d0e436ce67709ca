//! Layers between input and registry: one pass that hashes, compresses and
//! spools ([`encode`]), and the spool that uploads and retries replay
//! ([`spool`]).

pub mod encode;
pub mod gunzip;
pub mod gzip;
mod isal;
pub mod spool;

pub use encode::{encode_layer, hash_only, Compression, EncodedLayer};
pub use spool::{Spool, SpoolWriter};
