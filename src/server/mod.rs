//! The gateway process: accept loop, connection limits, graceful drain.
//!
//! Owns sockets and lifetimes: a semaphore bounds connections, hyper enforces
//! the header timeout and size, and shutdown runs in order (not ready →
//! stop accepting → finish in-flight requests → flush every buffer). Request
//! handling lives in `routes` and `ingest`.

mod metrics_listener;
pub mod request_id;
mod request_metrics;
mod routes;
pub mod table;
pub mod tls;
pub mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::auth::Access;
use crate::batch::Batcher;
use crate::config::Config;
use crate::log::retry::RetryPolicy;
use crate::log::Log;
use crate::read::Readers;
use crate::store::{Store, StoreError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Shared state of one gateway.
pub struct App {
    pub config: Config,
    /// Keys, tenants and their streams.
    pub access: Access,
    pub log: Arc<Log>,
    pub batcher: Batcher,
    pub readers: Arc<Readers>,
    /// Permits for streaming subscribers (SSE, WebSocket), `read.max_subscribers`.
    pub subscribers: Arc<Semaphore>,
    /// Permits for upgraded (WebSocket) connections, which leave hyper's
    /// connection count when they upgrade: `server.max_connections`, and the
    /// drain waits for them.
    pub sockets: Arc<Semaphore>,
    /// The exposition; `None` when `metrics = false` (nothing is recorded).
    pub metrics: Option<PrometheusHandle>,
    draining: AtomicBool,
    closing: watch::Sender<bool>,
}

impl App {
    /// A permit for one upgraded connection, or 503 when all are taken.
    pub fn socket_permit(
        &self,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, crate::error::Problem> {
        self.sockets.clone().try_acquire_owned().map_err(|_| {
            crate::error::Problem::new(
                crate::error::ProblemType::Overloaded,
                format!(
                    "this gateway already holds {} connections (server.max_connections)",
                    self.config.server.max_connections
                ),
            )
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Turns true when the gateway starts draining (long-polls and streams end).
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}

/// A bound, not yet serving, gateway.
pub struct Gateway {
    pub app: Arc<App>,
    listener: TcpListener,
    tls: Option<Arc<tls::Tls>>,
    /// `metrics_listen`: `/metrics` without keys on a second port.
    metrics_listener: Option<TcpListener>,
}

impl Gateway {
    /// Open the store (and prove it answers), bind the listener.
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        let store = Store::open(&config.store)?;
        let tls = config.tls.as_ref().map(tls::Tls::load).transpose()?;
        store.check(&config.store).await?;
        let listener = listen(&config.listen, config.server.listen_backlog).map_err(|source| {
            StartError::Bind {
                addr: config.listen.clone(),
                source,
            }
        })?;
        let metrics_listener = match &config.metrics_listen {
            Some(addr) => Some(listen(addr, 128).map_err(|source| StartError::Bind {
                addr: addr.clone(),
                source,
            })?),
            None => None,
        };
        let mut gateway = Gateway::with_store(config, store, listener);
        gateway.tls = tls;
        gateway.metrics_listener = metrics_listener;
        Ok(gateway)
    }

    /// Also serve `/metrics` on `listener` (tests; `bind` opens `metrics_listen`).
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// Address of the metrics listener, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref()?.local_addr().ok()
    }

    /// Serve TLS with `tls` (tests; `bind` loads it from the config).
    pub fn with_tls(mut self, tls: Arc<tls::Tls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A gateway on a given store and listener (tests: decorated stores).
    pub fn with_store(config: Config, store: Store, listener: TcpListener) -> Gateway {
        let writer = ulid::Ulid::new().to_string().to_ascii_lowercase();
        let policy = RetryPolicy {
            deadline: config.batch.store_retry(),
            ..RetryPolicy::default()
        };
        let log = Arc::new(Log::new(store, writer, policy));
        let readers = Arc::new(Readers::new(log.clone(), config.read.clone()));
        let wake = readers.clone();
        let batcher =
            Batcher::new(log.clone(), &config.batch, config.streams.clone()).on_commit(Arc::new(
                move |tenant: &str, stream: &str, partition| wake.wake(tenant, stream, partition),
            ));
        let metrics = config.metrics.then(|| {
            let handle = crate::metrics::handle();
            crate::metrics::register();
            handle
        });
        let app = Arc::new(App {
            subscribers: Arc::new(Semaphore::new(config.read.max_subscribers)),
            sockets: Arc::new(Semaphore::new(config.server.max_connections)),
            access: Access::from_config(&config),
            config,
            log,
            batcher,
            readers,
            metrics,
            draining: AtomicBool::new(false),
            closing: watch::channel(false).0,
        });
        Gateway {
            app,
            listener,
            tls: None,
            metrics_listener: None,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` resolves, then drain and flush.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway {
            app,
            listener,
            tls,
            metrics_listener,
        } = self;
        if let Some(listener) = metrics_listener {
            tokio::spawn(metrics_listener::serve(app.clone(), listener));
        }
        if let Some(tls) = &tls {
            tls.spawn_reloader(app.closing());
        }
        tokio::spawn(crate::consume::lag::schedule(app.clone()));
        if let Some(handle) = &app.metrics {
            tokio::spawn(crate::metrics::upkeep(handle.clone(), app.closing()));
        }
        if app.config.compaction.enabled {
            let schedule =
                crate::compact::run::schedule(app.log.clone(), app.config.clone(), app.closing());
            tokio::spawn(schedule);
        }
        crate::gc::schedule::spawn(app.log.clone(), &app.config, app.closing());
        let max = app.config.server.max_connections;
        let permits = Arc::new(Semaphore::new(max));
        let (close_tx, close_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => tokio::select! {
                        _ = &mut shutdown => break,
                        conn = listener.accept() => conn.map(|c| (c, p)),
                    },
                    Err(_) => break,
                },
            };
            match accepted {
                Ok(((stream, _), permit)) => {
                    let (app, close, tls) = (app.clone(), close_rx.clone(), tls.clone());
                    tokio::spawn(async move {
                        let _ = stream.set_nodelay(true);
                        match tls {
                            None => serve_connection(app, stream, close).await,
                            Some(tls) => match tls.accept(stream).await {
                                Ok(stream) => serve_connection(app, stream, close).await,
                                Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                            },
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drain(app, listener, permits, close_tx, max).await;
    }
}

/// Bind with an explicit backlog: the default (128) drops connection bursts.
fn listen(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn drain(
    app: Arc<App>,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    close: watch::Sender<bool>,
    max: usize,
) {
    app.draining.store(true, Ordering::Relaxed);
    app.closing.send_replace(true);
    app.batcher.hurry();
    metrics::gauge!("sluice_draining").set(1.0);
    drop(listener);
    tracing::info!("draining: finishing in-flight requests, then flushing buffers");
    let _ = close.send(true);
    let limit = app.config.server.drain_timeout();
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    // Two phases, each bounded on its own: a stuck client must not cost the
    // flush of what other clients were already told was accepted.
    let connections = async {
        let _ = permits.acquire_many(all).await;
        let _ = app.sockets.acquire_many(all).await;
    };
    if tokio::time::timeout(limit, connections).await.is_err() {
        tracing::warn!("connections still open after server.drain_timeout_ms; flushing anyway");
    }
    match tokio::time::timeout(limit, app.batcher.shutdown()).await {
        Ok(()) => tracing::info!("drained: every buffered event is committed"),
        Err(_) => tracing::error!(
            buffered_bytes = app.batcher.budget().used(),
            "flush timed out (server.drain_timeout_ms); buffered events not committed"
        ),
    }
}

async fn serve_connection<S>(app: Arc<App>, stream: S, mut close: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &app.config.server;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout())
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .max_header_size(cfg.max_header_bytes)
        .keep_alive(true);
    let service_app = app.clone();
    let service = hyper::service::service_fn(move |req| routes::route(service_app.clone(), req));
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    metrics::gauge!("sluice_open_connections").increment(1.0);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async { close.wait_for(|c| *c).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
    metrics::gauge!("sluice_open_connections").decrement(1.0);
}
