//! The manifold sources under measure, compiled in as they are.

#[path = "../../../../src/layer/gzip.rs"]
pub mod gzip;
#[path = "../../../../src/layer/isal.rs"]
pub mod isal;
#[path = "../../../../src/layer/refill.rs"]
mod refill;
pub use refill::refill;
