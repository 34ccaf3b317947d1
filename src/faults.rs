//! A fault-injecting `ObjectStore` decorator, for tests and chaos campaigns.
//!
//! Wraps any store; counts requests by kind and, for chosen PUTs, fails
//! before the write (nothing stored), fails after it (stored, but the caller
//! is told it failed: the ambiguous case), or delays it. It never changes what
//! a successful call returns.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// What happens to a PUT whose key contains a rule's pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail without writing.
    FailBefore,
    /// Write, then report failure.
    FailAfter,
    /// Wait, then write.
    Delay(Duration),
    /// Wait until [`FaultyStore::release`] is called, then write.
    Hold,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: String,
    fault: Fault,
    remaining: u32,
}

/// Request counts by kind.
#[derive(Debug, Default)]
pub struct Counts {
    pub put: AtomicU64,
    pub get: AtomicU64,
    pub head: AtomicU64,
    pub list: AtomicU64,
}

/// The decorator.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    rules: Mutex<Vec<Rule>>,
    gate: tokio::sync::Semaphore,
    pub counts: Counts,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultyStore {
            inner,
            rules: Mutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(0),
            counts: Counts::default(),
        }
    }

    /// Apply `fault` to the next `times` PUTs whose key contains `pattern`.
    pub fn inject(&self, pattern: &str, fault: Fault, times: u32) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Rule {
                pattern: pattern.to_string(),
                fault,
                remaining: times,
            });
    }

    /// Let every held PUT (and every later one) through.
    pub fn release(&self) {
        self.gate
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    /// Drop every rule not yet used up.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Total requests of every kind so far.
    pub fn total_requests(&self) -> u64 {
        let c = &self.counts;
        [&c.put, &c.get, &c.head, &c.list]
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    fn take_fault(&self, location: &Path) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let rule = rules
            .iter_mut()
            .find(|r| r.remaining > 0 && location.as_ref().contains(&r.pattern))?;
        rule.remaining -= 1;
        Some(rule.fault)
    }
}

fn injected(location: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected fault on {location}").into(),
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.counts.put.fetch_add(1, Ordering::Relaxed);
        match self.take_fault(location) {
            Some(Fault::FailBefore) => Err(injected(location)),
            Some(Fault::FailAfter) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected(location))
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                self.inner.put_opts(location, payload, opts).await
            }
            Some(Fault::Hold) => {
                // Closed only if the store is dropped; then just write.
                let _permit = self.gate.acquire().await;
                self.inner.put_opts(location, payload, opts).await
            }
            None => self.inner.put_opts(location, payload, opts).await,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.counts.put.fetch_add(1, Ordering::Relaxed);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let counter = if options.head {
            &self.counts.head
        } else {
            &self.counts.get
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
