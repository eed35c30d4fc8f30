//! `pepnet stream-push`: the rows of a labelled CSV file appended to a Redis stream, one entry
//! per impression (a field per feature and label column): what `train-stream` reads. For
//! replaying a log, and for tests and demonstrations of the online loop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use pepnet::store::redis::ImpressionStream;
use pepnet::Result;

use super::{load_spec, Labels};

/// Append a labelled CSV file's rows to a Redis stream, one entry per row holding the model's
/// feature columns and label columns (as `train-stream` reads them).
#[derive(Args)]
pub struct StreamPush {
    /// The model (model.json or a model directory): which columns an entry holds.
    #[arg(long)]
    pub model: PathBuf,
    /// A labelled CSV file (as `gen-data` writes).
    #[arg(long)]
    pub input: PathBuf,
    /// The Redis (Cluster): redis://HOST:PORT[,HOST:PORT...].
    #[arg(long, value_parser = parse_redis_url)]
    pub redis: pepnet::store::redis::RedisOptions,
    /// The stream's key.
    #[arg(long)]
    pub stream: String,
    /// At most this many entries per second (none: as fast as Redis takes them).
    #[arg(long)]
    pub rate: Option<f64>,
    #[command(flatten)]
    pub labels: Labels,
}

fn parse_redis_url(s: &str) -> std::result::Result<pepnet::store::redis::RedisOptions, String> {
    pepnet::store::redis::RedisOptions::from_url(s, "--redis").map_err(|e| e.to_string())
}

impl StreamPush {
    pub fn run(self) -> Result<()> {
        let spec = load_spec(&self.model)?;
        let columns: Vec<String> = spec
            .features
            .iter()
            .map(|f| f.name.clone())
            .chain(self.labels.columns(&spec)?)
            .collect();
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        let rows = pepnet::io::read_text_rows(&self.input, &names)?;
        let mut stream =
            ImpressionStream::producer(&self.redis.nodes, &self.stream, self.redis.timeouts)?;
        let begun = Instant::now();
        for (i, row) in rows.iter().enumerate() {
            if let Some(rate) = self.rate.filter(|r| *r > 0.0) {
                let due = Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_sub(begun.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let fields: Vec<(String, String)> =
                columns.iter().cloned().zip(row.iter().cloned()).collect();
            stream.add(&fields)?;
        }
        eprintln!(
            "appended {} entries to stream '{}' in {:.1} s",
            rows.len(),
            self.stream,
            begun.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
