//! The registry client: credentials, auth, retries and the distribution API
//! operations manifold needs (blobs, mounts, manifests, tags).
//!
//! Layered as uv's and ggcr's clients: a configured `reqwest::Client`, then a
//! `send` that adds auth and retries, then the operations on
//! [`RegistryClient`]. It knows repositories, digests and documents, but no
//! architectures, tag rules or terminals: which blobs to push, in what order,
//! and what to tag is `publish`'s business.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod error;
pub mod retry;
pub mod upload;

pub use client::{ClientOptions, RegistryClient};
pub use credentials::{resolve_credentials, CredentialKind, Credentials, Secret};
pub use error::{OciError, RedactedUrl, RegistryError};
pub use upload::{BlobBody, UploadOutcome};
