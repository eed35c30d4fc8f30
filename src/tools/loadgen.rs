//! A load generator for `pepnet serve`: Open Inference Protocol requests over HTTP/1.1
//! keep-alive connections, closed-loop (a fixed number of clients, each sending its next
//! request when the last is answered) or open-loop (requests started at a fixed rate whatever
//! the answers, latency counted from the scheduled start, so a slow server cannot hide its
//! queue). Loopback addresses only, bounded in requests and time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::serve::oip;
use crate::spec::ModelSpec;

/// How requests are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `clients` clients, each with one request outstanding.
    Closed { clients: usize },
    /// Requests started at `per_second`, by as many connections as needed (at most 256).
    Open { per_second: f64 },
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub mode: String,
    pub requests: usize,
    pub rows_per_request: usize,
    /// Requests answered 200, and otherwise.
    pub ok: usize,
    pub failed: usize,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub rows_per_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
}

/// The most requests and seconds one run may take.
pub const MAX_REQUESTS: usize = 1_000_000;
pub const MAX_SECONDS: f64 = 600.0;

/// Sends `requests` requests of `rows` random samples each to the model `name` at `addr`
/// (a loopback address), stopping early after `max_seconds`.
pub fn run(
    addr: SocketAddr,
    name: &str,
    spec: &ModelSpec,
    (requests, rows): (usize, usize),
    mode: Mode,
    max_seconds: f64,
) -> Result<LoadReport> {
    if !addr.ip().is_loopback() {
        return Err(Error::Batch(format!(
            "{addr}: the load generator sends only to loopback addresses"
        )));
    }
    if requests == 0 || requests > MAX_REQUESTS || rows == 0 {
        return Err(Error::Batch(format!(
            "requests must be in 1..={MAX_REQUESTS} and rows at least 1, found {requests} and {rows}"
        )));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(max_seconds.clamp(0.1, MAX_SECONDS));
    // A few distinct bodies, reused: generating JSON must not be what is measured.
    let bodies: Vec<Vec<u8>> = (0..16)
        .map(|seed| {
            let batch = crate::synth::random_batch(spec, rows, seed);
            serde_json::to_vec(&oip::request(spec, &batch, None)).expect("JSON")
        })
        .collect();
    let path = format!("/v2/models/{name}/infer");
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(requests));
    let failed = AtomicUsize::new(0);
    let start = Instant::now();
    let (connections, interval) = match mode {
        Mode::Closed { clients } => (clients.clamp(1, 1024), None),
        Mode::Open { per_second } if per_second > 0.0 && per_second.is_finite() => (
            256usize.min(requests),
            Some(Duration::from_secs_f64(1.0 / per_second)),
        ),
        Mode::Open { per_second } => {
            return Err(Error::Batch(format!(
                "an open-loop rate must be a positive number, found {per_second}"
            )))
        }
    };
    std::thread::scope(|s| {
        for _ in 0..connections {
            s.spawn(|| {
                let mut conn: Option<Connection> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests || Instant::now() >= deadline {
                        break;
                    }
                    // Open loop: request i starts at its slot, late or not.
                    let scheduled = match interval {
                        Some(dt) => {
                            let at = start + dt.mul_f64(i as f64);
                            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            at
                        }
                        None => Instant::now(),
                    };
                    let body = &bodies[i % bodies.len()];
                    let answered = match conn.as_mut() {
                        Some(c) => c.post(&path, body),
                        None => Err(std::io::Error::other("not connected")),
                    }
                    .or_else(|_| {
                        conn = Some(Connection::open(addr)?);
                        conn.as_mut().expect("just opened").post(&path, body)
                    });
                    match answered {
                        Ok(200) => latencies
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(scheduled.elapsed().as_secs_f64() * 1e3),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                }
            });
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut latencies = latencies.into_inner().unwrap_or_else(|e| e.into_inner());
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let ok = latencies.len();
    Ok(LoadReport {
        mode: match mode {
            Mode::Closed { clients } => format!("closed, {clients} clients"),
            Mode::Open { per_second } => format!("open, {per_second} requests/s"),
        },
        requests: ok + failed.load(Ordering::Relaxed),
        rows_per_request: rows,
        ok,
        failed: failed.load(Ordering::Relaxed),
        seconds,
        requests_per_s: ok as f64 / seconds,
        rows_per_s: (ok * rows) as f64 / seconds,
        latency_ms_p50: at(0.5),
        latency_ms_p99: at(0.99),
        latency_ms_p999: at(0.999),
    })
}

/// One HTTP/1.1 keep-alive connection.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// POSTs a JSON body; the response's status (its body read and dropped).
    fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<u16> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP status line: {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().map_err(std::io::Error::other)?;
                }
            }
        }
        let mut sink = vec![0; length];
        self.reader.read_exact(&mut sink)?;
        Ok(status)
    }
}
