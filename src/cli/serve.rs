//! `pepnet serve`: online scoring over HTTP (the Open Inference Protocol), requests coalesced
//! by the dynamic batcher.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use pepnet::serve::{serve, ServeOptions};
use pepnet::{BatcherOptions, EngineOptions, Result};

use super::{at_least_one, Device};

/// Serve a model over HTTP with the Open Inference Protocol (KServe v2): health, metadata,
/// infer, Prometheus metrics, reloading the model directory (POST
/// /v2/repository/models/NAME/load, or SIGHUP) and row updates for hashed features (POST
/// /v2/models/NAME/rows); stops on SIGINT or SIGTERM after answering what it has.
#[derive(Args)]
pub struct Serve {
    /// Model directory (model.json + weights.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// The model's name in URLs (/v2/models/NAME).
    #[arg(long, default_value = "pepnet")]
    pub name: String,
    /// Address to listen on for HTTP (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub http: SocketAddr,
    /// The most samples one GPU batch holds (requests are merged up to it).
    #[arg(long, default_value_t = 4096, value_parser = at_least_one())]
    pub max_batch_rows: usize,
    /// The longest a request waits for others to join its batch, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    pub max_delay_ms: f64,
    /// The most samples waiting at once; beyond, requests get 429.
    #[arg(long, default_value_t = 65536, value_parser = at_least_one())]
    pub max_queued_rows: usize,
    /// Score every request alone, as it comes (to measure what batching brings).
    #[arg(long)]
    pub no_batching: bool,
    /// Batches scored at once.
    #[arg(long, default_value_t = 2, value_parser = at_least_one())]
    pub in_flight: usize,
    /// The longest a request may take, queueing included, in milliseconds (then 504).
    #[arg(long, default_value_t = 1000, value_parser = at_least_one())]
    pub timeout_ms: usize,
    /// The largest request body accepted, in bytes (then 413).
    #[arg(long, default_value_t = 16 << 20, value_parser = at_least_one())]
    pub max_body_bytes: usize,
    #[command(flatten)]
    pub device: Device,
}

impl Serve {
    pub fn run(self) -> Result<()> {
        let ctx = self.device.adapter.open()?;
        let engine_options = EngineOptions {
            max_batch: self.max_batch_rows,
            workspaces: self.in_flight,
            precision: self.device.precision,
            batch_invariant: true,
            ..Default::default()
        };
        let options = ServeOptions {
            name: self.name,
            http: self.http,
            // Without batching, one request per batch (a request beyond max_rows is taken
            // alone) and no waiting for others.
            batcher: BatcherOptions {
                max_rows: if self.no_batching {
                    1
                } else {
                    self.max_batch_rows
                },
                max_delay: match self.no_batching {
                    true => Duration::ZERO,
                    false => Duration::from_secs_f64(self.max_delay_ms.max(0.0) / 1e3),
                },
                max_queued_rows: self.max_queued_rows,
                in_flight: self.in_flight,
            },
            timeout: Duration::from_millis(self.timeout_ms as u64),
            max_body_bytes: self.max_body_bytes,
        };
        let name = options.name.clone();
        serve(ctx, self.model, engine_options, options, |addr| {
            eprintln!("serving '{name}' on http://{addr} (POST /v2/models/{name}/infer)");
        })?;
        eprintln!("stopped");
        Ok(())
    }
}
