//! What `hark bench` reads besides the calls: CPU time per thread and resident memory from
//! Linux's `/proc`, and the server's Prometheus metrics.
//!
//! CPU time comes from `/proc/<pid>/task/<tid>/schedstat` (time on a CPU, ns; the scheduler's own
//! accounting, finer than the 10 ms ticks of `stat`). Threads are told apart by name
//! (`/proc/<pid>/task/<tid>/comm`): the simulator's runtime threads are `hark-sim`, the server's
//! call workers `hark-call-N`, the server's HTTP runtime tokio's default `tokio-rt-worker` (any
//! `tokio-*` name counts). Elsewhere than Linux every reading is `None`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Thread name prefix of the simulator's runtime.
pub const SIM_THREAD: &str = "hark-sim";

/// Which process holds the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerProcess {
    /// In this process: server threads are told apart from the simulator's by name.
    InProcess,
    /// Another process (`--server-pid`): all of its threads.
    Pid(u32),
    /// Unknown (`--url` without `--server-pid`): no server CPU or memory.
    Unknown,
}

/// What a thread is, for CPU accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A server call worker (`hark-call-N`), or any thread of the server process.
    ServerWorker,
    /// The in-process server's HTTP runtime (`tokio-*`).
    ServerHttp,
    /// The simulator's runtime (`hark-sim`).
    Client,
    /// Anything else in this process (the bench's main thread, the cascade double).
    Other,
}

/// CPU time used so far by each thread (ns), read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSample {
    /// When it was read.
    pub at: Instant,
    /// (process, thread id) → (kind, ns on a CPU so far). Process 0 is this one.
    threads: std::collections::HashMap<(u32, u32), (ThreadKind, u64)>,
    /// Whether the server's threads are known.
    server_known: bool,
    /// Busy CPU ticks of the whole machine, and of this process plus the server process
    /// (`/proc/stat`, `/proc/<pid>/stat`; USER_HZ = 100 ticks per second).
    machine_ticks: Option<(u64, u64)>,
}

/// USER_HZ: the unit of `/proc/stat` and `/proc/<pid>/stat` times (100 on Linux's ABIs).
const TICKS_PER_S: f64 = 100.0;

/// utime + stime of a process, ticks (fields 14 and 15 of `/proc/<pid>/stat`).
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) is in parentheses and may hold spaces: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy ticks of all CPUs (`/proc/stat` first line: user, nice, system, irq, softirq, steal).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0))
}

/// (thread id, name, ns on a CPU so far) of each thread of process `pid` ("self" or a number).
fn read_threads(pid: &str) -> Option<Vec<(u32, String, u64)>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let p = entry.path();
        let Ok(stat) = std::fs::read_to_string(p.join("schedstat")) else {
            continue; // the thread just ended
        };
        let ns = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let comm = std::fs::read_to_string(p.join("comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        out.push((tid, comm, ns));
    }
    Some(out)
}

/// Reads the CPU time of every thread of this process (and of the server's, when it is
/// another process) (`None` off Linux).
pub fn cpu(server: ServerProcess) -> Option<CpuSample> {
    let at = Instant::now();
    let mut threads = std::collections::HashMap::new();
    for (tid, comm, ns) in read_threads("self")? {
        let kind = if comm.starts_with(SIM_THREAD) {
            ThreadKind::Client
        } else if server == ServerProcess::InProcess && comm.starts_with("hark-call-") {
            ThreadKind::ServerWorker
        } else if server == ServerProcess::InProcess && comm.starts_with("tokio-") {
            ThreadKind::ServerHttp
        } else {
            ThreadKind::Other
        };
        threads.insert((0, tid), (kind, ns));
    }
    let mut server_known = server == ServerProcess::InProcess;
    if let ServerProcess::Pid(pid) = server
        && let Some(list) = read_threads(&pid.to_string())
    {
        server_known = true;
        for (tid, _, ns) in list {
            threads.insert((pid, tid), (ThreadKind::ServerWorker, ns));
        }
    }
    let ours = process_ticks("self").and_then(|own| match server {
        ServerProcess::Pid(pid) => process_ticks(&pid.to_string()).map(|t| own + t),
        _ => Some(own),
    });
    Some(CpuSample {
        at,
        threads,
        server_known,
        machine_ticks: machine_busy_ticks().zip(ours),
    })
}

/// CPU used between two samples, in % of one core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuPct {
    /// The server's threads.
    pub server: Option<f64>,
    /// Of those, the in-process server's HTTP runtime.
    pub server_http: Option<f64>,
    /// The simulator's threads.
    pub client: f64,
    /// Everything else in this process.
    pub other: f64,
    /// Other processes on the machine (anything not this process or the server's), from
    /// 10 ms ticks. A busy machine skews a step.
    pub others: Option<f64>,
}

/// CPU used between two samples, in % of one core, thread by thread: a thread that ended in
/// between loses what it used since `a`, a thread that started counts from 0.
pub fn cpu_pct(a: &CpuSample, b: &CpuSample) -> CpuPct {
    let wall = b.at.saturating_duration_since(a.at).as_nanos().max(1) as f64;
    let mut ns = [0u64; 4];
    for (key, &(kind, end)) in &b.threads {
        let start = a.threads.get(key).map_or(0, |&(_, s)| s);
        ns[kind as usize] += end.saturating_sub(start);
    }
    let pct = |x: u64| x as f64 / wall * 100.0;
    let in_process = a.threads.values().any(|t| t.0 == ThreadKind::ServerHttp)
        || b.threads.values().any(|t| t.0 == ThreadKind::ServerHttp);
    CpuPct {
        server: (a.server_known && b.server_known).then(|| {
            pct(ns[ThreadKind::ServerWorker as usize] + ns[ThreadKind::ServerHttp as usize])
        }),
        server_http: (a.server_known && b.server_known && in_process)
            .then(|| pct(ns[ThreadKind::ServerHttp as usize])),
        client: pct(ns[ThreadKind::Client as usize]),
        other: pct(ns[ThreadKind::Other as usize]),
        others: a
            .machine_ticks
            .zip(b.machine_ticks)
            .map(|((ma, oa), (mb, ob))| {
                let foreign = mb.saturating_sub(ma).saturating_sub(ob.saturating_sub(oa));
                foreign as f64 / TICKS_PER_S * 1e9 / wall * 100.0
            }),
    }
}

/// Resident memory of a process, bytes (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`).
pub fn load_avg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The server metrics `hark bench` uses, from one scrape of `/metrics` (Prometheus text).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// `hark_engine_message_seconds` buckets: (upper bound in s, cumulative count).
    pub message_buckets: Vec<(f64, f64)>,
    /// `hark_engine_message_seconds_sum`, s.
    pub message_sum: f64,
    /// `hark_engine_message_seconds_count`.
    pub message_count: f64,
    /// Sum of `hark_ws_errors_total` over its kinds.
    pub ws_errors: f64,
    /// Sum of `hark_malformed_messages_total` over its kinds.
    pub malformed: f64,
    /// `hark_inbound_frames_total`.
    pub inbound_frames: f64,
}

impl Scrape {
    /// Parses Prometheus text; unknown lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut s = Scrape::default();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = key.split_once('{').unwrap_or((key, ""));
            match name {
                "hark_engine_message_seconds_bucket" => {
                    let le = labels
                        .split("le=\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .map(|x| {
                            if x == "+Inf" {
                                f64::INFINITY
                            } else {
                                x.parse().unwrap_or(f64::INFINITY)
                            }
                        });
                    if let Some(le) = le {
                        s.message_buckets.push((le, v));
                    }
                }
                "hark_engine_message_seconds_sum" => s.message_sum = v,
                "hark_engine_message_seconds_count" => s.message_count = v,
                "hark_ws_errors_total" => s.ws_errors += v,
                "hark_malformed_messages_total" => s.malformed += v,
                "hark_inbound_frames_total" => s.inbound_frames = v,
                _ => {}
            }
        }
        s.message_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        s
    }

    /// What happened between `self` (earlier) and `later`.
    pub fn delta(&self, later: &Scrape) -> Scrape {
        let buckets = later
            .message_buckets
            .iter()
            .map(|&(le, c)| {
                let before = self
                    .message_buckets
                    .iter()
                    .find(|b| b.0 == le)
                    .map_or(0.0, |b| b.1);
                (le, (c - before).max(0.0))
            })
            .collect();
        Scrape {
            message_buckets: buckets,
            message_sum: (later.message_sum - self.message_sum).max(0.0),
            message_count: (later.message_count - self.message_count).max(0.0),
            ws_errors: (later.ws_errors - self.ws_errors).max(0.0),
            malformed: (later.malformed - self.malformed).max(0.0),
            inbound_frames: (later.inbound_frames - self.inbound_frames).max(0.0),
        }
    }

    /// The upper bound (s) of the bucket holding quantile `q` (0–1) of the message times, if
    /// any were recorded.
    pub fn message_quantile_le(&self, q: f64) -> Option<f64> {
        let total = self.message_buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        self.message_buckets
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map(|(le, _)| *le)
    }
}

/// Fetches `http://<host:port>/metrics` (plain HTTP/1.1, `Connection: close`), bounded by
/// `timeout`.
///
/// # Errors
/// An I/O error if the server cannot be reached or answers other than 200.
pub fn fetch_metrics(host_port: &str, timeout: Duration) -> std::io::Result<String> {
    use std::net::ToSocketAddrs;
    let addr = host_port
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host_port}: no address")))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "GET /metrics: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

/// Joins the chunks of a chunked HTTP/1.1 body (sizes in hex, each line ended by CRLF).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n =
            usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE hark_engine_message_seconds histogram\n\
hark_engine_message_seconds_bucket{le=\"0.000001\"} 0\n\
hark_engine_message_seconds_bucket{le=\"0.000005\"} 80\n\
hark_engine_message_seconds_bucket{le=\"0.00001\"} 99\n\
hark_engine_message_seconds_bucket{le=\"+Inf\"} 100\n\
hark_engine_message_seconds_sum 0.0004\n\
hark_engine_message_seconds_count 100\n\
hark_ws_errors_total{kind=\"upgrade\"} 2\n\
hark_ws_errors_total{kind=\"idle\"} 1\n\
hark_malformed_messages_total{kind=\"json\"} 4\n\
hark_inbound_frames_total 5000\n";

    #[test]
    fn parses_and_diffs_the_metrics_bench_uses() {
        let a = Scrape::parse(TEXT);
        assert_eq!(a.message_buckets.len(), 4);
        assert_eq!(
            (a.ws_errors, a.malformed, a.inbound_frames),
            (3.0, 4.0, 5000.0)
        );
        assert_eq!(a.message_quantile_le(0.5), Some(0.000005));
        assert_eq!(a.message_quantile_le(0.99), Some(0.00001));
        let later = Scrape::parse(&TEXT.replace("} 80", "} 180").replace("} 100\n", "} 200\n"));
        let d = a.delta(&later);
        assert_eq!(d.message_buckets[1], (0.000005, 100.0));
        assert_eq!(d.message_quantile_le(0.5), Some(0.000005));
        assert_eq!(Scrape::default().message_quantile_le(0.5), None);
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_proc() {
        let a = cpu(ServerProcess::InProcess).unwrap();
        let t = std::thread::Builder::new()
            .name("hark-call-9".into())
            .spawn(|| {
                let x = Instant::now();
                while x.elapsed() < Duration::from_millis(30) {
                    std::hint::spin_loop();
                }
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let mid = cpu(ServerProcess::InProcess).unwrap();
        t.join().unwrap();
        let b = cpu(ServerProcess::InProcess).unwrap();
        // A thread that started after `a` counts from 0; one that ended before `b` keeps
        // nothing, and never makes a total go down.
        assert!(cpu_pct(&a, &mid).server.unwrap() > 0.0);
        assert!(cpu_pct(&mid, &b).server.unwrap() >= 0.0);
        assert!(cpu_pct(&a, &b).other >= 0.0);
        assert!(cpu_pct(&a, &b).others.is_some_and(|o| o >= 0.0));
        assert!(process_ticks("self").is_some());
        assert!(cpu(ServerProcess::Unknown).is_some());
        assert!(rss_bytes(None).unwrap() > 1 << 20);
        assert!(load_avg().is_some());
    }
}
