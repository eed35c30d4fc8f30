//! `pepnet loadgen`: load on a `pepnet serve` over loopback, closed- or open-loop; throughput
//! and latency percentiles.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use pepnet::tools::loadgen::{self, Mode};
use pepnet::Result;

use super::{at_least_one, load_spec, Report};

/// Send Open Inference Protocol requests to a `pepnet serve` on a loopback address: closed-loop
/// (--concurrency clients) or open-loop (--rate requests/s); prints throughput and p50, p99 and
/// p99.9 latency.
#[derive(Args)]
pub struct Loadgen {
    /// The server (a loopback address, e.g. 127.0.0.1:8000).
    #[arg(long)]
    pub http: SocketAddr,
    /// The model served (its directory or spec), for the requests' tensors.
    #[arg(long)]
    pub model: PathBuf,
    /// The model's name in URLs.
    #[arg(long, default_value = "pepnet")]
    pub name: String,
    /// Requests to send in all (at most 1 000 000).
    #[arg(long, default_value_t = 1000, value_parser = at_least_one())]
    pub requests: usize,
    /// Samples per request (candidates of one user).
    #[arg(long, default_value_t = 50, value_parser = at_least_one())]
    pub rows: usize,
    /// Closed loop: clients, each with one request outstanding.
    #[arg(long, default_value_t = 8, value_parser = at_least_one(), conflicts_with = "rate")]
    pub concurrency: usize,
    /// Open loop: requests started per second, whatever the answers.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this many seconds whatever is left (at most 600).
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
    #[command(flatten)]
    pub report: Report,
}

impl Loadgen {
    pub fn run(self) -> Result<()> {
        let spec = load_spec(&self.model)?;
        let mode = match self.rate {
            Some(per_second) => Mode::Open { per_second },
            None => Mode::Closed {
                clients: self.concurrency,
            },
        };
        let r = loadgen::run(
            self.http,
            &self.name,
            &spec,
            (self.requests, self.rows),
            mode,
            self.max_seconds,
        )?;
        println!(
            "{}: {} requests of {} rows ({} failed) in {:.2} s: {:.0} requests/s, {:.0} rows/s; \
             latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            r.mode,
            r.requests,
            r.rows_per_request,
            r.failed,
            r.seconds,
            r.requests_per_s,
            r.rows_per_s,
            r.latency_ms_p50,
            r.latency_ms_p99,
            r.latency_ms_p999
        );
        self.report.write(&r)
    }
}
