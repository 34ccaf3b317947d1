//! Routing and the small routes: health, readiness, metrics, the OpenAPI
//! description.
//!
//! Owns dispatch on the route table (`table`) and per-route request metrics.
//! Ingest, reads and consumer groups have their own modules.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::body::Body;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use object_store::ObjectStoreExt;

use super::request_metrics::InFlight;
use super::table::{self, Match, Params, Route};
use super::{request_id, App};
use crate::auth::{self, Action};
use crate::error::{Problem, ProblemType};
use crate::{consume, ingest, read};

/// Route labels: a fixed vocabulary from the route table, never the raw path.
fn route_label(method: &Method, path: &str) -> &'static str {
    if method == Method::OPTIONS {
        return "preflight";
    }
    Route::for_path(path).map_or("other", Route::label)
}

pub async fn route(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut inflight = InFlight::start(route_label(req.method(), req.uri().path()));
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
    inflight.answered(resp.status().as_u16());
    Ok(resp)
}

async fn dispatch(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Problem> {
    let path = req.uri().path().to_string();
    let (route, Params { stream, group }) = match Route::find(req.method(), &path) {
        Match::Found(route, params) => (route, params),
        Match::WrongMethod(allowed) => {
            return Err(method_not_allowed(req.method(), &path, &allowed))
        }
        Match::NotFound => {
            let detail = format!("no route for {} {path}", req.method());
            return Err(Problem::new(ProblemType::NotFound, detail));
        }
    };
    let grant = |action, stream| app.access.authorize(&req, action, stream);
    match route {
        Route::Healthz => Ok(text(StatusCode::OK, "ok\n")),
        Route::Readyz => Ok(readyz(app).await),
        Route::OpenApi => Ok(openapi()),
        Route::Metrics => {
            grant(Action::Metrics, None)?;
            Ok(metrics(app))
        }
        Route::Ingest => {
            let g = grant(Action::Write, Some(stream))?;
            ingest::handle(app, &g, stream, req).await
        }
        Route::Read => {
            let g = grant(Action::Read, Some(stream))?;
            read::routes::events(app, &g, stream, req).await
        }
        Route::WsIngest => {
            let g = grant(Action::Write, Some(stream))?;
            ingest::ws::handle(app, &g, stream, req).await
        }
        Route::Subscribe => {
            let g = grant(Action::Read, Some(stream))?;
            read::ws::handle(app, &g, stream, req).await
        }
        Route::List => {
            let g = grant(Action::Read, None)?;
            read::routes::list(app, &g).await
        }
        Route::Describe => {
            let g = grant(Action::Read, Some(stream))?;
            read::routes::describe(app, &g, stream).await
        }
        Route::Group => {
            let g = grant(Action::Read, Some(stream))?;
            consume::routes::describe(app, &g, stream, group).await
        }
        Route::Commit => {
            let g = grant(Action::Read, Some(stream))?;
            consume::routes::commit(app, &g, stream, group, req).await
        }
    }
}

/// 405 with `Allow` (RFC 9110 §15.5.6): the methods the path has.
fn method_not_allowed(method: &Method, path: &str, allowed: &[Method]) -> Problem {
    let mut p = Problem::new(
        ProblemType::MethodNotAllowed,
        format!("{method} is not allowed on {path}"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&table::allow_header(allowed)) {
        p.headers_mut().insert(header::ALLOW, v);
    }
    p
}

/// The OpenAPI 3.1 description of [`Route::ALL`], served as written.
const OPENAPI: &str = include_str!("openapi.json");

fn openapi() -> Response<Body> {
    let mut resp = Response::new(crate::body::full(Bytes::from_static(OPENAPI.as_bytes())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
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
        return Problem::new(ProblemType::Draining, "the gateway is shutting down").response();
    }
    let store = app.log.store();
    let probe = store.root.clone().join("_sluice_probe");
    let answer = tokio::time::timeout(Duration::from_secs(1), store.inner.head(&probe)).await;
    match answer {
        Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => {
            text(StatusCode::OK, "ready\n")
        }
        Ok(Err(e)) => Problem::new(
            ProblemType::StoreUnavailable,
            format!("store does not answer: {e}"),
        )
        .response(),
        Err(_) => Problem::new(
            ProblemType::StoreUnavailable,
            "store did not answer within 1 s",
        )
        .response(),
    }
}

pub(super) fn metrics(app: &Arc<App>) -> Response<Body> {
    let Some(handle) = &app.metrics else {
        let detail = "metrics are off on this gateway (metrics = false)";
        return Problem::new(ProblemType::NotFound, detail).response();
    };
    let mut resp = Response::new(crate::body::full(Bytes::from(handle.render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
