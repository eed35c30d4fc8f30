//! `pepnet cache-bench`: the embedding cache's hit rates per eviction policy, and scoring
//! throughput through the cache against the same model fully resident.

use std::path::PathBuf;

use clap::Args;

use pepnet::cache::EvictionPolicy;
use pepnet::tools::cache_bench as bench;
use pepnet::Result;

use super::{at_least_one, Adapter, Report};

/// Embedding-cache benchmark: hit rates of the eviction policies on Zipf id streams (or the
/// ids of an input file) beside Belady's offline optimum, and scoring throughput with the
/// cache against the same model fully resident.
#[derive(Args)]
pub struct CacheBench {
    /// Distinct ids of the Zipf streams (at least 1).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub distinct: u64,
    /// Lookups per Zipf stream (the first fifth of every stream warms the cache; at least 1).
    #[arg(long, default_value_t = 2_000_000, value_parser = at_least_one())]
    pub lookups: usize,
    /// Ids per batch (at least 1); for --input, samples per batch.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one())]
    pub batch: usize,
    /// Zipf exponents, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.8,1.0,1.2", value_parser = positive)]
    pub exponents: Vec<f64>,
    /// Cache sizes as shares of the distinct ids, comma-separated, each in (0, 1].
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.05,0.2", value_parser = share)]
    pub sizes: Vec<f64>,
    /// Eviction policies, comma-separated (tinylfu, score, score:<decay>, lru, lfu, perfect-lfu).
    #[arg(long, value_delimiter = ',', default_value = "tinylfu,score,lru,lfu,perfect-lfu",
          value_parser = EvictionPolicy::parse)]
    pub policies: Vec<EvictionPolicy>,
    /// Seed of the Zipf streams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Replay the hashed features' ids of this CSV or Parquet file (needs --model) instead of
    /// Zipf streams.
    #[arg(long, requires = "model")]
    pub input: Option<PathBuf>,
    /// The model directory whose spec reads --input.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Skip Belady's optimum (it keeps the whole stream's future in memory).
    #[arg(long)]
    pub no_optimum: bool,
    /// Skip the GPU throughput part.
    #[arg(long)]
    pub no_throughput: bool,
    /// Throughput: distinct users and items of the model.
    #[arg(long, default_value_t = 20_000, value_parser = at_least_one())]
    pub users: usize,
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one())]
    pub items: usize,
    /// Throughput: timed batches and samples per batch.
    #[arg(long, default_value_t = 8, value_parser = at_least_one())]
    pub batches: usize,
    #[arg(long, default_value_t = 2048, value_parser = at_least_one())]
    pub rows: usize,
    #[command(flatten)]
    pub report: Report,
    #[command(flatten)]
    pub adapter: Adapter,
}

fn positive(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("'{s}': expected a positive number")),
    }
}

fn share(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!(
            "'{s}': expected a share of the distinct ids in (0, 1]"
        )),
    }
}

impl CacheBench {
    pub fn run(self) -> Result<()> {
        let streams = match (&self.input, &self.model) {
            (Some(input), Some(model)) => {
                let spec = pepnet::Model::load(model)?.spec;
                vec![bench::Stream::from_file(input, &spec, self.batch)?]
            }
            _ => self
                .exponents
                .iter()
                .map(|&e| {
                    bench::Stream::zipf(self.distinct, e, self.lookups, self.batch, self.seed)
                })
                .collect(),
        };
        let rates = bench::hit_rates(&streams, &self.sizes, &self.policies, !self.no_optimum)?;
        let columns = self.policies.len() + usize::from(!self.no_optimum);
        for stream in &streams {
            println!(
                "hit rates, {}: {} distinct ids, {} lookups in batches of {} (first fifth warms up)",
                stream.name,
                stream.distinct(),
                stream.lookups(),
                self.batch
            );
        }
        let mut header = format!("{:<14} {:>7} {:>9}", "stream", "cache", "rows");
        for r in rates.iter().take(columns) {
            header += &format!(" {:>12}", r.policy);
        }
        println!("{header}");
        for row in rates.chunks(columns) {
            let mut line = format!(
                "{:<14} {:>6}% {:>9}",
                row[0].stream,
                format!("{:.4}", 100.0 * row[0].cache_share)
                    .trim_end_matches('0')
                    .trim_end_matches('.'),
                row[0].capacity_rows
            );
            for r in row {
                line += &format!(" {:>11.2}%", 100.0 * r.hit_rate);
            }
            println!("{line}");
        }
        let mut speeds = Vec::new();
        if !self.no_throughput {
            let (users, items, batches, rows) = (self.users, self.items, self.batches, self.rows);
            let ctx = self.adapter.open()?;
            println!(
                "\nthroughput on {}: {users} users + {items} items, Zipf 1.0, {batches} batches of {rows}",
                ctx.info.name
            );
            speeds =
                bench::throughput(&ctx, users, items, &[0.01, 0.05, 0.20, 1.0], batches, rows)?;
            println!(
                "{:<12} {:>12} {:>9} {:>11} {:>10}",
                "setup", "samples/s", "hit%", "resolve µs", "gather µs"
            );
            let us = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.0}"));
            for s in &speeds {
                println!(
                    "{:<12} {:>12.0} {:>8.2}% {:>11} {:>10}",
                    s.setup,
                    s.samples_per_s,
                    100.0 * s.hit_rate,
                    us(s.resolve_us),
                    us(s.gather_us)
                );
            }
        }
        self.report
            .write(&serde_json::json!({"hit_rates": rates, "throughput": speeds}))
    }
}
