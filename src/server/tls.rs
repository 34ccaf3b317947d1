//! TLS on the listener: the certificate, its hot reload, bounded handshakes.
//!
//! Owns the two files `[tls]` names: reads them at startup, polls them for
//! changes and swaps a new certificate in without a restart. One rustls
//! `ServerConfig` lives for the whole process; its resolver hands each new
//! handshake the current key, so a reload never touches open connections.
//! It does not accept sockets or speak HTTP: the accept loop calls
//! [`Tls::accept`] on each socket and serves the stream it gets back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use aws_lc_rs::digest;
use rustls::crypto::{aws_lc_rs as provider, CryptoProvider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// The only application protocol the gateway speaks.
const ALPN_HTTP1: &[u8] = b"http/1.1";
/// Floor for `reload_interval_ms`: zero would spin on the files.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(10);

/// What is wrong with a TLS file or a handshake. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS file {path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("TLS file {path} is not valid PEM: {source}")]
    Pem { path: String, source: pem::Error },
    #[error("tls.cert_file {path} holds no certificate (expected PEM `BEGIN CERTIFICATE`)")]
    NoCertificate { path: String },
    #[error("certificate in {path} cannot be used: {source}")]
    BadCertificate { path: String, source: rustls::Error },
    #[error("tls.key_file {path} holds no private key (expected PEM PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey { path: String },
    #[error("private key in {path} cannot be used: {source}")]
    BadKey { path: String, source: rustls::Error },
    #[error("private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    /// The crypto provider refused the default protocol versions (a build problem).
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
    #[error("TLS handshake with {} did not finish within {after:?}", peer_name(.peer))]
    HandshakeTimeout {
        peer: Option<SocketAddr>,
        after: Duration,
    },
    #[error("TLS handshake with {} failed: {source}", peer_name(.peer))]
    Handshake {
        peer: Option<SocketAddr>,
        source: std::io::Error,
    },
}

fn peer_name(peer: &Option<SocketAddr>) -> String {
    peer.map_or_else(|| "an unknown peer".to_string(), |p| p.to_string())
}

/// TLS for the listener: the current certificate and the acceptor that serves it.
pub struct Tls {
    cfg: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
    /// What the files held when [`Tls::load`] read them.
    loaded: Fingerprint,
    reloads: AtomicU64,
    /// Completed polls of the files (tests wait on it instead of sleeping).
    checks: AtomicU64,
}

impl Tls {
    /// Read cert + key now (startup error if either is bad).
    pub fn load(cfg: &TlsConfig) -> Result<Arc<Tls>, TlsError> {
        let provider = Arc::new(provider::default_provider());
        let files = Files::read(cfg)?;
        let key = files.certified_key(cfg, &provider)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(key))));
        let config = server_config(&provider, current.clone())?;
        Ok(Arc::new(Tls {
            cfg: cfg.clone(),
            provider,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            loaded: files.fingerprint(),
            reloads: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        }))
    }

    /// Poll the two files every `reload_interval_ms`; when their content
    /// changes, load them and swap the new certificate in. New files that do
    /// not load (say the cert was written and the key not yet) are logged and
    /// the old certificate stays; they are tried again as soon as either file
    /// changes. Stops when `closing` turns true (or its sender is gone).
    pub fn spawn_reloader(self: &Arc<Self>, closing: watch::Receiver<bool>) -> JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move { tls.poll_files(closing).await })
    }

    /// TLS handshake on an accepted socket, bounded by `handshake_timeout_ms`.
    /// ALPN: "http/1.1".
    pub async fn accept(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, TlsError> {
        let peer = tcp.peer_addr().ok();
        let after = Duration::from_millis(self.cfg.handshake_timeout_ms);
        match tokio::time::timeout(after, self.acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => {
                metrics::counter!("sluice_tls_handshake_failures_total", "reason" => "error")
                    .increment(1);
                Err(TlsError::Handshake { peer, source })
            }
            Err(_) => {
                metrics::counter!("sluice_tls_handshake_failures_total", "reason" => "timeout")
                    .increment(1);
                Err(TlsError::HandshakeTimeout { peer, after })
            }
        }
    }

    /// How many times a new certificate was installed (for tests and a metric).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    async fn poll_files(&self, mut closing: watch::Receiver<bool>) {
        let period = Duration::from_millis(self.cfg.reload_interval_ms).max(MIN_RELOAD_INTERVAL);
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut seen = self.loaded.clone();
        loop {
            tokio::select! {
                biased;
                _ = closing.wait_for(|c| *c) => break,
                _ = ticks.tick() => {}
            }
            self.check(&mut seen).await;
            self.checks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One poll: reload if the files differ from the last content tried.
    async fn check(&self, seen: &mut Fingerprint) {
        let files = match Files::read_async(&self.cfg).await {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(%error, "TLS files unreadable; still serving the current certificate");
                return;
            }
        };
        let fingerprint = files.fingerprint();
        if fingerprint == *seen {
            return;
        }
        *seen = fingerprint;
        match files.certified_key(&self.cfg, &self.provider) {
            Ok(key) => self.install(key),
            Err(error) => tracing::warn!(
                %error,
                "new TLS files rejected; still serving the current certificate until they change"
            ),
        }
    }

    fn install(&self, key: CertifiedKey) {
        self.current.set(Arc::new(key));
        let reloads = self.reloads.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!("sluice_tls_reloads_total").increment(1);
        tracing::info!(cert_file = %self.cfg.cert_file, reloads, "installed a new TLS certificate");
    }
}

/// The server config: safe default protocol versions, no client auth, ALPN
/// http/1.1, the certificate from `resolver` at each handshake.
fn server_config(
    provider: &Arc<CryptoProvider>,
    resolver: Arc<Current>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// The certificate new handshakes get; read once per handshake.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl Current {
    fn get(&self) -> Arc<CertifiedKey> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// SHA-256 over both files: catches replacement by rename and rewrites in
/// place alike, whatever the file system does with mtimes.
#[derive(Clone, PartialEq, Eq)]
struct Fingerprint(Vec<u8>);

/// The bytes of the cert and key files, read one after the other.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Files {
    fn read(cfg: &TlsConfig) -> Result<Files, TlsError> {
        Ok(Files {
            cert: std::fs::read(&cfg.cert_file).map_err(unreadable(&cfg.cert_file))?,
            key: std::fs::read(&cfg.key_file).map_err(unreadable(&cfg.key_file))?,
        })
    }

    async fn read_async(cfg: &TlsConfig) -> Result<Files, TlsError> {
        let cert = tokio::fs::read(&cfg.cert_file).await;
        let key = tokio::fs::read(&cfg.key_file).await;
        Ok(Files {
            cert: cert.map_err(unreadable(&cfg.cert_file))?,
            key: key.map_err(unreadable(&cfg.key_file))?,
        })
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut sha = digest::Context::new(&digest::SHA256);
        sha.update(&(self.cert.len() as u64).to_le_bytes());
        sha.update(&self.cert);
        sha.update(&self.key);
        Fingerprint(sha.finish().as_ref().to_vec())
    }

    /// Parse both files and prove the key belongs to the leaf certificate.
    fn certified_key(
        &self,
        cfg: &TlsConfig,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let chain = parse_chain(&cfg.cert_file, &self.cert)?;
        let key = parse_key(&cfg.key_file, &self.key)?;
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| TlsError::BadKey {
                path: cfg.key_file.clone(),
                source,
            })?;
        let certified = CertifiedKey::new(chain, signer);
        match certified.keys_match() {
            // Unknown: the key type cannot show its public half; rustls' own
            // `CertifiedKey::from_der` accepts that too.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
                Ok(certified)
            }
            Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
                cert: cfg.cert_file.clone(),
                key: cfg.key_file.clone(),
            }),
            Err(source) => Err(TlsError::BadCertificate {
                path: cfg.cert_file.clone(),
                source,
            }),
        }
    }
}

fn unreadable(path: &str) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Unreadable {
        path: path.to_string(),
        source,
    }
}

fn parse_chain(path: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_string(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_string(),
        });
    }
    Ok(chain)
}

fn parse_key(path: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_string(),
        },
        source => TlsError::Pem {
            path: path.to_string(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::Instant;
    use tokio_rustls::{client, TlsConnector};

    use super::*;

    type Client = client::TlsStream<TcpStream>;

    /// A self-signed certificate for "localhost" and its key, as PEM.
    struct Identity {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    fn identity() -> Identity {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        Identity {
            cert_pem: made.cert.pem(),
            key_pem: made.signing_key.serialize_pem(),
            der: made.cert.der().clone(),
        }
    }

    /// Replace `name` in `dir` the way deploy tools do: a temp file, then rename.
    fn replace(dir: &Path, name: &str, text: &str) {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }

    fn install(dir: &Path, id: &Identity) {
        replace(dir, "key.pem", &id.key_pem);
        replace(dir, "cert.pem", &id.cert_pem);
    }

    fn config(dir: &Path, reload_interval_ms: u64, handshake_timeout_ms: u64) -> TlsConfig {
        TlsConfig {
            cert_file: dir.join("cert.pem").display().to_string(),
            key_file: dir.join("key.pem").display().to_string(),
            reload_interval_ms,
            handshake_timeout_ms,
        }
    }

    /// A TLS echo server on 127.0.0.1: whatever a client writes comes back.
    async fn serve(tls: Arc<Tls>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = tls.accept(tcp).await {
                        let (mut rx, mut tx) = tokio::io::split(stream);
                        let _ = tokio::io::copy(&mut rx, &mut tx).await;
                    }
                });
            }
        });
        addr
    }

    /// A client trusting `roots`. Resumption is off so that every connection
    /// sees the certificate served now, not the one its session began with.
    fn connector(roots: &[&Identity]) -> TlsConnector {
        let mut store = rustls::RootCertStore::empty();
        for id in roots {
            store.add(id.der.clone()).unwrap();
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(store)
                .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        TlsConnector::from(Arc::new(config))
    }

    async fn connect(connector: &TlsConnector, addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.unwrap()
    }

    fn served(conn: &Client) -> CertificateDer<'static> {
        conn.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    async fn echo(conn: &mut Client, line: &str) {
        let sent = format!("{line}\n");
        conn.write_all(sent.as_bytes()).await.unwrap();
        conn.flush().await.unwrap();
        let mut back = vec![0; sent.len()];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut back))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(back, sent.as_bytes());
    }

    /// Poll `done` every 10 ms; fail after 10 s.
    async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done().await {
            assert!(Instant::now() < deadline, "no {what} within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_served(connector: &TlsConnector, addr: SocketAddr, want: &Identity) {
        wait_until("new certificate served", async || {
            served(&connect(connector, addr).await) == want.der
        })
        .await;
    }

    /// Wait for `n` complete polls of the files after this call.
    async fn wait_checks(tls: &Tls, n: u64) {
        // The poll running now may have read the files before the caller changed them.
        let target = tls.checks.load(Ordering::Relaxed) + n + 1;
        wait_until("file checks", async || {
            tls.checks.load(Ordering::Relaxed) >= target
        })
        .await;
    }

    #[tokio::test]
    async fn handshake_serves_the_certificate_and_carries_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = identity();
        install(dir.path(), &a);
        let tls = Tls::load(&config(dir.path(), 2_000, 5_000)).unwrap();
        let addr = serve(tls).await;
        let mut conn = connect(&connector(&[&a]), addr).await;
        assert_eq!(served(&conn), a.der);
        assert_eq!(conn.get_ref().1.alpn_protocol(), Some(ALPN_HTTP1));
        echo(&mut conn, "hello").await;
    }

    #[tokio::test]
    async fn reload_serves_the_new_certificate_and_keeps_open_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (identity(), identity());
        install(dir.path(), &a);
        let tls = Tls::load(&config(dir.path(), 50, 5_000)).unwrap();
        let (close, closing) = watch::channel(false);
        let reloader = tls.spawn_reloader(closing);
        let addr = serve(tls.clone()).await;
        let client = connector(&[&a, &b]);
        let mut before = connect(&client, addr).await;
        assert_eq!(served(&before), a.der);
        echo(&mut before, "before").await;

        install(dir.path(), &b);
        wait_served(&client, addr, &b).await;
        assert!(tls.reloads() >= 1);
        echo(&mut before, "after the swap").await;

        // Rewritten in place (same inode, maybe same length and mtime): noticed too.
        std::fs::write(dir.path().join("key.pem"), &a.key_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &a.cert_pem).unwrap();
        wait_served(&client, addr, &a).await;

        close.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), reloader)
            .await
            .expect("the reloader stops when closing turns true")
            .unwrap();
    }

    #[test]
    fn load_names_the_bad_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (identity(), identity());
        let cfg = config(dir.path(), 2_000, 5_000);
        replace(dir.path(), "cert.pem", &a.key_pem);
        replace(dir.path(), "key.pem", &a.key_pem);
        let err = Tls::load(&cfg).err().unwrap();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains(&cfg.cert_file), "{err}");

        replace(dir.path(), "cert.pem", &a.cert_pem);
        replace(dir.path(), "key.pem", &a.cert_pem);
        let err = Tls::load(&cfg).err().unwrap();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
        assert!(err.to_string().contains(&cfg.key_file), "{err}");

        replace(dir.path(), "key.pem", &b.key_pem);
        let err = Tls::load(&cfg).err().unwrap();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not match"), "{err}");

        std::fs::remove_file(dir.path().join("key.pem")).unwrap();
        let err = Tls::load(&cfg).err().unwrap();
        assert!(matches!(err, TlsError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains(&cfg.key_file), "{err}");
    }

    #[tokio::test]
    async fn a_bad_new_key_keeps_the_old_certificate_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (identity(), identity());
        install(dir.path(), &a);
        let tls = Tls::load(&config(dir.path(), 50, 5_000)).unwrap();
        let (_close, closing) = watch::channel(false);
        let _reloader = tls.spawn_reloader(closing);
        let addr = serve(tls.clone()).await;
        let client = connector(&[&a, &b]);

        // The new certificate lands; its key is still the old one, then garbage.
        replace(dir.path(), "cert.pem", &b.cert_pem);
        wait_checks(&tls, 2).await;
        replace(dir.path(), "key.pem", "not a key\n");
        wait_checks(&tls, 2).await;
        assert_eq!(tls.reloads(), 0);
        assert_eq!(served(&connect(&client, addr).await), a.der);

        replace(dir.path(), "key.pem", &b.key_pem);
        wait_served(&client, addr, &b).await;
        assert_eq!(tls.reloads(), 1);
    }

    #[tokio::test]
    async fn a_silent_client_times_out_and_plain_http_fails() {
        let metrics = crate::metrics::handle();
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), &identity());
        let tls = Tls::load(&config(dir.path(), 2_000, 200)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        let _silent = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), tls.accept(tcp))
            .await
            .expect("accept is bounded")
            .unwrap_err();
        let waited = started.elapsed();
        assert!(matches!(err, TlsError::HandshakeTimeout { .. }), "{err}");
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");

        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let err = tls.accept(tcp).await.unwrap_err();
        assert!(matches!(err, TlsError::Handshake { .. }), "{err}");

        let text = metrics.render();
        for reason in ["timeout", "error"] {
            let line = format!("sluice_tls_handshake_failures_total{{reason=\"{reason}\"}}");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
    }
}
