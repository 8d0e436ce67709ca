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

pub mod cli;
pub mod digest;
pub mod env;
pub mod input;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod oci;
pub mod progress;
pub mod publish;
pub mod reference;
pub mod registry;
pub mod tags;
