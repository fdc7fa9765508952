//! A real `hark serve` process for tests (`CARGO_BIN_EXE_hark`) on 127.0.0.1 port 0, with its
//! JSON log read line by line, timed as the test reads it.
#![allow(dead_code)] // each test binary uses a part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `TWILIO_AUTH_TOKEN` processes start with (a test's `env` may replace it).
pub const TOKEN: &str = "records-test-auth-token";

type Lines = Arc<Mutex<Vec<(Instant, Value)>>>;

/// A running `hark serve`.
pub struct Hark {
    /// The process.
    pub child: Child,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    lines: Lines,
}

impl Hark {
    /// Starts `hark serve` in `dir` on `db_url` with `env` on top of the test settings, and
    /// waits until it listens.
    pub fn start(dir: &Path, db_url: &str, node: &str, env: &[(&str, &str)]) -> Hark {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hark"));
        cmd.arg("serve")
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HARK_ADDR", "127.0.0.1:0")
            .env("HARK_DATABASE_URL", db_url)
            .env("HARK_NODE_ID", node)
            .env("HARK_AGENT", "echo")
            .env("HARK_LOG_FORMAT", "json")
            .env("HARK_WORKERS", "2")
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("hark starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines: Lines = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().expect("log lock").push((at, v));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let addr = lines.lock().expect("log lock").iter().find_map(|(_, v)| {
                (v["message"] == "hark listening")
                    .then(|| v["addr"].as_str().map(str::to_owned))
                    .flatten()
            });
            if let Some(addr) = addr {
                break addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .expect("addr has a port");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("hark exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "hark did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        };
        Hark { child, port, lines }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until hark has logged `message` (e.g. "crash recovery done", logged at start
    /// after the listener is bound).
    pub fn wait_for(&self, message: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count(message) == 0 {
            assert!(Instant::now() < deadline, "hark never logged {message:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/media-stream", self.port)
    }

    /// The caller turns hark logged so far: (read at, call SID, start ms, end ms).
    pub fn turns(&self) -> Vec<(Instant, String, i64, i64)> {
        self.lines
            .lock()
            .expect("log lock")
            .iter()
            .filter(|(_, v)| v["message"] == "caller turn")
            .map(|(at, v)| {
                let sid = v["span"]["call_sid"]
                    .as_str()
                    .or_else(|| {
                        v["spans"]
                            .as_array()
                            .and_then(|s| s.iter().find_map(|s| s["call_sid"].as_str()))
                    })
                    .expect("the call span carries call_sid")
                    .to_owned();
                let n = |k: &str| v[k].as_i64().expect("turn times");
                (*at, sid, n("start_ms"), n("end_ms"))
            })
            .collect()
    }

    /// The log lines (JSON) whose message is `message`, in order.
    pub fn lines(&self, message: &str) -> Vec<Value> {
        self.lines
            .lock()
            .expect("log lock")
            .iter()
            .filter(|(_, v)| v["message"] == message)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Log lines whose message is `message`.
    pub fn count(&self, message: &str) -> usize {
        self.lines
            .lock()
            .expect("log lock")
            .iter()
            .filter(|(_, v)| v["message"] == message)
            .count()
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "hark did not exit in {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Hark {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
