//! sluice: a stateless edge ingestion gateway.
//!
//! The modules follow the data path:
//! - [`server`]: accept loop, connection limits, routing, graceful drain.
//! - [`auth`]: keys, scopes, stream patterns, origins, CORS → a tenant's grant.
//! - [`limit`]: rate limits per key, stream and tenant (events/s, bytes/s).
//! - [`ingest`]: the `POST …/events` flow and its responses.
//! - [`decode`]: bodies → event byte ranges (object, array, NDJSON; gzip, zstd).
//! - [`validate`]: a stream's JSON Schema, compiled once, checked per event.
//! - [`batch`]: per-stream buffers, flush triggers, the memory budget.
//! - [`log`]: segments and commit records in the bucket; append, heads, reads.
//! - [`read`]: tailers, the segment cache, long-poll and Server-Sent Events.
//! - [`store`]: opens the object store a URL names (file, memory, S3).
//! - [`consume`]: consumer groups: checkpoints, read to the head, commit after output.
//! - [`gc`]: garbage collection beside the gateway (retention, orphan
//!   segments), by `sluice gc` or a schedule inside `serve`.
//!
//! Beside the path: [`config`] (settings), [`tenants`] (each tenant's
//! streams and their settings), [`error`] (problem+json),
//! [`metrics`] (the Prometheus recorder), [`names`] (safe key names),
//! [`faults`] (a fault-injecting store for tests), `fuzzing` (entry points
//! for the fuzz targets in `fuzz/`), and the command-line
//! clients [`tail`] and [`replay`] (dead letters back into their stream).

pub mod auth;
pub mod batch;
pub mod body;
pub mod compact;
pub mod config;
pub mod consume;
pub mod decode;
pub mod error;
pub mod faults;
#[doc(hidden)]
pub mod fuzzing;
pub mod gc;
pub mod ingest;
pub mod limit;
pub mod log;
pub mod metrics;
pub mod names;
pub mod read;
pub mod replay;
pub mod server;
pub mod store;
pub mod tail;
pub mod tenants;
pub mod validate;
