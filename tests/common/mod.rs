//! Test harness: real stores (memory, file, moto S3) and helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use sluice::store::{Store, StoreKind};

pub mod chromium;
pub mod duckdb;
pub mod exposition;
pub mod gateway;
pub mod keys;
pub mod process;
pub mod tail;

/// A moto S3 server for this test binary; it stops when the binary exits
/// (its wrapper shell waits on our stdin pipe, then kills moto).
pub struct Moto {
    pub endpoint: String,
    _child: Mutex<Child>,
    _stdin: Mutex<ChildStdin>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let port = free_port();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("moto_server -H 127.0.0.1 -p \"$0\" >/dev/null 2>&1 & m=$!; cat >/dev/null; kill $m; wait $m")
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .spawn()
            .expect("start moto_server (pip install 'moto[server]')");
        let stdin = child.stdin.take().unwrap();
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_for_http(port, Duration::from_secs(60));
        Moto {
            endpoint,
            _child: Mutex::new(child),
            _stdin: Mutex::new(stdin),
        }
    })
}

/// Poll until something answers HTTP on the port (bounded).
pub fn wait_for_http(port: u16, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut buf = [0u8; 12];
            if s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing answered on port {port} within {limit:?}");
}

/// Create a fresh bucket on moto and return its name.
pub fn new_bucket() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let m = moto();
    let name = format!(
        "sluice-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let port = m.endpoint.rsplit(':').next().unwrap();
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    write!(
        s,
        "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
    name
}

/// A new S3 client for `bucket` on moto (each call: its own connection pool).
pub fn s3_client(bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(&moto().endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap(),
    )
}

/// The environment a gateway process needs to reach `bucket` on moto.
pub fn s3_env(bucket: &str) -> Vec<(String, String)> {
    vec![
        ("SLUICE_STORE".into(), format!("s3://{bucket}/root")),
        ("AWS_ENDPOINT_URL".into(), moto().endpoint.clone()),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ]
}

/// The kinds of store every conformance test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Memory,
    File,
    S3,
}

pub const BACKENDS: [Backend; 3] = [Backend::Memory, Backend::File, Backend::S3];

/// A shared location that several independent store clients can open.
pub struct Place {
    backend: Backend,
    memory: Arc<InMemory>,
    dir: Option<tempfile::TempDir>,
    bucket: String,
}

impl Place {
    pub fn new(backend: Backend) -> Self {
        Place {
            backend,
            memory: Arc::new(InMemory::new()),
            dir: matches!(backend, Backend::File).then(|| tempfile::tempdir().unwrap()),
            bucket: if matches!(backend, Backend::S3) {
                new_bucket()
            } else {
                String::new()
            },
        }
    }

    /// A new client on this place (memory: the same map; file, S3: a new client).
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        match self.backend {
            Backend::Memory => self.memory.clone(),
            Backend::File => {
                let url = format!("file://{}", self.dir.as_ref().unwrap().path().display());
                Store::open(&url).unwrap().inner
            }
            Backend::S3 => s3_client(&self.bucket),
        }
    }

    pub fn store_of(&self, inner: Arc<dyn ObjectStore>) -> Store {
        let kind = match self.backend {
            Backend::Memory => StoreKind::Memory,
            Backend::File => StoreKind::File,
            Backend::S3 => StoreKind::S3,
        };
        Store::from_parts(inner, "root", kind)
    }

    pub fn store(&self) -> Store {
        self.store_of(self.client())
    }
}
