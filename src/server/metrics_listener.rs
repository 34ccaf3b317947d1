//! The optional metrics listener (`metrics_listen`): `GET /metrics` and
//! `GET /healthz` only, without keys, so a Prometheus on an internal network
//! scrapes without an API key while the main port stays behind auth.
//!
//! Owns its accept loop and its own small connection bound; it stops when
//! the gateway starts draining. Everything else is 404.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{routes, App};
use crate::body::Body;
use crate::error::{Problem, ProblemType};

/// Scrapers connected at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 16;

/// Serve `listener` until the gateway closes.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut closing = app.closing();
    loop {
        let accepted = tokio::select! {
            _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => listener.accept().await.map(|c| (c, p)),
                Err(_) => return,
            },
        };
        let ((stream, _), permit) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let timeout = app.config.server.header_read_timeout();
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&app, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
            drop(permit);
        });
    }
}

fn answer(app: &Arc<App>, req: &Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => routes::metrics(app),
        (&Method::GET, "/healthz") => routes::text(StatusCode::OK, "ok\n"),
        _ => Problem::new(
            ProblemType::NotFound,
            "the metrics listener serves GET /metrics and GET /healthz only",
        )
        .response(),
    }
}
