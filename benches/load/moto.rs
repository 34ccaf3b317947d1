//! The moto S3 server that the moto scenarios share: started on a free
//! loopback port with one bucket, each gateway on a fresh prefix in it, and
//! stopped when dropped (or when the harness dies: its wrapper shell waits
//! on our stdin pipe, then kills moto).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BUCKET: &str = "sluice-load";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Moto {
    addr: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
    gateways: AtomicUsize,
}

impl Moto {
    /// Starts `moto_server` and creates the bucket.
    pub fn start() -> Moto {
        assert!(
            on_path("moto_server"),
            "moto_server is not on PATH (pip install 'moto[server]')"
        );
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"moto_server -H 127.0.0.1 -p "$0" >/dev/null 2>&1 & m=$!; cat >/dev/null; kill $m; wait $m"#)
            .arg(addr.port().to_string())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server through sh: {e}"));
        let stdin = child.stdin.take();
        let moto = Moto {
            addr,
            child,
            stdin,
            gateways: AtomicUsize::new(0),
        };
        moto.wait_until_up();
        moto.create_bucket();
        eprintln!("load: moto S3 server at {addr}, bucket {BUCKET}");
        moto
    }

    /// The environment of a gateway on a fresh prefix of the bucket.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        let n = self.gateways.fetch_add(1, Ordering::Relaxed);
        [
            ("SLUICE_STORE", format!("s3://{BUCKET}/gateway-{n}")),
            ("AWS_ENDPOINT_URL", format!("http://{}", self.addr)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            if request(self.addr, "GET / HTTP/1.0\r\n\r\n").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "moto_server did not answer on {} within {STARTUP_TIMEOUT:?}",
            self.addr
        );
    }

    fn create_bucket(&self) {
        let put = format!(
            "PUT /{BUCKET} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let answer = request(self.addr, &put)
            .unwrap_or_else(|e| panic!("create the bucket {BUCKET} on moto: {e}"));
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "create the bucket {BUCKET} on moto: {answer}"
        );
    }
}

impl Drop for Moto {
    /// Closing stdin makes the wrapper kill moto and exit; kill it if it does not.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP exchange on a fresh connection, every step bounded.
fn request(addr: SocketAddr, text: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(text.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if answer.is_empty() {
        return Err(std::io::Error::other("empty answer"));
    }
    Ok(answer)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}
