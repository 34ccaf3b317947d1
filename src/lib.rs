//! sluice: a stateless edge ingestion gateway.
//!
//! The modules follow the data path:
//! - [`store`]: opens the object store a URL names (file, memory, S3).
//! - [`log`]: segments and commit records in the bucket; append, heads, reads.

pub mod faults;
pub mod log;
pub mod store;
