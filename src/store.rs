//! Opens the object store named by a URL (`file://`, `memory://`, `s3://`).
//!
//! Owns the mapping from the operator's store URL to an `ObjectStore` plus the
//! root prefix every key lives under. It must not know about streams or the
//! log layout; `log` builds keys on top of the root returned here.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

/// Why a store could not be opened. Each variant names what the operator must fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL {url:?} is not a valid URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("store URL {url:?} has unsupported scheme {scheme:?}; use file://PATH, memory:// or s3://BUCKET/PREFIX")]
    UnsupportedScheme { url: String, scheme: String },
    #[error("cannot create the local store directory {path:?}: {source}")]
    LocalDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot configure the store {url:?}: {source}")]
    Configure {
        url: String,
        source: object_store::Error,
    },
    #[error("store {url:?}: the bucket does not exist (create it first)")]
    NoBucket { url: String },
    #[error("store {url:?} is unreachable: {source} (check the bucket exists, the AWS_* credentials and AWS_ENDPOINT_URL)")]
    Unreachable {
        url: String,
        source: object_store::Error,
    },
}

/// An opened store: the client, the root prefix and what its durability means.
#[derive(Debug, Clone)]
pub struct Store {
    pub inner: Arc<dyn ObjectStore>,
    pub root: Path,
    pub kind: StoreKind,
}

/// Which backend a store is, for the durability note in the logs and README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Local directory; every write is fsynced (file and directory) before it returns.
    File,
    /// Process memory; everything is lost when the process exits.
    Memory,
    /// S3 protocol; durable when the PUT returns.
    S3,
}

impl Store {
    /// Wrap an existing object store (tests, decorators) with a root prefix.
    pub fn from_parts(inner: Arc<dyn ObjectStore>, root: &str, kind: StoreKind) -> Self {
        Store {
            inner,
            root: Path::from(root),
            kind,
        }
    }

    /// Open the store a URL names. Does not touch the network; see [`Store::check`].
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let parsed = url::Url::parse(url).map_err(|e| StoreError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        match parsed.scheme() {
            "memory" => Ok(Store::from_parts(
                Arc::new(InMemory::new()),
                "",
                StoreKind::Memory,
            )),
            "file" => open_file(url),
            "s3" => open_s3(url, &parsed),
            other => Err(StoreError::UnsupportedScheme {
                url: url.to_string(),
                scheme: other.to_string(),
            }),
        }
    }

    /// Prove the store answers: one listing of the root, one level deep.
    /// A missing S3 bucket answers "not found" here, so that is an error too.
    pub async fn check(&self, url: &str) -> Result<(), StoreError> {
        let root = (!self.root.as_ref().is_empty()).then_some(&self.root);
        match self.inner.list_with_delimiter(root).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) if self.kind == StoreKind::S3 => {
                Err(StoreError::NoBucket {
                    url: url.to_string(),
                })
            }
            Err(source) => Err(StoreError::Unreachable {
                url: url.to_string(),
                source,
            }),
        }
    }
}

/// `file://PATH`: a relative path (`file://./data`, `file://data`) is taken
/// from the working directory, an absolute one (`file:///var/lib/sluice`) as is.
fn open_file(url: &str) -> Result<Store, StoreError> {
    let raw = url.trim_start_matches("file://");
    let dir = if raw.is_empty() { "." } else { raw };
    std::fs::create_dir_all(dir).map_err(|source| StoreError::LocalDir {
        path: dir.to_string(),
        source,
    })?;
    let fs = LocalFileSystem::new_with_prefix(dir)
        .map_err(|source| StoreError::Configure {
            url: url.to_string(),
            source,
        })?
        .with_fsync(true)
        .with_automatic_cleanup(true);
    Ok(Store::from_parts(Arc::new(fs), "", StoreKind::File))
}

fn open_s3(url: &str, parsed: &url::Url) -> Result<Store, StoreError> {
    let bucket = parsed.host_str().unwrap_or_default();
    if bucket.len() < 3 {
        return Err(StoreError::BadUrl {
            url: url.to_string(),
            reason: "an S3 bucket name needs at least 3 characters (s3://BUCKET/PREFIX)".into(),
        });
    }
    // Our own retry loop (log::retry) owns the deadline; keep the client's short.
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    // Set through config keys: `with_client_options` would drop the
    // AWS_ALLOW_HTTP (and proxy) settings `from_env` read.
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry)
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "10s")
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            "3s",
        )
        .build()
        .map_err(|source| StoreError::Configure {
            url: url.to_string(),
            source,
        })?;
    let prefix = parsed.path().trim_matches('/');
    Ok(Store::from_parts(Arc::new(s3), prefix, StoreKind::S3))
}
