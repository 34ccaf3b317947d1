//! A fault-injecting `ObjectStore` decorator, for tests and fault campaigns.
//!
//! Wraps any store and counts requests by kind. Rules pick requests by
//! operation ([`Op`]) and by a pattern the key contains (DESIGN §2 names:
//! `/data/` segments, `/log/` commit records, `/consumers/` checkpoints,
//! `/low/` watermarks), and give the next N of them a [`Fault`]: the errors
//! S3 answers (500 `InternalError`, 503 `SlowDown`, 409
//! `ConditionalRequestConflict`), a request that never answers (the
//! caller's deadline cuts it), one that lands after the caller gave up, a
//! torn connection (the store did the work, the answer was lost), plain
//! failures before or after the write, delays, and holds that park a
//! request until [`FaultyStore::release`]: a crash point, when the test
//! then kills the process holding it.
//!
//! It never changes what a successful call returns, and it owns no retry or
//! recovery: that is the code under test.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use tokio::sync::{Notify, Semaphore};

/// What happens to a request a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail without writing.
    FailBefore,
    /// Write (or try to), then report failure whatever the store said.
    FailAfter,
    /// Wait, then go on.
    Delay(Duration),
    /// Wait until [`FaultyStore::release`], then go on (a crash point
    /// before the request: kill the caller while it waits).
    Hold,
    /// Go on, then wait until [`FaultyStore::release`] before answering (a
    /// crash point after the request: it landed, the caller never heard).
    HoldAfter,
    /// S3's `500 InternalError`; nothing written.
    InternalError,
    /// S3's `503 SlowDown`; nothing written.
    SlowDown,
    /// No answer, ever: the caller's own deadline has to cut it. Nothing
    /// written.
    Hang,
    /// S3's `409 ConditionalRequestConflict` (another conditional write to
    /// the key is in flight), which object_store reports as
    /// `AlreadyExists` although nothing may exist yet. Nothing written.
    Conflict,
    /// A PUT the store finishes `d` later whatever the caller does (a slow
    /// request the caller gave up on); the caller never hears back. The
    /// write runs on the caller's runtime. Other requests: as `Hang`.
    Late(Duration),
    /// The connection is cut after the request went out: the store did
    /// what it does (the write landed, or it answered 412), the caller gets
    /// an I/O error instead of the answer (an unknown outcome).
    Torn,
}

impl Fault {
    /// A short name for tables and logs.
    pub fn name(self) -> &'static str {
        match self {
            Fault::FailBefore => "fail-before",
            Fault::FailAfter => "fail-after",
            Fault::Delay(_) => "delay",
            Fault::Hold => "hold",
            Fault::HoldAfter => "hold-after",
            Fault::InternalError => "500",
            Fault::SlowDown => "503",
            Fault::Hang => "timeout",
            Fault::Torn => "torn",
            Fault::Conflict => "409",
            Fault::Late(_) => "late",
        }
    }
}

/// The kind of request a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
}

#[derive(Debug, Clone)]
struct Rule {
    op: Op,
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
    pub delete: AtomicU64,
}

/// Rules, holds and tallies, shared with the streams `list` and
/// `delete_stream` return.
#[derive(Debug)]
struct State {
    rules: Mutex<Vec<Rule>>,
    gate: Semaphore,
    /// Requests parked by `Hold`/`HoldAfter` so far; `bell` rings for each,
    /// and for each finished `Late` write.
    held: AtomicU64,
    bell: Notify,
    /// `Late` writes finished so far (landed or refused).
    late: AtomicU64,
    injected: Mutex<BTreeMap<&'static str, u64>>,
}

/// The decorator.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<State>,
    pub counts: Arc<Counts>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultyStore {
            inner,
            state: Arc::new(State {
                rules: Mutex::new(Vec::new()),
                gate: Semaphore::new(0),
                held: AtomicU64::new(0),
                bell: Notify::new(),
                late: AtomicU64::new(0),
                injected: Mutex::new(BTreeMap::new()),
            }),
            counts: Arc::default(),
        }
    }

    /// Apply `fault` to the next `times` PUTs whose key contains `pattern`.
    pub fn inject(&self, pattern: &str, fault: Fault, times: u32) {
        self.inject_on(Op::Put, pattern, fault, times);
    }

    /// Apply `fault` to the next `times` requests of kind `op` whose key
    /// (for LIST: prefix) contains `pattern`. Earlier rules match first.
    pub fn inject_on(&self, op: Op, pattern: &str, fault: Fault, times: u32) {
        lock(&self.state.rules).push(Rule {
            op,
            pattern: pattern.to_string(),
            fault,
            remaining: times,
        });
    }

    /// Let every held request (and every later one) through.
    pub fn release(&self) {
        self.state.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// Drop every rule not yet used up.
    pub fn clear(&self) {
        lock(&self.state.rules).clear();
    }

    /// Wait until at least `n` requests have been parked by a hold, at most
    /// `limit`; `false` if they were not.
    pub async fn wait_held(&self, n: u64, limit: Duration) -> bool {
        self.wait_count(&self.state.held, n, limit).await
    }

    /// Wait until at least `n` `Late` writes have finished in the store
    /// (landed or refused), at most `limit`; `false` if they have not.
    pub async fn wait_late(&self, n: u64, limit: Duration) -> bool {
        self.wait_count(&self.state.late, n, limit).await
    }

    async fn wait_count(&self, count: &AtomicU64, n: u64, limit: Duration) -> bool {
        let bell = &self.state.bell;
        let reached = async {
            loop {
                let rung = bell.notified();
                if count.load(Ordering::SeqCst) >= n {
                    return;
                }
                rung.await;
            }
        };
        tokio::time::timeout(limit, reached).await.is_ok()
    }

    /// Faults injected so far, by [`Fault::name`].
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.state.injected).clone()
    }

    /// Total requests of every kind so far.
    pub fn total_requests(&self) -> u64 {
        let c = &self.counts;
        [&c.put, &c.get, &c.head, &c.list, &c.delete]
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// The fault for this request, if a rule matches (then used once).
    async fn call<T>(
        &self,
        op: Op,
        location: &Path,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let fault = self.state.take_fault(op, location.as_ref());
        self.state.apply(fault, location, call).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn take_fault(&self, op: Op, location: &str) -> Option<Fault> {
        let fault = {
            let mut rules = lock(&self.rules);
            let rule = rules
                .iter_mut()
                .find(|r| r.op == op && r.remaining > 0 && location.contains(&r.pattern))?;
            rule.remaining -= 1;
            rule.fault
        };
        *lock(&self.injected).entry(fault.name()).or_default() += 1;
        Some(fault)
    }

    async fn hold(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
        self.bell.notify_waiters();
        // Closed only if the store is dropped; then just go on.
        let _permit = self.gate.acquire().await;
    }

    /// Run `call` (the real request) under `fault`.
    async fn apply<T>(
        &self,
        fault: Option<Fault>,
        location: &Path,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let Some(fault) = fault else {
            return call.await;
        };
        match fault {
            Fault::FailBefore | Fault::InternalError | Fault::SlowDown => {
                Err(error_for(fault, location))
            }
            Fault::Conflict => Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "Server returned non-2xx status code: 409 Conflict: <Error><Code>ConditionalRequestConflict</Code></Error>".into(),
            }),
            Fault::Hang | Fault::Late(_) => std::future::pending().await,
            Fault::FailAfter | Fault::Torn => {
                // The answer, success or not, never reaches the caller.
                let _ = call.await;
                Err(error_for(fault, location))
            }
            Fault::Delay(d) => {
                tokio::time::sleep(d).await;
                call.await
            }
            Fault::Hold => {
                self.hold().await;
                call.await
            }
            Fault::HoldAfter => {
                let answer = call.await;
                self.hold().await;
                answer
            }
        }
    }
}

/// The error `fault` surfaces as: for the S3 ones, the text object_store's
/// S3 client gives (`Generic` from store "S3").
fn error_for(fault: Fault, location: &Path) -> object_store::Error {
    let (store, text) = match fault {
        Fault::InternalError => ("S3", format!("Error performing PUT {location} - Server returned non-2xx status code: 500 Internal Server Error: <Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>")),
        Fault::SlowDown => ("S3", format!("Error performing PUT {location} - Server returned non-2xx status code: 503 Service Unavailable: <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>")),
        Fault::Torn => {
            let io = std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            );
            return object_store::Error::Generic {
                store: "S3",
                source: format!("Error performing PUT {location} - HTTP error: error sending request: {io}").into(),
            };
        }
        _ => ("faulty", format!("injected fault on {location}")),
    };
    object_store::Error::Generic {
        store,
        source: text.into(),
    }
}

/// A listing that first suffers `fault`: errors end it at once, holds and
/// delays come before the first entry.
fn faulty_list(
    state: Arc<State>,
    fault: Option<Fault>,
    prefix: Path,
    listing: BoxStream<'static, Result<ObjectMeta>>,
) -> BoxStream<'static, Result<ObjectMeta>> {
    if fault.is_none() {
        return listing;
    }
    let first = async move {
        match state.apply(fault, &prefix, async { Ok(()) }).await {
            Ok(()) => listing,
            Err(e) => futures::stream::once(async { Err(e) }).boxed(),
        }
    };
    futures::stream::once(first).flatten().boxed()
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
        let fault = self.state.take_fault(Op::Put, location.as_ref());
        if let Some(Fault::Late(d)) = fault {
            let (inner, location) = (self.inner.clone(), location.clone());
            let state = self.state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let _ = inner.put_opts(&location, payload, opts).await;
                state.late.fetch_add(1, Ordering::SeqCst);
                state.bell.notify_waiters();
            });
            return std::future::pending().await;
        }
        let put = self.inner.put_opts(location, payload, opts);
        self.state.apply(fault, location, put).await
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
        let (counter, op) = match options.head {
            true => (&self.counts.head, Op::Head),
            false => (&self.counts.get, Op::Get),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let get = self.inner.get_opts(location, options);
        self.call(op, location, get).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let (inner, state) = (self.inner.clone(), self.state.clone());
        let counts = self.counts.clone();
        locations
            .then(move |location| {
                let (inner, state) = (inner.clone(), state.clone());
                counts.delete.fetch_add(1, Ordering::Relaxed);
                async move {
                    let location = location?;
                    let fault = state.take_fault(Op::Delete, location.as_ref());
                    let one = futures::stream::once({
                        let l = location.clone();
                        async move { Ok(l) }
                    })
                    .boxed();
                    let delete = async {
                        match inner.delete_stream(one).next().await {
                            Some(r) => r.map(drop),
                            None => Ok(()),
                        }
                    };
                    state.apply(fault, &location, delete).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        let prefix = prefix.cloned().unwrap_or_default();
        let fault = self.state.take_fault(Op::List, prefix.as_ref());
        let listing = self.inner.list(Some(&prefix));
        faulty_list(self.state.clone(), fault, prefix, listing)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        let prefix = prefix.cloned().unwrap_or_default();
        let fault = self.state.take_fault(Op::List, prefix.as_ref());
        let listing = self.inner.list_with_offset(Some(&prefix), offset);
        faulty_list(self.state.clone(), fault, prefix, listing)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        let at = prefix.cloned().unwrap_or_default();
        let listing = self.inner.list_with_delimiter(prefix);
        self.call(Op::List, &at, listing).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
