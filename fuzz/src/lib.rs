//! The checks behind sluice's fuzz targets (`fuzz_targets/`), one module each.
//!
//! - [`body`]: a `POST …/events` body (object, array or NDJSON; identity,
//!   gzip or zstd) through the gateway's decode and split, with the default
//!   limits; every accepted event must be a JSON object within the limits,
//!   every dead letter valid JSON, and the schema fast path must decide
//!   exactly as the full validator.
//! - [`frame`]: a WebSocket ingest text frame taken apart, then split.
//! - [`commit_record`]: a commit record's bytes parsed, used as readers use
//!   it, and round-tripped.
//!
//! Each function panics on a broken property, which libFuzzer reports as a
//! crash. Every run starts with the seeds of `corpus/<target>/`, so a seed
//! that breaks a property fails the run at once.

mod body;
mod checks;
mod frame;
mod record;

pub use body::body;
pub use frame::frame;
pub use record::commit_record;
