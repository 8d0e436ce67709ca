//! manifold publishes multi-architecture container images built by Nix.
//!
//! ```text
//!  inputs (stream script, docker-archive, nix2container, OCI layout or archive)
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
//! Modules, in data-flow order; each may use the ones above it, never one
//! below it (rustfmt sorts the declarations, so the order is kept here):
//!
//! | module | job |
//! |---|---|
//! | [`spawn`] | starting child processes (retrying a busy executable) |
//! | [`digest`] | `sha256:` digests, hashing readers and writers |
//! | [`oci`] | media types, descriptors, platforms, canonical JSON |
//! | [`layer`] | one pass: hash → compress (parallel gzip, zstd) → spool; gunzip for inputs |
//! | [`progress`] | the `Reporter` events; no terminal code |
//! | [`env`](mod@env) | every environment variable manifold reads |
//! | [`reference`](mod@reference) | registry / repository / reference parsing |
//! | [`tags`] | tag and annotation rules (pure) |
//! | [`input`] | stream scripts, docker-archives, nix2container: one-pass readers; OCI archives indexed in place |
//! | [`registry`] | the registry client: auth, retries, uploads, manifests |
//! | [`layout`] | OCI image layout directories |
//! | [`manifest`] | image manifests and indexes (OCI or Docker) |
//! | [`publish`] | inputs → destinations → index → tags, in two phases |
//! | [`cli`] | clap, progress bars, outputs |

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
pub mod spawn;
pub mod tags;
