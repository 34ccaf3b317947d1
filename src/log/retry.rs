//! Backoff for store calls: retry transient failures until a deadline.
//!
//! Owns the retry loop only. `NotFound` and `AlreadyExists` are answers, not
//! failures, so they return at once; everything else is retried with
//! exponential backoff and surfaces as the last error once the deadline passes.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::time::Instant;

/// How long and how often a store call is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First backoff; doubles after each failure.
    pub initial: Duration,
    /// Largest single backoff.
    pub max: Duration,
    /// Total time one operation may take before its error is returned.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_secs(1),
            deadline: Duration::from_secs(10),
        }
    }
}

fn is_answer(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::NotFound { .. } | object_store::Error::AlreadyExists { .. }
    )
}

/// Run `op` until it succeeds, answers, or the deadline passes.
pub async fn retry<T, F, Fut>(
    policy: RetryPolicy,
    op_name: &'static str,
    mut op: F,
) -> Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    let deadline = Instant::now() + policy.deadline;
    let mut backoff = policy.initial;
    let requests = metrics::counter!("sluice_store_requests_total", "op" => op_name);
    // Registered before any failure, so the series exists (at 0) to alert on.
    let errors = metrics::counter!("sluice_store_errors_total", "op" => op_name);
    loop {
        requests.increment(1);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(remaining.max(Duration::from_millis(1)), op()).await;
        let err = match attempt {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if is_answer(&e) => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => object_store::Error::Generic {
                store: "sluice",
                source: format!("{op_name} timed out").into(),
            },
        };
        errors.increment(1);
        tracing::warn!(op = op_name, error = %err, "store call failed");
        if Instant::now() + backoff >= deadline {
            return Err(err);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(policy.max);
    }
}

/// Does `key` exist? A HEAD, retried; `NotFound` is `false`.
pub async fn exists(
    store: &dyn ObjectStore,
    policy: RetryPolicy,
    op_name: &'static str,
    key: &Path,
) -> Result<bool, object_store::Error> {
    match retry(policy, op_name, || store.head(key)).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The bytes at `key`, or `None` when it does not exist. A GET, retried.
pub async fn get_if_present(
    store: &dyn ObjectStore,
    policy: RetryPolicy,
    op_name: &'static str,
    key: &Path,
) -> Result<Option<Bytes>, object_store::Error> {
    let got = retry(policy, op_name, || async {
        store.get(key).await?.bytes().await
    })
    .await;
    match got {
        Ok(b) => Ok(Some(b)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Create `key` only if it does not exist (a put-if-absent PUT), retried.
/// `AlreadyExists` is the answer "someone else created it first".
pub async fn create(
    store: &dyn ObjectStore,
    policy: RetryPolicy,
    op_name: &'static str,
    key: &Path,
    payload: PutPayload,
) -> Result<(), object_store::Error> {
    retry(policy, op_name, || {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        store.put_opts(key, payload.clone(), opts)
    })
    .await
    .map(drop)
}

/// The bytes at `key` and their metadata (`last_modified`: when the store
/// wrote them), or `None` when it does not exist. A GET, retried.
pub async fn get_with_meta(
    store: &dyn ObjectStore,
    policy: RetryPolicy,
    op_name: &'static str,
    key: &Path,
) -> Result<Option<(Bytes, ObjectMeta)>, object_store::Error> {
    let got = retry(policy, op_name, || async {
        let r = store.get(key).await?;
        let meta = r.meta.clone();
        Ok((r.bytes().await?, meta))
    })
    .await;
    match got {
        Ok(b) => Ok(Some(b)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
