//! manifold publishes multi-architecture container images built by Nix.
//!
//! ```text
//!  inputs (stream script, docker-archive, nix2container, oci layout)
//!     │  one pass per input, all inputs concurrently
//!     ▼
//!  layer::encode ── hash raw (diff_id) → compress → hash (digest) → spool
//!     │  uploads follow the spool as it grows; retries replay it
//!     ▼
//!  registry (auth, upload, manifests)  /  oci layout directory
//!     ▼
//!  manifests → index (by digest) → tags, last
//! ```
//!
//! Each module may use the ones declared before it, never one after it.

pub mod digest;
pub mod oci;
pub mod layer;
pub mod progress;
pub mod env;
pub mod reference;
pub mod tags;
pub mod input;
pub mod registry;
pub mod layout;
pub mod manifest;
pub mod publish;
pub mod cli;
