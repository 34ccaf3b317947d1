//! A running `sluice tail` process, read line by line (bounded waits).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest wait for lines to appear (another writer's commits reach the
/// gateway's tailer within its idle poll, at most 1 s by default).
pub const LINES_WITHIN: Duration = Duration::from_secs(30);
/// How long `finish` waits for the exit.
pub const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// A running `sluice tail`: its stdout as raw lines (a line without its
/// newline is a half-printed one) and its stderr.
pub struct Tail {
    child: Child,
    lines: mpsc::Receiver<Vec<u8>>,
    stderr: Option<JoinHandle<String>>,
    /// The lines printed so far, without their newlines.
    pub seen: Vec<String>,
}

impl Tail {
    pub fn spawn(args: &[&str]) -> Tail {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("tail")
            .args(args)
            .env("SLUICE_LOG", "warn")
            .env_remove("SLUICE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Tail {
            child,
            lines,
            stderr: Some(stderr),
            seen: Vec::new(),
        }
    }

    fn take_line(&mut self, raw: Vec<u8>) {
        let text = String::from_utf8(raw).unwrap();
        let line = text.strip_suffix('\n');
        let line = line.unwrap_or_else(|| panic!("half-printed line: {text:?}"));
        self.seen.push(line.to_string());
    }

    /// Read until `total` lines have been printed in all (bounded).
    pub fn wait_for(&mut self, total: usize) {
        let deadline = Instant::now() + LINES_WITHIN;
        while self.seen.len() < total {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(raw) => self.take_line(raw),
                Err(e) => panic!(
                    "{e}: {} of {total} lines within {LINES_WITHIN:?}; stderr so far unknown; seen {:#?}",
                    self.seen.len(),
                    self.seen
                ),
            }
        }
    }

    /// The next line if one arrives within `limit`.
    pub fn next_within(&mut self, limit: Duration) -> Option<String> {
        let raw = self.lines.recv_timeout(limit).ok()?;
        self.take_line(raw);
        self.seen.last().cloned()
    }

    /// SIGTERM, then the exit status (bounded) and stderr; every line printed
    /// up to the exit is taken into `seen` (and must be whole).
    pub fn terminate(&mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        self.finish()
    }

    /// Wait (bounded) for the exit; the status and stderr.
    pub fn finish(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + EXIT_WITHIN;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "no exit within {EXIT_WITHIN:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The process is gone, so its pipes are closed: these end promptly.
        while let Ok(raw) = self.lines.recv_timeout(EXIT_WITHIN) {
            self.take_line(raw);
        }
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status, stderr)
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
