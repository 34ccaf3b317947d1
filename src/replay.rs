//! `sluice replay`: dead letters back through validation, into their stream.
//!
//! Owns reading a dead-letter stream (`<stream>.dlq`, one partition) from a
//! gateway over a range of offsets, re-posting the original events to the
//! target stream in batches with `?dead_letter=false` (so what still fails is
//! reported back instead of being dead-lettered again), and the report of
//! what still fails: those records stay in the DLQ at their offsets.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

/// Most events per re-post: at most `limits.max_reported_errors` (default
/// 100), so every event that still fails is named in the answer.
const BATCH_EVENTS: usize = 100;
/// Empty reads before the end offset before giving up (each waits up to 2 s
/// for the gateway to see the DLQ's newer commits).
const EMPTY_READS: u32 = 5;
/// Most body bytes per re-post (well under `limits.max_body_bytes`).
const BATCH_BYTES: usize = 1024 * 1024;
/// Attempts for one request that gets 429/503 or no answer.
const ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("bad gateway URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{0}")]
    Http(String),
    #[error("{url}: {status}: {detail}")]
    Refused {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url}: unexpected answer: {reason}")]
    Unexpected { url: String, reason: String },
}

/// One `sluice replay` invocation.
pub struct ReplayOptions {
    /// The dead-letter stream, e.g. `clicks.dlq`.
    pub from_stream: String,
    /// Where its events go, e.g. `clicks`.
    pub into: String,
    pub url: String,
    pub key: Option<String>,
    /// First DLQ offset replayed (default 0).
    pub from_offset: u64,
    /// Offset after the last one replayed (default: the DLQ's head at start).
    pub to_offset: Option<u64>,
}

/// A dead letter that still fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StillInvalid {
    pub offset: u64,
    pub reason: String,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Report {
    pub from_offset: u64,
    pub to_offset: u64,
    pub replayed: usize,
    pub still_invalid: Vec<StillInvalid>,
}

#[derive(Deserialize)]
struct Page<'a> {
    next_offset: u64,
    #[serde(borrow)]
    events: Vec<Envelope<'a>>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Letter<'a>,
}

#[derive(Deserialize)]
struct Letter<'a> {
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(default)]
    event_text: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    errors: Vec<AnswerError>,
    #[serde(default)]
    errors_omitted: usize,
}

#[derive(Deserialize)]
struct AnswerError {
    index: usize,
    #[serde(rename = "type")]
    kind: String,
    detail: String,
}

#[derive(Deserialize)]
struct Described {
    partitions: Vec<DescribedPartition>,
}

#[derive(Deserialize)]
struct DescribedPartition {
    head_offset: u64,
}

struct Client {
    http: reqwest::Client,
    base: Url,
}

/// Replay `opts.from_stream` into `opts.into`.
pub async fn run(opts: &ReplayOptions) -> Result<Report, ReplayError> {
    let client = Client::new(&opts.url, opts.key.as_deref())?;
    let to = match opts.to_offset {
        Some(to) => to,
        None => client.head(&opts.from_stream).await?,
    };
    let mut report = Report {
        from_offset: opts.from_offset,
        to_offset: to,
        ..Report::default()
    };
    let mut offset = opts.from_offset;
    let mut empty = 0;
    while offset < to {
        let limit = (to - offset).min(BATCH_EVENTS as u64);
        // A gateway may not have seen the newest commits yet: wait for them.
        let wait = if empty > 0 { "&wait=2000" } else { "" };
        let path = format!(
            "v1/streams/{}/events?partition=0&offset={offset}&limit={limit}{wait}",
            opts.from_stream
        );
        let body = client.send(|h, u| h.get(u), &path, None).await?;
        let page: Page = serde_json::from_slice(&body).map_err(|e| unexpected(&path, e))?;
        if page.events.is_empty() {
            empty += 1;
            if empty > EMPTY_READS {
                return Err(ReplayError::Unexpected {
                    url: path,
                    reason: format!("no dead letters at offset {offset}, though the DLQ's head is {to}; {} were replayed before this", report.replayed),
                });
            }
            continue;
        }
        empty = 0;
        replay_page(&client, opts, offset, &page, &mut report).await?;
        offset = page.next_offset;
    }
    Ok(report)
}

/// Re-post one page of dead letters (first at DLQ offset `first`).
async fn replay_page(
    client: &Client,
    opts: &ReplayOptions,
    first: u64,
    page: &Page<'_>,
    report: &mut Report,
) -> Result<(), ReplayError> {
    let mut body = Vec::new();
    let mut offsets = Vec::new();
    for (i, envelope) in page.events.iter().enumerate() {
        let offset = first + i as u64;
        let Some(event) = envelope.event.event else {
            let text = envelope.event.event_text.as_deref().unwrap_or("");
            report.still_invalid.push(StillInvalid {
                offset,
                reason: format!("not JSON, cannot be replayed: {text:.80}"),
            });
            continue;
        };
        body.extend_from_slice(event.get().as_bytes());
        body.push(b'\n');
        offsets.push(offset);
        if offsets.len() == BATCH_EVENTS || body.len() >= BATCH_BYTES {
            post(
                client,
                opts,
                std::mem::take(&mut body),
                &mut offsets,
                report,
            )
            .await?;
        }
    }
    if !offsets.is_empty() {
        post(client, opts, body, &mut offsets, report).await?;
    }
    Ok(())
}

async fn post(
    client: &Client,
    opts: &ReplayOptions,
    body: Vec<u8>,
    offsets: &mut Vec<u64>,
    report: &mut Report,
) -> Result<(), ReplayError> {
    let path = format!("v1/streams/{}/events?dead_letter=false", opts.into);
    let answer = client.send(|h, u| h.post(u), &path, Some(body)).await?;
    let answer: Answer = serde_json::from_slice(&answer).map_err(|e| unexpected(&path, e))?;
    if answer.errors_omitted > 0 {
        return Err(ReplayError::Unexpected {
            url: path,
            reason: format!("the gateway left out some errors (its limits.max_reported_errors is below the replay batch of {BATCH_EVENTS}); {} were replayed before this", report.replayed),
        });
    }
    let failed: std::collections::HashMap<usize, &AnswerError> =
        answer.errors.iter().map(|e| (e.index, e)).collect();
    for (index, offset) in offsets.drain(..).enumerate() {
        match failed.get(&index) {
            None => report.replayed += 1,
            Some(e) => report.still_invalid.push(StillInvalid {
                offset,
                reason: format!("{}: {}", e.kind, e.detail),
            }),
        }
    }
    Ok(())
}

fn unexpected(url: &str, e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Unexpected {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

impl Client {
    fn new(base: &str, key: Option<&str>) -> Result<Client, ReplayError> {
        let bad = |reason: String| ReplayError::BadUrl {
            url: base.to_string(),
            reason,
        };
        let mut url = Url::parse(base).map_err(|e| bad(e.to_string()))?;
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = key {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| bad("the API key has characters a header cannot carry".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/x-ndjson"),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("sluice-replay/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ReplayError::Http(e.to_string()))?;
        Ok(Client { http, base: url })
    }

    /// The DLQ's head offset; a dead-letter stream has one partition.
    async fn head(&self, stream: &str) -> Result<u64, ReplayError> {
        let path = format!("v1/streams/{stream}");
        let body = self.send(|h, u| h.get(u), &path, None).await?;
        let d: Described = serde_json::from_slice(&body).map_err(|e| unexpected(&path, e))?;
        match d.partitions.as_slice() {
            [p] => Ok(p.head_offset),
            _ => Err(ReplayError::Unexpected {
                url: path,
                reason: format!(
                    "{stream} has {} partitions; dead-letter streams have one",
                    d.partitions.len()
                ),
            }),
        }
    }

    /// Send with retries on 429, 503 and lost connections (honouring
    /// `Retry-After`); 2xx and 422 are answers, other statuses errors.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client, Url) -> reqwest::RequestBuilder,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<bytes::Bytes, ReplayError> {
        let url = self.base.join(path).map_err(|e| unexpected(path, e))?;
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            let mut req = build(&self.http, url.clone());
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let wait = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry = retry_after(&resp);
                    let bytes = resp
                        .bytes()
                        .await
                        .map_err(|e| ReplayError::Http(e.to_string()))?;
                    match status {
                        200..=299 | 422 => return Ok(bytes),
                        429 | 503 => {
                            last = format!("{status}: {}", problem_detail(&bytes));
                            retry
                        }
                        _ => {
                            return Err(ReplayError::Refused {
                                url: url.to_string(),
                                status,
                                detail: problem_detail(&bytes),
                            })
                        }
                    }
                }
                Err(e) => {
                    last = e.to_string();
                    None
                }
            };
            let backoff = Duration::from_millis(200 << attempt.min(5));
            tokio::time::sleep(wait.unwrap_or(backoff)).await;
        }
        Err(ReplayError::Http(format!(
            "{url}: gave up after {ATTEMPTS} attempts: {last}"
        )))
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

fn problem_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct P {
        detail: String,
    }
    serde_json::from_slice::<P>(body)
        .map(|p| p.detail)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(200).collect())
}
