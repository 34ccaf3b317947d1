//! Read routes: long-poll, Server-Sent Events, list and describe.
//!
//! Owns the HTTP shapes of reads. Envelope lines go into responses as the
//! bytes stored, joined, never parsed or re-serialised. `earliest` means
//! the partition's low watermark (the first offset retention kept); an
//! offset below it is `410 offset-expired`, whose body names the first
//! retained offset.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use object_store::ObjectStore;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{ReadError, Tailer};
use crate::auth::Grant;
use crate::body::Body;
use crate::error::{Problem, ProblemType};
use crate::ingest::json;
use crate::log::{LogError, ReadBatch};
use crate::server::App;

/// Events per read when the client names no `limit`.
const DEFAULT_LIMIT: usize = 1_000;
/// Longest wait for a partition's head to be found on first use.
const DISCOVERY_WAIT: Duration = Duration::from_secs(10);
/// An idle SSE connection gets a comment this often (detects dead clients).
const SSE_HEARTBEAT: Duration = Duration::from_secs(15);

impl From<ReadError> for Problem {
    fn from(e: ReadError) -> Self {
        let detail = e.to_string();
        match e {
            ReadError::OutOfRange { .. } => Problem::new(ProblemType::OffsetOutOfRange, detail),
            ReadError::TooManyTailers { .. } => Problem::new(ProblemType::Overloaded, detail),
            ReadError::Log(LogError::Expired {
                partition,
                offset,
                first_offset,
            }) => Problem::offset_expired(partition, offset, first_offset, detail),
            ReadError::Log(_) => Problem::new(ProblemType::StoreUnavailable, detail),
        }
    }
}

/// `key=value` pairs of the query string (values are plain tokens here).
fn query(req: &Request<Incoming>) -> BTreeMap<&str, &str> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn number<T: std::str::FromStr>(q: &BTreeMap<&str, &str>, key: &str) -> Result<Option<T>, Problem> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Problem::new(
                ProblemType::BadQuery,
                format!("query parameter {key}={v:?} must be a non-negative integer"),
            )
        }),
    }
}

fn partition_of(n: u32, q: &BTreeMap<&str, &str>) -> Result<u32, Problem> {
    let p = number::<u32>(q, "partition")?.unwrap_or(0);
    if p >= n {
        return Err(Problem::new(
            ProblemType::BadQuery,
            format!(
                "partition {p} does not exist; this stream has partitions 0-{}",
                n - 1
            ),
        ));
    }
    Ok(p)
}

/// `GET /v1/streams/{stream}/events`: long-poll, or SSE with `Accept: text/event-stream`.
pub async fn events(
    app: &Arc<App>,
    grant: &Grant,
    stream: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Problem> {
    let partitions = grant.stream(stream)?.partitions;
    let at = Place {
        tenant: &grant.tenant.name,
        stream,
        partitions,
    };
    let wants_sse = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        return sse(app, at, &req).await;
    }
    long_poll(app, at, &req).await
}

/// A stream being read: whose, which, and how many partitions it has.
#[derive(Clone, Copy)]
pub struct Place<'a> {
    pub tenant: &'a str,
    pub stream: &'a str,
    pub partitions: u32,
}

async fn long_poll(
    app: &Arc<App>,
    at: Place<'_>,
    req: &Request<Incoming>,
) -> Result<Response<Body>, Problem> {
    let q = query(req);
    let partition = partition_of(at.partitions, &q)?;
    let cfg = &app.readers.config().clone();
    let limit = number::<usize>(&q, "limit")?
        .unwrap_or(DEFAULT_LIMIT)
        .min(cfg.max_events_per_read);
    let wait = Duration::from_millis(number::<u64>(&q, "wait")?.unwrap_or(0)).min(cfg.max_wait());
    let tailer = app.readers.tailer(at.tenant, at.stream, partition)?;
    let mut heads = tailer.subscribe();
    let head = known_head(&mut heads).await?;
    let earliest = matches!(q.get("offset"), Some(&"earliest") | None);
    let mut offset = match q.get("offset") {
        Some(&"latest") => head,
        Some(&"earliest") | None => first_offset(app, &tailer).await?,
        Some(_) => number::<u64>(&q, "offset")?.unwrap_or(0),
    };
    // This gateway's tailer may lag the log (another gateway just acked
    // `offset`): ask the store before calling the offset out of range.
    let head = if offset > head {
        tailer.wake();
        let real = app
            .log
            .head(tailer.path(), partition)
            .await
            .map_err(ReadError::from)?;
        real.next_offset
    } else {
        head
    };
    let head = if head == offset && !wait.is_zero() {
        wait_past(&mut heads, offset, Instant::now() + wait, app.closing()).await
    } else {
        head
    };
    let mut head = head;
    let batch = loop {
        match app.readers.read(&tailer, offset, head, limit).await {
            // `earliest` moved while we read: it means the new watermark
            // (at worst at the head this gateway knows: an empty answer).
            Err(ReadError::Log(LogError::Expired { first_offset, .. }))
                if earliest && first_offset > offset =>
            {
                offset = first_offset;
                head = head.max(offset);
            }
            other => break other?,
        }
    };
    let mut resp = Response::new(crate::body::full(batch_json(partition, &batch, true)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The first retained offset of the tailer's partition (its low watermark).
async fn first_offset(app: &App, tailer: &Tailer) -> Result<u64, ReadError> {
    let mark = app.log.watermark(tailer.path(), tailer.partition).await?;
    Ok(mark.first_offset)
}

/// The head once the tailer has found it.
async fn known_head(heads: &mut watch::Receiver<Option<u64>>) -> Result<u64, Problem> {
    let found = tokio::time::timeout(DISCOVERY_WAIT, heads.wait_for(Option::is_some)).await;
    match found {
        Ok(Ok(h)) => Ok((*h).unwrap_or(0)),
        _ => Err(Problem::new(
            ProblemType::StoreUnavailable,
            "the partition's head could not be read from the store",
        )),
    }
}

/// Wait until the head passes `offset`, the deadline, or shutdown; the head then.
async fn wait_past(
    heads: &mut watch::Receiver<Option<u64>>,
    offset: u64,
    deadline: Instant,
    mut closing: watch::Receiver<bool>,
) -> u64 {
    tokio::select! {
        _ = tokio::time::sleep_until(deadline) => {}
        _ = async { heads.wait_for(|h| h.is_some_and(|h| h > offset)).await.map(|_| ()) } => {}
        _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {}
    }
    let head = heads.borrow().unwrap_or(0);
    head
}

/// `{"partition":p,"first_offset":o,["next_offset":n,]"events":[…]}` from stored lines.
fn batch_json(partition: u32, batch: &ReadBatch, with_next: bool) -> Bytes {
    let size: usize = batch.events.iter().map(|e| e.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 96);
    out.extend_from_slice(
        format!(
            "{{\"partition\":{partition},\"first_offset\":{}",
            batch.first_offset
        )
        .as_bytes(),
    );
    if with_next {
        out.extend_from_slice(format!(",\"next_offset\":{}", batch.next_offset).as_bytes());
    }
    out.extend_from_slice(b",\"events\":[");
    for (i, e) in batch.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// Where one partition of a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartAt {
    Latest,
    /// The low watermark (the first retained offset).
    Earliest,
    Offset(u64),
}

/// Where an SSE stream starts: `Last-Event-ID` (`p:o,p:o,…`), else `from`
/// (`earliest`, `latest`, or `p:o|latest|earliest,…`); unnamed partitions
/// start at latest.
fn start_positions(n: u32, req: &Request<Incoming>) -> Result<Vec<StartAt>, Problem> {
    let n = n as usize;
    let last = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok());
    let q = query(req);
    let spec = last.or(q.get("from").copied()).unwrap_or("latest");
    match spec {
        "latest" => return Ok(vec![StartAt::Latest; n]),
        "earliest" => return Ok(vec![StartAt::Earliest; n]),
        _ => {}
    }
    let mut start = vec![StartAt::Latest; n];
    for part in spec.split(',') {
        let bad = || {
            Problem::new(
                ProblemType::BadQuery,
                format!("position {part:?} must be PARTITION:OFFSET or PARTITION:latest"),
            )
        };
        let (p, o) = part.split_once(':').ok_or_else(bad)?;
        let p: usize = p.parse().map_err(|_| bad())?;
        let slot = start.get_mut(p).ok_or_else(bad)?;
        *slot = match o {
            "latest" => StartAt::Latest,
            "earliest" => StartAt::Earliest,
            o => StartAt::Offset(o.parse().map_err(|_| bad())?),
        };
    }
    Ok(start)
}

async fn sse(
    app: &Arc<App>,
    at: Place<'_>,
    req: &Request<Incoming>,
) -> Result<Response<Body>, Problem> {
    let sub = Subscription::open(app, at, req).await?;
    // A start below the watermark is a 410 before the stream begins.
    sub.check_retained(app).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let app = app.clone();
    tokio::spawn(async move {
        let end = sub.pump(&app, Out::Sse(tx.clone())).await;
        if let PumpEnd::Failed(e) = end {
            let problem = Problem::from(e).to_json();
            let _ = tx
                .send(Bytes::from(format!("event: error\ndata: {problem}\n\n")))
                .await;
        }
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    Ok(resp)
}

/// Where a subscriber's frames go.
pub enum Out {
    /// SSE: a slow client is waited for (its own bounded queue).
    Sse(mpsc::Sender<Bytes>),
    /// WebSocket: a client whose queue is full is cut off (it resumes).
    Ws(mpsc::Sender<Bytes>),
}

/// Why a subscription ended.
pub enum PumpEnd {
    ClientGone,
    TooSlow,
    Closing,
    Failed(ReadError),
}

/// One streaming subscriber: its tailers, start positions and permit.
pub struct Subscription {
    tailers: Vec<Arc<Tailer>>,
    start: Vec<u64>,
    /// Partitions that started at `earliest` and have been sent nothing
    /// yet: if a collector raises the watermark past them, they follow it.
    earliest: Vec<bool>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Subscription {
    /// Check the start positions and the subscriber limit, follow every
    /// partition, and fix `latest` to each partition's head now, before the
    /// client is answered: an event committed after the answer is never skipped.
    pub async fn open(
        app: &Arc<App>,
        at: Place<'_>,
        req: &Request<Incoming>,
    ) -> Result<Subscription, Problem> {
        let wanted = start_positions(at.partitions, req)?;
        let permit = app.subscribers.clone().try_acquire_owned().map_err(|_| {
            Problem::new(
                ProblemType::Overloaded,
                format!(
                    "this gateway already serves {} subscribers (read.max_subscribers)",
                    app.readers.config().max_subscribers
                ),
            )
        })?;
        let (mut tailers, mut start, mut earliest) = (Vec::new(), Vec::new(), Vec::new());
        for (p, from) in wanted.into_iter().enumerate() {
            let tailer = app.readers.tailer(at.tenant, at.stream, p as u32)?;
            start.push(match from {
                StartAt::Offset(offset) => offset,
                StartAt::Earliest => {
                    let mark = app.log.refresh_watermark(tailer.path(), p as u32).await;
                    mark.map_err(ReadError::from)?.first_offset
                }
                StartAt::Latest => known_head(&mut tailer.subscribe()).await?,
            });
            earliest.push(from == StartAt::Earliest);
            tailers.push(tailer);
        }
        Ok(Subscription {
            tailers,
            start,
            earliest,
            permit: Some(permit),
        })
    }

    /// `410 offset-expired` when a named start offset is below its
    /// partition's watermark (as this gateway knows it; one that moved
    /// since is found by the first read, which ends the stream the same way).
    pub async fn check_retained(&self, app: &App) -> Result<(), Problem> {
        for (tailer, &offset) in self.tailers.iter().zip(&self.start) {
            let mark = app.log.watermark(tailer.path(), tailer.partition).await;
            let first_offset = mark.map_err(ReadError::from)?.first_offset;
            if offset < first_offset {
                let partition = tailer.partition;
                return Err(ReadError::Log(LogError::Expired {
                    partition,
                    offset,
                    first_offset,
                })
                .into());
            }
        }
        Ok(())
    }

    /// The subscriber permit, for a caller that outlives the pump (it must
    /// hold the slot until its socket is gone).
    pub fn take_permit(&mut self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permit.take()
    }

    /// Push every partition's new events, in log order per partition, until
    /// the client leaves, falls behind (WebSocket), or the gateway drains.
    pub async fn pump(self, app: &App, out: Out) -> PumpEnd {
        let mut heads: Vec<_> = self.tailers.iter().map(|t| t.subscribe()).collect();
        let mut cursor = self.start;
        let mut earliest = self.earliest;
        let mut closing = app.closing();
        loop {
            let mut sent = false;
            for (i, tailer) in self.tailers.iter().enumerate() {
                let head = heads[i].borrow_and_update().unwrap_or(0);
                if cursor[i] >= head {
                    continue;
                }
                tailer.touch();
                let batch = match app
                    .readers
                    .read(tailer, cursor[i], head, DEFAULT_LIMIT)
                    .await
                {
                    Ok(b) => b,
                    Err(ReadError::Log(LogError::Expired { first_offset, .. }))
                        if earliest[i] && first_offset > cursor[i] =>
                    {
                        cursor[i] = first_offset;
                        sent = true;
                        continue;
                    }
                    Err(e) => return PumpEnd::Failed(e),
                };
                earliest[i] = false;
                cursor[i] = batch.next_offset;
                if let Some(end) =
                    deliver(&out, &cursor, tailer.partition, &batch, &mut closing).await
                {
                    return end;
                }
                sent = true;
            }
            if sent {
                continue;
            }
            let changed =
                futures::future::select_all(heads.iter_mut().map(|h| Box::pin(h.changed())));
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(SSE_HEARTBEAT) => {
                    if let Out::Sse(tx) = &out {
                        if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                            return PumpEnd::ClientGone;
                        }
                    }
                }
                _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => return PumpEnd::Closing,
            }
        }
    }
}

/// Send one batch; `Some` when the subscription must end. An SSE client that
/// stops reading cannot hold up a drain: the send gives way to `closing`.
async fn deliver(
    out: &Out,
    cursor: &[u64],
    partition: u32,
    batch: &ReadBatch,
    closing: &mut watch::Receiver<bool>,
) -> Option<PumpEnd> {
    match out {
        Out::Sse(tx) => tokio::select! {
            sent = tx.send(sse_frame(cursor, partition, batch)) => sent.err().map(|_| PumpEnd::ClientGone),
            _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => Some(PumpEnd::Closing),
        },
        Out::Ws(tx) => match tx.try_send(batch_json(partition, batch, false)) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(_)) => Some(PumpEnd::TooSlow),
            Err(mpsc::error::TrySendError::Closed(_)) => Some(PumpEnd::ClientGone),
        },
    }
}

fn sse_frame(cursor: &[u64], partition: u32, batch: &ReadBatch) -> Bytes {
    let id: Vec<String> = cursor
        .iter()
        .enumerate()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect();
    let data = batch_json(partition, batch, false);
    let mut out = Vec::with_capacity(data.len() + 64);
    out.extend_from_slice(format!("id: {}\nevent: events\ndata: ", id.join(",")).as_bytes());
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `GET /v1/streams`: the tenant's streams the key may see, declared or written.
pub async fn list(app: &Arc<App>, grant: &Grant) -> Result<Response<Body>, Problem> {
    let store = app.log.store();
    let prefix = store.root.clone().join(grant.tenant.name.as_str());
    let listing = store
        .inner
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| {
            Problem::new(
                ProblemType::StoreUnavailable,
                format!("cannot list streams: {e}"),
            )
        })?;
    let mut names: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename())
        .chain(grant.tenant.declared())
        .filter(|s| grant.sees(s))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "streams": names }),
    ))
}

/// `GET /v1/streams/{stream}`: partitions, heads, created time.
pub async fn describe(
    app: &Arc<App>,
    grant: &Grant,
    stream: &str,
) -> Result<Response<Body>, Problem> {
    let settings = grant.stream(stream)?;
    let log = &app.log;
    let path = log.stream(&grant.tenant.name, stream);
    let unavailable =
        |e: crate::log::LogError| Problem::new(ProblemType::StoreUnavailable, e.to_string());
    let (mut partitions, mut created) = (Vec::new(), None::<String>);
    let mut written = false;
    for p in 0..settings.partitions {
        // The head refreshes the watermark: both are current.
        let head = log.head(&path, p).await.map_err(unavailable)?;
        let mark = log.watermark(&path, p).await.map_err(unavailable)?;
        written |= head.next_offset > 0;
        if head.next_seq > mark.first_seq {
            if let Some(first) = log
                .record(&path, p, mark.first_seq)
                .await
                .map_err(unavailable)?
            {
                created = Some(created.map_or(first.min_received_at.clone(), |c| {
                    c.min(first.min_received_at)
                }));
            }
        }
        partitions.push(serde_json::json!({
            "partition": p, "first_offset": mark.first_offset, "head_offset": head.next_offset,
            "records": head.next_seq - mark.first_seq,
        }));
    }
    if !written && !settings.declared {
        return Err(Problem::new(
            ProblemType::NotFound,
            format!("stream {stream:?} has no events"),
        ));
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "name": stream, "created_at": created, "declared": settings.declared,
            "schema": settings.schema.as_ref().map(|s| &s.document),
            "dead_letter": settings.dead_letter.then(|| crate::ingest::dlq::stream_name(stream)),
            "partitions": partitions,
        }),
    ))
}
