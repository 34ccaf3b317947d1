//! Routing and the small routes: health, readiness, metrics.
//!
//! Owns the route table and per-route request metrics. Ingest has its own module.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::body::Body;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use object_store::ObjectStoreExt;

use super::{request_id, App};
use crate::auth::{self, Action};
use crate::error::Problem;
use crate::{consume, ingest, read};

/// Route labels: a fixed vocabulary, never the raw path.
fn route_label(method: &Method, path: &str) -> &'static str {
    match (method, path) {
        (_, "/healthz") => "healthz",
        (_, "/readyz") => "readyz",
        (_, "/metrics") => "metrics",
        (_, p) if is_consumers_path(p) => "consumers",
        (&Method::POST, p) if p.starts_with("/v1/streams/") => "ingest",
        (&Method::GET, p) if p.starts_with("/v1/streams/") && p.ends_with("/events") => "read",
        (&Method::GET, p) if p.starts_with("/v1/streams/") && p.ends_with("/ws") => "ws_ingest",
        (&Method::GET, p) if p.starts_with("/v1/streams/") && p.ends_with("/subscribe") => {
            "subscribe"
        }
        (&Method::GET, p) if p.starts_with("/v1/streams") => "streams",
        (&Method::OPTIONS, _) => "preflight",
        _ => "other",
    }
}

/// `/v1/streams/{stream}/consumers/{group}[/commit]`, by segment (a stream
/// may itself be called `consumers`).
fn is_consumers_path(path: &str) -> bool {
    let mut s = path.trim_start_matches('/').split('/');
    s.next() == Some("v1")
        && s.next() == Some("streams")
        && s.next().is_some()
        && s.next() == Some("consumers")
        && s.next().is_some()
        && matches!(s.next(), None | Some("commit"))
        && s.next().is_none()
}

/// The in-flight gauge, registered once (it is touched twice per request).
fn inflight() -> &'static metrics::Gauge {
    static GAUGE: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();
    GAUGE.get_or_init(|| metrics::gauge!("sluice_inflight_requests"))
}

pub async fn route(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let label = route_label(req.method(), req.uri().path());
    let inflight = inflight();
    inflight.increment(1.0);
    let cors = app.access.cors_origin(req.headers());
    let preflight = auth::is_preflight(&req);
    let id = request_id::choose(req.headers());
    let answer = async {
        match preflight {
            true => app.access.preflight(&req),
            false => dispatch(&app, req).await.unwrap_or_else(|p| p.response()),
        }
    };
    let mut resp = request_id::scope(id.clone(), answer).await;
    if let Ok(value) = http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert(request_id::HEADER, value);
    }
    app.access.vary(resp.headers_mut());
    // A refused preflight carries no CORS headers: the browser must not send.
    if let Some(origin) = cors.filter(|_| !preflight || resp.status() == StatusCode::NO_CONTENT) {
        auth::allow_origin(resp.headers_mut(), origin);
    }
    inflight.decrement(1.0);
    let status = resp.status().as_u16().to_string();
    metrics::counter!("sluice_http_requests_total", "route" => label, "status" => status)
        .increment(1);
    metrics::histogram!("sluice_http_request_duration_seconds", "route" => label)
        .record(started.elapsed().as_secs_f64());
    Ok(resp)
}

async fn dispatch(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Problem> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let grant = |action, stream| app.access.authorize(&req, action, stream);
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET, ["readyz"]) => Ok(readyz(app).await),
        (&Method::GET, ["metrics"]) => {
            grant(Action::Metrics, None)?;
            Ok(metrics(app))
        }
        (&Method::POST, ["v1", "streams", stream, "events"]) => {
            let g = grant(Action::Write, Some(stream))?;
            ingest::handle(app, &g, stream, req).await
        }
        (&Method::GET, ["v1", "streams", stream, "events"]) => {
            let g = grant(Action::Read, Some(stream))?;
            read::routes::events(app, &g, stream, req).await
        }
        (&Method::GET, ["v1", "streams", stream, "ws"]) => {
            let g = grant(Action::Write, Some(stream))?;
            ingest::ws::handle(app, &g, stream, req).await
        }
        (&Method::GET, ["v1", "streams", stream, "subscribe"]) => {
            let g = grant(Action::Read, Some(stream))?;
            read::ws::handle(app, &g, stream, req).await
        }
        (&Method::GET, ["v1", "streams"]) => {
            let g = grant(Action::Read, None)?;
            read::routes::list(app, &g).await
        }
        (&Method::GET, ["v1", "streams", stream]) => {
            let g = grant(Action::Read, Some(stream))?;
            read::routes::describe(app, &g, stream).await
        }
        (&Method::GET, ["v1", "streams", stream, "consumers", group]) => {
            let g = grant(Action::Read, Some(stream))?;
            consume::routes::describe(app, &g, stream, group).await
        }
        (&Method::POST, ["v1", "streams", stream, "consumers", group, "commit"]) => {
            let g = grant(Action::Read, Some(stream))?;
            consume::routes::commit(app, &g, stream, group, req).await
        }
        (_, ["v1", "streams", _, "events"])
        | (
            _,
            ["v1", "streams", _, "consumers", _] | ["v1", "streams", _, "consumers", _, "commit"],
        )
        | (_, ["v1", "streams"] | ["v1", "streams", _])
        | (_, ["healthz" | "readyz" | "metrics"]) => Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("{} is not allowed on {path}", req.method()),
        )),
        _ => Err(Problem::not_found(format!(
            "no route for {} {path}",
            req.method()
        ))),
    }
}

pub(super) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(crate::body::full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Ready when not draining and the store answers a HEAD within a second.
async fn readyz(app: &Arc<App>) -> Response<Body> {
    if app.is_draining() {
        return Problem::unavailable("draining", "the gateway is shutting down").response();
    }
    let store = app.log.store();
    let probe = store.root.clone().join("_sluice_probe");
    let answer = tokio::time::timeout(Duration::from_secs(1), store.inner.head(&probe)).await;
    match answer {
        Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => {
            text(StatusCode::OK, "ready\n")
        }
        Ok(Err(e)) => {
            Problem::unavailable("store-unavailable", format!("store does not answer: {e}"))
                .response()
        }
        Err(_) => {
            Problem::unavailable("store-unavailable", "store did not answer within 1 s").response()
        }
    }
}

pub(super) fn metrics(app: &Arc<App>) -> Response<Body> {
    let mut resp = Response::new(crate::body::full(Bytes::from(app.metrics.render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
