//! Consumer groups over HTTP: `GET …/consumers/{group}` (checkpoints and lag)
//! and `POST …/consumers/{group}/commit` (advance put-if-absent).
//!
//! Owns the HTTP shapes of consumer groups and the checks a commit must pass
//! before any checkpoint is created. It reuses [`Checkpoints`] for the
//! protocol itself and never reads events or writes the log.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::{check_name, now, Checkpoint, Checkpoints, ConsumeError, Position};
use crate::auth::Grant;
use crate::body::Body;
use crate::error::{Problem, ProblemType};
use crate::ingest::json;
use crate::log::record::StreamPath;
use crate::log::retry::RetryPolicy;
use crate::server::App;

/// Largest commit body read: one row per partition is a few dozen bytes, so
/// this bounds memory per request while allowing thousands of partitions.
pub const MAX_COMMIT_BODY_BYTES: usize = 64 * 1024;

impl From<ConsumeError> for Problem {
    fn from(e: ConsumeError) -> Self {
        let detail = e.to_string();
        match e {
            ConsumeError::BadName { .. } => Problem::new(ProblemType::InvalidGroupName, detail),
            ConsumeError::Conflict(_) => Problem::new(ProblemType::CheckpointConflict, detail),
            ConsumeError::Unavailable { .. }
            | ConsumeError::CheckpointInDoubt { .. }
            | ConsumeError::List { .. }
            | ConsumeError::Log { .. }
            | ConsumeError::Store(_) => Problem::new(ProblemType::StoreUnavailable, detail),
            ConsumeError::Expired {
                partition,
                offset,
                first_offset,
                ..
            } => Problem::offset_expired(partition, offset, first_offset, detail),
            ConsumeError::AheadOfLog { .. } => {
                Problem::new(ProblemType::CheckpointAheadOfLog, detail)
            }
            ConsumeError::CorruptCheckpoint { .. }
            | ConsumeError::UnknownFormat(_)
            | ConsumeError::Parquet(_)
            | ConsumeError::Envelope { .. }
            | ConsumeError::NoStoreDir { .. }
            | ConsumeError::Output { .. } => Problem::new(ProblemType::Internal, detail),
        }
    }
}

/// One partition's row of `GET …/consumers/{group}`.
#[derive(Debug, Serialize)]
struct PartitionState {
    partition: u32,
    offset: u64,
    seq: Option<u64>,
    committed_at: Option<String>,
    head_offset: u64,
    lag: u64,
}

/// The commit body: `{"partitions":[{"partition":p,"seq":S|null,"offset":O}]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    partitions: Vec<CommitRow>,
}

/// One partition of a commit, and of its answer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitRow {
    partition: u32,
    /// Request: the checkpoint seq read (`null`: none yet). Answer: the new one.
    #[serde(default)]
    seq: Option<u64>,
    offset: u64,
}

/// A group of a stream of the grant's tenant, with its partition count.
struct Group {
    path: StreamPath,
    checkpoints: Checkpoints,
    partitions: u32,
}

/// The group's place. Partitions: the stream's configured count, or more
/// when the bucket holds a higher one (as `sluice consume` counts them).
async fn group_of(app: &App, grant: &Grant, stream: &str, group: &str) -> Result<Group, Problem> {
    let configured = grant.stream(stream)?.partitions;
    check_name("group", group)?;
    let path = app.log.stream(&grant.tenant.name, stream);
    let partitions = app
        .log
        .partitions(&path, configured)
        .await
        .map_err(|(prefix, e)| {
            Problem::new(
                ProblemType::StoreUnavailable,
                format!("cannot list {prefix}: {e}"),
            )
        })?;
    let policy = RetryPolicy {
        deadline: app.config.batch.store_retry(),
        ..RetryPolicy::default()
    };
    let checkpoints = Checkpoints::new(app.log.store().clone(), policy, &path, group);
    Ok(Group {
        path,
        checkpoints,
        partitions,
    })
}

async fn head_offset(app: &App, g: &Group, partition: u32) -> Result<u64, Problem> {
    let head = app.log.head(&g.path, partition).await;
    let head = head.map_err(|e| Problem::new(ProblemType::StoreUnavailable, e.to_string()))?;
    Ok(head.next_offset)
}

/// `GET /v1/streams/{stream}/consumers/{group}`: every partition's checkpoint,
/// head and lag. A group that never committed shows offset 0 and null seqs.
pub async fn describe(
    app: &Arc<App>,
    grant: &Grant,
    stream: &str,
    group: &str,
) -> Result<Response<Body>, Problem> {
    let g = group_of(app, grant, stream, group).await?;
    let watched = super::lag::is_watched(app, &grant.tenant.name, stream, group);
    let mut rows = Vec::with_capacity(g.partitions as usize);
    for partition in 0..g.partitions {
        let cp = g.checkpoints.latest(partition).await?;
        let head = head_offset(app, &g, partition).await?;
        let offset = cp.as_ref().map_or(0, |c| c.offset);
        if watched {
            let lag = head.saturating_sub(offset);
            super::lag::record(&grant.tenant.name, stream, group, partition, lag);
        }
        rows.push(PartitionState {
            partition,
            offset,
            seq: cp.as_ref().map(|c| c.seq),
            committed_at: cp.map(|c| c.committed_at),
            head_offset: head,
            lag: head.saturating_sub(offset),
        });
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"group": group, "stream": stream, "partitions": rows}),
    ))
}

/// `POST /v1/streams/{stream}/consumers/{group}/commit`. Every row is checked
/// first (400 `bad-commit`: nothing created); then each partition's next
/// checkpoint is created put-if-absent. A lost race on some partitions is a
/// 409 naming them, listing the partitions that did advance.
pub async fn commit(
    app: &Arc<App>,
    grant: &Grant,
    stream: &str,
    group: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Problem> {
    if grant.key.as_ref().is_some_and(|k| k.is_browser_key()) {
        return Err(Problem::new(
            ProblemType::ForbiddenScope,
            "a browser key (one with origins) cannot move a consumer group's checkpoints: its key is visible in web pages",
        ));
    }
    let g = group_of(app, grant, stream, group).await?;
    let body = read_body(app, req).await?;
    let rows: CommitBody = serde_json::from_slice(&body).map_err(|e| {
        bad_commit(format!(
            "the body must be {{\"partitions\":[{{\"partition\":P,\"seq\":S|null,\"offset\":O}}]}}: {e}"
        ))
    })?;
    let mut froms = Vec::with_capacity(rows.partitions.len());
    for row in &rows.partitions {
        if froms
            .iter()
            .any(|f: &Position| f.partition == row.partition)
        {
            return Err(bad_commit(format!(
                "partition {} appears twice",
                row.partition
            )));
        }
        froms.push(check_row(app, &g, row).await?);
    }
    if froms.is_empty() {
        return Err(bad_commit("partitions is empty: nothing to commit"));
    }
    let consumer = consumer_id(grant);
    let (mut advanced, mut conflicts) = (Vec::new(), Vec::new());
    for (from, row) in froms.into_iter().zip(&rows.partitions) {
        match g
            .checkpoints
            .advance(from, row.offset, &consumer, now())
            .await
        {
            Ok(Checkpoint { seq, offset, .. }) => advanced.push(CommitRow {
                partition: from.partition,
                seq: Some(seq),
                offset,
            }),
            Err(ConsumeError::Conflict(c)) => conflicts.push(c),
            Err(e) => return Err(e.into()),
        }
    }
    if conflicts.is_empty() {
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "partitions": advanced }),
        ));
    }
    let named: Vec<String> = conflicts
        .iter()
        .map(|c| format!("partition {} (seq {} taken)", c.partition, c.seq))
        .collect();
    let problem = Problem::new(
        ProblemType::CheckpointConflict,
        format!(
            "group {group}: {} advanced by another consumer; nothing was committed for {}: \
             re-read the group and retry. The other partitions listed in `partitions` did advance",
            named.join(", "),
            if conflicts.len() == 1 { "it" } else { "them" },
        ),
    );
    let mut doc = problem.to_json();
    doc["conflicts"] = serde_json::json!(conflicts
        .iter()
        .map(|c| serde_json::json!({"partition": c.partition, "seq": c.seq}))
        .collect::<Vec<_>>());
    doc["partitions"] = serde_json::json!(advanced);
    let mut resp = json(StatusCode::CONFLICT, &doc);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    Ok(resp)
}

/// The position `row` advances from, once it is known to be a valid commit:
/// an existing partition, the checkpoint it names exists, and its offset
/// lies between that checkpoint's offset and the head.
async fn check_row(app: &App, g: &Group, row: &CommitRow) -> Result<Position, Problem> {
    let p = row.partition;
    if p >= g.partitions {
        return Err(bad_commit(format!(
            "partition {p} does not exist; this stream has partitions 0-{}",
            g.partitions - 1
        )));
    }
    let from = match row.seq {
        None => Position {
            partition: p,
            next_seq: 0,
            offset: 0,
        },
        Some(seq) => {
            let Some(cp) = g.checkpoints.get(p, seq).await? else {
                return Err(bad_commit(format!(
                    "partition {p} has no checkpoint seq {seq}: re-read the group"
                )));
            };
            Position {
                partition: p,
                next_seq: seq + 1,
                offset: cp.offset,
            }
        }
    };
    if row.offset < from.offset {
        return Err(bad_commit(format!(
            "partition {p}: offset {} is below offset {} of the checkpoint it advances from",
            row.offset, from.offset
        )));
    }
    let head = head_offset(app, g, p).await?;
    if row.offset > head {
        return Err(bad_commit(format!(
            "partition {p}: offset {} is past the head ({head})",
            row.offset
        )));
    }
    Ok(from)
}

/// Written into the checkpoints one request creates: its key, and a fresh id
/// (a retried request is a new consumer, so a stale seq always conflicts).
fn consumer_id(grant: &Grant) -> String {
    let run = ulid::Ulid::new();
    match &grant.key {
        Some(key) => format!("http-{}-{run}", key.id),
        None => format!("http-{run}"),
    }
}

fn bad_commit(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemType::BadCommit, detail)
}

/// The whole body, at most [`MAX_COMMIT_BODY_BYTES`], within the body timeout.
async fn read_body(app: &App, req: Request<Incoming>) -> Result<Bytes, Problem> {
    let too_large = format!("a commit body is at most {MAX_COMMIT_BODY_BYTES} bytes");
    crate::ingest::read_limited_body(app, req, MAX_COMMIT_BODY_BYTES, &too_large).await
}
